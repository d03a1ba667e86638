//! A training job as the launchers see it: which members take part, in which order, where this
//! node stands among them, and what each launcher prints for it.
//!
//! Pure: `roster` reads the members and waits; this module decides whether they make the job yet
//! and renders TF_CONFIG, torchrun's variables and hostfiles. Every node that sees the same members
//! gets the same job, byte for byte: members are ordered by role (Corefile order), then by ID as a
//! number, never by name as text.

use std::collections::BTreeMap;
use std::fmt::{self, Write};
use std::ops::RangeInclusive;

use crate::address::Addresses;
use crate::cli::{HostFormat, Wait};
use crate::config::Role;
use crate::record::Record;
use crate::view::Slot;

/// TensorFlow leaves this role out of `cluster`: the evaluator is no part of the training.
const EVALUATOR: &str = "evaluator";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub slot: Slot,
    /// Without the trailing dot, as launchers and resolvers want host names.
    pub host: String,
    pub record: Record,
}

/// The members taking part, role by role, and this node among them.
#[derive(Debug, PartialEq, Eq)]
pub struct Job<'a> {
    pub roles: &'a [Role],
    /// Per role, its members that take part, in ID order.
    pub members: Vec<Vec<Member>>,
    /// This node's role, and its 0-based place in that role's list.
    pub me: Option<(usize, usize)>,
}

/// Why the members do not make the job (yet).
#[derive(Debug, PartialEq, Eq)]
pub enum Pending {
    /// Not yet: here is how far it got.
    Waiting(Progress),
    /// Never, as things are: the message says why.
    Failed(String),
}

/// How much of the job is there.
#[derive(Debug, PartialEq, Eq)]
pub struct Progress {
    pub seen: u64,
    pub wanted: u64,
    /// What is missing, for a person to read.
    pub detail: String,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "saw {} of {} members{}", self.seen, self.wanted, self.detail)
    }
}

/// Whether the launcher must find this host among the members: a hostfile can be written by a
/// host that takes no part, TF_CONFIG and ranks cannot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Me {
    Needed,
    NotNeeded,
}

/// Decides the job from the members etcd holds now (per role, by ID), this host's addresses and
/// what `--wait` asks for.
pub fn settle<'a, M: AsRef<Record>>(
    roles: &'a [Role],
    members: &[BTreeMap<u32, M>],
    own: &Addresses,
    wait: Wait,
    me_needed: Me,
) -> Result<Job<'a>, Pending> {
    // A record put by hand outside a role's IDs is a member, but of no job.
    let all = |role: usize| -> Vec<Member> {
        let ids = roles[role].ids.clone();
        let within = members.get(role).map(|m| m.range(ids)).into_iter().flatten();
        within.map(|(&id, record)| member(roles, Slot { role, id }, record.as_ref())).collect()
    };
    let mine = roles.iter().enumerate().find_map(|(role, _)| {
        let (&id, _) = members.get(role)?.iter().find(|(_, record)| carries(record.as_ref(), own))?;
        Some(Slot { role, id })
    });
    let cluster = match roles {
        [only] => only.pattern.to_string(),
        _ => {
            let names: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
            format!("roles {} in {}", names.join(", "), roles.first().map_or(".", |r| r.pattern.zone()))
        }
    };
    let stranger = || format!("this host ({}) is no member of {cluster}", own);
    // This host must be found, and is not (yet).
    let missing_me = mine.is_none() && me_needed == Me::Needed;
    let lists: Vec<Vec<Member>> = match wait {
        Wait::Now => {
            if missing_me {
                return Err(Pending::Failed(format!(
                    "{}; is idetcd running here, with the same Corefile?",
                    stranger()
                )));
            }
            (0..roles.len()).map(all).collect()
        }
        Wait::First(n) => {
            // With one role, it is this node's wherever this node is.
            let Some(role) = mine.map(|s| s.role).or_else(|| (roles.len() == 1).then_some(0)) else {
                // With several roles, this node's decides which N: unknown until it is a member.
                let detail = format!(": with several roles, --wait N counts this host's role, and {} yet", stranger());
                let progress = Progress { seen: 0, wanted: u64::from(n), detail };
                return Err(Pending::Waiting(progress));
            };
            let ids = &roles[role].ids;
            let last = ids.start().checked_add(n - 1).filter(|last| last <= ids.end()).ok_or_else(|| {
                Pending::Failed(format!(
                    "--wait {n} asks for more members than role {}'s limit of {} allows",
                    roles[role].name,
                    roles[role].limit()
                ))
            })?;
            if let Some(slot) = mine.filter(|s| s.id > last) {
                return Err(Pending::Failed(format!(
                    "this host holds {}, which is not among the first {n} of role {}",
                    slot.name(roles),
                    roles[role].name
                )));
            }
            let first: Vec<Member> = all(role).into_iter().filter(|m| m.slot.id <= last).collect();
            if first.len() < n as usize || missing_me {
                let missing = gaps(members.get(role), *ids.start()..=last).map(|id| Slot { role, id });
                let mut detail = format!(" of role {}", roles[role].name);
                detail.push_str(&missing_names(roles, missing, u64::from(n) - first.len() as u64));
                if missing_me {
                    let _ = write!(detail, "; {} yet", stranger());
                }
                return Err(Pending::Waiting(Progress { seen: first.len() as u64, wanted: u64::from(n), detail }));
            }
            (0..roles.len()).map(|r| if r == role { first.clone() } else { all(r) }).collect()
        }
        Wait::All => {
            let lists: Vec<Vec<Member>> = (0..roles.len()).map(all).collect();
            let seen: u64 = lists.iter().map(|l| l.len() as u64).sum();
            let wanted: u64 = roles.iter().map(Role::limit).sum();
            if seen < wanted || missing_me {
                if seen == wanted {
                    return Err(Pending::Failed(format!("{}, and every ID of every role is held", stranger())));
                }
                let each: Vec<String> =
                    roles.iter().zip(&lists).map(|(r, l)| format!("{} {}/{}", r.name, l.len(), r.limit())).collect();
                let missing = roles
                    .iter()
                    .enumerate()
                    .flat_map(|(role, r)| gaps(members.get(role), r.ids.clone()).map(move |id| Slot { role, id }));
                let mut detail = format!(" ({})", each.join(", "));
                detail.push_str(&missing_names(roles, missing, wanted - seen));
                if missing_me {
                    let _ = write!(detail, "; {} yet", stranger());
                }
                return Err(Pending::Waiting(Progress { seen, wanted, detail }));
            }
            lists
        }
    };
    let me = mine.and_then(|slot| Some((slot.role, lists[slot.role].iter().position(|m| m.slot == slot)?)));
    Ok(Job { roles, members: lists, me })
}

impl Job<'_> {
    /// Every member, role by role, in ID order.
    pub fn everyone(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().flatten()
    }

    /// The roles, other than this node's, that hold fewer members than their limit, as
    /// `ps 1/2`: with `--wait N` they are whoever was there, and nodes may see them differently.
    pub fn short_roles(&self) -> Vec<String> {
        let mine = self.me.map(|(role, _)| role);
        (self.roles.iter().zip(&self.members).enumerate())
            .filter(|(r, (role, members))| Some(*r) != mine && (members.len() as u64) < role.limit())
            .map(|(_, (role, members))| format!("{} {}/{}", role.name, members.len(), role.limit()))
            .collect()
    }

    /// This node's member entry.
    pub fn own(&self) -> Option<&Member> {
        let (role, place) = self.me?;
        self.members.get(role)?.get(place)
    }

    /// TensorFlow's `TF_CONFIG`: every role but the evaluator in `cluster`, in Corefile order, and
    /// this node's `task`. `job` renames a single role. `None` when this node takes no part.
    pub fn tf_config(&self, job: Option<&str>, port: u16) -> Option<String> {
        let (role, index) = self.me?;
        let name = |r: usize| job.filter(|_| self.roles.len() == 1).unwrap_or(&self.roles[r].name);
        // Written by hand: the cluster's keys must keep the Corefile's order, which a JSON map
        // would sort. Role and host names need no escaping.
        let mut cluster = Vec::new();
        for (r, members) in self.members.iter().enumerate().filter(|(r, _)| self.roles[*r].name != EVALUATOR) {
            let hosts: Vec<String> = members.iter().map(|m| format!("\"{}:{port}\"", m.host)).collect();
            cluster.push(format!("\"{}\":[{}]", name(r), hosts.join(",")));
        }
        Some(format!(
            "{{\"cluster\":{{{}}},\"task\":{{\"type\":\"{}\",\"index\":{index}}}}}",
            cluster.join(","),
            name(role)
        ))
    }

    /// torchrun's static rendezvous for this node's role, one process per node: `(KEY, VALUE)`.
    pub fn torch_env(&self, port: u16) -> Option<Vec<(&'static str, String)>> {
        let (role, rank) = self.me?;
        let members = &self.members[role];
        let master = members.first()?;
        Some(vec![
            ("MASTER_ADDR", master.host.clone()),
            ("MASTER_PORT", port.to_string()),
            ("NNODES", members.len().to_string()),
            ("NODE_RANK", rank.to_string()),
            ("WORLD_SIZE", members.len().to_string()),
            ("RANK", rank.to_string()),
        ])
    }

    /// An MPI hostfile: a line per member, every role's.
    pub fn hostfile(&self, slots: u32, format: HostFormat) -> String {
        let mut out = String::new();
        for m in self.everyone() {
            let _ = match format {
                HostFormat::OpenMpi => writeln!(out, "{} slots={slots}", m.host),
                HostFormat::Mpich | HostFormat::Horovod => writeln!(out, "{}:{slots}", m.host),
            };
        }
        out
    }
}

fn member(roles: &[Role], slot: Slot, record: &Record) -> Member {
    Member { slot, host: host(roles, slot), record: *record }
}

/// A slot's name as launchers and resolvers want host names: without the final dot.
fn host(roles: &[Role], slot: Slot) -> String {
    slot.name(roles).trim_end_matches('.').to_string()
}

/// Whether a member's record carries one of this host's addresses.
fn carries(record: &Record, own: &Addresses) -> bool {
    (own.ipv4.is_some() && record.ipv4 == own.ipv4) || (own.ipv6.is_some() && record.ipv6 == own.ipv6)
}

/// The IDs in `ids` that hold no member, lowest first. It steps over the members one by one, so
/// the first few gaps of a role of a million IDs cost what its members do, not the million.
fn gaps<M>(members: Option<&BTreeMap<u32, M>>, ids: RangeInclusive<u32>) -> impl Iterator<Item = u32> + '_ {
    let end = *ids.end();
    let mut next = Some(*ids.start());
    let mut held = members.map(|m| m.range(ids)).into_iter().flatten().map(|(&id, _)| id).peekable();
    std::iter::from_fn(move || loop {
        let id = next.filter(|&id| id <= end)?;
        next = id.checked_add(1);
        match held.next_if_eq(&id) {
            Some(_) => continue,
            None => return Some(id),
        }
    })
}

/// `; missing worker2.tf.local, worker3.tf.local`: the first few of the `count` missing.
fn missing_names(roles: &[Role], missing: impl Iterator<Item = Slot>, count: u64) -> String {
    const SHOWN: usize = 4;
    let names: Vec<String> = missing.take(SHOWN).map(|slot| host(roles, slot)).collect();
    let more = count.saturating_sub(names.len() as u64);
    match (names.is_empty(), more) {
        (true, _) => String::new(),
        (false, 0) => format!("; missing {}", names.join(", ")),
        (false, more) => format!("; missing {} and {more} more", names.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::Pattern;

    fn roles(spec: &[(&str, u32)], start: u32) -> Vec<Role> {
        spec.iter()
            .map(|&(name, limit)| Role {
                name: name.to_string(),
                pattern: Pattern::parse(&format!("{name}{{{{.ID}}}}.tf.local.")).unwrap(),
                ids: start..=start + limit - 1,
            })
            .collect()
    }

    /// Members per role, each ID with address 10.0.<role>.<id>.
    fn members(held: &[&[u32]]) -> Vec<BTreeMap<u32, Record>> {
        held.iter()
            .enumerate()
            .map(|(role, ids)| {
                ids.iter()
                    .map(|&id| {
                        (id, Record { ipv4: Some([10, 0, role as u8, id as u8].into()), ipv6: None, port: Some(53) })
                    })
                    .collect()
            })
            .collect()
    }

    fn host(role: u8, id: u8) -> Addresses {
        Addresses { ipv4: Some([10, 0, role, id].into()), ipv6: None }
    }

    fn hosts(job: &Job) -> Vec<String> {
        job.everyone().map(|m| m.host.clone()).collect()
    }

    #[test]
    fn tf_config_lists_every_role_in_corefile_order_but_the_evaluator() {
        let roles = roles(&[("worker", 4), ("chief", 1), ("ps", 2), ("evaluator", 1)], 0);
        let held = members(&[&[0, 1], &[0], &[0, 1], &[0]]);
        let job = settle(&roles, &held, &host(2, 1), Wait::Now, Me::Needed).unwrap();
        assert_eq!(
            job.tf_config(None, 2222).unwrap(),
            r#"{"cluster":{"worker":["worker0.tf.local:2222","worker1.tf.local:2222"],"chief":["chief0.tf.local:2222"],"ps":["ps0.tf.local:2222","ps1.tf.local:2222"]},"task":{"type":"ps","index":1}}"#
        );
        let evaluator = settle(&roles, &held, &host(3, 0), Wait::Now, Me::Needed).unwrap();
        let spec: serde_json::Value = serde_json::from_str(&evaluator.tf_config(None, 1).unwrap()).unwrap();
        assert_eq!(spec["task"], serde_json::json!({"type": "evaluator", "index": 0}));
        assert!(spec["cluster"].get("evaluator").is_none());
        // --job renames a single role.
        let one = roles[..1].to_vec();
        let job = settle(&one, &held[..1], &host(0, 1), Wait::Now, Me::Needed).unwrap();
        let spec: serde_json::Value = serde_json::from_str(&job.tf_config(Some("trainer"), 5000).unwrap()).unwrap();
        assert_eq!(spec["cluster"]["trainer"][1], "worker1.tf.local:5000");
        assert_eq!(spec["task"], serde_json::json!({"type": "trainer", "index": 1}));
    }

    #[test]
    fn ids_order_as_numbers() {
        let roles = roles(&[("worker", 20)], 1);
        let held = members(&[&[10, 2, 9, 1]]);
        let job = settle(&roles, &held, &host(0, 9), Wait::Now, Me::Needed).unwrap();
        assert_eq!(hosts(&job), ["worker1.tf.local", "worker2.tf.local", "worker9.tf.local", "worker10.tf.local"]);
        assert_eq!(
            job.torch_env(29500).unwrap(),
            [
                ("MASTER_ADDR", "worker1.tf.local".to_string()),
                ("MASTER_PORT", "29500".into()),
                ("NNODES", "4".into()),
                ("NODE_RANK", "2".into()),
                ("WORLD_SIZE", "4".into()),
                ("RANK", "2".into()),
            ]
        );
        assert_eq!(
            job.hostfile(4, HostFormat::OpenMpi),
            "worker1.tf.local slots=4\nworker2.tf.local slots=4\nworker9.tf.local slots=4\nworker10.tf.local slots=4\n"
        );
        assert_eq!(job.hostfile(1, HostFormat::Mpich).lines().last(), Some("worker10.tf.local:1"));
        assert_eq!(job.hostfile(2, HostFormat::Horovod).lines().next(), Some("worker1.tf.local:2"));
    }

    #[test]
    fn waiting_for_the_first_n() {
        let roles = roles(&[("worker", 8)], 0);
        let wait = |held: &[u32], own: Addresses, me| settle(&roles, &members(&[held]), &own, Wait::First(4), me);
        let Err(Pending::Waiting(progress)) = wait(&[0, 2], host(0, 2), Me::Needed) else { panic!() };
        assert_eq!(
            progress.to_string(),
            "saw 2 of 4 members of role worker; missing worker1.tf.local, worker3.tf.local"
        );
        let Err(Pending::Waiting(progress)) = wait(&[0, 1, 2, 3], host(0, 9), Me::Needed) else { panic!() };
        assert_eq!(
            progress.to_string(),
            "saw 4 of 4 members of role worker; this host (10.0.0.9) is no member of worker{{.ID}}.tf.local. yet"
        );
        // The job is the first four, whoever else is there.
        let job = wait(&[0, 1, 2, 3, 5], host(0, 3), Me::Needed).unwrap();
        assert_eq!(job.me, Some((0, 3)));
        assert_eq!(hosts(&job).len(), 4);
        assert_eq!(wait(&[0, 1, 2, 3], host(0, 9), Me::NotNeeded).map(|j| hosts(&j).len()), Ok(4));
        assert_eq!(
            wait(&[0, 1, 2, 5], host(0, 5), Me::Needed),
            Err(Pending::Failed(
                "this host holds worker5.tf.local., which is not among the first 4 of role worker".into()
            ))
        );
        let too_many = settle(&roles, &members(&[&[]]), &host(0, 0), Wait::First(9), Me::NotNeeded);
        assert_eq!(
            too_many,
            Err(Pending::Failed("--wait 9 asks for more members than role worker's limit of 8 allows".into()))
        );
    }

    #[test]
    fn gaps_walk_the_members_not_the_ids() {
        let held = members(&[&[0, 1, 3, 7]]).remove(0);
        assert_eq!(gaps(Some(&held), 0..=9).collect::<Vec<_>>(), [2, 4, 5, 6, 8, 9]);
        assert_eq!(gaps(Some(&held), 1..=3).collect::<Vec<_>>(), [2]);
        assert_eq!(gaps::<Record>(None, 4..=6).collect::<Vec<_>>(), [4, 5, 6]);
        let top: BTreeMap<u32, Record> = [(u32::MAX - 1, Record::default())].into();
        assert_eq!(gaps(Some(&top), u32::MAX - 2..=u32::MAX).collect::<Vec<_>>(), [u32::MAX - 2, u32::MAX]);
        // A million IDs, all but the last few held.
        let many: BTreeMap<u32, Record> = (0..999_990).map(|id| (id, Record::default())).collect();
        assert_eq!(gaps(Some(&many), 0..=999_999).take(2).collect::<Vec<_>>(), [999_990, 999_991]);
    }

    #[test]
    fn waiting_for_every_role_and_for_this_nodes() {
        let roles = roles(&[("chief", 1), ("ps", 2), ("worker", 3)], 0);
        let Err(Pending::Waiting(progress)) =
            settle(&roles, &members(&[&[0], &[1], &[0, 1]]), &host(2, 0), Wait::All, Me::Needed)
        else {
            panic!()
        };
        assert_eq!(
            progress.to_string(),
            "saw 4 of 6 members (chief 1/1, ps 1/2, worker 2/3); missing ps0.tf.local, worker2.tf.local"
        );
        let full = members(&[&[0], &[0, 1], &[0, 1, 2]]);
        let job = settle(&roles, &full, &host(2, 2), Wait::All, Me::Needed).unwrap();
        assert_eq!(job.me, Some((2, 2)));
        assert_eq!(hosts(&job).len(), 6);
        assert_eq!(
            settle(&roles, &full, &host(7, 7), Wait::All, Me::Needed),
            Err(Pending::Failed(
                "this host (10.0.7.7) is no member of roles chief, ps, worker in tf.local., and every ID of every role is held"
                    .into()
            ))
        );
        // --wait N counts this node's role; the others are whoever is there.
        let job = settle(&roles, &members(&[&[0], &[0], &[0, 1]]), &host(2, 1), Wait::First(2), Me::Needed).unwrap();
        assert_eq!(hosts(&job), ["chief0.tf.local", "ps0.tf.local", "worker0.tf.local", "worker1.tf.local"]);
        // With several roles, which is this node's is known only once it is a member.
        let Err(Pending::Waiting(progress)) = settle(&roles, &full, &host(7, 7), Wait::First(2), Me::NotNeeded) else {
            panic!()
        };
        assert_eq!(
            progress.to_string(),
            "saw 0 of 2 members: with several roles, --wait N counts this host's role, and this host (10.0.7.7) is no member of roles chief, ps, worker in tf.local. yet"
        );
        assert_eq!(
            settle(&roles, &full, &host(7, 7), Wait::Now, Me::Needed),
            Err(Pending::Failed(
                "this host (10.0.7.7) is no member of roles chief, ps, worker in tf.local.; is idetcd running here, with the same Corefile?"
                    .into()
            ))
        );
        // A record put by hand outside the IDs is no part of a job.
        let job = settle(&roles, &members(&[&[0, 5]]), &host(0, 0), Wait::Now, Me::Needed).unwrap();
        assert_eq!(hosts(&job), ["chief0.tf.local"]);
    }
}
