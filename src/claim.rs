//! Claiming a name: the lowest free one, atomically, in two etcd requests even when a thousand
//! nodes start together.
//!
//! A name is only ever taken by a transaction that puts its key if the key does not exist, so two
//! live nodes never hold one name. The question is which name to try. If every node starting at
//! once tried the lowest free one, all but one would fail and retry, O(N²) transactions for N
//! nodes. So a claiming node first takes a number, like at a counter: one transaction counts the
//! claims already queued, puts this node's own queue key (named by its record, so that a node
//! has one place however often it tries; on its lease, so a crashed node leaves the queue; its
//! value says what the node asks for, see `Ticket`) and reads the names. Replaying the claims
//! ahead of it tells the node which free slot each of them will take, so nodes starting together
//! aim at different slots and get exactly the first N. The claim transaction tries a few slots
//! from there in order, each "if absent, put it and leave the queue", and when all are gone reads
//! the names and the queue again for another round.
//!
//! Most claims only fill in order; only those that ask for a role or for a name back need
//! reading. Their tickets have keys of their own, read whole, and the others are only counted:
//! with a thousand nodes in the queue, reading every ticket made each claim cost etcd
//! milliseconds, and all of them together more than the claims themselves.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::config::Role;
use crate::etcd::{self, Compare, KeyValue, Op, OpResponse, Range, RangeRequest, Txn};
use crate::view::Slot;

/// Slots one claim transaction tries, each nested in the one before. With queue positions nodes
/// rarely need more than the first, and nesting is dear: etcd's JSON gateway decodes a nested
/// request once per level, so with 8 slots decoding the claims took more of etcd's CPU than
/// anything else when 1000 nodes started together (3.3 of 7.9 s); with 2, 0.6 s.
const WINDOW: usize = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    pub slot: Slot,
    pub name: String,
    /// etcd requests the claim took, for the logs and the claim benchmark.
    pub requests: u32,
    /// Whether the name held this node's record already (a restart within the old lease).
    pub taken_back: bool,
    /// Every role's keys (one list per role, in Corefile order) as of the revision given: the
    /// node's first read of the members, which it need not ask etcd for again. The revision is
    /// that of the claim itself, or with `FirstRead::ToBeWatched` that of the names read before
    /// (with the claimed name besides), to be followed from. `None` when keys were deleted
    /// between the last read of the names and the claim, which the claim cannot tell apart: then
    /// the members must be read.
    pub listing: Option<(i64, Vec<Vec<KeyValue>>)>,
    /// Claims still in the queue when this one took its name: nodes starting at the same time.
    pub queued: i64,
}

#[derive(Debug)]
pub enum ClaimError {
    /// Every ID this node may take belongs to a live node; the message says which.
    Full(String),
    /// Another live node publishes this node's very record: the same address, a misconfiguration.
    Twin(String),
    Etcd(etcd::Error),
}

impl fmt::Display for ClaimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimError::Full(why) | ClaimError::Twin(why) => f.write_str(why),
            ClaimError::Etcd(e) => e.fmt(f),
        }
    }
}

impl From<etcd::Error> for ClaimError {
    fn from(e: etcd::Error) -> Self {
        ClaimError::Etcd(e)
    }
}

/// Which role a node claims in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The first role, in Corefile order, with a free ID.
    Fill,
    /// This role only (`--role`).
    Role(usize),
}

impl Choice {
    fn may_take(self, role: usize) -> bool {
        match self {
            Choice::Fill => true,
            Choice::Role(r) => r == role,
        }
    }

    /// The roles, of `roles`, a claim takes slots in, in the order it takes them.
    fn order(self, roles: usize) -> Vec<usize> {
        (0..roles).filter(|&r| self.may_take(r)).collect()
    }
}

/// What the claim hands over as the node's first view of the members (`Claimed::listing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstRead {
    /// The names as of the claim itself: those read when joining the queue, brought up to date
    /// by the claim transaction, which for that passes over every name in etcd. For a node that
    /// polls, which must start from the truth.
    AsOfClaim,
    /// The names as read when joining the queue, with the name claimed: a watch from that read's
    /// revision brings them up to date, so the claim transaction reads nothing. But a claim that
    /// first watched another lease (one holding this node's record) reads as `AsOfClaim`: its
    /// names are seconds old by then, and would be served until the watch caught up.
    ToBeWatched,
}

/// What a claim needs to know besides the etcd client.
pub struct Request<'a> {
    pub roles: &'a [Role],
    pub choice: Choice,
    /// This node's record, exactly as it is stored.
    pub value: &'a [u8],
    pub lease: i64,
    /// How often `lease` must be renewed, should the claim have to wait a while (to see whether
    /// another lease is still renewed).
    pub renew_every: Duration,
    /// The slot to try first, if free: the one this node held before it lost its lease.
    pub preferred: Option<Slot>,
    pub first_read: FirstRead,
}

/// Keys of one claim: the name ranges, the queue, and this node's place in it.
struct Keys {
    names: Vec<RangeRequest>,
    /// A large role's index and where its names are cut in two halves, read at once when joining
    /// the queue (see `view::halves`).
    cut: Option<(usize, Vec<u8>)>,
    /// Every ticket.
    queue: RangeRequest,
    /// The tickets that say more than "the next free slot": a role, or a name asked back.
    special: RangeRequest,
    mine: Vec<u8>,
}

impl Keys {
    fn new(request: &Request) -> Keys {
        let names = crate::view::ranges(request.roles);
        let queue_keys = queue(request.roles);
        let queue = queue_keys.start.as_slice();
        // Special tickets follow `+`, which no hex digit (of plain tickets, and of the leases that
        // named tickets in earlier versions) is.
        let special = [queue, &[SPECIAL]].concat();
        let record: String = request.value.iter().map(|b| format!("{b:02x}")).collect();
        let mine = match Ticket::is_special(request) {
            true => [&special, record.as_bytes()].concat(),
            false => [queue, record.as_bytes()].concat(),
        };
        Keys {
            names,
            cut: crate::view::halves(request.roles),
            special: RangeRequest::new(&special, &[queue, &[SPECIAL + 1]].concat()),
            queue: queue_keys,
            mine,
        }
    }

    /// The queue keys created before ours: the claims ahead of this one, read whole.
    fn ahead(&self, queued_at: i64) -> RangeRequest {
        RangeRequest { max_create_revision: queued_at - 1, ..self.queue.clone() }
    }

    /// Every role's names.
    fn read_names(&self) -> impl Iterator<Item = Op> + '_ {
        self.names.iter().cloned().map(Op::Range)
    }

    /// Every role's names, but a large role's first half only; and its second half, to be read
    /// at the same time by another request.
    fn read_names_in_halves(&self) -> (Vec<Op>, Option<(usize, RangeRequest)>) {
        let mut names = self.names.clone();
        let second = self.cut.as_ref().map(|(role, cut)| {
            let second = RangeRequest::new(cut, &names[*role].end);
            names[*role].end.clone_from(cut);
            (*role, second)
        });
        (names.into_iter().map(Op::Range).collect(), second)
    }

    /// Every role's names changed after revision `since`, and how many names each role has: what
    /// brings a read at `since` up to date, unless names were deleted meanwhile.
    fn names_changed_since(&self, since: i64) -> impl Iterator<Item = Op> + '_ {
        self.names.iter().map(move |r| Op::Range(RangeRequest { min_mod_revision: since + 1, ..r.clone() }))
    }
}

/// Every ticket of the claim queue. The first role's queue serves them all, so that one Corefile's
/// nodes see each other's claims whatever their roles. It lies under the pattern's literal
/// prefix, so that an etcd user granted that prefix may claim, but outside the name range (names
/// continue the prefix with a digit), so member reads never see it. With one role, it is where
/// earlier versions queued.
pub fn queue(roles: &[Role]) -> RangeRequest {
    let first = roles.first().map(|r| &r.pattern);
    let queue = first.map_or_else(String::new, |p| format!("{}_claims/{p}/", p.prefix()));
    let mut end = queue.clone().into_bytes();
    end.pop();
    end.push(b'/' + 1);
    RangeRequest::new(queue.as_bytes(), &end)
}

/// Claims a slot for `request`, with the patience of a node that holds no name yet (see
/// `etcd::Client::patiently`).
pub fn claim(client: &mut etcd::Client, request: &Request) -> Result<Claimed, ClaimError> {
    client.patiently(|client| claim_patiently(client, request))
}

fn claim_patiently(client: &mut etcd::Client, request: &Request) -> Result<Claimed, ClaimError> {
    let keys = Keys::new(request);
    let roles = request.roles.len();
    // Take a number: count the queue, read its special tickets, join it, read the names, all at
    // one revision. A retry finds its place already taken and keeps it.
    let mut success = vec![
        Op::Range(RangeRequest::new(&keys.mine, &[keys.mine.as_slice(), &[0]].concat())),
        Op::Range(RangeRequest { count_only: true, ..keys.queue.clone() }),
        Op::Range(keys.special.clone()),
        Op::Put { key: keys.mine.clone(), value: Ticket::of(request), lease: request.lease },
    ];
    let (reads, second_half) = keys.read_names_in_halves();
    success.extend(reads);
    let Joined { answer: joined, second_half, reads } =
        join_while_reading(client, &Txn { success, ..Txn::default() }, second_half)?;
    let mut requests = 1 + reads;
    let (mut ahead, queued_at, mut names) = match joined.responses.as_slice() {
        [OpResponse::Range(mine), OpResponse::Range(queue), OpResponse::Range(special), OpResponse::Put { revision }, names @ ..]
            if names.len() == roles =>
        {
            let ahead = match mine.kvs.first() {
                // Every ticket there was is ahead of ours.
                None => counted_ahead(request, queue.count, &special.kvs),
                // Our place from an earlier try: the count takes in the tickets behind it too, so
                // read those ahead of it.
                Some(place) => {
                    requests += 1;
                    let queue = client.read(&[keys.ahead(place.create_revision)])?;
                    let kvs = queue.first().map_or(&[][..], |q| q.kvs.as_slice());
                    claims_ahead(request, kvs, place.create_revision)
                }
            };
            let mut names = ranges(names);
            if let (Some(names), Some((role, half))) = (names.as_mut(), second_half) {
                join_halves(names, role, half);
            }
            (ahead, mine.kvs.first().map_or(*revision, |place| place.create_revision), names)
        }
        other => return Err(unexpected(client, other)),
    };
    let mut window = WINDOW;
    // Leases of our own record already looked at: one look at each is enough.
    let mut looked: Vec<(i64, Renewal)> = Vec::new();
    // Whether the names were read before a look at another lease, which may take seconds.
    let mut names_aged = false;
    loop {
        let Some(names_now) = names.as_deref() else { return Err(unexpected(client, &joined.responses)) };
        let mut spaces = spaces(request.roles, names_now);
        let order = request.choice.order(roles);
        // The same node restarted before its old lease ran out: its record is still there. Moving
        // that key to the new lease keeps the name instead of claiming a second one; but only
        // once nobody renews that lease, or two live nodes given one address would take the
        // name from each other forever.
        let own = match own_record(request, names_now, &order) {
            Some((slot, lease)) if lease != 0 && lease != request.lease => {
                let renewal = match looked.iter().find(|(l, _)| *l == lease) {
                    Some((_, renewal)) => *renewal,
                    None => {
                        let renewal = renewed_by_someone(client, lease, request)?;
                        looked.push((lease, renewal));
                        names_aged = true;
                        renewal
                    }
                };
                match renewal {
                    Renewal::Renewed => {
                        return Err(ClaimError::Twin(format!(
                            "another live node publishes this node's record {} as {}: etcd lease {lease:x} that holds it is being renewed. Give each node its own address (`address`), or stop the other node",
                            String::from_utf8_lossy(request.value),
                            slot.name(request.roles)
                        )))
                    }
                    Renewal::Abandoned => Some(slot),
                    Renewal::Unknown => {
                        log::warn!(
                            "{} holds this node's record on lease {lease:x}, which may still be renewed; claiming another name",
                            slot.name(request.roles)
                        );
                        None
                    }
                }
            }
            Some((slot, _)) => Some(slot),
            None => None,
        };
        let slots = match own {
            Some(slot) => vec![slot],
            None => slots_to_try(&mut spaces, &order, &ahead, request.choice, request.preferred, window),
        };
        if slots.is_empty() {
            let _ = client.txn(&Txn { success: vec![Op::Delete { key: keys.mine.clone() }], ..Txn::default() });
            return Err(ClaimError::Full(full(request.roles, request.choice)));
        }
        let trying: Vec<String> = slots.iter().map(|slot| slot.name(request.roles)).collect();
        log::debug!(
            "claim: in the queue since revision {queued_at}, {} claims ahead; {} {}",
            ahead.len(),
            if own.is_some() { "taking back" } else { "trying, in turn," },
            trying.join(" ")
        );
        // The revision the names were read at: the claim reads what changed since.
        let read_at = names_now.first().map_or(0, |r| r.revision);
        // Names read before waiting seconds for another lease are that old at the claim: a node
        // would serve them until its watch brought it the changes since, which the claim reads
        // itself instead, as a polling node's does.
        let as_of_claim = Request { first_read: FirstRead::AsOfClaim, ..*request };
        let request = if names_aged { &as_of_claim } else { request };
        let txn = match own {
            Some(slot) => takeover(request, &keys, slot, queued_at, read_at),
            None => chain(request, &keys, &slots, queued_at, read_at),
        };
        requests += 1;
        let answer = match client.txn(&txn) {
            Ok(answer) => answer,
            Err(etcd::Error::Rejected { refusal: etcd::Refusal::TooManyOperations, .. }) if window > 1 => {
                window /= 2;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match walk(&answer) {
            Walk::Won(level, responses) => {
                let Some(&slot) = slots.get(level) else { return Err(unexpected(client, &answer.responses)) };
                let taken_back = own.is_some();
                // The name is ours whatever the reads say; without them the members are read anew.
                let (queued, responses) = match responses {
                    [rest @ .., OpResponse::Range(queue)] => (queue.count, rest),
                    _ => (0, responses),
                };
                let listing = match (request.first_read, responses) {
                    (FirstRead::AsOfClaim, [OpResponse::Put { .. }, OpResponse::Delete, changed @ ..])
                        if changed.len() == roles =>
                    {
                        ranges(changed).and_then(|changed| up_to_date(names_now, &changed))
                    }
                    (FirstRead::ToBeWatched, [OpResponse::Put { revision }, OpResponse::Delete]) => {
                        let own = KeyValue {
                            key: slot.name(request.roles).into_bytes(),
                            value: request.value.to_vec(),
                            create_revision: *revision,
                            mod_revision: *revision,
                            lease: request.lease,
                        };
                        names.take().map(|names| with_own(names, slot.role, own))
                    }
                    _ => None,
                };
                return Ok(Claimed { slot, name: slot.name(request.roles), requests, taken_back, listing, queued });
            }
            Walk::Lost([read @ .., OpResponse::Range(queue)]) if read.len() == roles => {
                log::debug!("claim: each was taken first; reading the names and the queue again");
                names = ranges(read);
                names_aged = false;
                ahead = claims_ahead(request, &queue.kvs, queued_at);
            }
            Walk::Lost(other) => return Err(unexpected(client, other)),
        }
    }
}

/// The answer to joining the queue, and the second half of a role's names read meanwhile.
struct Joined {
    answer: etcd::TxnResponse,
    second_half: Option<(usize, Range)>,
    /// Requests the second half took.
    reads: u32,
}

/// Runs `join`, and meanwhile reads `second_half` (a role's index and range) over another
/// connection, so that etcd puts a core on each. Should that read fail, or its thread not start,
/// it is made after. Returns how many requests the read took besides the join.
fn join_while_reading(
    client: &mut etcd::Client,
    join: &Txn,
    second_half: Option<(usize, RangeRequest)>,
) -> Result<Joined, etcd::Error> {
    let Some((role, half)) = second_half else {
        return Ok(Joined { answer: client.txn(join)?, second_half: None, reads: 0 });
    };
    let mut sibling = client.clone();
    let (joined, read) = std::thread::scope(|scope| {
        let reading = std::thread::Builder::new()
            .name("etcd-read".into())
            .spawn_scoped(scope, || sibling.range(&half.start, &half.end));
        let joined = client.txn(join);
        (joined, reading.ok().map(|reading| reading.join()))
    });
    let joined = joined?;
    let (range, reads) = match read {
        Some(Ok(Ok(range))) => (range, 1),
        Some(_) => (client.range(&half.start, &half.end)?, 2),
        None => (client.range(&half.start, &half.end)?, 1),
    };
    Ok(Joined { answer: joined, second_half: Some((role, range)), reads })
}

/// Puts a role's second half, read by itself, back into its range. The two were read at different
/// revisions, so the names count as read at the older: the claim then reads what changed since.
fn join_halves(names: &mut [Range], role: usize, half: Range) {
    let revision = names.iter().map(|r| r.revision).chain([half.revision]).min().unwrap_or(0);
    if let Some(first) = names.get_mut(role) {
        // Every key of the second half sorts after every key of the first.
        first.kvs.extend(half.kvs);
        first.count += half.count;
    }
    for range in names {
        range.revision = revision;
    }
}

fn unexpected(client: &etcd::Client, responses: &[OpResponse]) -> ClaimError {
    let detail = format!("unexpected transaction responses: {responses:?}");
    ClaimError::Etcd(etcd::Error::Malformed { endpoint: client.endpoint().to_string(), detail })
}

/// The ranges of a transaction's answers, if every one is a range.
fn ranges(responses: &[OpResponse]) -> Option<Vec<Range>> {
    responses
        .iter()
        .map(|r| match r {
            OpResponse::Range(range) => Some(range.clone()),
            _ => None,
        })
        .collect()
}

/// What follows the queue's prefix in the keys of special tickets (see `Ticket::is_special`).
const SPECIAL: u8 = b'+';

/// A claim in the queue, as its key's value says: `ROLE\nPREFERRED\nRECORD`, the role asked for
/// (empty to fill in order), the name it asks back first (empty for none) and the node's record.
/// Earlier versions wrote nothing there: a claim filling in order.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ticket {
    choice: Choice,
    preferred: Option<Slot>,
    record: Vec<u8>,
}

impl Ticket {
    /// Whether a claim asks for more than the next free slot, so that the claims behind it must
    /// read its ticket: a role of several, or a name back.
    fn is_special(request: &Request) -> bool {
        request.preferred.is_some() || (request.roles.len() > 1 && request.choice != Choice::Fill)
    }

    fn of(request: &Request) -> Vec<u8> {
        let role = match request.choice {
            Choice::Fill => "",
            Choice::Role(role) => request.roles.get(role).map_or("", |r| r.name.as_str()),
        };
        let preferred = request.preferred.map(|s| s.name(request.roles)).unwrap_or_default();
        [role.as_bytes(), b"\n", preferred.as_bytes(), b"\n", request.value].concat()
    }

    /// `None` for a role this Corefile does not have: no rival of ours.
    fn read(roles: &[Role], value: &[u8]) -> Option<Ticket> {
        let mut parts = value.splitn(3, |&b| b == b'\n');
        let (role, preferred, record) =
            (parts.next()?, parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        let choice = match role {
            b"" => Choice::Fill,
            name => Choice::Role(roles.iter().position(|r| r.name.as_bytes() == name)?),
        };
        let preferred = std::str::from_utf8(preferred).ok().and_then(|name| {
            roles.iter().enumerate().find_map(|(role, r)| Some(Slot { role, id: r.pattern.id_of(name)? }))
        });
        Some(Ticket { choice, preferred, record: record.to_vec() })
    }
}

/// The claims created before `queued_at`, oldest first. Two tickets with one record are one node
/// that tried before (its old lease could not be revoked, or it restarted): every node counts it
/// once, at its first ticket. This node's own earlier ticket is its place: the claims behind it
/// are not ahead of it.
fn claims_ahead(request: &Request, queue: &[KeyValue], queued_at: i64) -> Vec<Ticket> {
    let mut queued: Vec<&KeyValue> = queue.iter().filter(|kv| kv.create_revision < queued_at).collect();
    queued.sort_by_key(|kv| kv.create_revision);
    let mut seen = std::collections::HashSet::new();
    let mut ahead = Vec::new();
    for ticket in queued.into_iter().filter_map(|kv| Ticket::read(request.roles, &kv.value)) {
        if ticket.record == request.value {
            break;
        }
        if ticket.record.is_empty() || seen.insert(ticket.record.clone()) {
            ahead.push(ticket);
        }
    }
    ahead
}

/// The claims ahead of a new ticket, from how many tickets there were and the special ones, read
/// whole: every other fills in order. Special ones are taken first, as if they were the oldest,
/// since the count does not say where they stand among the others; that matters only once a role
/// is nearly full. A plain ticket of a node whose record is already a name (it takes its name
/// back) counts as one claim more: the nodes behind it aim one slot higher, and a slot below is
/// left for a later claim.
fn counted_ahead(request: &Request, count: i64, special: &[KeyValue]) -> Vec<Ticket> {
    let mut ahead = claims_ahead(request, special, i64::MAX);
    let plain = usize::try_from(count).unwrap_or(0).saturating_sub(special.len());
    ahead.extend(std::iter::repeat_n(Ticket { choice: Choice::Fill, preferred: None, record: Vec::new() }, plain));
    ahead
}

/// A key of our role(s) that holds this very record, with its lease: what a crashed run of this
/// node left, or another node given the same address.
fn own_record(request: &Request, names: &[Range], order: &[usize]) -> Option<(Slot, i64)> {
    order.iter().find_map(|&role| {
        let kind = request.roles.get(role)?;
        names.get(role)?.kvs.iter().find_map(|kv| {
            let id = kind.pattern.id_of(std::str::from_utf8(&kv.key).ok()?)?;
            (kind.ids.contains(&id) && kv.value == request.value).then_some((Slot { role, id }, kv.lease))
        })
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Renewal {
    Renewed,
    Abandoned,
    /// Neither within `RENEWAL_WATCH`: a lease so long that its renewals are minutes apart.
    Unknown,
}

/// How long to watch another lease for renewals at most.
const RENEWAL_WATCH: Duration = Duration::from_secs(60);
const RENEWAL_LOOK_EVERY: Duration = Duration::from_millis(250);

/// Whether someone keeps renewing `lease`. A live holder renews at a third of the TTL, as idetcd
/// and etcd's own clients do, and a renewal that fails is retried within seconds: its time to
/// live climbs back before it falls `slack` below two thirds. A crashed holder's only falls.
/// Renewed takes two climbs, since a new etcd leader extends every lease once. Meanwhile this
/// node's own lease is kept alive.
fn renewed_by_someone(client: &mut etcd::Client, lease: i64, request: &Request) -> Result<Renewal, etcd::Error> {
    let Some(first) = client.lease_ttl(lease)? else { return Ok(Renewal::Abandoned) };
    let slack = (first.granted / 4).clamp(2, 8);
    let due = first.granted * 2 / 3 - slack;
    let started = Instant::now();
    let mut renewed_own = started;
    let (mut last, mut climbs) = (first.remaining, 0);
    log::debug!("claim: this node's record is on lease {lease:x}; watching whether anyone renews it");
    loop {
        if last <= due {
            return Ok(Renewal::Abandoned);
        }
        if started.elapsed() >= RENEWAL_WATCH {
            return Ok(Renewal::Unknown);
        }
        std::thread::sleep(RENEWAL_LOOK_EVERY);
        if renewed_own.elapsed() >= request.renew_every {
            renewed_own = Instant::now();
            client.lease_keepalive(request.lease)?;
        }
        match client.lease_ttl(lease)? {
            None => return Ok(Renewal::Abandoned),
            Some(now) if now.remaining > last => {
                climbs += 1;
                if climbs == 2 {
                    return Ok(Renewal::Renewed);
                }
                last = now.remaining;
            }
            Some(now) => last = now.remaining,
        }
    }
}

/// One role as a claim sees it: its IDs, and which of them are taken, with their values.
struct Space<'v> {
    ids: std::ops::RangeInclusive<u32>,
    taken: BTreeMap<u32, &'v [u8]>,
}

impl Space<'_> {
    fn is_free(&self, id: u32) -> bool {
        self.ids.contains(&id) && !self.taken.contains_key(&id)
    }

    fn free_count(&self) -> u64 {
        u64::from(self.ids.end() - self.ids.start()) + 1 - self.taken.len() as u64
    }

    fn free(&self) -> impl Iterator<Item = u32> + '_ {
        self.ids.clone().filter(|id| !self.taken.contains_key(id))
    }
}

fn spaces<'v>(roles: &[Role], names: &'v [Range]) -> Vec<Space<'v>> {
    roles
        .iter()
        .zip(names)
        .map(|(role, view)| Space {
            ids: role.ids.clone(),
            taken: view
                .kvs
                .iter()
                .filter_map(|kv| {
                    let id = role.pattern.id_of(std::str::from_utf8(&kv.key).ok()?)?;
                    role.ids.contains(&id).then_some((id, kv.value.as_slice()))
                })
                .collect(),
        })
        .collect()
}

/// The free slots this claim may take, in the order it takes them: its role's, or with `Fill`
/// every role's, one role after another.
fn free_slots<'a>(spaces: &'a [Space], order: &'a [usize]) -> impl Iterator<Item = Slot> + 'a {
    order.iter().flat_map(move |&role| spaces[role].free().map(move |id| Slot { role, id }))
}

/// This claim's place among the free slots it may take (see `free_slots`), after the claims ahead
/// of it took theirs. A claim whose record is already there takes its name back and nothing
/// else; one that asks for its old slot back takes that, if free (it is set aside in `spaces`,
/// for this claim to skip). Every other takes the first slot nobody ahead of it took, in its role
/// or, filling, in the first role that has one. Within a role those always take from the front,
/// so a count per role says what is taken. Past the end means every slot is spoken for.
fn place(spaces: &mut [Space], ahead: &[Ticket], mine: Choice) -> (usize, Vec<Slot>) {
    let records: Vec<std::collections::HashSet<&[u8]>> =
        spaces.iter().map(|s| s.taken.values().copied().collect()).collect();
    let mut reserved = Vec::new();
    let mut rest = Vec::new();
    for ticket in ahead {
        let own = !ticket.record.is_empty()
            && (0..spaces.len()).any(|r| ticket.choice.may_take(r) && records[r].contains(ticket.record.as_slice()));
        let preferred = ticket
            .preferred
            .filter(|s| ticket.choice.may_take(s.role) && spaces.get(s.role).is_some_and(|sp| sp.is_free(s.id)));
        match (own, preferred) {
            (true, _) => {}
            (false, Some(slot)) => reserved.push(slot),
            (false, None) => rest.push(ticket.choice),
        }
    }
    for slot in &reserved {
        spaces[slot.role].taken.insert(slot.id, b"");
    }
    let mut taken = vec![0u64; spaces.len()];
    let first_open = |taken: &[u64]| (0..spaces.len()).find(|&r| taken[r] < spaces[r].free_count());
    for choice in rest {
        let role = match choice {
            Choice::Role(role) => Some(role),
            Choice::Fill => first_open(&taken),
        };
        if let Some(count) = role.and_then(|r| taken.get_mut(r)) {
            *count += 1;
        }
    }
    let place = match mine {
        Choice::Role(role) => taken.get(role).copied().unwrap_or(0),
        Choice::Fill => match first_open(&taken) {
            Some(role) => spaces[..role].iter().map(Space::free_count).sum::<u64>() + taken[role],
            None => spaces.iter().map(Space::free_count).sum(),
        },
    };
    (usize::try_from(place).unwrap_or(usize::MAX), reserved)
}

/// The slots one claim transaction tries, in order: the preferred one if free, then from this
/// claim's place among the free slots on (see `place`), then the free ones just below; last, the
/// slots set aside for claims ahead that asked for them back, in case those failed: a slot left
/// empty is a gap in the job.
fn slots_to_try(
    spaces: &mut [Space],
    order: &[usize],
    ahead: &[Ticket],
    choice: Choice,
    preferred: Option<Slot>,
    window: usize,
) -> Vec<Slot> {
    let preferred = preferred.filter(|s| order.contains(&s.role) && spaces[s.role].is_free(s.id));
    let (place, reserved) = place(spaces, ahead, choice);
    let mut slots = candidates(free_slots(spaces, order), preferred, place, window);
    let room = window.saturating_sub(slots.len());
    slots.extend(reserved.into_iter().filter(|s| order.contains(&s.role) && Some(*s) != preferred).take(room));
    slots
}

/// Up to `window` free slots in the order to try them: the preferred one, then from the `place`-th
/// free slot on, the ones before it being left to the claims ahead; then the free slots just
/// below, in case a claim ahead fails. Walks at most `place + window` slots, never whole ranges.
fn candidates<T: Copy + PartialEq>(
    free: impl Iterator<Item = T>,
    preferred: Option<T>,
    place: usize,
    window: usize,
) -> Vec<T> {
    let mut out = Vec::with_capacity(window);
    out.extend(preferred);
    let room = window.saturating_sub(out.len());
    // Ours from the `place`-th free slot on; then, as fallbacks, the free slots just below it.
    let mut mine = Vec::with_capacity(room);
    let mut below = std::collections::VecDeque::with_capacity(room);
    for (i, slot) in free.filter(|s| Some(*s) != preferred).enumerate() {
        if room == 0 {
            break;
        }
        if i < place {
            if below.len() == room {
                below.pop_front();
            }
            below.push_back(slot);
        } else {
            mine.push(slot);
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

/// Why a node cannot claim: every slot it may take is held.
fn full(roles: &[Role], choice: Choice) -> String {
    let span = |role: &Role| format!("from {} to {}", role.ids.start(), role.ids.end());
    match (choice, roles) {
        (_, [only]) => {
            format!("every ID {} is taken: the cluster already has its limit of {} nodes", span(only), only.limit())
        }
        (Choice::Role(role), _) => match roles.get(role) {
            Some(r) => format!(
                "every ID of role {} ({}) is taken: the cluster already has its limit of {} {} nodes",
                r.name,
                span(r),
                r.limit(),
                r.name
            ),
            None => "no such role".to_string(),
        },
        (Choice::Fill, _) => {
            let each: Vec<String> = roles.iter().map(|r| format!("{} {}", r.name, r.limit())).collect();
            let total: u64 = roles.iter().map(Role::limit).sum();
            format!(
                "every ID of every role is taken: the cluster already has its limit of {total} nodes ({})",
                each.join(", ")
            )
        }
    }
}

/// Put our key if absent, for each slot in turn; leave the queue with it, and read what changed
/// among the names since they were read at `read_at`. When every slot is taken, read the names
/// and the claims still ahead of ours.
fn chain(request: &Request, keys: &Keys, slots: &[Slot], queued_at: i64, read_at: i64) -> Txn {
    let mut failure: Vec<Op> = keys.read_names().chain([Op::Range(keys.ahead(queued_at))]).collect();
    for &slot in slots.iter().rev() {
        let name = slot.name(request.roles).into_bytes();
        let success = take(request, keys, name.clone(), read_at);
        let txn = Txn { compare: vec![Compare::Absent(name)], success, failure };
        failure = vec![Op::Txn(Box::new(txn))];
    }
    match failure.pop() {
        Some(Op::Txn(txn)) => *txn,
        _ => unreachable!("chain is called with at least one slot"),
    }
}

/// Move our old record's key to the new lease, if it still holds our record.
fn takeover(request: &Request, keys: &Keys, slot: Slot, queued_at: i64, read_at: i64) -> Txn {
    let name = slot.name(request.roles).into_bytes();
    Txn {
        compare: vec![Compare::ValueIs(name.clone(), request.value.to_vec())],
        success: take(request, keys, name, read_at),
        failure: keys.read_names().chain([Op::Range(keys.ahead(queued_at))]).collect(),
    }
}

/// Takes the name and leaves the queue, then, for `FirstRead::AsOfClaim`, reads the names changed
/// since `read_at` (after the put, so our own key is among them); last, counts the claims left in
/// the queue.
fn take(request: &Request, keys: &Keys, name: Vec<u8>, read_at: i64) -> Vec<Op> {
    let mut ops = vec![
        Op::Put { key: name, value: request.value.to_vec(), lease: request.lease },
        Op::Delete { key: keys.mine.clone() },
    ];
    if request.first_read == FirstRead::AsOfClaim {
        ops.extend(keys.names_changed_since(read_at));
    }
    ops.push(Op::Range(RangeRequest { count_only: true, ..keys.queue.clone() }));
    ops
}

/// Every role's names as read (at the revision of the first range), with this node's own key as
/// the claim put it: the watch from that revision repeats the put, to no effect.
fn with_own(names: Vec<Range>, role: usize, own: KeyValue) -> (i64, Vec<Vec<KeyValue>>) {
    let revision = names.first().map_or(0, |r| r.revision);
    let mut roles: Vec<Vec<KeyValue>> = names.into_iter().map(|r| r.kvs).collect();
    if let Some(kvs) = roles.get_mut(role) {
        match kvs.binary_search_by(|kv| kv.key.as_slice().cmp(&own.key)) {
            // Our record from an earlier run, moved to this lease.
            Ok(at) => kvs[at] = KeyValue { create_revision: kvs[at].create_revision, ..own },
            Err(at) => kvs.insert(at, own),
        }
    }
    (revision, roles)
}

/// Every role's names as of the claim: `read` (every key, read earlier) updated with `changed`
/// (the keys modified since, read by the claim, with how many keys each role has then). Keys
/// deleted meanwhile are not among the changes; when the count says there were some, `None`.
/// Otherwise one list per role, in key order, at the claim's revision.
fn up_to_date(read: &[Range], changed: &[Range]) -> Option<(i64, Vec<Vec<KeyValue>>)> {
    let revision = changed.first()?.revision;
    if read.len() != changed.len() || changed.iter().any(|c| c.revision != revision) {
        return None;
    }
    let mut roles = Vec::with_capacity(read.len());
    for (read, changed) in read.iter().zip(changed) {
        let mut keys: BTreeMap<&[u8], &KeyValue> = read.kvs.iter().map(|kv| (kv.key.as_slice(), kv)).collect();
        keys.extend(changed.kvs.iter().map(|kv| (kv.key.as_slice(), kv)));
        if i64::try_from(keys.len()).ok()? != changed.count {
            return None;
        }
        roles.push(keys.into_values().cloned().collect());
    }
    Some((revision, roles))
}

#[derive(Debug, PartialEq, Eq)]
enum Walk<'a> {
    /// The transaction at this depth put our key; here is what it read.
    Won(usize, &'a [OpResponse]),
    /// Every level failed; here is what the innermost one read.
    Lost(&'a [OpResponse]),
}

fn walk(answer: &etcd::TxnResponse) -> Walk<'_> {
    let mut level = 0;
    let mut txn = answer;
    loop {
        if txn.succeeded {
            return Walk::Won(level, &txn.responses);
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
    use crate::etcd::TxnResponse;
    use crate::pattern::Pattern;

    fn role(name: &str, ids: std::ops::RangeInclusive<u32>) -> Role {
        Role { name: name.into(), pattern: Pattern::parse(&format!("{name}{{{{.ID}}}}.tf.local.")).unwrap(), ids }
    }

    fn space(taken: &[u32], ids: std::ops::RangeInclusive<u32>) -> Space<'static> {
        Space { ids, taken: taken.iter().map(|&id| (id, &b"{}"[..])).collect() }
    }

    fn kv(key: &str, value: &str, create_revision: i64) -> KeyValue {
        KeyValue { key: key.into(), value: value.into(), create_revision, mod_revision: create_revision, lease: 0 }
    }

    /// The chief, ps and worker roles of the README, IDs from 0.
    fn job() -> Vec<Role> {
        vec![role("chief", 0..=0), role("ps", 0..=1), role("worker", 0..=15)]
    }

    fn names(roles: &[Role], taken: &[&[u32]]) -> Vec<Range> {
        roles
            .iter()
            .zip(taken)
            .map(|(r, ids)| Range {
                kvs: ids.iter().map(|&id| kv(&r.pattern.name(id), "{}", 1)).collect(),
                ..Range::default()
            })
            .collect()
    }

    /// The slot a claim aims at first.
    fn aim(roles: &[Role], taken: &[&[u32]], ahead: &[Choice], mine: Choice) -> Option<String> {
        aim_behind(roles, taken, &tickets(ahead), mine)
    }

    /// Plain tickets of other nodes asking for `choices`.
    fn tickets(choices: &[Choice]) -> Vec<Ticket> {
        choices
            .iter()
            .map(|&choice| Ticket { choice, preferred: None, record: b"{\"ipv4\":\"10.9.9.9\"}".to_vec() })
            .collect()
    }

    fn aim_behind(roles: &[Role], taken: &[&[u32]], ahead: &[Ticket], mine: Choice) -> Option<String> {
        try_behind(roles, taken, ahead, mine, WINDOW).first().cloned()
    }

    /// The names a claim tries, in order.
    fn try_behind(roles: &[Role], taken: &[&[u32]], ahead: &[Ticket], mine: Choice, window: usize) -> Vec<String> {
        let names = names(roles, taken);
        let mut spaces = spaces(roles, &names);
        let order = mine.order(roles.len());
        let slots = slots_to_try(&mut spaces, &order, ahead, mine, None, window);
        slots.into_iter().map(|s| s.name(roles)).collect()
    }

    #[test]
    fn candidates_start_past_the_claims_ahead() {
        type Case = (&'static [u32], std::ops::RangeInclusive<u32>, Option<u32>, usize, usize, &'static [u32]);
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
            (&[1, 3], 1..=5, Some(2), 0, 2, &[2, 4]),
            (&[0, 6], 0..=3, None, 0, 8, &[1, 2, 3]),
        ];
        for (t, ids, preferred, ahead, window, want) in cases {
            let space = space(t, ids.clone());
            let got = candidates(space.free(), preferred, ahead, window);
            assert_eq!(got, want, "taken {t:?} in {ids:?}, preferred {preferred:?}, {ahead} ahead");
        }
    }

    #[test]
    fn nodes_starting_together_aim_at_different_ids() {
        let roles = [role("worker", 1..=100)];
        let aims: Vec<String> =
            (0..100).map(|n| aim(&roles, &[&[]], &vec![Choice::Fill; n], Choice::Fill).unwrap()).collect();
        assert_eq!(aims, (1..=100).map(|id| format!("worker{id}.tf.local.")).collect::<Vec<_>>());
    }

    #[test]
    fn filling_takes_the_roles_in_order() {
        // Six nodes started together: chief0, ps0, ps1, worker0, worker1, worker2.
        let aims: Vec<String> =
            (0..6).map(|n| aim(&job(), &[&[], &[], &[]], &vec![Choice::Fill; n], Choice::Fill).unwrap()).collect();
        assert_eq!(aims, ["chief0", "ps0", "ps1", "worker0", "worker1", "worker2"].map(|n| format!("{n}.tf.local.")),);
        use Choice::{Fill, Role as R};
        const CHIEF: usize = 0;
        const PS: usize = 1;
        const WORKER: usize = 2;
        const ALL: [u32; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
        type Case = (&'static [&'static [u32]], &'static [Choice], Choice, Option<&'static str>);
        let cases: [Case; 8] = [
            // ps1 died: the next node takes it.
            (&[&[0], &[0], &[0, 1, 2]], &[], Fill, Some("ps1")),
            (&[&[0], &[0], &[0, 1, 2]], &[Fill], Fill, Some("worker3")),
            // Claims pinned to a role take from it; filling ones from the first open role.
            (&[&[], &[], &[]], &[R(WORKER), Fill], Fill, Some("ps0")),
            (&[&[], &[], &[]], &[Fill, R(WORKER)], R(WORKER), Some("worker1")),
            (&[&[], &[], &[]], &[R(PS), R(PS)], Fill, Some("chief0")),
            (&[&[], &[], &[]], &[R(PS), R(PS), R(CHIEF)], Fill, Some("worker0")),
            (&[&[0], &[0, 1], &[]], &[], R(PS), None),
            (&[&[0], &[0, 1], &ALL], &[], Fill, None),
        ];
        for (taken, ahead, mine, want) in cases {
            let want = want.map(|n| format!("{n}.tf.local."));
            assert_eq!(aim(&job(), taken, ahead, mine), want, "taken {taken:?}, ahead {ahead:?}, {mine:?}");
        }
        // Every slot taken by a claim ahead: the highest free ones, in case one fails.
        let highest = try_behind(&job(), &[&[0], &[0, 1], &[]], &tickets(&[R(WORKER); 16]), R(WORKER), WINDOW);
        let want: Vec<String> = (16 - WINDOW as u32..16).map(|id| format!("worker{id}.tf.local.")).collect();
        assert_eq!(highest, want);
    }

    #[test]
    fn candidates_stay_cheap_for_huge_limits() {
        let space = space(&[1, 2], 1..=u32::MAX);
        assert_eq!(candidates(space.free(), None, 1, 4), [4, 5, 6, 7]);
        assert_eq!(space.free_count(), u64::from(u32::MAX) - 2);
    }

    #[test]
    fn the_queue_says_who_is_ahead_and_for_which_role() {
        let roles = job();
        let request = Request {
            roles: &roles,
            choice: Choice::Role(1),
            value: b"{\"ipv4\":\"10.0.0.1\"}",
            lease: 1,
            renew_every: Duration::from_secs(1),
            preferred: Some(Slot { role: 1, id: 1 }),
            first_read: FirstRead::AsOfClaim,
        };
        assert_eq!(Ticket::of(&request), b"ps\nps1.tf.local.\n{\"ipv4\":\"10.0.0.1\"}");
        let fill = Request { choice: Choice::Fill, preferred: None, ..request };
        assert_eq!(Ticket::of(&fill), b"\n\n{\"ipv4\":\"10.0.0.1\"}");
        let queue = [
            kv("q/3", "worker\n\n{\"ipv4\":\"10.0.0.3\"}", 30),
            kv("q/1", "", 10),
            kv("q/2", "gpu\n\nx", 20),
            kv("q/4", "ps\nps1.tf.local.\n{\"ipv4\":\"10.0.0.4\"}", 40),
            // An earlier attempt of this very node: its place, and nothing behind it is ahead.
            kv("q/0", "\n\n{\"ipv4\":\"10.0.0.1\"}", 42),
            kv("q/5", "", 50),
        ];
        let ahead = claims_ahead(&fill, &queue, 45);
        assert_eq!(ahead.len(), 3, "{ahead:?}");
        let summary: Vec<(Choice, Option<Slot>)> = ahead.iter().map(|t| (t.choice, t.preferred)).collect();
        assert_eq!(
            summary,
            [(Choice::Fill, None), (Choice::Role(2), None), (Choice::Role(1), Some(Slot { role: 1, id: 1 }))]
        );
        assert!(claims_ahead(&fill, &queue, 10).is_empty());
        // One node's two tickets (an old lease that outlived a failed attempt) count once, at the
        // first; this node's own earlier ticket is its place.
        let queue = [
            kv("q/a", "\n\nA", 10),
            kv("q/n1", "\n\nN", 20),
            kv("q/x", "\n\nX", 30),
            kv("q/n2", "\n\nN", 40),
            kv("q/m", "\n\nM", 50),
        ];
        let records = |request: &Request, queued_at| -> Vec<Vec<u8>> {
            claims_ahead(request, &queue, queued_at).into_iter().map(|t| t.record).collect()
        };
        let node = |value: &'static [u8]| Request {
            value,
            ..Request {
                roles: &roles,
                choice: Choice::Fill,
                value: b"",
                lease: 1,
                renew_every: Duration::from_secs(1),
                preferred: None,
                first_read: FirstRead::AsOfClaim,
            }
        };
        assert_eq!(records(&node(b"M"), 50), [b"A".to_vec(), b"N".to_vec(), b"X".to_vec()]);
        assert_eq!(records(&node(b"N"), 40), [b"A".to_vec()]);
        assert_eq!(records(&node(b"X"), 30), [b"A".to_vec(), b"N".to_vec()]);
    }

    #[test]
    fn only_claims_that_ask_for_more_than_the_next_slot_are_read_whole() {
        let roles = job();
        let request = |choice, preferred| Request {
            roles: &roles,
            choice,
            value: b"{}",
            lease: 1,
            renew_every: Duration::from_secs(1),
            preferred,
            first_read: FirstRead::AsOfClaim,
        };
        let one = [role("worker", 0..=9)];
        let single = |preferred| Request { roles: &one, choice: Choice::Role(0), ..request(Choice::Fill, preferred) };
        let back = Some(Slot { role: 2, id: 3 });
        let cases: [(Request, &[u8]); 5] = [
            (request(Choice::Fill, None), b"chief_claims/chief{{.ID}}.tf.local./7b7d"),
            (request(Choice::Role(1), None), b"chief_claims/chief{{.ID}}.tf.local./+7b7d"),
            (request(Choice::Fill, back), b"chief_claims/chief{{.ID}}.tf.local./+7b7d"),
            // With one role, asking for it is filling in order.
            (single(None), b"worker_claims/worker{{.ID}}.tf.local./7b7d"),
            (single(Some(Slot { role: 0, id: 3 })), b"worker_claims/worker{{.ID}}.tf.local./+7b7d"),
        ];
        for (request, want) in cases {
            let keys = Keys::new(&request);
            assert_eq!(String::from_utf8_lossy(&keys.mine), String::from_utf8_lossy(want));
            let within = |r: &RangeRequest, key: &[u8]| r.start.as_slice() <= key && key < r.end.as_slice();
            assert!(within(&keys.queue, &keys.mine));
            assert_eq!(within(&keys.special, &keys.mine), Ticket::is_special(&request));
            // Earlier versions' tickets, named by their lease, are plain.
            let old = [keys.queue.start.as_slice(), b"000000000000002a"].concat();
            assert!(within(&keys.queue, &old) && !within(&keys.special, &old));
        }

        // Counted: five tickets, of which two special (a ps, a worker that wants worker3 back).
        let special = [
            kv("q/+b", "\nworker3.tf.local.\nB", 20),
            kv("q/+a", "ps\n\nA", 10),
            // Another Corefile's role: no rival, but it was counted.
            kv("q/+c", "gpu\n\nC", 30),
        ];
        let ahead = counted_ahead(&request(Choice::Fill, None), 6, &special);
        let summary: Vec<(Choice, Option<Slot>)> = ahead.iter().map(|t| (t.choice, t.preferred)).collect();
        assert_eq!(
            summary,
            [
                (Choice::Role(1), None),
                (Choice::Fill, Some(Slot { role: 2, id: 3 })),
                (Choice::Fill, None),
                (Choice::Fill, None),
                (Choice::Fill, None)
            ]
        );
        // chief0 and ps1 taken: the ps claim takes ps0, the three plain ones worker0 to worker2
        // (worker3 is set aside), and this claim worker4.
        let aim = aim_behind(&roles, &[&[0], &[1], &[]], &ahead, Choice::Fill);
        assert_eq!(aim.as_deref(), Some("worker4.tf.local."));
        assert!(counted_ahead(&request(Choice::Fill, None), 0, &[]).is_empty());
    }

    #[test]
    fn claims_that_take_a_particular_slot_leave_the_others_to_the_rest() {
        let ticket = |choice, preferred: Option<(usize, u32)>, record: &str| Ticket {
            choice,
            preferred: preferred.map(|(role, id)| Slot { role, id }),
            record: record.as_bytes().to_vec(),
        };
        // A node taking its own record back (every taken name holds `{}` here) takes nothing new.
        let back = [ticket(Choice::Fill, None, "{}")];
        assert_eq!(aim_behind(&job(), &[&[0], &[0], &[]], &back, Choice::Fill).as_deref(), Some("ps1.tf.local."));
        // One asking for its old slot back takes that one, if free; the rest fill around it.
        let returning = [ticket(Choice::Role(2), Some((2, 5)), "a")];
        assert_eq!(
            aim_behind(&job(), &[&[0], &[0, 1], &[]], &returning, Choice::Role(2)).as_deref(),
            Some("worker0.tf.local.")
        );
        let returning = [ticket(Choice::Fill, Some((1, 1)), "a")];
        assert_eq!(
            aim_behind(&job(), &[&[0], &[0], &[]], &returning, Choice::Fill).as_deref(),
            Some("worker0.tf.local.")
        );
        // A slot set aside for a claim ahead is still tried, last, in case that claim failed.
        let one = [role("worker", 0..=3)];
        let returning = [ticket(Choice::Fill, Some((0, 1)), "a")];
        let tried: Vec<String> = try_behind(&one, &[&[0]], &returning, Choice::Fill, 8);
        assert_eq!(tried, ["worker2.tf.local.", "worker3.tf.local.", "worker1.tf.local."]);
        // Its old slot taken meanwhile: it fills like any other.
        let returning = [ticket(Choice::Fill, Some((1, 0)), "a")];
        assert_eq!(
            aim_behind(&job(), &[&[0], &[0], &[]], &returning, Choice::Fill).as_deref(),
            Some("worker0.tf.local.")
        );
        assert_eq!(aim_behind(&job(), &[&[], &[0], &[]], &returning, Choice::Fill).as_deref(), Some("ps1.tf.local."));
    }

    #[test]
    fn spaces_ignore_keys_off_the_pattern_and_out_of_range() {
        let roles = [role("worker", 1..=5)];
        let view = Range {
            revision: 9,
            count: 4,
            kvs: vec![
                kv("worker1.tf.local.", "{}", 1),
                kv("worker01.tf.local.", "{}", 1),
                kv("worker2x.tf.local.", "{}", 1),
                kv("worker7.tf.local.", "{}", 1),
            ],
        };
        let spaces = spaces(&roles, std::slice::from_ref(&view));
        assert_eq!(spaces[0].taken.keys().copied().collect::<Vec<_>>(), [1]);
        assert_eq!(spaces[0].free_count(), 4);
    }

    #[test]
    fn a_full_cluster_says_which_limit() {
        let one = [role("worker", 1..=5)];
        assert_eq!(
            full(&one, Choice::Fill),
            "every ID from 1 to 5 is taken: the cluster already has its limit of 5 nodes"
        );
        assert_eq!(
            full(&job(), Choice::Role(1)),
            "every ID of role ps (from 0 to 1) is taken: the cluster already has its limit of 2 ps nodes"
        );
        assert_eq!(
            full(&job(), Choice::Fill),
            "every ID of every role is taken: the cluster already has its limit of 19 nodes (chief 1, ps 2, worker 16)"
        );
    }

    #[test]
    fn chain_nests_one_level_per_slot_and_leaves_the_queue() {
        let roles =
            [Role { name: "w".into(), pattern: Pattern::parse("w{{.ID}}.z.").unwrap(), ids: 1..=5 }, role("ps", 0..=1)];
        let request = Request {
            roles: &roles,
            choice: Choice::Fill,
            value: b"{}",
            lease: 0x2a,
            renew_every: Duration::from_secs(1),
            preferred: None,
            first_read: FirstRead::AsOfClaim,
        };
        let keys = Keys::new(&request);
        // Named by the record ("{}"), so that every try of one node has one place.
        assert_eq!(keys.mine, b"w_claims/w{{.ID}}.z./7b7d");
        assert_eq!(
            (keys.queue.start.as_slice(), keys.queue.end.as_slice()),
            (&b"w_claims/w{{.ID}}.z./"[..], &b"w_claims/w{{.ID}}.z.0"[..])
        );
        let (start, end) = roles[0].pattern.key_range();
        assert!(!(start.as_bytes()..end.as_bytes()).contains(&keys.mine.as_slice()), "outside the name range");
        let txn = chain(&request, &keys, &[Slot { role: 0, id: 2 }, Slot { role: 1, id: 0 }], 17, 12);
        let Compare::Absent(key) = &txn.compare[0] else { panic!() };
        assert_eq!(key, b"w2.z.");
        // After the put, every role's names changed since the names were read; last, the claims
        // left in the queue, counted.
        assert!(matches!(
            &txn.success[..],
            [
                Op::Put { lease: 0x2a, .. },
                Op::Delete { key },
                Op::Range(RangeRequest { min_mod_revision: 13, .. }),
                Op::Range(RangeRequest { min_mod_revision: 13, .. }),
                Op::Range(RangeRequest { count_only: true, start, .. }),
            ] if *key == keys.mine && *start == keys.queue.start
        ));
        // A node that will watch reads no names in the claim: the watch brings what changed.
        let watching = Request { first_read: FirstRead::ToBeWatched, ..request };
        let watched = chain(&watching, &keys, &[Slot { role: 0, id: 2 }], 17, 12);
        assert!(matches!(
            &watched.success[..],
            [Op::Put { .. }, Op::Delete { .. }, Op::Range(RangeRequest { count_only: true, .. })]
        ));
        let Op::Txn(inner) = &txn.failure[0] else { panic!() };
        let Compare::Absent(key) = &inner.compare[0] else { panic!() };
        assert_eq!(key, b"ps0.tf.local.");
        assert!(matches!(
            &inner.failure[..],
            [Op::Range(_), Op::Range(_), Op::Range(RangeRequest { max_create_revision: 16, .. })]
        ));
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
        assert_eq!(walk(&won_at_2), Walk::Won(2, &[OpResponse::Put { revision: 9 }, OpResponse::Delete]));
        let range = Range { revision: 5, kvs: vec![], count: 0 };
        let lost = TxnResponse {
            succeeded: false,
            responses: vec![OpResponse::Txn(TxnResponse {
                succeeded: false,
                responses: vec![OpResponse::Range(range.clone()), OpResponse::Range(range.clone())],
            })],
        };
        assert_eq!(walk(&lost), Walk::Lost(&[OpResponse::Range(range.clone()), OpResponse::Range(range)]));
        assert_eq!(walk(&TxnResponse { succeeded: true, responses: vec![] }), Walk::Won(0, &[]));
    }

    #[test]
    fn the_claim_brings_the_names_read_up_to_date_unless_some_were_deleted() {
        let at = |revision: i64, count: i64, kvs: &[(&str, &str, i64)]| Range {
            revision,
            count,
            kvs: kvs.iter().map(|&(key, value, revision)| kv(key, value, revision)).collect(),
        };
        type Keys = &'static [(&'static str, &'static str, i64)];
        // What the names were at the read (revision 10), what changed by the claim (20, with the
        // count then), and the listing: keys and values per role, or `None`.
        type Case =
            (&'static [(i64, Keys)], &'static [(i64, i64, Keys)], Option<(i64, &'static [&'static [&'static str]])>);
        let cases: [Case; 8] = [
            // Nothing but our own put.
            (
                &[(2, &[("a", "1", 3), ("b", "2", 4)])],
                &[(20, 3, &[("c", "me", 20)])],
                Some((20, &[&["a=1", "b=2", "c=me"]])),
            ),
            // Another node joined, and one changed its record.
            (
                &[(2, &[("a", "1", 3), ("b", "2", 4)])],
                &[(20, 4, &[("b", "3", 15), ("d", "4", 12), ("c", "me", 20)])],
                Some((20, &[&["a=1", "b=3", "c=me", "d=4"]])),
            ),
            // One left: the count is lower than the keys known, and which one left is unknown.
            (&[(2, &[("a", "1", 3), ("b", "2", 4)])], &[(20, 2, &[("c", "me", 20)])], None),
            // One left and another joined: the same number of keys, but the count tells.
            (&[(2, &[("a", "1", 3), ("b", "2", 4)])], &[(20, 3, &[("c", "me", 20), ("d", "4", 12)])], None),
            // Deleted and put again: among the changes, counted once.
            (&[(1, &[("a", "1", 3)])], &[(20, 2, &[("a", "5", 14), ("c", "me", 20)])], Some((20, &[&["a=5", "c=me"]]))),
            // Several roles: each its own.
            (
                &[(1, &[("a", "1", 3)]), (0, &[])],
                &[(20, 1, &[]), (20, 1, &[("p", "me", 20)])],
                Some((20, &[&["a=1"], &["p=me"]])),
            ),
            // The claim's reads at different revisions, or not one per role: no listing.
            (&[(1, &[("a", "1", 3)]), (0, &[])], &[(20, 1, &[]), (21, 1, &[("p", "me", 20)])], None),
            (&[(1, &[("a", "1", 3)]), (0, &[])], &[(20, 1, &[])], None),
        ];
        for (read, changed, want) in cases {
            let read: Vec<Range> = read.iter().map(|&(count, kvs)| at(10, count, kvs)).collect();
            let changed: Vec<Range> = changed.iter().map(|&(revision, count, kvs)| at(revision, count, kvs)).collect();
            let got = up_to_date(&read, &changed).map(|(revision, roles)| {
                let roles: Vec<Vec<String>> = roles
                    .iter()
                    .map(|kvs| {
                        kvs.iter()
                            .map(|kv| {
                                format!("{}={}", String::from_utf8_lossy(&kv.key), String::from_utf8_lossy(&kv.value))
                            })
                            .collect()
                    })
                    .collect();
                (revision, roles)
            });
            let want = want.map(|(revision, roles)| {
                (revision, roles.iter().map(|kvs| kvs.iter().map(|s| s.to_string()).collect()).collect())
            });
            assert_eq!(got, want, "read {read:?}, changed {changed:?}");
        }
    }

    #[test]
    fn halves_read_apart_count_as_read_at_the_older_revision() {
        let range = |revision, keys: &[&str]| Range {
            revision,
            count: keys.len() as i64,
            kvs: keys.iter().map(|key| kv(key, "v", 3)).collect(),
        };
        // The second half read before the join (12) and after it (19): the older counts.
        for (second_at, want) in [(12, 12), (19, 15)] {
            let mut names = vec![range(15, &["ps0"]), range(15, &["w1", "w3"])];
            join_halves(&mut names, 1, range(second_at, &["w5", "w9"]));
            let keys: Vec<Vec<&[u8]>> =
                names.iter().map(|r| r.kvs.iter().map(|kv| kv.key.as_slice()).collect()).collect();
            assert_eq!(keys, [vec![&b"ps0"[..]], vec![b"w1", b"w3", b"w5", b"w9"]]);
            assert_eq!(names.iter().map(|r| (r.revision, r.count)).collect::<Vec<_>>(), [(want, 1), (want, 4)]);
        }
    }

    #[test]
    fn a_listing_to_be_watched_holds_the_claimed_name_in_key_order() {
        let names =
            || vec![Range { revision: 7, count: 3, kvs: vec![kv("w1", "a", 2), kv("w3", "me", 4), kv("w5", "c", 6)] }];
        let own = |key: &str| KeyValue { lease: 0x2a, ..kv(key, "me", 9) };
        // A free name: inserted in its place. Our record from an earlier run: moved to the new
        // lease, created when it was first.
        let cases = [
            ("w2", vec![("w1", 2, 0), ("w2", 9, 0x2a), ("w3", 4, 0), ("w5", 6, 0)]),
            ("w3", vec![("w1", 2, 0), ("w3", 4, 0x2a), ("w5", 6, 0)]),
            ("w9", vec![("w1", 2, 0), ("w3", 4, 0), ("w5", 6, 0), ("w9", 9, 0x2a)]),
        ];
        for (claimed, want) in cases {
            let (revision, roles) = with_own(names(), 0, own(claimed));
            assert_eq!(revision, 7);
            let got: Vec<(&str, i64, i64)> = roles[0]
                .iter()
                .map(|kv| (std::str::from_utf8(&kv.key).unwrap(), kv.create_revision, kv.lease))
                .collect();
            assert_eq!(got, want, "{claimed}");
        }
    }
}
