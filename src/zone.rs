//! The zone snapshot: every answer this node can give, precomputed from the members read in etcd.
//!
//! A snapshot is immutable and built off the answering path by the etcd thread; answering threads
//! receive it whole (an `Arc`) and only look names up in it. All record bytes live in one arena and
//! names map to runs of it, so a snapshot of 10 000 members is a handful of allocations.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;

use domain::base::iana::{Class, Rtype};

use crate::dns::{self, Owner, Part, Section, SectionWriter};
use crate::pattern::Pattern;
use crate::record::Record;

/// One name's records of one type, ready to send.
#[derive(Clone, Copy, Debug)]
pub struct Rrset {
    pub rtype: u16,
    pub section: Section,
}

pub struct Snapshot {
    ready: bool,
    /// The zone apex, lowercase wire form.
    apex: Vec<u8>,
    /// Every name that exists, lowercase wire form, to its RRsets in `rrsets`.
    names: Names,
    rrsets: Vec<Rrset>,
    /// The SOA in the authority section, for NXDOMAIN and NODATA answers.
    negative: Section,
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
    pub pattern: &'a Pattern,
    /// TTL of every answer.
    pub ttl: u32,
    /// The etcd revision the members were read at; it becomes the SOA serial.
    pub revision: i64,
    /// The name this node holds, if it holds one.
    pub own_name: Option<&'a str>,
    pub members: &'a BTreeMap<u32, Record>,
}

impl Snapshot {
    /// Before anything was read from etcd: in-zone queries get SERVFAIL, others REFUSED.
    pub fn empty(pattern: &Pattern) -> Snapshot {
        Snapshot {
            ready: false,
            apex: zone_apex(pattern),
            names: Names::default(),
            rrsets: Vec::new(),
            negative: Section { start: 0, len: 0, required: 0, counts: [0; 3] },
            identity: None,
            arena: Vec::new(),
        }
    }

    pub fn build(inputs: &Inputs) -> Snapshot {
        let mut b = Builder { arena: Vec::new(), names: Names::default(), rrsets: Vec::new() };
        let ttl = inputs.ttl;
        let apex = zone_apex(inputs.pattern);
        let own_wire = inputs.own_name.and_then(|n| dns::wire_name(n).ok());
        let own_id = inputs.own_name.and_then(|n| inputs.pattern.id_of(n));
        let own_record = own_id.and_then(|id| inputs.members.get(&id));

        // The SOA names this node as the primary: every member serves the same zone, and this one
        // is the server that answered. Serial arithmetic (RFC 1982) copes with the wrap.
        let mname = own_wire.clone().unwrap_or_else(|| apex.clone());
        let rname = [b"\x0ahostmaster".as_slice(), &apex].concat();
        let soa = dns::soa_rdata(&mname, &rname, inputs.revision as u32, ttl);

        let negative = b.section(|w| w.record(Part::Authority, Owner::Name(&apex), Rtype::SOA, Class::IN, ttl, &soa));
        let mut apex_rrsets = vec![(
            Rtype::SOA,
            b.section(|w| w.record(Part::Answer, Owner::Question, Rtype::SOA, Class::IN, ttl, &soa)),
        )];
        if let Some(own) = &own_wire {
            let ns = b.section(|w| {
                w.record(Part::Answer, Owner::Question, Rtype::NS, Class::IN, ttl, own);
                if let Some(record) = own_record {
                    address_records(w, Part::Additional, Owner::Name(own), record, ttl);
                }
            });
            apex_rrsets.push((Rtype::NS, ns));
        }
        b.name(apex.clone(), apex_rrsets);

        for (&id, record) in inputs.members {
            let Ok(name) = dns::wire_name(&inputs.pattern.name(id)) else { continue };
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
            b.name(name, rrsets);
        }

        let identity = inputs.own_name.map(|own| {
            let txt = dns::txt_rdata(own);
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
        if dns::is_within(name, &self.apex) {
            Found::NxDomain
        } else {
            Found::OutOfZone
        }
    }

    pub fn negative(&self) -> Section {
        self.negative
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

    fn name(&mut self, name: Vec<u8>, rrsets: Vec<(Rtype, Section)>) {
        let start = self.rrsets.len() as u32;
        self.rrsets.extend(rrsets.into_iter().map(|(rtype, section)| Rrset { rtype: rtype.to_int(), section }));
        self.names.insert(name.into_boxed_slice(), start..self.rrsets.len() as u32);
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

fn zone_apex(pattern: &Pattern) -> Vec<u8> {
    // The pattern's zone was validated as a name when the Corefile was read.
    dns::wire_name(pattern.zone()).unwrap_or_else(|_| vec![0])
}
