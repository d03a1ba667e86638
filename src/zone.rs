//! The zone snapshot: every answer this node can give, precomputed from the members read in etcd.
//!
//! A snapshot is immutable and built off the answering path by the etcd thread; answering threads
//! receive it whole (an `Arc`) and only look names up in it. All record bytes live in one arena and
//! names map to runs of it, so a snapshot of 10 000 members is a handful of allocations.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;

use domain::base::iana::{Class, Rtype};

use crate::config::Role;
use crate::record::Record;
use crate::wire::{self, Owner, Part, Section, SectionWriter, HEADER_LEN};

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
    /// Every name that exists, lowercase wire form, to its RRsets in `rrsets`.
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

pub enum Found<'a> {
    Name(&'a [Rrset]),
    NxDomain,
    OutOfZone,
}

/// What a snapshot is made of.
pub struct Inputs<'a> {
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
    pub members: &'a [BTreeMap<u32, Record>],
}

impl Snapshot {
    /// Before anything was read from etcd: in-zone queries get SERVFAIL, others REFUSED.
    pub fn empty(zone: &str) -> Snapshot {
        Snapshot {
            ready: false,
            apex: zone_apex(zone),
            names: Names::default(),
            rrsets: Vec::new(),
            negative: Box::default(),
            identity: None,
            arena: Vec::new(),
        }
    }

    pub fn build(inputs: &Inputs) -> Snapshot {
        // Each member has its name and one or two reverse names.
        let count: usize = inputs.members.iter().map(BTreeMap::len).sum();
        let expected = count * 3 + 8;
        let mut b = Builder {
            arena: Vec::with_capacity(count * 64),
            names: Names::with_capacity_and_hasher(expected, Default::default()),
            rrsets: Vec::with_capacity(expected),
        };
        let ttl = inputs.ttl;
        let apex = zone_apex(inputs.roles.first().map_or(".", |r| r.pattern.zone()));

        // Member names are the pattern's first label in front of the zone: built directly, not
        // parsed from text, as this runs for every member at every change.
        let mut names: Vec<(Vec<u8>, &Record)> = Vec::with_capacity(count);
        for (role, members) in inputs.roles.iter().zip(inputs.members) {
            let (prefix, suffix) =
                (role.pattern.prefix().to_ascii_lowercase(), role.pattern.suffix().to_ascii_lowercase());
            for (&id, record) in members {
                names.push((wire::prepend_label(&format!("{prefix}{id}{suffix}"), &apex), record));
            }
        }

        let (apex_rrsets, negative) = b.apex(&apex, &names, inputs);
        b.name(apex.clone(), apex_rrsets);
        for (name, record) in &names {
            let mut rrsets = Vec::with_capacity(2);
            if let Some(ip) = record.ipv4 {
                let s = b.section(|w| w.record(Part::Answer, Owner::Question, Rtype::A, Class::IN, ttl, &ip.octets()));
                rrsets.push((Rtype::A, s));
            }
            if let Some(ip) = record.ipv6 {
                let s =
                    b.section(|w| w.record(Part::Answer, Owner::Question, Rtype::AAAA, Class::IN, ttl, &ip.octets()));
                rrsets.push((Rtype::AAAA, s));
            }
            b.name(name.clone(), rrsets);
        }
        b.services(&apex, &names, ttl);
        b.pointers(&names, ttl);

        let identity = inputs.own_name.map(|own| {
            let txt = wire::txt_rdata(own);
            b.section(|w| w.record(Part::Answer, Owner::Question, Rtype::TXT, Class::CH, 0, &txt))
        });
        b.arena.shrink_to_fit();
        Snapshot { ready: true, apex, names: b.names, rrsets: b.rrsets, negative, identity, arena: b.arena }
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Looks up a lowercase wire-form name.
    pub fn lookup(&self, name: &[u8]) -> Found<'_> {
        if let Some(range) = self.names.get(name) {
            return Found::Name(&self.rrsets[range.start as usize..range.end as usize]);
        }
        match self.in_zone(name) {
            true => Found::NxDomain,
            false => Found::OutOfZone,
        }
    }

    /// Whether a lowercase wire-form name is the zone or below it (reverse names are neither).
    pub fn in_zone(&self, name: &[u8]) -> bool {
        wire::is_within(name, &self.apex)
    }

    /// The SOA for a negative answer to an in-zone name of `name_len` bytes in wire form.
    pub fn negative(&self, name_len: usize) -> Section {
        name_len.checked_sub(self.apex.len()).and_then(|p| self.negative.get(p)).copied().unwrap_or_default()
    }

    pub fn identity(&self) -> Option<Section> {
        self.identity
    }

    pub fn section_bytes(&self, section: Section) -> &[u8] {
        let start = section.start as usize;
        self.arena.get(start..start + section.len as usize).unwrap_or(&[])
    }
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
    fn section(&mut self, write: impl FnOnce(&mut SectionWriter)) -> Section {
        let mut w = SectionWriter::new(&mut self.arena);
        write(&mut w);
        w.finish()
    }

    /// `_idetcd._udp.<zone>` and `_idetcd._tcp.<zone>`: one SRV record per member with a port, its
    /// addresses in the additional section (left out when they do not fit). A DNS message holds
    /// 64 KiB, so a cluster of thousands lists its first members only (about 1500 of them).
    fn services(&mut self, apex: &[u8], members: &[(Vec<u8>, &Record)], ttl: u32) {
        let mut room = MAX_SERVICE_BYTES;
        let named: Vec<_> = members
            .iter()
            .filter_map(|(name, r)| Some((wire::srv_rdata(r.port?, name), &name[..], *r)))
            .take_while(|(rdata, _, _)| {
                // Owner pointer, type, class, TTL, length, then the data.
                room = room.saturating_sub(2 + 10 + rdata.len());
                room > 0
            })
            .collect();
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

    /// PTR records for the members' addresses, under `in-addr.arpa.` and `ip6.arpa.`.
    fn pointers(&mut self, members: &[(Vec<u8>, &Record)], ttl: u32) {
        let mut reverse: BTreeMap<Vec<u8>, Vec<&[u8]>> = BTreeMap::new();
        for (name, record) in members {
            let ips = [record.ipv4.map(std::net::IpAddr::V4), record.ipv6.map(std::net::IpAddr::V6)];
            for ip in ips.into_iter().flatten() {
                reverse.entry(wire::reverse_name(ip)).or_default().push(name);
            }
        }
        for (owner, targets) in reverse {
            let section = self.section(|w| {
                for target in &targets {
                    w.record(Part::Answer, Owner::Question, Rtype::PTR, Class::IN, ttl, target);
                }
            });
            self.name(owner, vec![(Rtype::PTR, section)]);
        }
    }

    /// The apex's SOA and NS records, and the SOA of negative answers. Every node builds the same
    /// bytes from the same members: the first `nameservers` members with an address (by role, then
    /// ID) are the zone's servers, and the first of them its primary, so that two nodes never
    /// describe the zone differently (RFC 1034 §4.2.1; zone checkers compare them).
    ///
    /// The names in these records point into the question, which holds the zone: at the apex it
    /// is the whole question name, and further down the question's last labels.
    fn apex(
        &mut self,
        apex: &[u8],
        members: &[(Vec<u8>, &Record)],
        inputs: &Inputs,
    ) -> (Vec<(Rtype, Section)>, Box<[Section]>) {
        let ttl = inputs.ttl;
        let servers: Vec<&(Vec<u8>, &Record)> = members
            .iter()
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
