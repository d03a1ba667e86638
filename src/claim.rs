//! Claiming an ID: the lowest free one, atomically, in as few round trips as possible.
//!
//! A claim is one etcd transaction that tries a window of IDs in order, each level "if this key does
//! not exist, put it with our lease, else try the next", and ends by reading the whole key range.
//! etcd applies transactions one after another, so when many nodes start at once each transaction
//! takes the lowest ID still free when it is applied: N nodes get 1..N with one transaction each,
//! where "read, pick, retry on conflict" would need O(N²). A window that is all taken by then comes
//! back with the fresh range, and the next window starts from it without another read.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;

use crate::etcd::{self, Compare, Op, OpResponse, Range, Txn};
use crate::pattern::Pattern;

/// IDs tried in one transaction. etcd refuses transactions of more than `--max-txn-ops` (128 by
/// default) operations, counting nested ones; a smaller limit halves the window until it fits.
const WINDOW: usize = 64;

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
                ids.end() - ids.start() + 1
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

pub fn claim(client: &mut etcd::Client, request: &Request) -> Result<Claimed, ClaimError> {
    let (start, end) = request.pattern.key_range();
    let mut view = client.range(start.as_bytes(), end.as_bytes())?;
    let mut requests = 1;
    let mut window = WINDOW;
    loop {
        let taken = taken_ids(request.pattern, &request.ids, &view);
        // The same node restarted before its old lease ran out: its record is still there. Moving
        // that key to the new lease keeps the name instead of claiming a second one.
        if let Some(&id) = taken.iter().find(|(_, value)| **value == request.value).map(|(id, _)| id) {
            let key = request.pattern.name(id).into_bytes();
            let txn = Txn {
                compare: vec![Compare::ValueIs(key.clone(), request.value.to_vec())],
                success: vec![Op::Put { key, value: request.value.to_vec(), lease: request.lease }],
                failure: vec![Op::Range { start: start.clone().into_bytes(), end: end.clone().into_bytes() }],
            };
            let answer = client.txn(&txn)?;
            requests += 1;
            if answer.succeeded {
                return Ok(Claimed { id, name: request.pattern.name(id), requests });
            }
            view = last_range(&answer.responses).unwrap_or_default();
            continue;
        }
        let ids = candidates(&taken, &request.ids, request.preferred, window);
        if ids.is_empty() {
            return Err(ClaimError::Full { ids: request.ids.clone() });
        }
        let txn = chain(request, &ids, &start, &end);
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
                let id = ids[level];
                return Ok(Claimed { id, name: request.pattern.name(id), requests });
            }
            Walk::Lost(range) => view = range,
        }
    }
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

/// Up to `window` free IDs in the order to try them: the preferred one, then the lowest.
fn candidates<V>(
    taken: &BTreeMap<u32, V>,
    ids: &RangeInclusive<u32>,
    preferred: Option<u32>,
    window: usize,
) -> Vec<u32> {
    let mut out = Vec::with_capacity(window.min(ids.clone().count()));
    if let Some(id) = preferred.filter(|id| ids.contains(id) && !taken.contains_key(id)) {
        out.push(id);
    }
    let free = ids.clone().filter(|id| !taken.contains_key(id) && Some(*id) != preferred);
    out.extend(free.take(window - out.len()));
    out
}

/// The nested transaction that tries `ids` in order and reads the key range if all are taken.
fn chain(request: &Request, ids: &[u32], start: &str, end: &str) -> Txn {
    let mut failure = vec![Op::Range { start: start.as_bytes().to_vec(), end: end.as_bytes().to_vec() }];
    for &id in ids.iter().rev() {
        let key = request.pattern.name(id).into_bytes();
        let txn = Txn {
            compare: vec![Compare::Absent(key.clone())],
            success: vec![Op::Put { key, value: request.value.to_vec(), lease: request.lease }],
            failure,
        };
        failure = vec![Op::Txn(Box::new(txn))];
    }
    match failure.pop() {
        Some(Op::Txn(txn)) => *txn,
        _ => unreachable!("chain is called with at least one ID"),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Walk {
    /// The transaction at this depth put our key.
    Won(usize),
    /// Every level failed; here is the range read at the bottom.
    Lost(Range),
}

fn walk(answer: &etcd::TxnResponse) -> Walk {
    let mut level = 0;
    let mut txn = answer;
    loop {
        if txn.succeeded {
            return Walk::Won(level);
        }
        match txn.responses.first() {
            Some(OpResponse::Txn(inner)) => {
                txn = inner;
                level += 1;
            }
            Some(OpResponse::Range(range)) => return Walk::Lost(range.clone()),
            _ => return Walk::Lost(Range::default()),
        }
    }
}

fn last_range(responses: &[OpResponse]) -> Option<Range> {
    responses.iter().find_map(|r| match r {
        OpResponse::Range(range) => Some(range.clone()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::{KeyValue, TxnResponse};

    fn taken(ids: &[u32]) -> BTreeMap<u32, ()> {
        ids.iter().map(|&id| (id, ())).collect()
    }

    #[test]
    fn candidates_are_the_lowest_free_ids() {
        type Case = (&'static [u32], RangeInclusive<u32>, Option<u32>, usize, &'static [u32]);
        let cases: [Case; 7] = [
            (&[], 1..=5, None, 64, &[1, 2, 3, 4, 5]),
            (&[1, 3], 1..=5, None, 64, &[2, 4, 5]),
            (&[1, 2, 3, 4, 5], 1..=5, None, 64, &[]),
            (&[], 1..=1000, None, 3, &[1, 2, 3]),
            (&[1, 3], 1..=5, Some(4), 64, &[4, 2, 5]),
            (&[1, 3], 1..=5, Some(3), 2, &[2, 4]),
            (&[0, 6], 0..=3, Some(9), 64, &[1, 2, 3]),
        ];
        for (t, ids, preferred, window, want) in cases {
            assert_eq!(candidates(&taken(t), &ids, preferred, window), want, "{t:?} {ids:?} {preferred:?}");
        }
    }

    #[test]
    fn candidates_stay_cheap_for_huge_limits() {
        let got = candidates(&taken(&[1, 2]), &(1..=u32::MAX), None, 4);
        assert_eq!(got, [3, 4, 5, 6]);
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
    fn chain_nests_one_level_per_id() {
        let pattern = Pattern::parse("w{{.ID}}.z.").unwrap();
        let request = Request { pattern: &pattern, ids: 1..=5, value: b"{}", lease: 7, preferred: None };
        let txn = chain(&request, &[2, 5], "w0", "w:");
        let Compare::Absent(key) = &txn.compare[0] else { panic!() };
        assert_eq!(key, b"w2.z.");
        let Op::Txn(inner) = &txn.failure[0] else { panic!() };
        let Compare::Absent(key) = &inner.compare[0] else { panic!() };
        assert_eq!(key, b"w5.z.");
        assert!(matches!(&inner.failure[0], Op::Range { .. }));
    }

    #[test]
    fn walk_finds_the_level_that_won() {
        let won_at_2 = TxnResponse {
            succeeded: false,
            responses: vec![OpResponse::Txn(TxnResponse {
                succeeded: false,
                responses: vec![OpResponse::Txn(TxnResponse { succeeded: true, responses: vec![OpResponse::Put] })],
            })],
        };
        assert_eq!(walk(&won_at_2), Walk::Won(2));
        let range = Range { revision: 5, kvs: vec![], count: 0 };
        let lost = TxnResponse {
            succeeded: false,
            responses: vec![OpResponse::Txn(TxnResponse {
                succeeded: false,
                responses: vec![OpResponse::Range(range.clone())],
            })],
        };
        assert_eq!(walk(&lost), Walk::Lost(range));
        assert_eq!(walk(&TxnResponse { succeeded: true, responses: vec![] }), Walk::Won(0));
    }
}
