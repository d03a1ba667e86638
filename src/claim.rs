//! Claiming an ID: the lowest free one, atomically, in two etcd requests even when hundreds of
//! nodes start together.
//!
//! A name is only ever taken by a transaction that puts its key if the key does not exist, so two
//! live nodes never hold one name. The question is which ID to try. If every node starting at once
//! tried the lowest free ID, all but one would fail and retry, O(N²) transactions for N nodes. So a
//! claiming node first takes a number, like at a counter: one transaction counts the claims already
//! queued, puts this node's own queue key (on its lease, so a crashed node leaves the queue) and
//! reads the names. A node with k claims ahead of it takes the k-th lowest free ID, so nodes
//! starting together aim at different IDs and get exactly 1..N. The claim transaction tries a few
//! IDs from there in order, each "if absent, put it and leave the queue", and when all are gone
//! reads the names and the queue again for another round.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;

use crate::etcd::{self, Compare, Op, OpResponse, Range, RangeRequest, Txn};
use crate::pattern::Pattern;

/// IDs one claim transaction tries. etcd's cost per transaction grows with its nesting, and with
/// queue positions nodes rarely need more than the first.
const WINDOW: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    pub id: u32,
    pub name: String,
    /// etcd requests the claim took, for the logs and the claim benchmark.
    pub requests: u32,
}

#[derive(Debug)]
pub enum ClaimError {
    /// Every ID in the range belongs to a live node.
    Full {
        ids: RangeInclusive<u32>,
    },
    Etcd(etcd::Error),
}

impl fmt::Display for ClaimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimError::Full { ids } => write!(
                f,
                "every ID from {} to {} is taken: the cluster already has its limit of {} nodes",
                ids.start(),
                ids.end(),
                u64::from(ids.end() - ids.start()) + 1
            ),
            ClaimError::Etcd(e) => e.fmt(f),
        }
    }
}

impl From<etcd::Error> for ClaimError {
    fn from(e: etcd::Error) -> Self {
        ClaimError::Etcd(e)
    }
}

/// What a claim needs to know besides the etcd client.
pub struct Request<'a> {
    pub pattern: &'a Pattern,
    pub ids: RangeInclusive<u32>,
    /// This node's record, exactly as it is stored.
    pub value: &'a [u8],
    pub lease: i64,
    /// The ID to try first, if free: the one this node held before it lost its lease.
    pub preferred: Option<u32>,
}

/// Keys of one claim: the name range, the queue, and this node's place in it.
struct Keys {
    names: RangeRequest,
    queue: RangeRequest,
    mine: Vec<u8>,
}

impl Keys {
    fn new(request: &Request) -> Keys {
        let (start, end) = request.pattern.key_range();
        // Under the pattern's literal prefix, so that an etcd user granted that prefix may claim,
        // but outside the name range (names continue the prefix with a digit), so member reads
        // never see it.
        let queue = format!("{}_claims/{}/", request.pattern.prefix(), request.pattern);
        let mut queue_end = queue.clone().into_bytes();
        queue_end.pop();
        queue_end.push(b'/' + 1);
        Keys {
            names: RangeRequest::new(start.as_bytes(), end.as_bytes()),
            queue: RangeRequest { keys_only: true, ..RangeRequest::new(queue.as_bytes(), &queue_end) },
            mine: format!("{queue}{:016x}", request.lease).into_bytes(),
        }
    }

    /// The queue keys created before ours: the claims ahead of this one.
    fn ahead(&self, queued_at: i64) -> Op {
        Op::Range(RangeRequest { max_create_revision: queued_at - 1, ..self.queue.clone() })
    }
}

pub fn claim(client: &mut etcd::Client, request: &Request) -> Result<Claimed, ClaimError> {
    let keys = Keys::new(request);
    // Take a number: count the queue, join it, read the names, all at one revision. A retry on
    // the same lease finds its place already taken and keeps it.
    let join = Txn {
        compare: vec![],
        success: vec![
            Op::Range(RangeRequest { count_only: true, ..keys.queue.clone() }),
            Op::Range(RangeRequest::new(&keys.mine, &[keys.mine.as_slice(), &[0]].concat())),
            Op::Put { key: keys.mine.clone(), value: Vec::new(), lease: request.lease },
            Op::Range(keys.names.clone()),
        ],
        failure: vec![],
    };
    let joined = client.txn(&join)?;
    let mut requests = 1;
    let (mut ahead, queued_at, mut view) = match joined.responses.as_slice() {
        [OpResponse::Range(queue), OpResponse::Range(mine), OpResponse::Put { revision }, OpResponse::Range(names)] => {
            match mine.kvs.first() {
                Some(place) => ((queue.count as usize).saturating_sub(1), place.create_revision, names.clone()),
                None => (queue.count as usize, *revision, names.clone()),
            }
        }
        other => return Err(unexpected(client, other)),
    };
    let mut window = WINDOW;
    loop {
        let taken = taken_ids(request.pattern, &request.ids, &view);
        // The same node restarted before its old lease ran out: its record is still there. Moving
        // that key to the new lease keeps the name instead of claiming a second one.
        let own = taken.iter().find(|(_, value)| **value == request.value).map(|(id, _)| *id);
        let ids = match own {
            Some(id) => vec![id],
            None => candidates(&taken, &request.ids, request.preferred, ahead, window),
        };
        if ids.is_empty() {
            let _ = client.txn(&Txn { success: vec![Op::Delete { key: keys.mine.clone() }], ..Txn::default() });
            return Err(ClaimError::Full { ids: request.ids.clone() });
        }
        let txn = match own {
            Some(id) => takeover(request, &keys, id, queued_at),
            None => chain(request, &keys, &ids, queued_at),
        };
        requests += 1;
        let answer = match client.txn(&txn) {
            Ok(answer) => answer,
            Err(etcd::Error::Rejected { code: etcd::CODE_INVALID_ARGUMENT, ref message, .. })
                if message.contains("too many operations") && window > 1 =>
            {
                window /= 2;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match walk(&answer) {
            Walk::Won(level) => {
                let Some(&id) = ids.get(level) else { return Err(unexpected(client, &answer.responses)) };
                return Ok(Claimed { id, name: request.pattern.name(id), requests });
            }
            Walk::Lost([OpResponse::Range(names), OpResponse::Range(queue)]) => {
                view = names.clone();
                ahead = queue.kvs.len();
            }
            Walk::Lost(other) => return Err(unexpected(client, other)),
        }
    }
}

fn unexpected(client: &etcd::Client, responses: &[OpResponse]) -> ClaimError {
    let detail = format!("unexpected transaction responses: {responses:?}");
    ClaimError::Etcd(etcd::Error::Malformed { endpoint: client.endpoint().to_string(), detail })
}

/// The IDs in range that have a key, with the key's value.
fn taken_ids<'v>(pattern: &Pattern, ids: &RangeInclusive<u32>, view: &'v Range) -> BTreeMap<u32, &'v [u8]> {
    view.kvs
        .iter()
        .filter_map(|kv| {
            let id = pattern.id_of(std::str::from_utf8(&kv.key).ok()?)?;
            ids.contains(&id).then_some((id, kv.value.as_slice()))
        })
        .collect()
}

/// Up to `window` free IDs in the order to try them: the preferred one if free, then from the
/// `ahead`-th lowest free ID on, the ones before it being left to the claims ahead; then the free
/// IDs just below, in case a claim ahead fails. Walks at most `ahead + window` IDs, never the range.
fn candidates<V>(
    taken: &BTreeMap<u32, V>,
    ids: &RangeInclusive<u32>,
    preferred: Option<u32>,
    ahead: usize,
    window: usize,
) -> Vec<u32> {
    let mut out = Vec::with_capacity(window);
    if let Some(id) = preferred.filter(|id| ids.contains(id) && !taken.contains_key(id)) {
        out.push(id);
    }
    let room = window.saturating_sub(out.len());
    let free = ids.clone().filter(|id| !taken.contains_key(id) && Some(*id) != preferred);
    // Ours from the `ahead`-th free ID on; then, as fallbacks, the free IDs just below it.
    let mut mine = Vec::with_capacity(room);
    let mut below = std::collections::VecDeque::with_capacity(room);
    for (i, id) in free.enumerate() {
        if i < ahead {
            if below.len() == room {
                below.pop_front();
            }
            below.push_back(id);
        } else {
            mine.push(id);
            if mine.len() == room {
                break;
            }
        }
    }
    let fill = room - mine.len();
    out.extend(mine);
    out.extend(below.iter().skip(below.len().saturating_sub(fill)));
    out
}

/// Put our key if absent, for each ID in turn; leave the queue with it. When every ID is taken,
/// read the names and the claims still ahead of ours.
fn chain(request: &Request, keys: &Keys, ids: &[u32], queued_at: i64) -> Txn {
    let mut failure = vec![Op::Range(keys.names.clone()), keys.ahead(queued_at)];
    for &id in ids.iter().rev() {
        let name = request.pattern.name(id).into_bytes();
        let txn = Txn { compare: vec![Compare::Absent(name.clone())], success: take(request, keys, name), failure };
        failure = vec![Op::Txn(Box::new(txn))];
    }
    match failure.pop() {
        Some(Op::Txn(txn)) => *txn,
        _ => unreachable!("chain is called with at least one ID"),
    }
}

/// Move our old record's key to the new lease, if it still holds our record.
fn takeover(request: &Request, keys: &Keys, id: u32, queued_at: i64) -> Txn {
    let name = request.pattern.name(id).into_bytes();
    Txn {
        compare: vec![Compare::ValueIs(name.clone(), request.value.to_vec())],
        success: take(request, keys, name),
        failure: vec![Op::Range(keys.names.clone()), keys.ahead(queued_at)],
    }
}

fn take(request: &Request, keys: &Keys, name: Vec<u8>) -> Vec<Op> {
    vec![
        Op::Put { key: name, value: request.value.to_vec(), lease: request.lease },
        Op::Delete { key: keys.mine.clone() },
    ]
}

#[derive(Debug, PartialEq, Eq)]
enum Walk<'a> {
    /// The transaction at this depth put our key.
    Won(usize),
    /// Every level failed; here is what the innermost one read.
    Lost(&'a [OpResponse]),
}

fn walk(answer: &etcd::TxnResponse) -> Walk<'_> {
    let mut level = 0;
    let mut txn = answer;
    loop {
        if txn.succeeded {
            return Walk::Won(level);
        }
        match txn.responses.as_slice() {
            [OpResponse::Txn(inner)] => {
                txn = inner;
                level += 1;
            }
            other => return Walk::Lost(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::{KeyValue, TxnResponse};

    fn taken(ids: &[u32]) -> BTreeMap<u32, ()> {
        ids.iter().map(|&id| (id, ())).collect()
    }

    #[test]
    fn candidates_start_past_the_claims_ahead() {
        type Case = (&'static [u32], RangeInclusive<u32>, Option<u32>, usize, usize, &'static [u32]);
        let cases: [Case; 11] = [
            (&[], 1..=5, None, 0, 8, &[1, 2, 3, 4, 5]),
            (&[1, 3], 1..=5, None, 0, 8, &[2, 4, 5]),
            (&[1, 2, 3, 4, 5], 1..=5, None, 0, 8, &[]),
            (&[], 1..=1000, None, 0, 3, &[1, 2, 3]),
            (&[], 1..=1000, None, 5, 3, &[6, 7, 8]),
            (&[2, 4], 1..=1000, None, 2, 3, &[5, 6, 7]),
            // More claims ahead than free IDs: the highest free ones.
            (&[1, 3], 1..=5, None, 7, 2, &[4, 5]),
            (&[1, 3], 1..=5, None, 2, 8, &[5, 2, 4]),
            (&[1, 3], 1..=5, Some(4), 0, 8, &[4, 2, 5]),
            (&[1, 3], 1..=5, Some(3), 0, 2, &[2, 4]),
            (&[0, 6], 0..=3, Some(9), 0, 8, &[1, 2, 3]),
        ];
        for (t, ids, preferred, ahead, window, want) in cases {
            let got = candidates(&taken(t), &ids, preferred, ahead, window);
            assert_eq!(got, want, "taken {t:?} in {ids:?}, preferred {preferred:?}, {ahead} ahead");
        }
    }

    #[test]
    fn nodes_starting_together_aim_at_different_ids() {
        let free = taken(&[]);
        let aims: Vec<u32> = (0..100).map(|ahead| candidates(&free, &(1..=100), None, ahead, 8)[0]).collect();
        assert_eq!(aims, (1..=100).collect::<Vec<_>>());
    }

    #[test]
    fn candidates_stay_cheap_for_huge_limits() {
        let got = candidates(&taken(&[1, 2]), &(1..=u32::MAX), None, 1, 4);
        assert_eq!(got, [4, 5, 6, 7]);
    }

    #[test]
    fn taken_ids_ignore_keys_off_the_pattern_and_out_of_range() {
        let pattern = Pattern::parse("worker{{.ID}}.tf.local.").unwrap();
        let kv = |key: &str| KeyValue {
            key: key.as_bytes().to_vec(),
            value: b"{}".to_vec(),
            create_revision: 1,
            mod_revision: 1,
            lease: 0,
        };
        let view = Range {
            revision: 9,
            count: 4,
            kvs: vec![
                kv("worker1.tf.local."),
                kv("worker01.tf.local."),
                kv("worker2x.tf.local."),
                kv("worker7.tf.local."),
            ],
        };
        let got: Vec<u32> = taken_ids(&pattern, &(1..=5), &view).into_keys().collect();
        assert_eq!(got, [1]);
    }

    #[test]
    fn chain_nests_one_level_per_id_and_leaves_the_queue() {
        let pattern = Pattern::parse("w{{.ID}}.z.").unwrap();
        let request = Request { pattern: &pattern, ids: 1..=5, value: b"{}", lease: 0x2a, preferred: None };
        let keys = Keys::new(&request);
        assert_eq!(keys.mine, b"w_claims/w{{.ID}}.z./000000000000002a");
        assert_eq!(
            (keys.queue.start.as_slice(), keys.queue.end.as_slice()),
            (&b"w_claims/w{{.ID}}.z./"[..], &b"w_claims/w{{.ID}}.z.0"[..])
        );
        let (start, end) = pattern.key_range();
        assert!(!(start.as_bytes()..end.as_bytes()).contains(&keys.mine.as_slice()), "outside the name range");
        let txn = chain(&request, &keys, &[2, 5], 17);
        let Compare::Absent(key) = &txn.compare[0] else { panic!() };
        assert_eq!(key, b"w2.z.");
        assert!(matches!(&txn.success[..], [Op::Put { lease: 0x2a, .. }, Op::Delete { key }] if *key == keys.mine));
        let Op::Txn(inner) = &txn.failure[0] else { panic!() };
        let Compare::Absent(key) = &inner.compare[0] else { panic!() };
        assert_eq!(key, b"w5.z.");
        assert!(matches!(&inner.failure[..], [Op::Range(_), Op::Range(RangeRequest { max_create_revision: 16, .. })]));
    }

    #[test]
    fn walk_finds_the_level_that_won() {
        let won_at_2 = TxnResponse {
            succeeded: false,
            responses: vec![OpResponse::Txn(TxnResponse {
                succeeded: false,
                responses: vec![OpResponse::Txn(TxnResponse {
                    succeeded: true,
                    responses: vec![OpResponse::Put { revision: 9 }, OpResponse::Delete],
                })],
            })],
        };
        assert_eq!(walk(&won_at_2), Walk::Won(2));
        let range = Range { revision: 5, kvs: vec![], count: 0 };
        let lost = TxnResponse {
            succeeded: false,
            responses: vec![OpResponse::Txn(TxnResponse {
                succeeded: false,
                responses: vec![OpResponse::Range(range.clone()), OpResponse::Range(range.clone())],
            })],
        };
        assert_eq!(walk(&lost), Walk::Lost(&[OpResponse::Range(range.clone()), OpResponse::Range(range)]));
        assert_eq!(walk(&TxnResponse { succeeded: true, responses: vec![] }), Walk::Won(0));
    }
}
