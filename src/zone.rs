//! The zone snapshot: every answer this node can give, precomputed from the members read in etcd.
//!
//! A snapshot is immutable and built off the answering path by the etcd thread; answering threads
//! receive it whole (an `Arc`) and only look names up in it. It is made of parts that change
//! apart: the apex (SOA, NS, the negative answers' SOA) and the service names, rebuilt at every
//! change; each role's members in runs of `CHUNK` IDs; and the members' PTR records in `SHARDS`
//! shards by address. A change rebuilds the apex and the runs and shards it touches, and shares
//! every other part with the snapshot before it, so that it costs the same in a cluster of ten
//! members and of 100 000. A member's name is not stored: it is the pattern with the ID in it, and
//! a question for it is answered by reading the ID out of the name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;

use domain::base::iana::{Class, Rtype};

use crate::config::Role;
use crate::pattern::canonical_id;
use crate::record::Record;
use crate::view::{Slot, Touch};
use crate::wire::{self, Owner, Part, Section, SectionWriter, HEADER_LEN};

/// IDs per run of a role's members: a change copies one run (a few kilobytes) and the list of
/// runs (16 bytes per run).
const CHUNK: u32 = 256;
/// Shards of the PTR records: a change copies one (about 1/256 of the addresses).
const SHARDS: usize = 256;

/// One name's records of one type, ready to send.
#[derive(Clone, Copy, Debug)]
pub struct Rrset {
    pub rtype: Rtype,
    pub section: Section,
}

pub struct Snapshot {
    ready: bool,
    /// The zone apex, lowercase wire form.
    apex: Vec<u8>,
    top: Top,
    /// Per role, its members' answers.
    roles: Vec<Members>,
    /// The members' PTR records, by `shard(address)`; empty until ready.
    pointers: Vec<Arc<Pointers>>,
    /// TTL of the PTR records, which are written as they are sent.
    ttl: u32,
}

/// The apex, the service names and this node's identity: a few names, rebuilt at every change.
struct Top {
    /// Every name here, lowercase wire form, to its RRsets in `rrsets`.
    names: Names,
    rrsets: Vec<Rrset>,
    /// The SOA in the authority section, for NXDOMAIN and NODATA answers: one per length of the
    /// question name's labels in front of the zone, which says where in the question the zone
    /// stands for the SOA's names to point to.
    negative: Box<[Section]>,
    /// This node's name as a CH TXT answer, for `id.server.` and `hostname.bind.`.
    identity: Option<Section>,
    arena: Vec<u8>,
}

/// One role's members' answers.
#[derive(Clone)]
struct Members {
    /// The member label's text before and after the ID, lowercase: `worker` and ``.
    prefix: Box<[u8]>,
    suffix: Box<[u8]>,
    /// The runs holding a member, by number (`id / CHUNK`), in order.
    chunks: Vec<(u32, Arc<Chunk>)>,
}

/// The A and AAAA records of up to `CHUNK` consecutive IDs. A member's records are its A record
/// (16 bytes), its AAAA record (28 bytes), or both in that order: their length says which.
struct Chunk {
    /// Which of the run's IDs are members (a member may have no address at all).
    present: [u64; CHUNK as usize / 64],
    /// Where each ID's records start in `arena`; the next ID's start ends them.
    starts: [u16; CHUNK as usize + 1],
    arena: Vec<u8>,
}

/// Owner pointer, type, class, TTL, data length, data.
const A_LEN: usize = 2 + 10 + 4;
const AAAA_LEN: usize = 2 + 10 + 16;

/// The PTR records of the addresses in one shard: each member's address here, with the member,
/// in order, so that an address's records are the run of its members'. The records themselves
/// are written as they are sent (`Pointed`): kept ready, their names cost 36 bytes a member, a
/// fifth of what a member costs in all.
#[derive(Default)]
struct Pointers {
    owners: Vec<(IpAddr, Holder)>,
}

/// A member as the PTR shards hold it: smaller than a `Slot`, since there are many.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Holder {
    id: u32,
    role: u16,
}

impl From<Slot> for Holder {
    fn from(slot: Slot) -> Holder {
        // Roles are a Corefile's few lines.
        Holder { id: slot.id, role: slot.role as u16 }
    }
}

pub enum Found<'a> {
    Name(Rrsets<'a>),
    NxDomain,
    OutOfZone,
}

/// A name's RRsets.
#[derive(Clone, Copy)]
pub enum Rrsets<'a> {
    /// Listed, in the bytes they are in.
    Listed { rrsets: &'a [Rrset], arena: &'a [u8] },
    /// A member's A and AAAA records (see `Chunk`).
    Member(&'a [u8]),
    /// PTR records, one per member with the address.
    Pointers(Pointed<'a>),
}

impl<'a> Rrsets<'a> {
    /// The RRset of type `rtype`; for ANY, the name's first one (RFC 8482).
    pub fn get(&self, rtype: Rtype) -> Option<Answer<'a>> {
        match *self {
            Rrsets::Listed { rrsets, arena } => {
                let rrset = match rtype {
                    Rtype::ANY => rrsets.first(),
                    _ => rrsets.iter().find(|r| r.rtype == rtype),
                };
                rrset.map(|r| answer(arena, r.section))
            }
            Rrsets::Member(records) => {
                let (a, aaaa) = match records.len() {
                    A_LEN => (Some(records), None),
                    AAAA_LEN => (None, Some(records)),
                    _ => records.split_at_checked(A_LEN).map_or((None, None), |(a, aaaa)| (Some(a), Some(aaaa))),
                };
                let records = match rtype {
                    Rtype::A => a,
                    Rtype::AAAA => aaaa,
                    Rtype::ANY => a.or(aaaa),
                    _ => None,
                }?;
                Some(Answer::of(records, 1))
            }
            Rrsets::Pointers(pointed) => matches!(rtype, Rtype::PTR | Rtype::ANY).then(|| Answer::written(pointed)),
        }
    }
}

/// Records to send: how many go in each section, and their bytes.
#[derive(Clone, Copy, Default)]
pub struct Answer<'a> {
    pub section: Section,
    pub body: Body<'a>,
}

/// The bytes of an answer's records.
#[derive(Clone, Copy)]
pub enum Body<'a> {
    /// Ready-made.
    Ready(&'a [u8]),
    /// Written as they are sent, all in the answer section.
    Pointers(Pointed<'a>),
}

impl Default for Body<'_> {
    fn default() -> Self {
        Body::Ready(&[])
    }
}

impl Body<'_> {
    /// Hands the bytes over in order, in pieces.
    pub fn write(&self, mut out: impl FnMut(&[u8])) {
        match self {
            Body::Ready(bytes) => out(bytes),
            Body::Pointers(pointed) => pointed.write(out),
        }
    }
}

impl<'a> Answer<'a> {
    /// `count` answer records, all of them required.
    fn of(records: &'a [u8], count: u16) -> Answer<'a> {
        let len = records.len() as u32;
        Answer { section: Section { start: 0, len, required: len, counts: [count, 0, 0] }, body: Body::Ready(records) }
    }

    fn written(pointed: Pointed<'a>) -> Answer<'a> {
        let apex = &pointed.snapshot.apex;
        let (count, len) = pointed.names().fold((0u16, 0u32), |(count, len), (members, digits)| {
            (count.saturating_add(1), len + (wire::FIXED_AT_QUESTION + members.name_len(&digits, apex)) as u32)
        });
        Answer {
            section: Section { start: 0, len, required: len, counts: [count, 0, 0] },
            body: Body::Pointers(pointed),
        }
    }
}

fn answer(arena: &[u8], section: Section) -> Answer<'_> {
    let start = section.start as usize;
    Answer { section, body: Body::Ready(arena.get(start..start + section.len as usize).unwrap_or(&[])) }
}

/// The PTR records of one address: one per member with it, naming the member, the owner being
/// the question. Written without allocating, as everything on the answering path.
#[derive(Clone, Copy)]
pub struct Pointed<'a> {
    owners: &'a [(IpAddr, Holder)],
    /// For the roles' labels, the apex and the TTL: one pointer, as answers are copied about.
    snapshot: &'a Snapshot,
}

impl Pointed<'_> {
    fn write(&self, mut out: impl FnMut(&[u8])) {
        let (apex, ttl) = (&self.snapshot.apex, self.snapshot.ttl);
        for (members, digits) in self.names() {
            // A name is at most 255 bytes.
            let data = members.name_len(&digits, apex) as u16;
            out(&wire::fixed_at_question(Rtype::PTR, Class::IN, ttl, data));
            members.write_name(&digits, apex, &mut out);
        }
    }

    /// Each owner's role and ID in decimal; an owner of a role not in the snapshot has no record.
    fn names(&self) -> impl Iterator<Item = (&Members, Digits)> {
        let roles = &self.snapshot.roles;
        self.owners.iter().filter_map(|(_, owner)| Some((roles.get(usize::from(owner.role))?, Digits::of(owner.id))))
    }
}

/// A number in decimal, without allocating.
struct Digits {
    bytes: [u8; 10],
    start: u8,
}

impl Digits {
    fn of(mut n: u32) -> Digits {
        let mut digits = Digits { bytes: [0; 10], start: 10 };
        loop {
            digits.start -= 1;
            digits.bytes[usize::from(digits.start)] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                return digits;
            }
        }
    }

    fn as_str(&self) -> &[u8] {
        &self.bytes[usize::from(self.start)..]
    }

    fn len(&self) -> usize {
        self.bytes.len() - usize::from(self.start)
    }
}

/// What a snapshot is made of.
pub struct Inputs<'a, M> {
    /// Every role's pattern; they share one zone.
    pub roles: &'a [Role],
    /// TTL of every answer.
    pub ttl: u32,
    /// The SOA serial: the etcd revision of the newest member record, so that nodes which read
    /// the same records give the same serial, whenever they read them.
    pub serial: u32,
    /// How many members, the first by role and ID, the NS records name.
    pub nameservers: u32,
    /// The name this node holds, if it holds one.
    pub own_name: Option<&'a str>,
    /// Per role, its members by ID.
    pub members: &'a [BTreeMap<u32, M>],
}

impl Snapshot {
    /// Before anything was read from etcd: in-zone queries get SERVFAIL, others REFUSED.
    pub fn empty(zone: &str) -> Snapshot {
        Snapshot {
            ready: false,
            apex: zone_apex(zone),
            top: Top {
                names: Names::default(),
                rrsets: vec![],
                negative: Box::default(),
                identity: None,
                arena: vec![],
            },
            roles: vec![],
            pointers: vec![],
            ttl: 0,
        }
    }

    /// Builds every part anew.
    pub fn build<M: AsRef<Record>>(inputs: &Inputs<M>) -> Snapshot {
        let apex = zone_apex(inputs.roles.first().map_or(".", |r| r.pattern.zone()));
        let mut roles: Vec<Members> = inputs.roles.iter().map(Members::new).collect();
        // Sized exactly, counted first: grown by pushing they kept up to twice their size, 0.18 MB
        // at 10 000 members.
        let mut sizes = [0usize; SHARDS];
        for record in inputs.members.iter().take(roles.len()).flat_map(|m| m.values()) {
            record.as_ref().ips().for_each(|ip| sizes[shard(ip)] += 1);
        }
        let mut shards: Vec<Vec<(IpAddr, Holder)>> = sizes.iter().map(|&n| Vec::with_capacity(n)).collect();
        for (role, members) in inputs.members.iter().enumerate().take(roles.len()) {
            let mut ids = members.iter().peekable();
            while let Some((&first, _)) = ids.peek() {
                let number = first / CHUNK;
                let mut run = Vec::with_capacity(CHUNK as usize);
                while let Some((&id, member)) = ids.next_if(|(&id, _)| id / CHUNK == number) {
                    let record = member.as_ref();
                    run.push((id, *record));
                    for ip in record.ips() {
                        shards[shard(ip)].push((ip, Slot { role, id }.into()));
                    }
                }
                roles[role].chunks.push((number, Arc::new(Chunk::build(&run, inputs.ttl))));
            }
        }
        let pointers = shards
            .into_iter()
            .map(|mut owners| {
                owners.sort_unstable();
                Arc::new(Pointers { owners })
            })
            .collect();
        let top = Top::build(&apex, inputs);
        Snapshot { ready: true, apex, top, roles, pointers, ttl: inputs.ttl }
    }

    /// The snapshot after the members `touched` changed, `inputs` being the members now: the
    /// apex, and the runs and shards the changes fall in, are built anew; the rest is shared.
    pub fn update<M: AsRef<Record>>(&self, inputs: &Inputs<M>, touched: &[Touch]) -> Snapshot {
        if !self.ready || self.roles.len() != inputs.roles.len() {
            return Snapshot::build(inputs);
        }
        let mut roles = self.roles.clone();
        let runs: BTreeSet<(usize, u32)> =
            touched.iter().filter(|t| t.slot.role < roles.len()).map(|t| (t.slot.role, t.slot.id / CHUNK)).collect();
        for (role, number) in runs {
            let first = number * CHUNK;
            let last = first.saturating_add(CHUNK - 1);
            let run: Vec<(u32, Record)> =
                inputs.members[role].range(first..=last).map(|(&id, m)| (id, *m.as_ref())).collect();
            let chunks = &mut roles[role].chunks;
            let at = chunks.binary_search_by_key(&number, |(n, _)| *n);
            match (at, run.is_empty()) {
                (Ok(i), true) => drop(chunks.remove(i)),
                (Ok(i), false) => chunks[i].1 = Arc::new(Chunk::build(&run, inputs.ttl)),
                (Err(i), false) => chunks.insert(i, (number, Arc::new(Chunk::build(&run, inputs.ttl)))),
                (Err(_), true) => {}
            }
        }
        // Each shard's edits, in order: a member's old addresses go, its new ones come.
        let mut edits: BTreeMap<usize, Vec<(IpAddr, Holder, bool)>> = BTreeMap::new();
        for t in touched.iter().filter(|t| t.slot.role < roles.len()) {
            let owner = Holder::from(t.slot);
            let before = t.before.iter().flat_map(Record::ips).map(|ip| (ip, owner, false));
            for (ip, slot, add) in before.chain(t.after.iter().flat_map(Record::ips).map(|ip| (ip, owner, true))) {
                edits.entry(shard(ip)).or_default().push((ip, slot, add));
            }
        }
        let mut pointers = self.pointers.clone();
        for (shard, edits) in edits {
            let mut owners = pointers[shard].owners.clone();
            for (ip, slot, add) in edits {
                match (owners.binary_search(&(ip, slot)), add) {
                    (Err(i), true) => owners.insert(i, (ip, slot)),
                    (Ok(i), false) => drop(owners.remove(i)),
                    _ => {}
                }
            }
            owners.shrink_to_fit();
            pointers[shard] = Arc::new(Pointers { owners });
        }
        let top = Top::build(&self.apex, inputs);
        Snapshot { ready: true, apex: self.apex.clone(), top, roles, pointers, ttl: inputs.ttl }
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Looks up a lowercase wire-form name.
    pub fn lookup(&self, name: &[u8]) -> Found<'_> {
        if let Some(range) = self.top.names.get(name) {
            let rrsets = &self.top.rrsets[range.start as usize..range.end as usize];
            return Found::Name(Rrsets::Listed { rrsets, arena: &self.top.arena });
        }
        if let Some(rrsets) = self.member(name).or_else(|| self.pointer(name)) {
            return Found::Name(rrsets);
        }
        match self.in_zone(name) {
            true => Found::NxDomain,
            false => Found::OutOfZone,
        }
    }

    /// A member's A and AAAA records, when `name` is a member's: one label in front of the zone,
    /// a role's pattern with an ID in it.
    fn member(&self, name: &[u8]) -> Option<Rrsets<'_>> {
        let label_len = usize::from(*name.first()?);
        let (label, rest) = name.get(1..)?.split_at_checked(label_len)?;
        if rest != self.apex.as_slice() {
            return None;
        }
        self.roles.iter().find_map(|members| members.lookup(label))
    }

    /// The PTR records of a member's address, when `name` is its reverse name.
    fn pointer(&self, name: &[u8]) -> Option<Rrsets<'_>> {
        let ip = wire::reverse_address(name)?;
        let shard = self.pointers.get(shard(ip))?;
        let first = shard.owners.partition_point(|(owner, _)| *owner < ip);
        let last = first + shard.owners[first..].partition_point(|(owner, _)| *owner == ip);
        if first == last {
            return None;
        }
        Some(Rrsets::Pointers(Pointed { owners: &shard.owners[first..last], snapshot: self }))
    }

    /// Whether a lowercase wire-form name is the zone or below it (reverse names are neither).
    pub fn in_zone(&self, name: &[u8]) -> bool {
        wire::is_within(name, &self.apex)
    }

    /// The SOA for a negative answer to an in-zone name of `name_len` bytes in wire form.
    pub fn negative(&self, name_len: usize) -> Answer<'_> {
        let section = name_len.checked_sub(self.apex.len()).and_then(|p| self.top.negative.get(p)).copied();
        section.map_or_else(Answer::default, |s| answer(&self.top.arena, s))
    }

    pub fn identity(&self) -> Option<Answer<'_>> {
        self.top.identity.map(|s| answer(&self.top.arena, s))
    }
}

impl Members {
    fn new(role: &Role) -> Members {
        let lower = |text: &str| text.to_ascii_lowercase().into_bytes().into_boxed_slice();
        Members { prefix: lower(role.pattern.prefix()), suffix: lower(role.pattern.suffix()), chunks: Vec::new() }
    }

    /// The length of the member's name whose ID is `digits`, in wire form.
    fn name_len(&self, digits: &Digits, apex: &[u8]) -> usize {
        1 + self.prefix.len() + digits.len() + self.suffix.len() + apex.len()
    }

    /// The member's name whose ID is `digits`, lowercase wire form, handed over in pieces without
    /// allocating (PTR records are written this way as they are sent).
    fn write_name(&self, digits: &Digits, apex: &[u8], mut out: impl FnMut(&[u8])) {
        // Patterns are checked to make labels of at most 63 bytes.
        out(&[(self.prefix.len() + digits.len() + self.suffix.len()) as u8]);
        out(&self.prefix);
        out(digits.as_str());
        out(&self.suffix);
        out(apex);
    }

    /// The name of member `id`, lowercase wire form.
    fn name(&self, id: u32, apex: &[u8]) -> Vec<u8> {
        let digits = Digits::of(id);
        let mut wire = Vec::with_capacity(self.name_len(&digits, apex));
        self.write_name(&digits, apex, |piece| wire.extend_from_slice(piece));
        wire
    }

    /// The records of the member whose label (lowercase) this is, if it is one of this role's.
    fn lookup(&self, label: &[u8]) -> Option<Rrsets<'_>> {
        let id = label.strip_prefix(&*self.prefix)?.strip_suffix(&*self.suffix).and_then(canonical_id)?;
        let i = self.chunks.binary_search_by_key(&(id / CHUNK), |(n, _)| *n).ok()?;
        self.chunks[i].1.lookup(id % CHUNK)
    }
}

impl Chunk {
    /// The run holding `members` (IDs in order, all of one run).
    fn build(members: &[(u32, Record)], ttl: u32) -> Chunk {
        let size = |r: &Record| r.ipv4.map_or(0, |_| A_LEN) + r.ipv6.map_or(0, |_| AAAA_LEN);
        let mut chunk = Chunk {
            present: [0; CHUNK as usize / 64],
            starts: [0; CHUNK as usize + 1],
            arena: Vec::with_capacity(members.iter().map(|(_, r)| size(r)).sum()),
        };
        let mut next = 0;
        for &(id, record) in members {
            let i = (id % CHUNK) as usize;
            // At most 256 members of 44 bytes: offsets fit in 16 bits.
            chunk.starts[next..=i].fill(chunk.arena.len() as u16);
            next = i + 1;
            chunk.present[i / 64] |= 1 << (i % 64);
            write(&mut chunk.arena, |w| address_records(w, Part::Answer, Owner::Question, &record, ttl));
        }
        chunk.starts[next..].fill(chunk.arena.len() as u16);
        chunk
    }

    fn lookup(&self, i: u32) -> Option<Rrsets<'_>> {
        let i = i as usize;
        if self.present[i / 64] & (1 << (i % 64)) == 0 {
            return None;
        }
        Some(Rrsets::Member(&self.arena[usize::from(self.starts[i])..usize::from(self.starts[i + 1])]))
    }
}

/// The shard an address's PTR records are in.
fn shard(ip: IpAddr) -> usize {
    let mut hash = Fnv::default();
    match ip {
        IpAddr::V4(v4) => hash.write(&v4.octets()),
        IpAddr::V6(v6) => hash.write(&v6.octets()),
    }
    hash.finish() as usize % SHARDS
}

fn write(arena: &mut Vec<u8>, records: impl FnOnce(&mut SectionWriter)) -> Section {
    let mut w = SectionWriter::new(arena);
    records(&mut w);
    w.finish()
}

impl Top {
    fn build<M: AsRef<Record>>(apex: &[u8], inputs: &Inputs<M>) -> Top {
        let mut b = Builder { arena: Vec::new(), names: Names::default(), rrsets: Vec::new() };
        let (apex_rrsets, negative) = b.apex(apex, inputs);
        b.name(apex.to_vec(), apex_rrsets);
        b.services(apex, inputs);
        let identity = inputs.own_name.map(|own| {
            let txt = wire::txt_rdata(own);
            b.section(|w| w.record(Part::Answer, Owner::Question, Rtype::TXT, Class::CH, 0, &txt))
        });
        b.arena.shrink_to_fit();
        Top { names: b.names, rrsets: b.rrsets, negative, identity, arena: b.arena }
    }
}

/// Every member's name (lowercase wire form) and record, role by role, in ID order; made as
/// they are asked for, since the apex and the services need the first few only.
fn member_names<'a, M: AsRef<Record>>(
    apex: &'a [u8],
    inputs: &'a Inputs<M>,
) -> impl Iterator<Item = (Vec<u8>, &'a Record)> + 'a {
    inputs.roles.iter().zip(inputs.members).flat_map(move |(role, members)| {
        let role = Members::new(role);
        members.iter().map(move |(&id, m)| (role.name(id, apex), m.as_ref()))
    })
}

struct Builder {
    arena: Vec<u8>,
    names: Names,
    rrsets: Vec<Rrset>,
}

/// The service labels in front of the zone in the question `_idetcd._udp.<zone>` (or `_tcp`).
const SERVICE_LABELS: usize = 8 + 5;
/// The SRV records of one answer, leaving room in a 64 KiB message for header and question.
const MAX_SERVICE_BYTES: usize = 60_000;
/// The members the SRV answer may list: as many as fit, with room to skip some without a port.
const MAX_SERVICE_MEMBERS: usize = 4096;

type Names = HashMap<Box<[u8]>, Range<u32>, BuildHasherDefault<Fnv>>;

/// FNV-1a, several times faster than the default SipHash on names of a few dozen bytes. SipHash
/// guards tables whose keys an attacker chooses; these keys come from etcd, and a query only looks
/// up, so a client cannot make the table slower.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Builder {
    fn section(&mut self, records: impl FnOnce(&mut SectionWriter)) -> Section {
        write(&mut self.arena, records)
    }

    /// `_idetcd._udp.<zone>` and `_idetcd._tcp.<zone>`: one SRV record per member with a port, its
    /// addresses in the additional section (left out when they do not fit). A DNS message holds
    /// 64 KiB, so a cluster of thousands lists its first members only (about 1500 of them).
    fn services<M: AsRef<Record>>(&mut self, apex: &[u8], inputs: &Inputs<M>) {
        let ttl = inputs.ttl;
        let mut room = MAX_SERVICE_BYTES;
        // Rebuilt at every change: the first members only are looked at, however many lack a port.
        let listed: Vec<(Vec<u8>, Vec<u8>, Record)> = member_names(apex, inputs)
            .take(MAX_SERVICE_MEMBERS)
            .filter_map(|(name, r)| Some((wire::srv_rdata(r.port?, &name), name, *r)))
            .take_while(|(rdata, _, _)| {
                // Owner pointer, type, class, TTL, length, then the data.
                room = room.saturating_sub(2 + 10 + rdata.len());
                room > 0
            })
            .collect();
        let named: Vec<_> = listed.iter().map(|(rdata, name, r)| (rdata.clone(), &name[..], r)).collect();
        // The owner is the question, so both names share one section; both questions are as long,
        // so the answer starts at the same place in both.
        let (zone_at, start) = (HEADER_LEN + SERVICE_LABELS, HEADER_LEN + SERVICE_LABELS + apex.len() + 4);
        let rrsets = match named.is_empty() {
            true => vec![],
            // Priority, weight and port come before the target.
            false => vec![(Rtype::SRV, self.section(|w| naming(w, Rtype::SRV, ttl, start, zone_at as u16, 6, &named)))],
        };
        for protocol in [&b"\x04_udp"[..], b"\x04_tcp"] {
            self.name([&b"\x07_idetcd"[..], protocol, apex].concat(), rrsets.clone());
            // `_udp.<zone>` exists too, as an empty non-terminal: NODATA, not NXDOMAIN (RFC 8020).
            self.name([protocol, apex].concat(), vec![]);
        }
    }

    /// The apex's SOA and NS records, and the SOA of negative answers. Every node builds the same
    /// bytes from the same members: the first `nameservers` members with an address (by role, then
    /// ID) are the zone's servers, and the first of them its primary, so that two nodes never
    /// describe the zone differently (RFC 1034 §4.2.1; zone checkers compare them).
    ///
    /// The names in these records point into the question, which holds the zone: at the apex it
    /// is the whole question name, and further down the question's last labels.
    fn apex<M: AsRef<Record>>(&mut self, apex: &[u8], inputs: &Inputs<M>) -> (Vec<(Rtype, Section)>, Box<[Section]>) {
        let ttl = inputs.ttl;
        let servers: Vec<(Vec<u8>, &Record)> = member_names(apex, inputs)
            .filter(|(_, r)| r.ipv4.is_some() || r.ipv6.is_some())
            .take(inputs.nameservers as usize)
            .collect();
        // The SOA's names with the zone standing at `at` in the message.
        let soa = |at: u16| {
            let mname = match servers.first() {
                Some((name, _)) => wire::first_label_then(name, at),
                None => wire::pointer(at).to_vec(),
            };
            wire::soa_rdata(&mname, &wire::first_label_then(b"\x0ahostmaster", at), inputs.serial, ttl)
        };
        let question = HEADER_LEN as u16;
        let mut rrsets = vec![(
            Rtype::SOA,
            self.section(|w| w.record(Part::Answer, Owner::Question, Rtype::SOA, Class::IN, ttl, &soa(question))),
        )];
        if !servers.is_empty() {
            // The question is the zone, its type and class: the answer starts right after.
            let start = HEADER_LEN + apex.len() + 4;
            let named: Vec<_> = servers
                .iter()
                .map(|(name, record)| (wire::first_label_then(name, question), &name[..], *record))
                .collect();
            let ns = self.section(|w| naming(w, Rtype::NS, ttl, start, question, 0, &named));
            rrsets.push((Rtype::NS, ns));
        }
        // A question name of at most 255 bytes leaves this many lengths for labels in front of the zone.
        let negative = (0..=255 - apex.len())
            .map(|front| {
                let at = (HEADER_LEN + front) as u16;
                self.section(|w| {
                    w.record(Part::Authority, Owner::Name(&wire::pointer(at)), Rtype::SOA, Class::IN, ttl, &soa(at))
                })
            })
            .collect();
        (rrsets, negative)
    }

    fn name(&mut self, name: Vec<u8>, rrsets: Vec<(Rtype, Section)>) {
        let start = self.rrsets.len() as u32;
        self.rrsets.extend(rrsets.into_iter().map(|(rtype, section)| Rrset { rtype, section }));
        self.names.insert(name.into_boxed_slice(), start..self.rrsets.len() as u32);
    }
}

/// Records at the question whose data names a member, `target_at` bytes in (NS, SRV), then the
/// members' addresses in the additional section: `named` holds each record's data, the member's
/// name and record. An address's owner points to the name in its record, `start` being where the
/// section starts in the message. A pointer reaches the first 16 KiB of a message only; past them
/// the owner is the name's first label and a pointer to the zone, at `zone_at` in the question.
fn naming(
    w: &mut SectionWriter,
    rtype: Rtype,
    ttl: u32,
    start: usize,
    zone_at: u16,
    target_at: usize,
    named: &[(Vec<u8>, &[u8], &Record)],
) {
    let mut targets = Vec::with_capacity(named.len());
    for (rdata, _, _) in named {
        // Owner pointer, type, class, TTL, length: the data follows.
        targets.push(start + w.written() + 12 + target_at);
        w.record(Part::Answer, Owner::Question, rtype, Class::IN, ttl, rdata);
    }
    for ((_, name, record), target) in named.iter().zip(targets) {
        let owner = match target <= wire::MAX_POINTER {
            true => wire::pointer(target as u16).to_vec(),
            false => wire::first_label_then(name, zone_at),
        };
        address_records(w, Part::Additional, Owner::Name(&owner), record, ttl);
    }
}

fn address_records(w: &mut SectionWriter, part: Part, owner: Owner, record: &Record, ttl: u32) {
    if let Some(ip) = record.ipv4 {
        w.record(part, owner, Rtype::A, Class::IN, ttl, &ip.octets());
    }
    if let Some(ip) = record.ipv6 {
        w.record(part, owner, Rtype::AAAA, Class::IN, ttl, &ip.octets());
    }
}

fn zone_apex(zone: &str) -> Vec<u8> {
    // The patterns' zone was validated as a name when the Corefile was read.
    wire::wire_name(zone).unwrap_or_else(|_| vec![0])
}
