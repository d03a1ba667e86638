//! The DNS wire format, below both the zone and the answering: reading and writing packet
//! fields, names in wire form, and the ready-made records a zone snapshot keeps. It knows nothing
//! of zones or queries, so that the layers read wire <- zone <- dns with no arrow back up.

use domain::base::iana::{Class, Rtype};
use domain::base::name::Name;

pub const HEADER_LEN: usize = 12;
/// Where the question's name starts in every message: what `Owner::Question` points to.
const QUESTION_POINTER: [u8; 2] = [0xC0, HEADER_LEN as u8];

/// Length of a record's fixed part when the question owns it: owner pointer, type, class, TTL and
/// data length.
pub const FIXED_AT_QUESTION: usize = 2 + 10;

/// The fixed part of a record the question owns, for records written as they are sent.
pub fn fixed_at_question(rtype: Rtype, class: Class, ttl: u32, data_len: u16) -> [u8; FIXED_AT_QUESTION] {
    let mut fixed = [0; FIXED_AT_QUESTION];
    fixed[..2].copy_from_slice(&QUESTION_POINTER);
    fixed[2..4].copy_from_slice(&rtype.to_int().to_be_bytes());
    fixed[4..6].copy_from_slice(&class.to_int().to_be_bytes());
    fixed[6..10].copy_from_slice(&ttl.to_be_bytes());
    fixed[10..].copy_from_slice(&data_len.to_be_bytes());
    fixed
}

/// Writes into a buffer already known to be large enough (`respond` checks it first).
pub struct Writer<'a> {
    pub out: &'a mut [u8],
    pub len: usize,
}

impl Writer<'_> {
    pub fn bytes(&mut self, b: &[u8]) {
        self.out[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
    }

    pub fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

pub struct Reader<'a> {
    pub packet: &'a [u8],
    pub pos: usize,
}

impl<'a> Reader<'a> {
    pub fn skip(&mut self, n: usize) -> Option<()> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.packet.len())?;
        self.pos = end;
        Some(())
    }

    pub fn u16(&mut self) -> Option<u16> {
        let b = self.packet.get(self.pos..self.pos + 2)?;
        self.pos += 2;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from(self.u16()?) << 16 | u32::from(self.u16()?))
    }

    /// The question name: plain labels only (nothing precedes it that a pointer could point to),
    /// at most 255 bytes, copied in lowercase.
    pub fn question_name(&mut self, lower: &mut [u8; 255]) -> Option<usize> {
        let mut len = 0;
        loop {
            let label = usize::from(*self.packet.get(self.pos)?);
            if label > 63 || len + 1 + label > lower.len() {
                return None;
            }
            let bytes = self.packet.get(self.pos..self.pos + 1 + label)?;
            for (dst, src) in lower[len..len + 1 + label].iter_mut().zip(bytes) {
                *dst = src.to_ascii_lowercase();
            }
            // The length byte must not be lowercased: 0x41..0x5A are valid label lengths too.
            lower[len] = bytes[0];
            len += 1 + label;
            self.pos += 1 + label;
            if label == 0 {
                return Some(len);
            }
        }
    }

    /// Any name in a record: labels ending in the root or in a compression pointer.
    pub fn skip_name(&mut self) -> Option<()> {
        loop {
            let label = *self.packet.get(self.pos)?;
            match label {
                0 => return self.skip(1),
                1..=63 => self.skip(1 + usize::from(label))?,
                0xC0..=0xFF => return self.skip(2),
                _ => return None,
            }
        }
    }

    pub fn skip_question(&mut self) -> Option<()> {
        self.skip_name()?;
        self.skip(4)
    }

    pub fn skip_record(&mut self) -> Option<()> {
        self.record().map(drop)
    }

    /// Reads past one record; returns its owner as written and its type.
    pub fn record(&mut self) -> Option<(&'a [u8], u16)> {
        let start = self.pos;
        self.skip_name()?;
        let owner = self.packet.get(start..self.pos)?;
        let rtype = self.u16()?;
        self.skip(6)?;
        let rdlen = self.u16()?;
        self.skip(usize::from(rdlen))?;
        Some((owner, rtype))
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding records for snapshots

/// A run of ready-made records in a snapshot's byte arena, and how many go in each section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Section {
    pub start: u32,
    pub len: u32,
    /// How many of the bytes are answer and authority records: the part that must fit.
    pub required: u32,
    /// Answer, authority and additional counts.
    pub counts: [u16; 3],
}

/// Whose name a record carries.
#[derive(Clone, Copy)]
pub enum Owner<'a> {
    /// The question's name, as a pointer, so it carries the client's letter case.
    Question,
    /// A name in wire form, written out.
    Name(&'a [u8]),
}

#[derive(Clone, Copy)]
pub enum Part {
    Answer = 0,
    Authority = 1,
    Additional = 2,
}

/// Appends records to an arena, answers before authority before additional.
pub struct SectionWriter<'a> {
    arena: &'a mut Vec<u8>,
    start: usize,
    /// Where the additional records begin, once there are any.
    additional: Option<usize>,
    counts: [u16; 3],
}

impl<'a> SectionWriter<'a> {
    pub fn new(arena: &'a mut Vec<u8>) -> Self {
        let start = arena.len();
        SectionWriter { arena, start, additional: None, counts: [0; 3] }
    }

    pub fn record(&mut self, part: Part, owner: Owner, rtype: Rtype, class: Class, ttl: u32, rdata: &[u8]) {
        if matches!(part, Part::Additional) && self.additional.is_none() {
            self.additional = Some(self.arena.len());
        }
        match owner {
            Owner::Question => self.arena.extend_from_slice(&QUESTION_POINTER),
            Owner::Name(name) => self.arena.extend_from_slice(name),
        }
        self.arena.extend_from_slice(&rtype.to_int().to_be_bytes());
        self.arena.extend_from_slice(&class.to_int().to_be_bytes());
        self.arena.extend_from_slice(&ttl.to_be_bytes());
        // Every rdata we write is far below 64 KiB (names, addresses, one TXT string).
        self.arena.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        self.arena.extend_from_slice(rdata);
        self.counts[part as usize] += 1;
    }

    /// The bytes written so far: where the next record starts, from the section's start.
    pub fn written(&self) -> usize {
        self.arena.len() - self.start
    }

    pub fn finish(self) -> Section {
        let end = self.arena.len();
        let required = self.additional.unwrap_or(end) - self.start;
        Section {
            start: self.start as u32,
            len: (end - self.start) as u32,
            required: required as u32,
            counts: self.counts,
        }
    }
}

/// A name in lowercase wire form, from text such as `worker3.tf.local.` (a missing final dot is
/// implied).
pub fn wire_name(text: &str) -> Result<Vec<u8>, String> {
    let absolute = if text.ends_with('.') { text.to_string() } else { format!("{text}.") };
    let name = Name::vec_from_str(&absolute).map_err(|e| format!("{text:?} is not a domain name: {e}"))?;
    let mut wire = name.as_slice().to_vec();
    lowercase_labels(&mut wire);
    Ok(wire)
}

fn lowercase_labels(wire: &mut [u8]) {
    let mut i = 0;
    while i < wire.len() && wire[i] != 0 {
        let len = usize::from(wire[i]);
        wire[i + 1..=i + len].make_ascii_lowercase();
        i += 1 + len;
    }
}

/// Whether `name` is `zone` or below it; both in lowercase wire form.
pub fn is_within(name: &[u8], zone: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        if name.len() - i == zone.len() && &name[i..] == zone {
            return true;
        }
        i += 1 + usize::from(name[i]);
    }
    false
}

/// SOA rdata. Refresh, retry and expire matter only to secondaries, which this zone does not
/// have (transfers are refused): they are the values RIPE-203 recommends, which zone checkers
/// expect. Negative answers are cached for the lesser of the SOA record's TTL and its minimum
/// (RFC 2308 §5); the record carries the answers' TTL, so a minimum no lower than that keeps
/// negative answers as fresh as positive ones. It is kept within the 300 s to 1 day checkers
/// expect, so a `ttl` above a day caches negative answers for a day.
pub fn soa_rdata(mname: &[u8], rname: &[u8], serial: u32, ttl: u32) -> Vec<u8> {
    let mut rdata = [mname, rname].concat();
    for v in [serial, 14_400, 3600, 604_800, ttl.clamp(300, 86_400)] {
        rdata.extend_from_slice(&v.to_be_bytes());
    }
    rdata
}

/// SRV rdata (RFC 2782): priority and weight 0, every member alike; the target is never
/// compressed, as the RFC asks.
pub fn srv_rdata(port: u16, target: &[u8]) -> Vec<u8> {
    let mut rdata = Vec::with_capacity(6 + target.len());
    rdata.extend_from_slice(&[0, 0, 0, 0]);
    rdata.extend_from_slice(&port.to_be_bytes());
    rdata.extend_from_slice(target);
    rdata
}

/// `name`'s first label followed by a pointer to `offset` in the message, where the rest of the
/// name already stands.
pub fn first_label_then(name: &[u8], offset: u16) -> Vec<u8> {
    let first = name.first().map_or(0, |&len| 1 + usize::from(len)).min(name.len());
    [&name[..first], &pointer(offset)].concat()
}

/// The furthest offset in a message a compression pointer reaches (14 bits).
pub const MAX_POINTER: usize = 0x3FFF;

/// A compression pointer to `offset` (at most `MAX_POINTER`) in the message: a whole name that
/// stands there already.
pub fn pointer(offset: u16) -> [u8; 2] {
    debug_assert!(usize::from(offset) <= MAX_POINTER, "a pointer to {offset}");
    (0xC000 | offset).to_be_bytes()
}

/// The reverse-lookup name of an address, in wire form: `3.0.0.10.in-addr.arpa.` or the 32
/// nibbles of an IPv6 address under `ip6.arpa.`.
#[cfg(test)]
pub fn reverse_name(ip: std::net::IpAddr) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut wire = Vec::with_capacity(72);
    match ip {
        std::net::IpAddr::V4(v4) => {
            for octet in v4.octets().iter().rev() {
                let digits: &[u8] = match octet {
                    0..=9 => &[b'0' + octet],
                    10..=99 => &[b'0' + octet / 10, b'0' + octet % 10],
                    _ => &[b'0' + octet / 100, b'0' + octet / 10 % 10, b'0' + octet % 10],
                };
                wire.push(digits.len() as u8);
                wire.extend_from_slice(digits);
            }
            wire.extend_from_slice(b"\x07in-addr");
        }
        std::net::IpAddr::V6(v6) => {
            for byte in v6.octets().iter().rev() {
                wire.extend_from_slice(&[1, HEX[usize::from(byte & 0xf)], 1, HEX[usize::from(byte >> 4)]]);
            }
            wire.extend_from_slice(b"\x03ip6");
        }
    }
    wire.extend_from_slice(b"\x04arpa\x00");
    wire
}

/// The address a lowercase wire-form reverse name stands for, if it is exactly what
/// `reverse_name` writes for one: four decimal octets without leading zeros under
/// `in-addr.arpa.`, or 32 hex nibbles under `ip6.arpa.`.
pub fn reverse_address(name: &[u8]) -> Option<std::net::IpAddr> {
    if let Some(front) = name.strip_suffix(b"\x07in-addr\x04arpa\x00") {
        let mut octets = [0u8; 4];
        let mut rest = front;
        for octet in octets.iter_mut().rev() {
            let len = usize::from(*rest.first()?);
            let (digits, tail) = rest.get(1..)?.split_at_checked(len)?;
            if len == 0 || len > 3 || (len > 1 && digits[0] == b'0') || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            *octet = u8::try_from(digits.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))).ok()?;
            rest = tail;
        }
        return rest.is_empty().then(|| std::net::IpAddr::from(octets));
    }
    let front = name.strip_suffix(b"\x03ip6\x04arpa\x00")?;
    if front.len() != 64 {
        return None;
    }
    let mut value: u128 = 0;
    // Least significant nibble first.
    for (i, pair) in front.chunks_exact(2).enumerate() {
        let nibble = match pair {
            [1, d @ b'0'..=b'9'] => d - b'0',
            [1, d @ b'a'..=b'f'] => d - b'a' + 10,
            _ => return None,
        };
        value |= u128::from(nibble) << (4 * i);
    }
    Some(std::net::IpAddr::from(value.to_be_bytes()))
}

/// TXT rdata holding `text` as character-strings of at most 255 bytes each.
pub fn txt_rdata(text: &str) -> Vec<u8> {
    let mut rdata = Vec::with_capacity(text.len() + 1);
    for chunk in text.as_bytes().chunks(255) {
        rdata.push(chunk.len() as u8);
        rdata.extend_from_slice(chunk);
    }
    if rdata.is_empty() {
        rdata.push(0);
    }
    rdata
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names() {
        assert_eq!(wire_name("Worker1.TF.local.").unwrap(), b"\x07worker1\x02tf\x05local\x00");
        assert_eq!(wire_name("tf.local").unwrap(), b"\x02tf\x05local\x00");
        assert!(is_within(b"\x07worker1\x02tf\x05local\x00", b"\x02tf\x05local\x00"));
        assert!(is_within(b"\x02tf\x05local\x00", b"\x02tf\x05local\x00"));
        assert!(!is_within(b"\x03xtf\x05local\x00", b"\x02tf\x05local\x00"));
        assert!(!is_within(b"\x05local\x00", b"\x02tf\x05local\x00"));
    }

    #[test]
    fn long_txt_is_split_into_strings() {
        let text = "a".repeat(300);
        let rdata = txt_rdata(&text);
        assert_eq!(rdata.len(), 302);
        assert_eq!((rdata[0], rdata[256]), (255, 45));
    }

    #[test]
    fn reverse_names_back_to_addresses() {
        for ip in ["10.0.0.3", "0.0.0.0", "255.255.255.255", "192.168.100.9", "2001:db8::1", "::", "fd00::ffff"] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(reverse_address(&reverse_name(ip)), Some(ip), "{ip}");
        }
        for name in [
            "03.0.0.10.in-addr.arpa.",
            "256.0.0.10.in-addr.arpa.",
            "0.0.10.in-addr.arpa.",
            "1.3.0.0.10.in-addr.arpa.",
            "x.0.0.10.in-addr.arpa.",
            "in-addr.arpa.",
            "1.0.ip6.arpa.",
            "3.0.0.10.in-addr.arpa.example.",
        ] {
            assert_eq!(reverse_address(&wire_name(name).unwrap()), None, "{name}");
        }
        let mut long = reverse_name("2001:db8::1".parse().unwrap());
        long[1] = b'g';
        assert_eq!(reverse_address(&long), None, "not a hex digit");
    }

    #[test]
    fn reverse_names() {
        assert_eq!(reverse_name("10.0.0.3".parse().unwrap()), wire_name("3.0.0.10.in-addr.arpa.").unwrap());
        let v6 = reverse_name("2001:db8::1".parse().unwrap());
        assert_eq!(v6, wire_name("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.").unwrap());
    }
}
