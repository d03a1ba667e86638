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

    /// Its place among every role's IDs, from 0: the first role's, then the next role's. The
    /// members are numbered alike on every node, so that their nodes can spread evenly over etcd.
    pub fn rank(self, roles: &[Role]) -> u64 {
        let before: u64 = roles.iter().take(self.role).map(Role::limit).sum();
        let start = roles.get(self.role).map_or(0, |r| *r.ids.start());
        before + u64::from(self.id.saturating_sub(start))
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

/// Roles with this many IDs or more have their names read in two halves at once when a node
/// claims: etcd answers one range on one core, and at 100 000 names its JSON gateway takes most
/// of a second over it. Below, a second request costs more than it saves.
const HALVED_FROM: u64 = 16_384;

/// For the role with the most IDs, when it has many: its index, and a key that cuts its range in
/// two with about as many IDs on each side. Keys order IDs by their leading digit first, so the
/// cut falls between two leading digits.
pub fn halves(roles: &[Role]) -> Option<(usize, Vec<u8>)> {
    let (index, role) = roles.iter().enumerate().max_by_key(|(_, r)| r.limit())?;
    if role.limit() < HALVED_FROM {
        return None;
    }
    let total = role.limit();
    let digit = (2..=9u8).min_by_key(|&d| (2 * led_by_less_than(&role.ids, d)).abs_diff(total))?;
    Some((index, format!("{}{digit}", role.pattern.prefix()).into_bytes()))
}

/// How many of `ids` are written with a leading digit below `digit`.
fn led_by_less_than(ids: &std::ops::RangeInclusive<u32>, digit: u8) -> u64 {
    let (low, high) = (u64::from(*ids.start()), u64::from(*ids.end()));
    // 0 is the one ID led by 0.
    let mut count = u64::from(low == 0);
    let mut power = 1u64;
    while power <= high {
        // The IDs with as many digits as `power` led by a smaller digit: [power, digit × power).
        let (from, to) = (power.max(low), (u64::from(digit) * power - 1).min(high));
        count += (to + 1).saturating_sub(from);
        power *= 10;
    }
    count
}

pub struct View {
    roles: Vec<Role>,
    /// This node's record exactly as stored, to tell our own keys from others'.
    own_value: Vec<u8>,
    /// Per role, its members by ID. A member's key is its name, so it is not kept.
    members: Vec<BTreeMap<u32, Member>>,
    /// The keys of the roles' ranges that stand for no member, each with why: few, if any.
    others: BTreeMap<Vec<u8>, Other>,
    /// Per role, the newest revision its entries reflect; empty until the first read. Watch
    /// streams of different roles are not in step with each other, so each role counts its own.
    revisions: Vec<i64>,
    /// The newest modification among the keys held, when known: a delete of the newest leaves it
    /// to be found again, which is rare enough to pay a pass over the keys.
    newest: Option<Option<i64>>,
    /// The keys on one lease, the node's: claims that arrived late stand out among them without
    /// a pass over every key at every change.
    on_lease: (i64, BTreeSet<Vec<u8>>),
    /// Counts full reads: entries that carry another mark were not in the last one. A count, not
    /// a flip, since a read that broke off leaves the keys it took marked.
    mark: u16,
}

/// A member: its record, and what the view needs to know of its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub record: Record,
    mod_revision: i64,
    lease: i64,
    /// Whether its value is this node's own record, byte for byte.
    ours: bool,
    mark: u16,
}

impl AsRef<Record> for Member {
    fn as_ref(&self) -> &Record {
        &self.record
    }
}

/// A key of a role's range that stands for no member.
struct Other {
    role: usize,
    mod_revision: i64,
    lease: i64,
    ours: bool,
    mark: u16,
    why: String,
}

/// One member's record coming, changing or going.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Touch {
    pub slot: Slot,
    pub before: Option<Record>,
    pub after: Option<Record>,
}

/// What a read or a batch of watched changes did to the members.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// The first read: every member is new, and none is listed in `touched`, which would cost as
    /// much memory as the members themselves.
    pub first: bool,
    /// Every member whose record came, changed or went, in order.
    pub touched: Vec<Touch>,
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
            members: vec![BTreeMap::new(); roles.len()],
            others: BTreeMap::new(),
            revisions: Vec::new(),
            newest: Some(None),
            on_lease: (0, BTreeSet::new()),
            mark: 0,
        }
    }

    /// The revision the view reflects (the newest of its roles'), once something was read.
    pub fn revision(&self) -> Option<i64> {
        self.revisions.iter().copied().max()
    }

    /// Per role, in Corefile order, its members by ID.
    pub fn members(&self) -> &[BTreeMap<u32, Member>] {
        &self.members
    }

    /// How many members there are.
    pub fn count(&self) -> usize {
        self.members.iter().map(BTreeMap::len).sum()
    }

    /// Every member with the lease its key is on (0 for none), role by role, in ID order.
    pub fn records(&self) -> impl Iterator<Item = (Slot, &Record, i64)> + '_ {
        self.members.iter().enumerate().flat_map(move |(role, members)| {
            members.iter().map(move |(&id, m)| (Slot { role, id }, &m.record, m.lease))
        })
    }

    /// Keys that follow a role's pattern but whose value is no record: each still blocks its ID,
    /// since claims take only absent keys. With the lease they are on and why they are unreadable.
    pub fn unreadable(&self) -> impl Iterator<Item = (Slot, i64, &str)> + '_ {
        self.others.iter().filter_map(|(key, other)| {
            let id = self.id_of(other.role, key)?;
            Some((Slot { role: other.role, id }, other.lease, other.why.as_str()))
        })
    }

    /// The role whose key range holds `key`. Role patterns never overlap, so there is one at most.
    pub fn role_of(&self, key: &[u8]) -> Option<usize> {
        self.roles.iter().position(|r| r.pattern.in_key_range(key))
    }

    /// Takes a full read: `ranges[i]` is every key of role `i`'s range, all read at `revision`.
    pub fn load(&mut self, revision: i64, ranges: Vec<Vec<KeyValue>>) -> Changes {
        let mut loading = self.loading();
        for (role, kvs) in ranges.into_iter().enumerate() {
            for kv in kvs {
                loading.put(role, kv);
            }
        }
        loading.finish(revision)
    }

    /// Starts a full read that takes the keys one at a time, as they are parsed: a cluster of
    /// 100 000 members is never held twice, once as read and once as members.
    pub fn loading(&mut self) -> Loading<'_> {
        self.mark = self.mark.wrapping_add(1);
        let changes = Changes { first: self.revisions.is_empty(), ..Changes::default() };
        Loading { view: self, changes }
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
            // A key's revisions only rise: an older change of a key the view holds newer is a
            // replay from before the read of it (a claim's listing holds this node's own key, put
            // after the names were read, and a read in halves is at two revisions).
            if self.held_revision(role, &event.kv.key).is_some_and(|held| held >= event.kv.mod_revision) {
                continue;
            }
            applied = true;
            match event.deleted {
                true => self.delete(role, &event.kv.key, &mut changes),
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
    pub fn newest(&mut self) -> Option<i64> {
        if let Some(newest) = self.newest {
            return newest;
        }
        let members = self.members.iter().flat_map(|m| m.values().map(|m| m.mod_revision));
        let newest = members.chain(self.others.values().map(|o| o.mod_revision)).max();
        self.newest = Some(newest);
        newest
    }

    /// What etcd answers for each role's range, in order, when nothing changed since the view was
    /// read: the number of keys and the newest modification. Any put raises the newest revision,
    /// and a delete alone lowers the count. One pass over the keys for every role.
    pub fn markers(&self) -> Vec<(i64, i64)> {
        let mut markers = vec![(0, 0); self.roles.len()];
        let members = self.members.iter().enumerate().flat_map(|(r, m)| m.values().map(move |m| (r, m.mod_revision)));
        for (role, revision) in members.chain(self.others.values().map(|o| (o.role, o.mod_revision))) {
            let (count, newest) = &mut markers[role];
            *count += 1;
            *newest = (*newest).max(revision);
        }
        markers
    }

    /// Looks at this node's keys: its name `held` (its key), and any other key on its `lease`.
    pub fn check(&mut self, held: Option<&[u8]>, lease: i64) -> Check {
        if self.on_lease.0 != lease {
            // A new lease: find its keys once; puts and deletes keep the set from then on.
            let mut keys = BTreeSet::new();
            for (slot, _, on) in self.records() {
                if on == lease {
                    keys.insert(slot.name(&self.roles).into_bytes());
                }
            }
            keys.extend(self.others.iter().filter(|(_, o)| o.lease == lease).map(|(key, _)| key.clone()));
            self.on_lease = (lease, keys);
        }
        let strays = self.on_lease.1.iter().filter(|key| Some(key.as_slice()) != held).cloned().collect();
        let own = held.map(|key| match self.lookup(key) {
            None => Own::Missing,
            Some((on, _)) if on == lease => Own::Held,
            Some((_, true)) => Own::Twin,
            Some(_) => Own::Taken,
        });
        Check { strays, own }
    }

    /// The lease a key is on and whether its value is this node's record, if the view holds it.
    fn lookup(&self, key: &[u8]) -> Option<(i64, bool)> {
        if let Some(other) = self.others.get(key) {
            return Some((other.lease, other.ours));
        }
        let role = self.role_of(key)?;
        let member = self.members[role].get(&self.id_of(role, key)?)?;
        Some((member.lease, member.ours))
    }

    /// The ID a key of `role`'s range names, if it follows the pattern exactly.
    fn id_of(&self, role: usize, key: &[u8]) -> Option<u32> {
        self.roles[role].pattern.id_of(std::str::from_utf8(key).ok()?)
    }

    fn put(&mut self, role: usize, kv: KeyValue, changes: &mut Changes) {
        let (mark, ours) = (self.mark, kv.value == self.own_value);
        if self.on_lease.0 != 0 {
            match kv.lease == self.on_lease.0 {
                true => self.on_lease.1.insert(kv.key.clone()),
                false => self.on_lease.1.remove(&kv.key),
            };
        }
        if let Some(newest) = &mut self.newest {
            *newest = Some(newest.map_or(kv.mod_revision, |n| n.max(kv.mod_revision)));
        }
        let (lease, mod_revision) = (kv.lease, kv.mod_revision);
        match self.judge(role, &kv) {
            Ok((slot, record)) => {
                let before = self.remove(role, &kv.key);
                let member = Member { record, mod_revision, lease, ours, mark };
                self.members[role].insert(slot.id, member);
                if before != Some(record) && !changes.first {
                    changes.touched.push(Touch { slot, before, after: Some(record) });
                }
            }
            Err(why) => {
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                match self.roles[role].pattern.in_zone(&key) {
                    true => changes.skipped.push((key, why.clone())),
                    false => changes.elsewhere.push(key),
                }
                let before = self.remove(role, &kv.key);
                if let (Some(before), Some(id)) = (before, self.id_of(role, &kv.key)) {
                    changes.touched.push(Touch { slot: Slot { role, id }, before: Some(before), after: None });
                }
                self.others.insert(kv.key, Other { role, mod_revision, lease, ours, mark, why });
            }
        }
    }

    fn delete(&mut self, role: usize, key: &[u8], changes: &mut Changes) {
        self.on_lease.1.remove(key);
        if let (Some(before), Some(id)) = (self.remove(role, key), self.id_of(role, key)) {
            changes.touched.push(Touch { slot: Slot { role, id }, before: Some(before), after: None });
        }
    }

    /// The revision of the key's last change, if the view holds the key.
    fn held_revision(&self, role: usize, key: &[u8]) -> Option<i64> {
        if let Some(other) = self.others.get(key) {
            return Some(other.mod_revision);
        }
        let id = self.id_of(role, key)?;
        self.members[role].get(&id).map(|m| m.mod_revision)
    }

    /// Takes a key out of the view, and says which member's record it held, if any.
    fn remove(&mut self, role: usize, key: &[u8]) -> Option<Record> {
        let removed = match self.others.remove(key) {
            Some(other) => (other.mod_revision, None),
            None => {
                let member = self.id_of(role, key).and_then(|id| self.members[role].remove(&id))?;
                (member.mod_revision, Some(member.record))
            }
        };
        if self.newest == Some(Some(removed.0)) {
            self.newest = None;
        }
        removed.1
    }

    /// The member a key of `role`'s range and its value stand for, or why they stand for none.
    fn judge(&self, role: usize, kv: &KeyValue) -> Result<(Slot, Record), String> {
        let pattern = &self.roles[role].pattern;
        let id = self.id_of(role, &kv.key).ok_or_else(|| format!("does not follow the pattern {pattern}"))?;
        let record = Record::parse(&kv.value).map_err(|e| e.to_string())?;
        Ok((Slot { role, id }, record))
    }
}

/// A full read under way: see `View::loading`.
pub struct Loading<'a> {
    view: &'a mut View,
    changes: Changes,
}

impl Loading<'_> {
    /// Takes one key of role `role`'s range, as read.
    pub fn put(&mut self, role: usize, kv: KeyValue) {
        let view = &mut *self.view;
        if view.role_of(&kv.key) != Some(role) {
            return;
        }
        let mark = view.mark;
        // The value as before: no need to judge it again.
        if let Some(other) = view.others.get_mut(&kv.key).filter(|o| o.mod_revision == kv.mod_revision) {
            (other.lease, other.mark) = (kv.lease, mark);
            return;
        }
        let id = view.id_of(role, &kv.key);
        if let Some(member) = id.and_then(|id| view.members[role].get_mut(&id)) {
            if member.mod_revision == kv.mod_revision {
                (member.lease, member.mark) = (kv.lease, mark);
                return;
            }
        }
        view.put(role, kv, &mut self.changes);
    }

    /// Gives up a read that broke off: the keys it took stay, as changes; none is deleted, and
    /// the roles' revisions stay as they were, so that the watch or the next read goes on from
    /// there.
    pub fn abandon(self) -> Changes {
        self.changes
    }

    /// Ends the read: every key it did not see is gone.
    pub fn finish(mut self, revision: i64) -> Changes {
        let view = &mut *self.view;
        let mark = view.mark;
        for role in 0..view.roles.len() {
            let gone: Vec<u32> = view.members[role].iter().filter(|(_, m)| m.mark != mark).map(|(&id, _)| id).collect();
            for id in gone {
                let key = view.roles[role].pattern.name(id).into_bytes();
                view.delete(role, &key, &mut self.changes);
            }
        }
        let gone: Vec<(Vec<u8>, usize)> =
            view.others.iter().filter(|(_, o)| o.mark != mark).map(|(key, o)| (key.clone(), o.role)).collect();
        for (key, role) in gone {
            view.delete(role, &key, &mut self.changes);
        }
        // Keys come in the order of their text (worker10 before worker2), which leaves the maps'
        // nodes half full; built again from their own order, every node is full.
        for members in &mut view.members {
            *members = std::mem::take(members).into_iter().collect();
        }
        // Leases changed unseen while nothing was watched: the next check finds the keys afresh.
        view.on_lease = (0, BTreeSet::new());
        view.newest = None;
        view.revisions = vec![revision; view.roles.len()];
        self.changes
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

    /// The names of the members that joined, changed (with their new IPv4) or left.
    fn named(changes: &Changes, joined: bool, left: bool) -> Vec<String> {
        let roles = roles();
        changes
            .touched
            .iter()
            .filter(|t| t.before.is_none() == joined && t.after.is_none() == left)
            .map(|t| t.slot.name(&roles))
            .collect()
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
    fn a_listing_to_be_watched_comes_true_as_the_watch_replays_from_its_read() {
        // Read at 10; worker2 joined at 11 and left at 12; worker1 changed at 13; another node
        // held worker3 from 14 to 15; this node put worker3 at 16 (in the listing, the claim's own
        // put). A watch from 11 sends every one of those, maybe over several messages.
        let ours = std::str::from_utf8(OURS).unwrap();
        let listing = || {
            let mut view = View::new(&roles(), OURS);
            let worker3 = KeyValue { mod_revision: 16, create_revision: 16, ..kv("worker3.tf.local.", ours, 16, 0x2a) };
            view.load(10, vec![vec![], vec![kv("worker1.tf.local.", &ip(1), 5, 8), worker3]]);
            view
        };
        let events = [
            put("worker2.tf.local.", &ip(2), 11),
            delete("worker2.tf.local.", 12),
            put("worker1.tf.local.", &ip(3), 13),
            put("worker3.tf.local.", &ip(4), 14),
            delete("worker3.tf.local.", 15),
            WatchEvent { deleted: false, kv: kv("worker3.tf.local.", ours, 16, 0x2a) },
        ];
        // A read at 16, for comparison.
        let mut truth = View::new(&roles(), OURS);
        truth.load(
            16,
            vec![vec![], vec![kv("worker1.tf.local.", &ip(3), 13, 8), kv("worker3.tf.local.", ours, 16, 0x2a)]],
        );
        let members =
            |view: &View| -> Vec<(Slot, Record)> { view.records().map(|(slot, record, _)| (slot, *record)).collect() };
        for split in 0..=events.len() {
            let mut view = listing();
            for part in [&events[..split], &events[split..]] {
                view.apply(part.to_vec());
                // Between the messages too, this node's name stays its own.
                let check = view.check(Some(b"worker3.tf.local."), 0x2a);
                assert!(matches!(check.own, Some(Own::Held)), "split at {split}: {:?}", check.own);
            }
            assert_eq!(members(&view), members(&truth), "split at {split}");
        }
    }

    #[test]
    fn halves_cut_a_large_role_near_its_middle_and_leave_small_ones_whole() {
        let role = |name: &str, ids: std::ops::RangeInclusive<u32>| Role {
            name: name.to_string(),
            pattern: crate::pattern::Pattern::parse(&format!("{name}{{{{.ID}}}}.tf.local.")).unwrap(),
            ids,
        };
        assert_eq!(halves(&[role("worker", 1..=16_383)]), None);
        for ids in [1..=16_384, 1..=100_010, 0..=99_999, 5000..=60_000, 1..=1_000_000] {
            let roles = [role("ps", 1..=2), role("worker", ids.clone())];
            let (index, cut) = halves(&roles).unwrap();
            assert_eq!(index, 1);
            // Counted by the keys themselves, as etcd will cut them.
            let below = ids.clone().filter(|&id| roles[1].pattern.name(id).as_bytes() < cut.as_slice()).count();
            let share = below as f64 / roles[1].limit() as f64;
            assert!((0.4..=0.6).contains(&share), "{ids:?}: {share} below {}", String::from_utf8_lossy(&cut));
            let (start, end) = roles[1].pattern.key_range();
            assert!(start.as_bytes() < cut.as_slice() && cut.as_slice() < end.as_bytes());
        }
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
        assert!(changes.touched.is_empty());
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
        assert!(changes.first && changes.touched.is_empty(), "the first read lists no one");
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
        assert_eq!(named(&changes, false, true), ["ps0.tf.local."]);
        assert_eq!(named(&changes, false, false), ["worker1.tf.local."]);
        assert_eq!(changes.touched[0].after.and_then(|r| r.ipv4), Some([10, 0, 0, 5].into()));
        assert!(named(&changes, true, false).is_empty() && changes.skipped.is_empty(), "{changes:?}");
        assert!(!changes.first);
        assert_eq!(ids(&view), [vec![], vec![1]]);
    }

    /// A read that broke off keeps what it took and deletes nothing; the next whole read still
    /// finds every key that is gone, whether the broken read saw it or not.
    #[test]
    fn a_read_that_broke_off_leaves_the_next_to_find_what_is_gone() {
        let mut view = loaded();
        let mut broken = view.loading();
        broken.put(1, kv("worker1.tf.local.", &ip(7), 8, 8));
        let changes = broken.abandon();
        assert_eq!(named(&changes, false, false), ["worker1.tf.local."]);
        assert_eq!(ids(&view), [vec![0], vec![1]], "nothing deleted");
        assert_eq!(view.revision(), Some(10), "nor the revision moved");
        let mut whole = view.loading();
        whole.put(1, kv("worker1.tf.local.", &ip(7), 8, 8));
        let changes = whole.finish(12);
        assert_eq!(named(&changes, false, true), ["ps0.tf.local."]);
        assert_eq!(ids(&view), [vec![], vec![1]]);
        assert_eq!(view.unreadable().count(), 0, "ps1 and worker01 are gone too");
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
        assert_eq!(named(&changes, true, false), ["ps3.tf.local.", "ps4.tf.local."]);
        // Roles are not in step: the worker stream may still deliver revision 11.
        let changes = view.apply(vec![delete("worker1.tf.local.", 11)]).unwrap();
        assert_eq!(named(&changes, false, true), ["worker1.tf.local."]);
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
        let mut check = |held: Option<&str>, lease| view.check(held.map(str::as_bytes), lease);
        assert_eq!(
            check(Some("ps0.tf.local."), 7),
            Check { strays: vec![b"worker0.tf.local.".to_vec()], own: Some(Own::Held) }
        );
        assert_eq!(check(Some("ps1.tf.local."), 7).own, Some(Own::Twin));
        assert_eq!(check(Some("worker1.tf.local."), 7).own, Some(Own::Taken));
        assert_eq!(check(Some("worker5.tf.local."), 7).own, Some(Own::Missing));
        assert_eq!(check(None, 8), Check { strays: vec![b"worker1.tf.local.".to_vec()], own: None });
        // The keys on the lease are followed through the changes, not found again at each look.
        let on = |key: &str, lease, revision| WatchEvent { deleted: false, kv: kv(key, "nonsense", revision, lease) };
        view.apply(vec![on("worker7.tf.local.", 8, 6), on("worker1.tf.local.", 9, 6), on("worker0.tf.local.", 8, 6)]);
        let strays = view.check(None, 8).strays;
        assert_eq!(strays, [b"worker0.tf.local.".to_vec(), b"worker7.tf.local.".to_vec()]);
        view.apply(vec![delete("worker7.tf.local.", 7)]);
        assert_eq!(view.check(Some(b"worker0.tf.local."), 8), Check { strays: vec![], own: Some(Own::Held) });
    }
}
