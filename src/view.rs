//! The member view: which member records etcd holds, per role, and as of which revision.
//!
//! The etcd thread feeds it what it reads (every role's key range at one revision, or the watch
//! stream's changes) and acts on what it answers: the members to serve, who joined and left, and
//! whether this node still holds its name and only that. It does no I/O, so each of those
//! decisions is tested here on plain data. The subcommands read members through it too.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Role;
use crate::etcd::{KeyValue, RangeRequest, WatchEvent};
use crate::record::Record;

/// A place a member can hold: an ID of a role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot {
    /// The role's index in the Corefile's order.
    pub role: usize,
    pub id: u32,
}

impl Slot {
    /// Its name, which is also its etcd key: `ps1.tf.local.`.
    pub fn name(self, roles: &[Role]) -> String {
        roles.get(self.role).map_or_else(String::new, |r| r.pattern.name(self.id))
    }
}

/// Every role's key range, in Corefile order: what a full read asks etcd for.
pub fn ranges(roles: &[Role]) -> Vec<RangeRequest> {
    roles
        .iter()
        .map(|r| {
            let (start, end) = r.pattern.key_range();
            RangeRequest::new(start.as_bytes(), end.as_bytes())
        })
        .collect()
}

pub struct View {
    roles: Vec<Role>,
    /// This node's record exactly as stored, to tell our own keys from others'.
    own_value: Vec<u8>,
    /// Every key of every role's key range, as of `revisions`.
    entries: BTreeMap<Vec<u8>, Entry>,
    /// Per role, the newest revision its entries reflect; empty until the first read. Watch
    /// streams of different roles are not in step with each other, so each role counts its own.
    revisions: Vec<i64>,
    /// Per role, its members by ID: `entries` less the keys that are no member.
    members: Vec<BTreeMap<u32, Record>>,
}

/// One key of a role's range, with its value already judged.
struct Entry {
    role: usize,
    mod_revision: i64,
    lease: i64,
    /// Whether its value is this node's own record, byte for byte.
    ours: bool,
    /// The member it stands for, or why it stands for none.
    member: Result<(Slot, Record), String>,
}

/// What a read or a batch of watched changes did to the members.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub joined: Vec<(String, Record)>,
    pub changed: Vec<(String, Record)>,
    /// With the record they had.
    pub left: Vec<(String, Record)>,
    /// Keys in the zone that are no member, each with why; told once, when the key or its value
    /// is new.
    pub skipped: Vec<(String, String)>,
    /// Keys in a role's key range but outside the zone: another cluster's, sharing the prefix and
    /// the etcd (`worker1.other.zone.`). None of our business.
    pub elsewhere: Vec<String>,
}

/// Whether this node still holds the name it claimed, as the view has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Own {
    /// Its key is there, on this node's lease.
    Held,
    /// Its key is gone: deleted, or its lease ended.
    Missing,
    /// Its key holds this node's very record on another lease: another node publishes the same
    /// record and took the name over.
    Twin,
    /// Its key holds another node's record.
    Taken,
}

/// What a look at this node's own keys found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Check {
    /// Keys on this node's lease that are not its name: claims that arrived late.
    pub strays: Vec<Vec<u8>>,
    /// The state of the held name; `None` when the node holds none.
    pub own: Option<Own>,
}

impl View {
    pub fn new(roles: &[Role], own_value: &[u8]) -> View {
        View {
            roles: roles.to_vec(),
            own_value: own_value.to_vec(),
            entries: BTreeMap::new(),
            revisions: Vec::new(),
            members: vec![BTreeMap::new(); roles.len()],
        }
    }

    /// The revision the view reflects (the newest of its roles'), once something was read.
    pub fn revision(&self) -> Option<i64> {
        self.revisions.iter().copied().max()
    }

    /// Per role, in Corefile order, its members by ID.
    pub fn members(&self) -> &[BTreeMap<u32, Record>] {
        &self.members
    }

    /// Every member with the lease its key is on (0 for none), role by role, in ID order.
    pub fn records(&self) -> impl Iterator<Item = (Slot, &Record, i64)> + '_ {
        self.members.iter().enumerate().flat_map(move |(role, members)| {
            members.iter().map(move |(&id, record)| {
                let slot = Slot { role, id };
                let lease = self.entries.get(slot.name(&self.roles).as_bytes()).map_or(0, |e| e.lease);
                (slot, record, lease)
            })
        })
    }

    /// Keys that follow a role's pattern but whose value is no record: each still blocks its ID,
    /// since claims take only absent keys. With the lease they are on and why they are unreadable.
    pub fn unreadable(&self) -> impl Iterator<Item = (Slot, i64, &str)> + '_ {
        self.entries.iter().filter_map(|(key, entry)| {
            let why = entry.member.as_ref().err()?;
            let id = self.roles[entry.role].pattern.id_of(std::str::from_utf8(key).ok()?)?;
            Some((Slot { role: entry.role, id }, entry.lease, why.as_str()))
        })
    }

    /// The role whose key range holds `key`. Role patterns never overlap, so there is one at most.
    pub fn role_of(&self, key: &[u8]) -> Option<usize> {
        self.roles.iter().position(|r| r.pattern.in_key_range(key))
    }

    /// Takes a full read: `ranges[i]` is every key of role `i`'s range, all read at `revision`.
    pub fn load(&mut self, revision: i64, ranges: Vec<Vec<KeyValue>>) -> Changes {
        let mut changes = Changes::default();
        let mut stale: BTreeSet<Vec<u8>> = self.entries.keys().cloned().collect();
        for (role, kvs) in ranges.into_iter().enumerate() {
            for kv in kvs {
                if self.role_of(&kv.key) != Some(role) {
                    continue;
                }
                stale.remove(&kv.key);
                match self.entries.get_mut(&kv.key) {
                    // The value as before: no need to judge it again.
                    Some(entry) if entry.mod_revision == kv.mod_revision => entry.lease = kv.lease,
                    _ => self.put(role, kv, &mut changes),
                }
            }
        }
        for key in stale {
            self.delete(&key, &mut changes);
        }
        self.revisions = vec![revision; self.roles.len()];
        changes
    }

    /// Applies changes from the watch stream. Changes a read already saw are skipped, so that a
    /// read and a watch racing each other never undo one another; `None` when nothing was new.
    pub fn apply(&mut self, events: Vec<WatchEvent>) -> Option<Changes> {
        if self.revisions.is_empty() {
            return None;
        }
        let mut changes = Changes::default();
        let mut applied = false;
        // The changes of one transaction share a revision, and all apply.
        let base = self.revisions.clone();
        for event in events {
            let Some(role) = self.role_of(&event.kv.key) else { continue };
            if event.kv.mod_revision <= base[role] {
                continue;
            }
            self.revisions[role] = self.revisions[role].max(event.kv.mod_revision);
            applied = true;
            match event.deleted {
                true => self.delete(&event.kv.key, &mut changes),
                false => self.put(role, event.kv, &mut changes),
            }
        }
        applied.then_some(changes)
    }

    /// Per role, in Corefile order, the revision its members reflect; empty until the first read.
    /// A watch resumes each role from the one after.
    pub fn revisions(&self) -> &[i64] {
        &self.revisions
    }

    /// Notes that etcd sent every change to `role`'s range up to `revision` (a watch's progress
    /// notification) and that all of them were applied: the role's members reflect `revision`.
    pub fn progress(&mut self, role: usize, revision: i64) {
        if let Some(known) = self.revisions.get_mut(role) {
            *known = (*known).max(revision);
        }
    }

    /// The revision of the newest change among the keys held, if any: the same on every node that
    /// read the same keys, whenever it read them.
    pub fn newest(&self) -> Option<i64> {
        self.entries.values().map(|e| e.mod_revision).max()
    }

    /// What etcd answers for each role's range, in order, when nothing changed since the view was
    /// read: the number of keys and the newest modification. Any put raises the newest revision,
    /// and a delete alone lowers the count. One pass over the keys for every role.
    pub fn markers(&self) -> Vec<(i64, i64)> {
        let mut markers = vec![(0, 0); self.roles.len()];
        for entry in self.entries.values() {
            let (count, newest) = &mut markers[entry.role];
            *count += 1;
            *newest = (*newest).max(entry.mod_revision);
        }
        markers
    }

    /// Looks at this node's keys: its name `held` (its key), and any other key on its `lease`.
    pub fn check(&self, held: Option<&[u8]>, lease: i64) -> Check {
        let strays = self
            .entries
            .iter()
            .filter(|(key, e)| e.lease == lease && Some(key.as_slice()) != held)
            .map(|(key, _)| key.clone());
        let own = held.map(|key| match self.entries.get(key) {
            None => Own::Missing,
            Some(e) if e.lease == lease => Own::Held,
            Some(e) if e.ours => Own::Twin,
            Some(_) => Own::Taken,
        });
        Check { strays: strays.collect(), own }
    }

    fn put(&mut self, role: usize, kv: KeyValue, changes: &mut Changes) {
        let member = self.judge(role, &kv);
        if let Err(why) = &member {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            match self.roles[role].pattern.in_zone(&key) {
                true => changes.skipped.push((key, why.clone())),
                false => changes.elsewhere.push(key),
            }
        }
        let new = member.as_ref().ok().copied();
        let entry =
            Entry { role, mod_revision: kv.mod_revision, lease: kv.lease, ours: kv.value == self.own_value, member };
        let old = self.entries.insert(kv.key, entry);
        self.note(old.and_then(|e| e.member.ok()), new, changes);
    }

    fn delete(&mut self, key: &[u8], changes: &mut Changes) {
        if let Some(old) = self.entries.remove(key) {
            self.note(old.member.ok(), None, changes);
        }
    }

    /// Records in `members` and `changes` that a key's member went from `old` to `new`.
    fn note(&mut self, old: Option<(Slot, Record)>, new: Option<(Slot, Record)>, changes: &mut Changes) {
        let name = |slot: Slot| slot.name(&self.roles);
        match (old, new) {
            (None, None) => {}
            (Some((slot, record)), None) => {
                self.members[slot.role].remove(&slot.id);
                changes.left.push((name(slot), record));
            }
            (None, Some((slot, record))) => {
                self.members[slot.role].insert(slot.id, record);
                changes.joined.push((name(slot), record));
            }
            (Some((_, before)), Some((slot, record))) => {
                self.members[slot.role].insert(slot.id, record);
                if before != record {
                    changes.changed.push((name(slot), record));
                }
            }
        }
    }

    /// The member a key of `role`'s range and its value stand for, or why they stand for none.
    fn judge(&self, role: usize, kv: &KeyValue) -> Result<(Slot, Record), String> {
        let pattern = &self.roles[role].pattern;
        let id = std::str::from_utf8(&kv.key)
            .ok()
            .and_then(|key| pattern.id_of(key))
            .ok_or_else(|| format!("does not follow the pattern {pattern}"))?;
        let record = Record::parse(&kv.value).map_err(|e| e.to_string())?;
        Ok((Slot { role, id }, record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::Pattern;

    const OURS: &[u8] = br#"{"ipv4":"10.0.0.9","port":"53"}"#;

    fn roles() -> Vec<Role> {
        ["ps", "worker"]
            .iter()
            .map(|name| Role {
                name: name.to_string(),
                pattern: Pattern::parse(&format!("{name}{{{{.ID}}}}.tf.local.")).unwrap(),
                ids: 0..=9,
            })
            .collect()
    }

    fn kv(key: &str, value: &str, revision: i64, lease: i64) -> KeyValue {
        KeyValue { key: key.into(), value: value.into(), create_revision: revision, mod_revision: revision, lease }
    }

    fn put(key: &str, value: &str, revision: i64) -> WatchEvent {
        WatchEvent { deleted: false, kv: kv(key, value, revision, 0) }
    }

    fn delete(key: &str, revision: i64) -> WatchEvent {
        WatchEvent { deleted: true, kv: kv(key, "", revision, 0) }
    }

    fn ip(n: u8) -> String {
        format!(r#"{{"ipv4":"10.0.0.{n}"}}"#)
    }

    fn ids(view: &View) -> Vec<Vec<u32>> {
        view.members().iter().map(|m| m.keys().copied().collect()).collect()
    }

    fn loaded() -> View {
        let mut view = View::new(&roles(), OURS);
        view.load(
            10,
            vec![
                vec![kv("ps0.tf.local.", &ip(1), 3, 7), kv("ps1.tf.local.", "nonsense", 4, 0)],
                vec![kv("worker1.tf.local.", &ip(2), 5, 8), kv("worker01.tf.local.", &ip(3), 6, 0)],
            ],
        );
        view
    }

    #[test]
    fn keys_of_another_zone_are_none_of_our_business() {
        let mut view = View::new(&roles(), OURS);
        let changes = view.load(
            10,
            vec![
                vec![],
                vec![
                    kv("worker1.jobb.internal.", &ip(1), 3, 0),
                    kv("worker2.TF.Local.", "nonsense", 4, 0),
                    kv("worker3.xtf.local.", &ip(2), 5, 0),
                ],
            ],
        );
        assert_eq!(changes.elsewhere, ["worker1.jobb.internal.", "worker3.xtf.local."]);
        let skipped: Vec<&str> = changes.skipped.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(skipped, ["worker2.TF.Local."], "in the zone, whatever its case");
        assert!(changes.joined.is_empty());
    }

    /// The SOA serial: the newest change among the keys held, not the revision they were read
    /// at, so that a node reading later gives the same; a delete leaves no revision behind.
    #[test]
    fn the_newest_change_is_the_same_whenever_the_keys_were_read() {
        let (mut early, mut late) = (loaded(), View::new(&roles(), OURS));
        assert_eq!(late.newest(), None);
        late.load(
            90,
            vec![
                vec![kv("ps0.tf.local.", &ip(1), 3, 7), kv("ps1.tf.local.", "nonsense", 4, 0)],
                vec![kv("worker1.tf.local.", &ip(2), 5, 8), kv("worker01.tf.local.", &ip(3), 6, 0)],
            ],
        );
        assert_eq!((early.newest(), late.newest()), (Some(6), Some(6)));
        early.apply(vec![put("worker2.tf.local.", &ip(4), 12)]);
        assert_eq!(early.newest(), Some(12));
        early.apply(vec![delete("worker2.tf.local.", 13)]);
        assert_eq!(early.newest(), Some(6));
    }

    #[test]
    fn unreadable_keys_that_hold_an_id() {
        let view = loaded();
        let unreadable: Vec<(Slot, i64)> = view.unreadable().map(|(slot, lease, _)| (slot, lease)).collect();
        assert_eq!(unreadable, [(Slot { role: 0, id: 1 }, 0)], "worker01 holds no ID");
    }

    #[test]
    fn a_read_fills_every_role_and_says_who_joined() {
        let mut view = View::new(&roles(), OURS);
        assert_eq!(view.revision(), None);
        let changes = view.load(
            10,
            vec![
                vec![kv("ps0.tf.local.", &ip(1), 3, 7), kv("ps1.tf.local.", "nonsense", 4, 0)],
                vec![kv("worker1.tf.local.", &ip(2), 5, 8), kv("worker01.tf.local.", &ip(3), 6, 0)],
            ],
        );
        assert_eq!(view.revision(), Some(10));
        assert_eq!(ids(&view), [vec![0], vec![1]]);
        let joined: Vec<&str> = changes.joined.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(joined, ["ps0.tf.local.", "worker1.tf.local."]);
        let skipped: Vec<&str> = changes.skipped.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(skipped, ["ps1.tf.local.", "worker01.tf.local."]);
        assert!(changes.skipped[1].1.contains("does not follow the pattern worker{{.ID}}.tf.local."));
        assert_eq!(view.markers(), [(2, 4), (2, 6)]);
        let records: Vec<(Slot, i64)> = view.records().map(|(slot, _, lease)| (slot, lease)).collect();
        assert_eq!(records, [(Slot { role: 0, id: 0 }, 7), (Slot { role: 1, id: 1 }, 8)]);
    }

    #[test]
    fn a_later_read_says_who_changed_and_left_and_warns_once() {
        let mut view = loaded();
        let changes = view.load(
            20,
            vec![
                vec![kv("ps1.tf.local.", "nonsense", 4, 0)],
                vec![kv("worker1.tf.local.", &ip(5), 15, 8), kv("worker01.tf.local.", &ip(3), 6, 0)],
            ],
        );
        assert_eq!(changes.left.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), ["ps0.tf.local."]);
        assert_eq!(
            changes.changed.iter().map(|(n, r)| (n.as_str(), r.ipv4)).collect::<Vec<_>>(),
            [("worker1.tf.local.", Some([10, 0, 0, 5].into()))]
        );
        assert!(changes.joined.is_empty() && changes.skipped.is_empty(), "{changes:?}");
        assert_eq!(ids(&view), [vec![], vec![1]]);
    }

    #[test]
    fn watched_changes_apply_once_per_role() {
        let mut unread = View::new(&roles(), OURS);
        assert_eq!(unread.apply(vec![put("ps3.tf.local.", &ip(3), 11)]), None, "nothing before the first read");
        let mut view = loaded();
        // What the read already saw is skipped.
        assert_eq!(view.apply(vec![put("ps0.tf.local.", &ip(9), 3), delete("worker1.tf.local.", 10)]), None);
        // Both changes of one transaction apply.
        let changes = view.apply(vec![put("ps3.tf.local.", &ip(3), 12), put("ps4.tf.local.", &ip(4), 12)]).unwrap();
        assert_eq!(changes.joined.len(), 2);
        // Roles are not in step: the worker stream may still deliver revision 11.
        let changes = view.apply(vec![delete("worker1.tf.local.", 11)]).unwrap();
        assert_eq!(changes.left.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), ["worker1.tf.local."]);
        assert_eq!(view.apply(vec![delete("worker1.tf.local.", 11)]), None, "a repeat is skipped");
        // Keys of no role are none of the view's business.
        assert_eq!(view.apply(vec![put("ps_claims/x", "", 20)]), None);
        assert_eq!(ids(&view), [vec![0, 3, 4], vec![]]);
        assert_eq!(view.revision(), Some(12));
    }

    #[test]
    fn progress_advances_a_roles_revision_and_never_takes_it_back() {
        let mut unread = View::new(&roles(), OURS);
        unread.progress(0, 30);
        assert!(unread.revisions().is_empty(), "nothing before the first read");
        let mut view = loaded();
        view.progress(1, 30);
        view.progress(0, 5);
        view.progress(7, 40);
        assert_eq!(view.revisions(), [10, 30]);
        // What the worker stream sent up to 30 is applied: a change at 30 is no news.
        assert_eq!(view.apply(vec![delete("worker1.tf.local.", 30)]), None);
        assert!(view.apply(vec![delete("worker1.tf.local.", 31)]).is_some());
    }

    #[test]
    fn own_keys_are_held_missing_twinned_or_taken() {
        let mut view = View::new(&roles(), OURS);
        let ours = std::str::from_utf8(OURS).unwrap();
        view.load(
            5,
            vec![
                vec![kv("ps0.tf.local.", ours, 2, 7), kv("ps1.tf.local.", ours, 3, 9)],
                vec![kv("worker0.tf.local.", &ip(1), 4, 7), kv("worker1.tf.local.", &ip(2), 4, 8)],
            ],
        );
        let check = |held: Option<&str>, lease| view.check(held.map(str::as_bytes), lease);
        assert_eq!(
            check(Some("ps0.tf.local."), 7),
            Check { strays: vec![b"worker0.tf.local.".to_vec()], own: Some(Own::Held) }
        );
        assert_eq!(check(Some("ps1.tf.local."), 7).own, Some(Own::Twin));
        assert_eq!(check(Some("worker1.tf.local."), 7).own, Some(Own::Taken));
        assert_eq!(check(Some("worker5.tf.local."), 7).own, Some(Own::Missing));
        assert_eq!(check(None, 8), Check { strays: vec![b"worker1.tf.local.".to_vec()], own: None });
    }
}
