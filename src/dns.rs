//! Answering DNS queries from a zone snapshot, and the packet edits forwarding needs. The field
//! and name encoding below both this module and the zone is `wire`'s.
//!
//! Answering is a pure function from a query packet and a snapshot to a response packet, written
//! into a caller's buffer. It never allocates and never panics, whatever the packet holds: the
//! snapshot holds every answer section ready-made, so a response is the query's own header and
//! question (which keeps the client's letter case) followed by a copied section, with the ID and
//! flags patched and an OPT record when the client sent one.

use domain::base::iana::{Class, Opcode, OptRcode, Rtype};

use crate::wire::{is_within, Reader, Writer, HEADER_LEN};
use crate::zone::{Answer, Body, Found, Snapshot};

/// The EDNS payload size we advertise and the most we send over UDP: DNS Flag Day 2020's value,
/// which avoids IP fragmentation on any common path.
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// What a client without EDNS can receive (RFC 1035 §4.2.1).
const MIN_UDP_PAYLOAD: u16 = 512;
/// Our OPT record: root owner, type, class (payload), TTL (extended rcode, version, flags), rdlength.
const OPT_LEN: usize = 11;

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const FLAG_CD: u16 = 0x0010;
const OPCODE_MASK: u16 = 0x7800;

const TYPE_OPT: u16 = Rtype::OPT.to_int();

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Where an answering thread stands besides its snapshot.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    pub transport: Transport,
    /// Whether this node holds its name right now; `id.server.` names it only then.
    pub identity_held: bool,
    /// With `forward`: the zone whose names go upstream when they are not ours (`.` for all), in
    /// lowercase wire form.
    pub forward: Option<&'a [u8]>,
}

/// What to do with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the first `len` bytes of the output buffer; `qtype` and `rcode` are for the metrics.
    Reply { len: usize, qtype: Rtype, rcode: OptRcode },
    /// Not ours to answer: ask the upstream servers.
    Forward { qtype: Rtype },
    /// Say nothing (not a query, or too short to answer).
    Drop,
}

// ---------------------------------------------------------------------------------------------
// Answering

/// Writes the response to `query` into `out`, or says to forward or drop it. `out` must hold
/// `MAX_UDP_PAYLOAD` bytes for UDP and 65 535 for TCP.
pub fn respond(query: &[u8], snapshot: &Snapshot, context: Context, out: &mut [u8]) -> Action {
    let mut lower = [0u8; 255];
    let Some((header, parsed)) = read_query(query, out, &mut lower) else { return Action::Drop };
    let mut reply = Reply::new(&header, context);
    let qtype = reply.echo(&parsed);
    match parsed {
        // Anything we cannot read: FORMERR, unless the opcode is one we do not do at all.
        Err(_) if header.opcode() != Opcode::QUERY => reply.rcode = OptRcode::NOTIMP,
        Err(_) => reply.rcode = OptRcode::FORMERR,
        Ok(q) => {
            let name = &lower[..q.name_len];
            // Recursion is available for the names `forward` covers, not for the others.
            reply.ra = context.forward.is_some_and(|from| is_within(name, from));
            if answer(&q, name, snapshot, context, &mut reply) == Verdict::Forward {
                return Action::Forward { qtype };
            }
        }
    }
    let len = reply.write(context.transport, out);
    Action::Reply { len, qtype, rcode: reply.rcode }
}

/// An answer carrying only `rcode` (SERVFAIL when upstream servers fail, say), or `Drop` for a
/// packet that is no query.
pub fn error_answer(query: &[u8], rcode: OptRcode, context: Context, out: &mut [u8]) -> Action {
    let mut lower = [0u8; 255];
    let Some((header, parsed)) = read_query(query, out, &mut lower) else { return Action::Drop };
    let mut reply = Reply::new(&header, context);
    let qtype = reply.echo(&parsed);
    reply.rcode = rcode;
    let len = reply.write(context.transport, out);
    Action::Reply { len, qtype, rcode }
}

/// The header and question of a packet to answer, or `None` when it gets no answer at all: too
/// short for a header, itself a response, or `out` too small for even an error answer.
fn read_query<'a>(
    query: &'a [u8],
    out: &[u8],
    lower: &mut [u8; 255],
) -> Option<(Header, Result<Query<'a>, Malformed<'a>>)> {
    let header = Header::read(query)?;
    // Room for a header, the longest question and an OPT record, whatever the answer.
    if out.len() < HEADER_LEN + 255 + 4 + OPT_LEN || header.flags & FLAG_QR != 0 {
        return None;
    }
    let parsed = parse(query, &header, lower);
    Some((header, parsed))
}

/// A message's ID.
pub fn id(packet: &[u8]) -> u16 {
    packet.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
}

pub fn set_id(packet: &mut [u8], id: u16) {
    if let Some(b) = packet.get_mut(..2) {
        b.copy_from_slice(&id.to_be_bytes());
    }
}

/// Sets RA in a response: an upstream's answer passed on by a server that recursed for the
/// client, whatever the upstream (an authoritative server, say) said of itself.
pub fn set_recursion_available(packet: &mut [u8]) {
    if let Some(flags) = packet.get_mut(3) {
        *flags |= FLAG_RA.to_be_bytes()[1];
    }
}

/// Lowers the EDNS payload size a query advertises to `max`: a question passed upstream must not
/// invite answers that fragment (and fragments can be forged).
pub fn limit_payload(packet: &mut [u8], max: u16) {
    let Some(header) = Header::read(packet) else { return };
    let mut r = Reader { packet, pos: HEADER_LEN };
    let skipped = (0..header.qdcount)
        .try_for_each(|_| r.skip_question())
        .and_then(|()| (0..u32::from(header.ancount) + u32::from(header.nscount)).try_for_each(|_| r.skip_record()));
    if skipped.is_none() {
        return;
    }
    let mut opts = Vec::new();
    for _ in 0..header.arcount {
        let Some(()) = r.skip_name() else { break };
        let (Some(rtype), at, Some(class)) = (r.u16(), r.pos, r.u16()) else { break };
        if rtype == TYPE_OPT && class > max {
            opts.push(at);
        }
        let (Some(_), Some(rdlen)) = (r.u32(), r.u16()) else { break };
        if r.skip(usize::from(rdlen)).is_none() {
            break;
        }
    }
    for at in opts {
        packet[at..at + 2].copy_from_slice(&max.to_be_bytes());
    }
}

/// Whether a response has the TC bit.
pub fn truncated(packet: &[u8]) -> bool {
    packet.get(2).is_some_and(|b| b & 0x02 != 0)
}

/// Whether `response` answers `query`: a response, with its ID, to the same question (letter case
/// aside, which some servers randomise).
pub fn answers(query: &[u8], response: &[u8]) -> bool {
    let (Some(q), Some(r)) = (Header::read(query), Header::read(response)) else { return false };
    if r.flags & FLAG_QR == 0 || q.id != r.id || q.qdcount != 1 || r.qdcount != 1 {
        return false;
    }
    let (mut asked, mut got) = ([0u8; 255], [0u8; 255]);
    let (mut qr, mut rr) = (Reader { packet: query, pos: HEADER_LEN }, Reader { packet: response, pos: HEADER_LEN });
    let (Some(qn), Some(rn)) = (qr.question_name(&mut asked), rr.question_name(&mut got)) else { return false };
    asked[..qn] == got[..rn] && query.get(qr.pos..qr.pos + 4) == response.get(rr.pos..rr.pos + 4)
}

// ---------------------------------------------------------------------------------------------
// Describing an exchange, for the `log` directive

/// What a log line says of a query and its answer, in the terms of CoreDNS's log plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub id: u16,
    /// Type, class and the length of the name the caller's buffer holds, in lowercase wire form;
    /// `None` for a question that could not be read.
    pub question: Option<(Rtype, Class, usize)>,
    pub dnssec_ok: bool,
    /// The EDNS payload size the query advertised, if it had an OPT record.
    pub payload: Option<u16>,
    /// The answer's response code, extended by its OPT record, and its header flags.
    pub rcode: OptRcode,
    pub flags: u16,
}

/// Reads what a log line says of `query` and its `answer`; `None` unless both have a header.
pub fn exchange(query: &[u8], answer: &[u8], lower: &mut [u8; 255]) -> Option<Exchange> {
    let (header, reply) = (Header::read(query)?, Header::read(answer)?);
    let (question, edns) = match parse(query, &header, lower) {
        Ok(q) => (Some((q.qtype, q.qclass, q.name_len)), q.edns),
        Err(malformed) => (None, malformed.edns),
    };
    // The upper eight bits of an extended code are in the OPT record's TTL (RFC 6891 §6.1.3).
    let mut r = Reader { packet: answer, pos: HEADER_LEN };
    let ext = (0..reply.qdcount)
        .try_for_each(|_| r.skip_question())
        .and_then(|()| find_opt_ttl(&mut r, &reply))
        .map_or(0, |ttl| (ttl >> 24) as u16);
    Some(Exchange {
        id: header.id,
        question,
        dnssec_ok: edns.is_some_and(|e| e.dnssec_ok),
        payload: edns.map(|e| e.payload),
        rcode: OptRcode::masked_from_int(ext << 4 | (reply.flags & 0x000F)),
        flags: reply.flags,
    })
}

/// The names of the header flags set in `flags`, in the order CoreDNS logs them.
pub fn flag_names(flags: u16) -> impl Iterator<Item = &'static str> {
    const NAMES: [(u16, &str); 8] = [
        (FLAG_QR, "qr"),
        (FLAG_AA, "aa"),
        (FLAG_TC, "tc"),
        (FLAG_RD, "rd"),
        (FLAG_RA, "ra"),
        (0x0040, "z"),
        (0x0020, "ad"),
        (FLAG_CD, "cd"),
    ];
    NAMES.into_iter().filter(move |(bit, _)| flags & bit != 0).map(|(_, name)| name)
}

/// The TTL field of the first OPT record, read after the question section.
fn find_opt_ttl(r: &mut Reader, header: &Header) -> Option<u32> {
    for _ in 0..u32::from(header.ancount) + u32::from(header.nscount) {
        r.skip_record()?;
    }
    for _ in 0..header.arcount {
        r.skip_name()?;
        let (rtype, _class, ttl, rdlen) = (r.u16()?, r.u16()?, r.u32()?, r.u16()?);
        if rtype == TYPE_OPT {
            return Some(ttl);
        }
        r.skip(usize::from(rdlen))?;
    }
    None
}

#[derive(PartialEq, Eq)]
enum Verdict {
    Answered,
    Forward,
}

fn answer<'a>(q: &Query<'a>, lower: &[u8], snapshot: &'a Snapshot, context: Context, reply: &mut Reply<'a>) -> Verdict {
    if q.opcode != Opcode::QUERY {
        reply.rcode = OptRcode::NOTIMP;
        return Verdict::Answered;
    }
    if let Some(edns) = q.edns {
        if edns.version != 0 {
            reply.rcode = OptRcode::BADVERS;
            return Verdict::Answered;
        }
    }
    match q.qclass {
        // Class ANY (RFC 1035 §3.2.5) finds the same names: idetcd's have data in IN only.
        Class::IN | Class::ANY => return answer_in(q, lower, snapshot, context, reply),
        Class::CH if lower == b"\x02id\x06server\x00" || lower == b"\x08hostname\x04bind\x00" => {
            let identity = snapshot.identity().filter(|_| context.identity_held);
            let Some(identity) = identity else {
                reply.rcode = OptRcode::SERVFAIL;
                return Verdict::Answered;
            };
            reply.aa = true;
            if q.qtype == Rtype::TXT || q.qtype == Rtype::ANY {
                reply.section = Some(identity);
            }
        }
        _ => reply.rcode = OptRcode::REFUSED,
    }
    Verdict::Answered
}

fn answer_in<'a>(q: &Query, lower: &[u8], snapshot: &'a Snapshot, context: Context, reply: &mut Reply<'a>) -> Verdict {
    // Zone transfers are neither given nor passed on.
    if q.qtype == Rtype::AXFR || q.qtype == Rtype::IXFR {
        reply.rcode = OptRcode::REFUSED;
        return Verdict::Answered;
    }
    let held = match snapshot.lookup(lower) {
        Found::Name(rrsets) => {
            // ANY gets one RRset, not everything (RFC 8482).
            match rrsets.get(q.qtype) {
                Some(answer) => Some(Held::Rrset(answer)),
                None if snapshot.in_zone(lower) => Some(Held::NoData),
                // Under in-addr.arpa. and ip6.arpa. idetcd holds its members' PTR records, not a
                // reverse zone whose SOA a negative answer would need: any other question there
                // is about a name outside the zone.
                None => None,
            }
        }
        Found::NxDomain => Some(Held::NxDomain),
        Found::OutOfZone => None,
    };
    let Some(held) = held else {
        // Upstream servers get the questions a stub resolver asks, in class IN.
        if q.qclass == Class::IN && context.forward.is_some_and(|from| is_within(lower, from)) {
            return Verdict::Forward;
        }
        reply.rcode = OptRcode::REFUSED;
        return Verdict::Answered;
    };
    if !snapshot.is_ready() {
        // Nothing read from etcd yet: "no such name" would be cached by clients and be wrong.
        reply.rcode = OptRcode::SERVFAIL;
        return Verdict::Answered;
    }
    // An answer for every class is authoritative only if it covers them all (RFC 1035 §6.2), and
    // idetcd is no authority for its names in other classes. As NSD, a negative answer for every
    // class then carries no SOA either: its absence says not to cache it (RFC 2308 §5).
    let authoritative = q.qclass == Class::IN;
    reply.aa = authoritative;
    // The zone's SOA says how long "no such data" or "no such name" may be cached.
    let negative = if authoritative { Some(snapshot.negative(lower.len())) } else { None };
    match held {
        Held::Rrset(section) => reply.section = Some(section),
        Held::NoData => reply.section = negative,
        Held::NxDomain => {
            reply.rcode = OptRcode::NXDOMAIN;
            reply.section = negative;
        }
    }
    Verdict::Answered
}

/// What a snapshot holds for a question of ours.
enum Held<'a> {
    Rrset(Answer<'a>),
    /// The name exists, without that type.
    NoData,
    NxDomain,
}

struct Reply<'a> {
    header: &'a Header,
    /// The question as the client sent it: name, type and class.
    question: Option<&'a [u8]>,
    edns: Option<Edns>,
    rcode: OptRcode,
    aa: bool,
    /// Recursion available: with `forward`, this server answers any name.
    ra: bool,
    section: Option<Answer<'a>>,
}

impl<'a> Reply<'a> {
    fn new(header: &'a Header, context: Context) -> Reply<'a> {
        let ra = context.forward.is_some();
        Reply { header, question: None, edns: None, rcode: OptRcode::NOERROR, aa: false, ra, section: None }
    }

    /// Takes over what the answer echoes of the query (its question and OPT record, as far as
    /// they could be read); returns the query type, type 0 (reserved) when unknown.
    fn echo(&mut self, parsed: &Result<Query<'a>, Malformed<'a>>) -> Rtype {
        match parsed {
            Ok(q) => {
                self.question = Some(q.question);
                self.edns = q.edns;
                q.qtype
            }
            Err(malformed) => {
                self.question = malformed.question;
                self.edns = malformed.edns;
                Rtype::from_int(0)
            }
        }
    }

    /// Writes the reply.
    fn write(&self, transport: Transport, out: &mut [u8]) -> usize {
        let limit = match (transport, self.edns) {
            (Transport::Tcp, _) => u16::MAX as usize,
            (Transport::Udp, None) => MIN_UDP_PAYLOAD as usize,
            (Transport::Udp, Some(e)) => e.payload.clamp(MIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD) as usize,
        }
        .min(out.len());
        let question = self.question.unwrap_or(&[]);
        let opt_len = if self.edns.is_some() { OPT_LEN } else { 0 };
        let fixed = HEADER_LEN + question.len() + opt_len;
        // What does not fit is left out: additional records quietly, as many whole RRsets as fit
        // (RFC 2181 §9), anything more with the TC bit, so that the client asks again over TCP.
        let (body, counts, truncated) = match self.section {
            None => (Body::default(), [0; 3], false),
            Some(Answer { section: s, body }) if fixed + s.len as usize <= limit => (body, s.counts, false),
            Some(Answer { section: s, body: Body::Ready(body) }) => match body.split_at_checked(s.required as usize) {
                Some((required, additional)) if fixed + required.len() <= limit => {
                    let (len, count) = whole_rrsets(additional, limit - fixed - required.len());
                    (Body::Ready(&body[..required.len() + len]), [s.counts[0], s.counts[1], count], false)
                }
                _ => (Body::default(), [0; 3], true),
            },
            // Written records are all required.
            Some(Answer { body: Body::Pointers(_), .. }) => (Body::default(), [0; 3], true),
        };
        let mut flags = FLAG_QR | (self.header.flags & (OPCODE_MASK | FLAG_RD | FLAG_CD));
        flags |= u16::from(self.rcode.rcode().to_int());
        if self.aa {
            flags |= FLAG_AA;
        }
        if self.ra {
            flags |= FLAG_RA;
        }
        if truncated {
            flags |= FLAG_TC;
        }
        let mut w = Writer { out, len: 0 };
        w.u16(self.header.id);
        w.u16(flags);
        w.u16(u16::from(self.question.is_some()));
        w.u16(counts[0]);
        w.u16(counts[1]);
        w.u16(counts[2] + u16::from(self.edns.is_some()));
        w.bytes(question);
        body.write(|bytes| w.bytes(bytes));
        if let Some(edns) = self.edns {
            w.bytes(&[0]);
            w.u16(TYPE_OPT);
            w.u16(MAX_UDP_PAYLOAD);
            // Extended rcode, version 0, and the DO bit copied from the query (RFC 3225 §3).
            w.bytes(&[self.rcode.ext(), 0, if edns.dnssec_ok { 0x80 } else { 0 }, 0]);
            w.u16(0);
        }
        w.len
    }
}

/// How much of `additional`, a run of records, fits in `room` bytes in whole RRsets (records of
/// one owner, as written, and one type, one after another): its length in bytes and records.
fn whole_rrsets(additional: &[u8], room: usize) -> (usize, u16) {
    let mut r = Reader { packet: additional, pos: 0 };
    let (mut fit, mut records) = ((0, 0), 0);
    let mut rrset = None;
    while r.pos < additional.len() {
        let start = r.pos;
        // Our own records always parse; should one not, the run ends before it.
        let Some(key) = r.record() else { return (start, records) };
        if rrset != Some(key) {
            fit = (start, records);
            rrset = Some(key);
        }
        if r.pos > room {
            return fit;
        }
        // At most `room` / 11 records: no overflow.
        records += 1;
    }
    (r.pos, records)
}

// ---------------------------------------------------------------------------------------------
// Reading queries

struct Header {
    id: u16,
    flags: u16,
    qdcount: u16,
    ancount: u16,
    nscount: u16,
    arcount: u16,
}

impl Header {
    fn read(packet: &[u8]) -> Option<Header> {
        let h = packet.get(..HEADER_LEN)?;
        let at = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
        Some(Header { id: at(0), flags: at(2), qdcount: at(4), ancount: at(6), nscount: at(8), arcount: at(10) })
    }

    fn opcode(&self) -> Opcode {
        Opcode::from_int(((self.flags & OPCODE_MASK) >> 11) as u8)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Edns {
    payload: u16,
    version: u8,
    dnssec_ok: bool,
}

struct Query<'a> {
    opcode: Opcode,
    question: &'a [u8],
    /// Length of the question name in wire form; its lowercase copy is in the caller's buffer.
    name_len: usize,
    qtype: Rtype,
    qclass: Class,
    edns: Option<Edns>,
}

/// What can still be echoed from a query that cannot be answered.
struct Malformed<'a> {
    question: Option<&'a [u8]>,
    edns: Option<Edns>,
}

/// Reads the one question, lowercasing its name into `lower`, and finds the OPT record. On error
/// returns what could be read, to echo it in the FORMERR.
fn parse<'a>(packet: &'a [u8], header: &Header, lower: &mut [u8; 255]) -> Result<Query<'a>, Malformed<'a>> {
    let mut r = Reader { packet, pos: HEADER_LEN };
    if header.qdcount != 1 {
        // Nothing to answer (a cookie-only query has no question), but an OPT record still
        // deserves one back (RFC 6891 §7).
        let edns = (0..header.qdcount).try_for_each(|_| r.skip_question()).and_then(|()| find_edns(&mut r, header));
        return Err(Malformed { question: None, edns: edns.flatten() });
    }
    let unreadable = Malformed { question: None, edns: None };
    let Some(name_len) = r.question_name(lower) else { return Err(unreadable) };
    let (Some(qtype), Some(qclass)) = (r.u16(), r.u16()) else { return Err(unreadable) };
    let question = &packet[HEADER_LEN..r.pos];
    let (qtype, qclass) = (Rtype::from_int(qtype), Class::from_int(qclass));
    let query = Query { opcode: header.opcode(), question, name_len, qtype, qclass, edns: None };
    match find_edns(&mut r, header) {
        Some(edns) => Ok(Query { edns, ..query }),
        None => Err(Malformed { question: Some(question), edns: None }),
    }
}

/// Reads the answer and authority sections, then the additional one for an OPT record. A section
/// that does not parse, or an OPT record that is malformed or not the one OPT record of the
/// additional section, makes the query malformed (RFC 6891 §6.1.1, §7).
fn find_edns(r: &mut Reader, header: &Header) -> Option<Option<Edns>> {
    for _ in 0..u32::from(header.ancount) + u32::from(header.nscount) {
        if r.record()?.1 == TYPE_OPT {
            return None;
        }
    }
    let mut edns = None;
    for _ in 0..header.arcount {
        let owner_is_root = r.packet.get(r.pos) == Some(&0);
        r.skip_name()?;
        let rtype = r.u16()?;
        let class = r.u16()?;
        let ttl = r.u32()?;
        let rdlen = usize::from(r.u16()?);
        let rdata = r.packet.get(r.pos..r.pos + rdlen)?;
        r.skip(rdlen)?;
        if rtype == TYPE_OPT {
            if edns.is_some() || !owner_is_root || !whole_options(rdata) {
                return None;
            }
            edns = Some(Edns { payload: class, version: (ttl >> 16) as u8, dnssec_ok: ttl & 0x8000 != 0 });
        }
    }
    Some(edns)
}

/// Whether an OPT record's data is options and nothing else: each a code, a length and that
/// many bytes, the last ending where the data ends (RFC 6891 §6.1.2).
fn whole_options(mut rdata: &[u8]) -> bool {
    loop {
        match rdata {
            [] => return true,
            [_, _, high, low, rest @ ..] => match rest.get(usize::from(u16::from_be_bytes([*high, *low]))..) {
                Some(after) => rdata = after,
                None => return false,
            },
            _ => return false,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
