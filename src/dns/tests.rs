//! Answers checked by parsing them with the `domain` crate, an implementation independent of ours.

use std::collections::BTreeMap;
use std::str::FromStr;

use domain::base::iana::{Class, Opcode, OptRcode, Rtype};
use domain::base::{Message, MessageBuilder, Name, ParsedName, Question};
use domain::rdata::AllRecordData;

use super::*;
use crate::config::Role;
use crate::pattern::Pattern;
use crate::record::Record;
use crate::zone::{Inputs, Snapshot};

/// The one role a Corefile with only `pattern` has.
fn one_role(pattern: &Pattern) -> [Role; 1] {
    [Role { name: "worker".into(), pattern: pattern.clone(), ids: 1..=u32::MAX }]
}

/// A snapshot of one role's `members`, as any node would build it.
fn build(pattern: &Pattern, members: &BTreeMap<u32, Record>, nameservers: u32, own: Option<&str>) -> Snapshot {
    Snapshot::build(&Inputs {
        roles: &one_role(pattern),
        ttl: 5,
        serial: 1,
        nameservers,
        own_name: own,
        members: std::slice::from_ref(members),
    })
}

fn snapshot(own: Option<&str>) -> Snapshot {
    let pattern = Pattern::parse("worker{{.ID}}.tf.local.").unwrap();
    let mut members = BTreeMap::new();
    members.insert(
        1,
        Record { ipv4: Some("10.0.0.1".parse().unwrap()), ipv6: Some("fd00::1".parse().unwrap()), port: Some(53) },
    );
    members.insert(2, Record { ipv4: Some("10.0.0.2".parse().unwrap()), ipv6: None, port: Some(53) });
    members.insert(3, Record { ipv4: None, ipv6: Some("fd00::3".parse().unwrap()), port: None });
    Snapshot::build(&Inputs {
        roles: &one_role(&pattern),
        ttl: 5,
        serial: 42,
        nameservers: 3,
        own_name: own,
        members: std::slice::from_ref(&members),
    })
}

const HELD: Context = Context { transport: Transport::Udp, identity_held: true, forward: None };

struct Q {
    name: &'static str,
    rtype: Rtype,
    class: Class,
    edns: Option<(u16, u8)>,
    opcode: Opcode,
    id: u16,
}

fn q(name: &'static str, rtype: Rtype) -> Q {
    Q { name, rtype, class: Class::IN, edns: None, opcode: Opcode::QUERY, id: 0x1234 }
}

impl Q {
    fn class(self, class: Class) -> Q {
        Q { class, ..self }
    }

    fn edns(self, payload: u16, version: u8) -> Q {
        Q { edns: Some((payload, version)), ..self }
    }

    fn opcode(self, opcode: Opcode) -> Q {
        Q { opcode, ..self }
    }

    fn packet(&self) -> Vec<u8> {
        let mut b = MessageBuilder::new_vec();
        b.header_mut().set_id(self.id);
        b.header_mut().set_rd(true);
        b.header_mut().set_opcode(self.opcode);
        let mut b = b.question();
        let name = Name::<Vec<u8>>::from_str(self.name).unwrap();
        b.push(Question::new(name, self.rtype, self.class)).unwrap();
        let mut b = b.additional();
        if let Some((payload, version)) = self.edns {
            b.opt(|opt| {
                opt.set_udp_payload_size(payload);
                opt.set_version(version);
                Ok(())
            })
            .unwrap();
        }
        b.finish()
    }
}

fn ask(packet: &[u8], snapshot: &Snapshot, context: Context) -> Option<Message<Vec<u8>>> {
    let mut out = vec![0u8; 65535];
    match respond(packet, snapshot, context, &mut out) {
        Action::Reply { len, .. } => Some(Message::from_octets(out[..len].to_vec()).expect("answer parses")),
        Action::Forward { .. } => panic!("forwarded without forwarding"),
        Action::Drop => None,
    }
}

/// The length of a reply, 0 for anything else.
fn reply_len(action: Action) -> usize {
    match action {
        Action::Reply { len, .. } => len,
        _ => 0,
    }
}

fn answer(query: Q) -> Message<Vec<u8>> {
    ask(&query.packet(), &snapshot(Some("worker2.tf.local.")), HELD).expect("an answer")
}

/// A section's records in presentation form.
fn records(section: domain::base::message::RecordSection<'_, Vec<u8>>) -> Vec<String> {
    section
        .map(|rr| {
            let rr = rr.unwrap().into_record::<AllRecordData<_, ParsedName<_>>>().unwrap().unwrap();
            format!("{} {} {} {} {}", rr.owner(), rr.ttl().as_secs(), rr.class(), rr.rtype(), rr.data())
        })
        .collect()
}

fn rcode(m: &Message<Vec<u8>>) -> OptRcode {
    m.opt_rcode()
}

#[test]
fn member_addresses() {
    let m = answer(q("worker1.tf.local.", Rtype::A));
    assert_eq!(rcode(&m), OptRcode::NOERROR);
    assert!(m.header().aa() && m.header().qr() && m.header().rd() && !m.header().ra());
    assert_eq!(m.header().id(), 0x1234);
    assert_eq!(records(m.answer().unwrap()), ["worker1.tf.local 5 IN A 10.0.0.1"]);
    let m = answer(q("worker1.tf.local.", Rtype::AAAA));
    assert_eq!(records(m.answer().unwrap()), ["worker1.tf.local 5 IN AAAA fd00::1"]);
    assert_eq!(m.header_counts().nscount(), 0);
}

#[test]
fn the_question_comes_back_as_asked() {
    let m = answer(q("WoRkEr1.Tf.LoCaL.", Rtype::A));
    let question = m.sole_question().unwrap();
    assert_eq!(question.qname().to_string(), "WoRkEr1.Tf.LoCaL");
    // The answer's owner points at the question, so it carries the same case.
    assert_eq!(records(m.answer().unwrap()), ["WoRkEr1.Tf.LoCaL 5 IN A 10.0.0.1"]);
}

#[test]
fn nodata_for_a_member_without_that_type() {
    for (name, rtype) in [
        ("worker2.tf.local.", Rtype::AAAA),
        ("worker3.tf.local.", Rtype::A),
        ("worker1.tf.local.", Rtype::MX),
        ("tf.local.", Rtype::A),
    ] {
        let m = answer(q(name, rtype));
        assert_eq!(rcode(&m), OptRcode::NOERROR, "{name} {rtype}");
        assert!(m.header().aa());
        assert_eq!(m.header_counts().ancount(), 0);
        assert_eq!(
            records(m.authority().unwrap()),
            ["tf.local 5 IN SOA worker1.tf.local. hostmaster.tf.local. 42 14400 3600 604800 300"],
            "{name} {rtype}"
        );
    }
}

#[test]
fn nxdomain_for_other_names_in_the_zone() {
    for name in ["worker4.tf.local.", "worker01.tf.local.", "a.worker1.tf.local.", "x.tf.local.", "worker0.tf.local."] {
        let m = answer(q(name, Rtype::A));
        assert_eq!(rcode(&m), OptRcode::NXDOMAIN, "{name}");
        assert!(m.header().aa());
        assert_eq!(m.header_counts().ancount(), 0);
        assert_eq!(m.authority().unwrap().count(), 1, "{name}");
    }
}

#[test]
fn apex_records() {
    let m = answer(q("tf.local.", Rtype::SOA));
    assert_eq!(
        records(m.answer().unwrap()),
        ["tf.local 5 IN SOA worker1.tf.local. hostmaster.tf.local. 42 14400 3600 604800 300"]
    );
    let m = answer(q("TF.local.", Rtype::NS));
    // The targets' zone is a pointer into the question, so it carries the client's case.
    assert_eq!(
        records(m.answer().unwrap()),
        [
            "TF.local 5 IN NS worker1.TF.local.",
            "TF.local 5 IN NS worker2.TF.local.",
            "TF.local 5 IN NS worker3.TF.local."
        ]
    );
    assert_eq!(
        records(m.additional().unwrap()),
        [
            "worker1.TF.local 5 IN A 10.0.0.1",
            "worker1.TF.local 5 IN AAAA fd00::1",
            "worker2.TF.local 5 IN A 10.0.0.2",
            "worker3.TF.local 5 IN AAAA fd00::3"
        ]
    );
}

/// The zone's description is the same on every node: which node answers, and which name it
/// holds, changes nothing in the SOA and NS records, byte for byte.
#[test]
fn every_node_describes_the_zone_alike() {
    for query in [
        q("tf.local.", Rtype::SOA),
        q("tf.local.", Rtype::NS),
        q("nobody.tf.local.", Rtype::A),
        q("worker1.tf.local.", Rtype::TXT),
    ] {
        let packet = query.packet();
        let answers: Vec<Vec<u8>> = [None, Some("worker1.tf.local."), Some("worker3.tf.local.")]
            .into_iter()
            .map(|own| ask(&packet, &snapshot(own), HELD).unwrap().into_octets())
            .collect();
        assert_eq!(answers[0], answers[1], "{}", query.name);
        assert_eq!(answers[0], answers[2], "{}", query.name);
    }
}

#[test]
fn the_zone_s_servers_are_its_first_members_with_an_address() {
    let pattern = Pattern::parse("worker{{.ID}}.tf.local.").unwrap();
    let address = |last: u8| Record { ipv4: Some([10, 0, 0, last].into()), ipv6: None, port: None };
    let members: BTreeMap<u32, Record> =
        [(2, Record { ipv4: None, ipv6: None, port: Some(80) }), (4, address(4)), (7, address(7)), (9, address(9))]
            .into();
    let ns = |nameservers: u32, members: &BTreeMap<u32, Record>| {
        let s = build(&pattern, members, nameservers, None);
        let m = ask(&q("tf.local.", Rtype::NS).packet(), &s, HELD).unwrap();
        let soa = ask(&q("tf.local.", Rtype::SOA).packet(), &s, HELD).unwrap();
        (records(m.answer().unwrap()).join(", "), records(soa.answer().unwrap()).join(""))
    };
    let (servers, soa) = ns(2, &members);
    assert_eq!(servers, "tf.local 5 IN NS worker4.tf.local., tf.local 5 IN NS worker7.tf.local.");
    assert!(soa.contains(" SOA worker4.tf.local. "), "{soa}");
    assert_eq!(ns(13, &members).0.matches(" NS ").count(), 3);
    // No member to name: the zone is its own primary, and has no NS records yet.
    let (servers, soa) = ns(3, &BTreeMap::new());
    assert_eq!(servers, "");
    assert!(soa.contains(" SOA tf.local. hostmaster.tf.local. "), "{soa}");
}

/// The names of the SOA, NS and glue records point into the question: a negative answer costs
/// the zone's name once, wherever it stands in the question.
#[test]
fn zone_names_are_compressed() {
    for (name, rtype) in [
        ("tf.local.", Rtype::SOA),
        ("nobody.tf.local.", Rtype::A),
        ("a.b.worker1.tf.local.", Rtype::A),
        ("tf.local.", Rtype::TXT),
    ] {
        let m = answer(q(name, rtype));
        let soa = m.answer().unwrap().chain(m.authority().unwrap()).next().unwrap().unwrap();
        // Owner pointer, type, class, TTL, length; then "worker1" and "hostmaster" each with a
        // pointer, and five numbers.
        assert_eq!(usize::from(soa.rdlen()), (1 + 7 + 2) + (1 + 10 + 2) + 20, "{name} {rtype}");
        let question = 12 + name.len() + 1 + 4;
        assert_eq!(m.as_slice().len(), question + 12 + usize::from(soa.rdlen()), "{name} {rtype}");
    }
    let m = answer(q("tf.local.", Rtype::NS));
    // Each NS target is its first label and a pointer; each glue owner a pointer to a target.
    for rr in m.answer().unwrap() {
        assert_eq!(usize::from(rr.unwrap().rdlen()), 1 + 7 + 2);
    }
    let glue: usize = m.additional().unwrap().map(|rr| 2 + 10 + usize::from(rr.unwrap().rdlen())).sum();
    assert_eq!(glue, (2 + 10) * 4 + 4 + 16 + 4 + 16);
}

#[test]
fn any_gets_one_rrset() {
    let m = answer(q("worker1.tf.local.", Rtype::ANY));
    assert_eq!(records(m.answer().unwrap()), ["worker1.tf.local 5 IN A 10.0.0.1"]);
}

#[test]
fn out_of_zone_is_refused_and_no_larger_than_the_query() {
    for query in [
        q("example.com.", Rtype::A),
        q("local.", Rtype::A),
        q(".", Rtype::NS),
        q("xtf.local.", Rtype::A),
        q("worker1.tf.local.com.", Rtype::A).edns(4096, 0),
    ] {
        let packet = query.packet();
        let m = ask(&packet, &snapshot(Some("worker2.tf.local.")), HELD).unwrap();
        assert_eq!(rcode(&m), OptRcode::REFUSED);
        assert!(!m.header().aa());
        assert!(m.as_slice().len() <= packet.len());
    }
}

#[test]
fn zone_transfers_are_refused() {
    for rtype in [Rtype::AXFR, Rtype::IXFR] {
        let m = ask(
            &q("tf.local.", rtype).packet(),
            &snapshot(Some("worker2.tf.local.")),
            Context { transport: Transport::Tcp, identity_held: true, forward: None },
        );
        assert_eq!(rcode(&m.unwrap()), OptRcode::REFUSED);
    }
}

#[test]
fn identity_in_the_chaos_class() {
    for name in ["id.server.", "hostname.bind.", "ID.Server."] {
        let m = answer(q(name, Rtype::TXT).class(Class::CH));
        assert_eq!(rcode(&m), OptRcode::NOERROR);
        assert_eq!(
            records(m.answer().unwrap()),
            [format!("{} 0 CH TXT \"worker2.tf.local.\"", name.trim_end_matches('.'))]
        );
    }
    let m = answer(q("version.bind.", Rtype::TXT).class(Class::CH));
    assert_eq!(rcode(&m), OptRcode::REFUSED);
    let m = answer(q("id.server.", Rtype::A).class(Class::CH));
    assert_eq!((rcode(&m), m.header_counts().ancount()), (OptRcode::NOERROR, 0));
}

#[test]
fn no_identity_while_the_name_is_not_held() {
    let lost = Context { transport: Transport::Udp, identity_held: false, forward: None };
    let m = ask(&q("id.server.", Rtype::TXT).class(Class::CH).packet(), &snapshot(Some("worker2.tf.local.")), lost)
        .unwrap();
    assert_eq!(rcode(&m), OptRcode::SERVFAIL);
    let m = ask(&q("id.server.", Rtype::TXT).class(Class::CH).packet(), &snapshot(None), HELD).unwrap();
    assert_eq!(rcode(&m), OptRcode::SERVFAIL);
}

#[test]
fn servfail_in_the_zone_until_etcd_was_read() {
    let empty = Snapshot::empty("tf.local.");
    let m = ask(&q("worker1.tf.local.", Rtype::A).packet(), &empty, HELD).unwrap();
    assert_eq!(rcode(&m), OptRcode::SERVFAIL);
    let m = ask(&q("example.com.", Rtype::A).packet(), &empty, HELD).unwrap();
    assert_eq!(rcode(&m), OptRcode::REFUSED);
}

#[test]
fn other_classes_are_refused() {
    let m = answer(q("worker1.tf.local.", Rtype::A).class(Class::HS));
    assert_eq!(rcode(&m), OptRcode::REFUSED);
}

#[test]
fn class_any_is_answered_from_in_data_without_authority() {
    // As NSD does (RFC 1035 §6.2: an answer for every class is authoritative only if it covers
    // them all), and so without the SOA in negative answers. The question comes back as asked.
    let soa = "tf.local 5 IN SOA worker1.tf.local. hostmaster.tf.local. 42 14400 3600 604800 300";
    let cases: [(&str, Rtype, OptRcode, &[&str]); 7] = [
        ("worker1.tf.local.", Rtype::A, OptRcode::NOERROR, &["worker1.tf.local 5 IN A 10.0.0.1"]),
        ("WORKER1.tf.local.", Rtype::ANY, OptRcode::NOERROR, &["WORKER1.tf.local 5 IN A 10.0.0.1"]),
        ("tf.local.", Rtype::SOA, OptRcode::NOERROR, &[soa]),
        (
            "1.0.0.10.in-addr.arpa.",
            Rtype::PTR,
            OptRcode::NOERROR,
            &["1.0.0.10.in-addr.arpa 5 IN PTR worker1.tf.local."],
        ),
        ("worker2.tf.local.", Rtype::AAAA, OptRcode::NOERROR, &[]),
        ("_udp.tf.local.", Rtype::SRV, OptRcode::NOERROR, &[]),
        ("nobody.tf.local.", Rtype::A, OptRcode::NXDOMAIN, &[]),
    ];
    for (name, rtype, code, wanted) in cases {
        let m = answer(q(name, rtype).class(Class::ANY));
        assert_eq!(rcode(&m), code, "{name} {rtype}");
        assert_eq!(records(m.answer().unwrap()), wanted, "{name} {rtype}");
        assert!(!m.header().aa(), "{name} {rtype}");
        assert_eq!(m.header_counts().nscount(), 0, "{name} {rtype}");
        assert_eq!(m.sole_question().unwrap().qclass(), Class::ANY);
    }
    let m = answer(q("_idetcd._udp.tf.local.", Rtype::SRV).class(Class::ANY).edns(1232, 0));
    assert_eq!((m.header_counts().ancount(), m.header_counts().arcount()), (2, 4), "the addresses, and the OPT record");
    // Names outside the zone, and the chaos class's names, are not ours in class ANY either.
    for name in ["example.com.", "id.server.", "9.0.0.10.in-addr.arpa."] {
        let m = answer(q(name, Rtype::A).class(Class::ANY));
        assert_eq!((rcode(&m), m.header().aa()), (OptRcode::REFUSED, false), "{name}");
    }
}

#[test]
fn edns_is_echoed_with_our_payload_size() {
    let m = answer(q("worker1.tf.local.", Rtype::A).edns(4096, 0));
    let opt = m.opt().expect("OPT in the answer");
    assert_eq!(opt.udp_payload_size(), MAX_UDP_PAYLOAD);
    assert_eq!(opt.version(), 0);
    assert_eq!(records(m.answer().unwrap()), ["worker1.tf.local 5 IN A 10.0.0.1"]);
    let m = answer(q("worker1.tf.local.", Rtype::A));
    assert!(m.opt().is_none());
}

#[test]
fn unknown_edns_version_is_badvers() {
    let m = answer(q("worker1.tf.local.", Rtype::A).edns(1232, 1));
    assert_eq!(rcode(&m), OptRcode::BADVERS);
    assert_eq!(m.header_counts().ancount(), 0);
    assert!(m.opt().is_some());
}

/// A zone whose names are near the 253-byte limit, so that some answers outgrow 512 bytes.
fn long_zone() -> (String, Snapshot) {
    let label = "z".repeat(49);
    let zone = format!("{label}.{label}.{label}.{label}.");
    let pattern = Pattern::parse(&format!("w{{{{.ID}}}}.{zone}")).unwrap();
    let mut members = BTreeMap::new();
    members.insert(
        1,
        Record { ipv4: Some("10.0.0.1".parse().unwrap()), ipv6: Some("fd00::1".parse().unwrap()), port: None },
    );
    let own = pattern.name(1);
    let snapshot = build(&pattern, &members, 3, Some(&own));
    (zone, snapshot)
}

fn ask_static(query: &Q, snapshot: &Snapshot) -> Message<Vec<u8>> {
    ask(&query.packet(), snapshot, HELD).unwrap()
}

/// With names near the 255-byte limit, a negative answer still fits 512 bytes: its SOA names
/// point into the question rather than repeat the zone.
#[test]
fn negative_answers_fit_without_edns_however_long_the_zone() {
    let (zone, snapshot) = long_zone();
    let name: &'static str = Box::leak(format!("nobody.{zone}").into_boxed_str());
    let m = ask_static(&q(name, Rtype::A), &snapshot);
    assert!(!m.header().tc(), "{} bytes", m.as_slice().len());
    assert!(m.as_slice().len() <= 512);
    assert_eq!((rcode(&m), m.header_counts().nscount()), (OptRcode::NXDOMAIN, 1));
    assert_eq!(m.sole_question().unwrap().qname().to_string(), name.trim_end_matches('.'));
    let soa = records(m.authority().unwrap());
    assert_eq!(
        soa,
        [format!("{} 5 IN SOA w1.{zone} hostmaster.{zone} 1 14400 3600 604800 300", zone.trim_end_matches('.'))]
    );
}

#[test]
fn answers_that_do_not_fit_are_truncated() {
    let pattern = Pattern::parse("worker{{.ID}}.tf.local.").unwrap();
    let members: BTreeMap<u32, Record> = (1..=60)
        .map(|id| (id, Record { ipv4: Some([10, 0, 0, id as u8].into()), ipv6: None, port: Some(53) }))
        .collect();
    let snapshot = build(&pattern, &members, 3, None);
    // 60 SRV records take more than 512 bytes, and more than 1232.
    for query in [q("_idetcd._udp.tf.local.", Rtype::SRV), q("_idetcd._udp.tf.local.", Rtype::SRV).edns(1232, 0)] {
        let m = ask_static(&query, &snapshot);
        assert!(m.header().tc(), "{} bytes", m.as_slice().len());
        assert_eq!(m.header_counts().ancount(), 0);
        assert_eq!(m.opt().is_some(), query.edns.is_some());
    }
    // Over TCP there is no such limit.
    let m = ask(
        &q("_idetcd._udp.tf.local.", Rtype::SRV).packet(),
        &snapshot,
        Context { transport: Transport::Tcp, identity_held: true, forward: None },
    )
    .unwrap();
    assert!(!m.header().tc());
    assert_eq!(m.header_counts().ancount(), 60);
}

#[test]
fn glue_fits_without_edns_however_long_the_zone() {
    let (zone, snapshot) = long_zone();
    let apex: &'static str = Box::leak(zone.into_boxed_str());
    let m = ask_static(&q(apex, Rtype::NS), &snapshot);
    assert!(!m.header().tc());
    assert!(m.as_slice().len() <= 512);
    // The A and AAAA glue.
    assert_eq!((m.header_counts().ancount(), m.header_counts().arcount()), (1, 2));
}

#[test]
fn small_buffers_get_no_answer_rather_than_a_panic() {
    let mut out = [0u8; 100];
    assert_eq!(respond(&q("worker1.tf.local.", Rtype::A).packet(), &snapshot(None), HELD, &mut out), Action::Drop);
}

#[test]
fn the_do_bit_is_copied() {
    let mut packet = q("worker1.tf.local.", Rtype::A).edns(1232, 0).packet();
    let flags = packet.len() - 4;
    packet[flags] |= 0x80;
    let m = ask(&packet, &snapshot(None), HELD).unwrap();
    assert!(m.opt().unwrap().dnssec_ok());
    let m = answer(q("worker1.tf.local.", Rtype::A).edns(1232, 0));
    assert!(!m.opt().unwrap().dnssec_ok());
}

#[test]
fn formerr_keeps_the_opt_record() {
    // A query with no question, only an OPT record (as a DNS cookie probe sends, RFC 7873 §5.4).
    let full = q("worker1.tf.local.", Rtype::A).edns(1232, 0).packet();
    let mut packet = full[..12].to_vec();
    packet[4..6].copy_from_slice(&0u16.to_be_bytes());
    packet.extend_from_slice(&full[full.len() - 11..]);
    let m = ask(&packet, &snapshot(None), HELD).unwrap();
    assert_eq!(rcode(&m), OptRcode::FORMERR);
    assert!(m.opt().is_some());
}

/// worker1's A question with an OPT record whose data, its options, is `options`.
fn with_options(options: &[u8]) -> Vec<u8> {
    let mut packet = q("worker1.tf.local.", Rtype::A).edns(1232, 0).packet();
    let rdlen = packet.len() - 2;
    packet[rdlen..].copy_from_slice(&(options.len() as u16).to_be_bytes());
    packet.extend_from_slice(options);
    packet
}

/// An OPT record with no options: root owner, type, payload 1232, TTL 0, no data.
const OPT: [u8; 11] = [0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0];

/// `packet` with `records` appended and its answer, authority and additional counts set.
fn with_records(packet: &[u8], counts: [u16; 3], records: &[&[u8]]) -> Vec<u8> {
    let mut packet = [packet, &records.concat()].concat();
    for (i, count) in counts.into_iter().enumerate() {
        packet[6 + 2 * i..8 + 2 * i].copy_from_slice(&count.to_be_bytes());
    }
    packet
}

#[test]
fn malformed_edns_is_formerr_without_an_opt_record() {
    let plain = q("worker1.tf.local.", Rtype::A).packet();
    let non_root = [&[1, b'a'][..], &OPT].concat();
    let cookie_only = with_records(&plain[..12], [0, 0, 1], &[&OPT[..9], &[0, 2, 0, 10]]);
    let cases: [(&str, Vec<u8>); 10] = [
        ("an option's length past the OPT data", with_options(&[0, 10, 0, 8, 1, 2, 3, 4])),
        ("an option header cut after its code", with_options(&[0, 10])),
        ("an option header cut in its length", with_options(&[0, 10, 0])),
        ("a stray byte after a whole option", with_options(&[0xfd, 0xe9, 0, 0, 7])),
        ("OPT in the answer section", with_records(&plain, [1, 0, 0], &[&OPT])),
        ("OPT in the authority section", with_records(&plain, [0, 1, 0], &[&OPT])),
        ("OPT in the answer and the additional section", with_records(&plain, [1, 0, 1], &[&OPT, &OPT])),
        ("two OPT records", with_records(&plain, [0, 0, 2], &[&OPT, &OPT])),
        ("OPT owned by another name than the root", with_records(&plain, [0, 0, 1], &[&non_root])),
        ("no question, and an option header cut short", cookie_only),
    ];
    for (what, packet) in cases {
        let m = ask(&packet, &snapshot(Some("worker2.tf.local.")), HELD).unwrap_or_else(|| panic!("{what}: no answer"));
        // NSD and Knot answer these with FORMERR and no OPT record.
        assert_eq!(rcode(&m), OptRcode::FORMERR, "{what}");
        assert!(m.opt().is_none(), "{what}");
        assert_eq!(m.header().id(), 0x1234, "{what}");
        assert_eq!(m.header_counts().qdcount(), u16::from_be_bytes([packet[4], packet[5]]), "{what}: question echoed");
        assert_eq!(m.header_counts().ancount() + m.header_counts().arcount(), 0, "{what}");
    }
    // Options that fill the OPT data exactly are fine, known or not.
    let cookie = [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
    for options in [&[][..], &cookie, &[0xfd, 0xe9, 0, 0], &[&cookie[..], &[0xfd, 0xe9, 0, 1, 9]].concat()] {
        let m = ask(&with_options(options), &snapshot(None), HELD).unwrap();
        assert_eq!(rcode(&m), OptRcode::NOERROR, "{options:?}");
        assert!(m.opt().is_some(), "{options:?}");
        assert_eq!(records(m.answer().unwrap()), ["worker1.tf.local 5 IN A 10.0.0.1"]);
    }
}

#[test]
fn other_opcodes_are_notimp() {
    for opcode in [Opcode::NOTIFY, Opcode::UPDATE, Opcode::IQUERY, Opcode::STATUS] {
        let m = answer(q("tf.local.", Rtype::SOA).opcode(opcode));
        assert_eq!(rcode(&m), OptRcode::NOTIMP, "{opcode}");
        assert_eq!(m.header().opcode(), opcode);
    }
}

#[test]
fn malformed_queries_are_formerr() {
    let good = q("worker1.tf.local.", Rtype::A).packet();
    let with_counts = |qd: u16, an: u16, ar: u16| {
        let mut p = good.clone();
        p[4..6].copy_from_slice(&qd.to_be_bytes());
        p[6..8].copy_from_slice(&an.to_be_bytes());
        p[10..12].copy_from_slice(&ar.to_be_bytes());
        p
    };
    let mut compressed_question = good[..12].to_vec();
    compressed_question.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
    let mut long_label = good[..12].to_vec();
    long_label.extend_from_slice(&[64]);
    long_label.extend_from_slice(&[b'a'; 64]);
    long_label.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut two_opts = q("worker1.tf.local.", Rtype::A).edns(1232, 0).packet();
    let opt = two_opts[two_opts.len() - 11..].to_vec();
    two_opts.extend_from_slice(&opt);
    two_opts[10..12].copy_from_slice(&2u16.to_be_bytes());
    let cases: [(&str, Vec<u8>); 8] = [
        ("no question", with_counts(0, 0, 0)),
        ("two questions", with_counts(2, 0, 0)),
        ("question cut short", good[..good.len() - 2].to_vec()),
        ("answer count beyond the packet", with_counts(1, 1, 0)),
        ("additional count beyond the packet", with_counts(1, 0, 3)),
        ("pointer in the question", compressed_question),
        ("label over 63 bytes", long_label),
        ("two OPT records", two_opts),
    ];
    for (what, packet) in cases {
        let m = ask(&packet, &snapshot(Some("worker2.tf.local.")), HELD).unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(rcode(&m), OptRcode::FORMERR, "{what}");
        assert_eq!(m.header().id(), 0x1234, "{what}");
    }
}

#[test]
fn responses_and_runts_get_no_answer() {
    let mut response = q("worker1.tf.local.", Rtype::A).packet();
    response[2] |= 0x80;
    let s = snapshot(Some("worker2.tf.local."));
    assert!(ask(&response, &s, HELD).is_none());
    for len in 0..12 {
        assert!(ask(&vec![0u8; len], &s, HELD).is_none());
    }
}

#[test]
fn random_packets_never_panic_nor_overflow() {
    let s = snapshot(Some("worker2.tf.local."));
    let seeds: Vec<Vec<u8>> = vec![
        q("worker1.tf.local.", Rtype::A).packet(),
        q("worker1.tf.local.", Rtype::A).edns(512, 0).packet(),
        q("id.server.", Rtype::TXT).class(Class::CH).packet(),
    ];
    let mut generator = crate::random::Random::from_seed(1);
    let mut random = || generator.next();
    let mut out = vec![0u8; MAX_UDP_PAYLOAD as usize];
    for i in 0..200_000 {
        let mut packet = seeds[i % seeds.len()].clone();
        match random() % 3 {
            0 => {
                for _ in 0..1 + random() % 4 {
                    let at = (random() as usize) % packet.len();
                    packet[at] = random() as u8;
                }
            }
            1 => packet.truncate((random() as usize) % (packet.len() + 1)),
            _ => packet = (0..random() % 600).map(|_| random() as u8).collect(),
        }
        let n = reply_len(respond(&packet, &s, HELD, &mut out));
        assert!(n <= out.len());
        if n > 0 {
            assert!(n >= HEADER_LEN);
            assert_eq!(out[..2], packet[..2], "the ID is echoed");
        }
    }
}

/// Every input in a fuzz corpus or regression folder, `fuzz/corpus/TARGET` and
/// `fuzz/regressions/TARGET`; none when the folders are not there.
pub(crate) fn fuzz_inputs(target: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    ["corpus", "regressions"]
        .iter()
        .filter_map(|kind| std::fs::read_dir(root.join(kind).join(target)).ok())
        .flatten()
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let bytes = std::fs::read(&path).ok()?;
            Some((path, bytes))
        })
        .collect()
}

#[test]
fn the_fuzz_corpus_and_regressions_replay_cleanly() {
    let s = snapshot(Some("worker2.tf.local."));
    let mut out = vec![0u8; 65535];
    let inputs = fuzz_inputs("respond");
    assert!(inputs.len() > 50, "the corpus in fuzz/corpus/respond is there");
    for (path, query) in &inputs {
        for (transport, limit) in [(Transport::Udp, MAX_UDP_PAYLOAD as usize), (Transport::Tcp, out.len())] {
            let n = reply_len(respond(
                query,
                &s,
                Context { transport, identity_held: true, forward: None },
                &mut out[..limit],
            ));
            assert!(n <= limit, "{}", path.display());
            assert!(n == 0 || out[..2] == query[..2], "{}", path.display());
        }
    }
}

#[test]
fn service_records_list_every_member_with_its_addresses() {
    for (owner, shown) in
        [("_idetcd._udp.tf.local.", "_idetcd._udp.tf.local"), ("_IDETCD._tcp.TF.local.", "_IDETCD._tcp.TF.local")]
    {
        let m = ask(&q(owner, Rtype::SRV).edns(1232, 0).packet(), &snapshot(Some("worker2.tf.local.")), HELD).unwrap();
        assert_eq!(rcode(&m), OptRcode::NOERROR);
        assert!(m.header().aa());
        assert_eq!(
            records(m.answer().unwrap()),
            [format!("{shown} 5 IN SRV 0 0 53 worker1.tf.local"), format!("{shown} 5 IN SRV 0 0 53 worker2.tf.local")],
            "member 3 has no port and no SRV record"
        );
        // The addresses' owners point to the targets, which are written in lowercase.
        let zone = "tf.local";
        let additional: Vec<String> =
            records(m.additional().unwrap()).into_iter().filter(|r| !r.contains("OPT")).collect();
        assert_eq!(
            additional,
            [
                format!("worker1.{zone} 5 IN A 10.0.0.1"),
                format!("worker1.{zone} 5 IN AAAA fd00::1"),
                format!("worker2.{zone} 5 IN A 10.0.0.2"),
            ]
        );
    }
}

/// Thirty members `w1.p.test.` to `w30.p.test.`, each with a port, every third with an IPv6
/// address too: their SRV records fit 1232 bytes, their addresses only in part.
fn thirty_services() -> Snapshot {
    let pattern = Pattern::parse("w{{.ID}}.p.test.").unwrap();
    let members: BTreeMap<u32, Record> = (1..=30)
        .map(|id| {
            let ipv6 = (id % 3 == 0).then(|| std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, id as u16));
            (id, Record { ipv4: Some(std::net::Ipv4Addr::new(10, 1, 0, id as u8)), ipv6, port: Some(2222) })
        })
        .collect();
    build(&pattern, &members, 3, None)
}

#[test]
fn additional_records_go_in_as_far_as_whole_rrsets_fit() {
    let s = thirty_services();
    let query = q("_idetcd._udp.p.test.", Rtype::SRV).edns(1232, 0).packet();
    let tcp = Context { transport: Transport::Tcp, identity_held: true, forward: None };
    let (whole, udp) = (ask(&query, &s, tcp).unwrap(), ask(&query, &s, HELD).unwrap());
    let addresses = |m: &Message<Vec<u8>>| -> Vec<String> {
        records(m.additional().unwrap()).into_iter().filter(|r| !r.contains("OPT")).collect()
    };
    let (all, some) = (addresses(&whole), addresses(&udp));
    assert_eq!(all.len(), 40);
    // No TC for a partial additional section (RFC 2181 §9), and the counts say what is there.
    assert!(!udp.header().tc());
    assert_eq!(udp.header_counts().ancount(), 30);
    assert!(!some.is_empty() && some.len() < all.len(), "{} of {} address records", some.len(), all.len());
    assert_eq!(some, all[..some.len()]);
    assert_eq!(usize::from(udp.header_counts().arcount()), some.len() + 1, "and the OPT record");
    // The UDP answer is the whole one cut short before the OPT record, and the next address
    // record would not have fitted.
    let len = udp.as_slice().len();
    assert!(len <= usize::from(MAX_UDP_PAYLOAD), "{len} bytes");
    let cut = len - OPT_LEN;
    assert_eq!(udp.as_slice()[HEADER_LEN..cut], whole.as_slice()[HEADER_LEN..cut]);
    let mut next = Reader { packet: whole.as_slice(), pos: cut };
    next.skip_record().unwrap();
    assert!(len + (next.pos - cut) > usize::from(MAX_UDP_PAYLOAD), "the next record takes {} bytes", next.pos - cut);
}

#[test]
fn whole_rrsets_of_additional_records() {
    // Owner, type, data length.
    type Records = &'static [(&'static [u8], u16, usize)];
    const A: &[u8] = b"\x01a\0";
    const B: &[u8] = b"\x01b\0";
    const POINTER: &[u8] = &[0xC0, 12];
    // An A record of `A` or `B` takes 17 bytes, of `POINTER` 16, an AAAA record 12 more.
    let cases: [(&str, Records, usize, (usize, u16)); 13] = [
        ("nothing", &[], 100, (0, 0)),
        ("one record, no room", &[(A, 1, 4)], 16, (0, 0)),
        ("one record, just room", &[(A, 1, 4)], 17, (17, 1)),
        ("an RRset of two, room for one", &[(A, 1, 4), (A, 1, 4)], 33, (0, 0)),
        ("an RRset of two, room for both", &[(A, 1, 4), (A, 1, 4)], 34, (34, 2)),
        ("two types of one name", &[(A, 1, 4), (A, 28, 16)], 45, (17, 1)),
        ("two types of one name, room for both", &[(A, 1, 4), (A, 28, 16)], 46, (46, 2)),
        ("two names", &[(A, 1, 4), (B, 1, 4)], 33, (17, 1)),
        ("then an RRset of two", &[(A, 1, 4), (B, 1, 4), (B, 1, 4)], 50, (17, 1)),
        ("then an RRset of two, room for all", &[(A, 1, 4), (B, 1, 4), (B, 1, 4)], 51, (51, 3)),
        ("one name written two ways", &[(A, 1, 4), (POINTER, 1, 4)], 32, (17, 1)),
        ("room for more than there is", &[(A, 1, 4), (B, 1, 4)], 1000, (34, 2)),
        ("nothing fits", &[(A, 1, 4), (B, 1, 4)], 0, (0, 0)),
    ];
    let bytes = |records: Records| -> Vec<u8> {
        let mut out = Vec::new();
        for (owner, rtype, rdlen) in records {
            out.extend_from_slice(owner);
            out.extend_from_slice(&rtype.to_be_bytes());
            out.extend_from_slice(&[0, 1, 0, 0, 0, 5]);
            out.extend_from_slice(&(*rdlen as u16).to_be_bytes());
            out.extend(std::iter::repeat_n(7, *rdlen));
        }
        out
    };
    for (what, records, room, fit) in cases {
        assert_eq!(whole_rrsets(&bytes(records), room), fit, "{what}");
    }
    // A record that does not parse ends the run.
    let two = bytes(&[(A, 1, 4), (B, 1, 4)]);
    for (what, broken) in [
        ("a label over 63 bytes", [&two[..17], &[64]].concat()),
        ("data cut short", two[..two.len() - 1].to_vec()),
        ("a record header cut short", two[..20].to_vec()),
    ] {
        assert_eq!(whole_rrsets(&broken, 1000), (17, 1), "{what}");
    }
}

#[test]
fn service_labels_are_empty_non_terminals() {
    for name in ["_udp.tf.local.", "_tcp.tf.local."] {
        let m = answer(q(name, Rtype::SRV));
        assert_eq!((rcode(&m), m.header_counts().ancount(), m.header_counts().nscount()), (OptRcode::NOERROR, 0, 1));
    }
    assert_eq!(rcode(&answer(q("_idetcd._sctp.tf.local.", Rtype::SRV))), OptRcode::NXDOMAIN);
}

/// PTR records are written as they are sent: every member with the address, by ID, names of any
/// length, the whole RRset or TC.
#[test]
fn pointer_records_of_an_address_many_members_share() {
    let pattern = Pattern::parse("n{{.ID}}-x.tf.local.").unwrap();
    let shared = Record { ipv4: Some([10, 0, 0, 7].into()), ipv6: None, port: None };
    let ids = [0, 7, 10, 99, 100, 12345, u32::MAX];
    let members: BTreeMap<u32, Record> = ids.iter().map(|&id| (id, shared)).collect();
    let snapshot = build(&pattern, &members, 1, None);
    let m = ask(&q("7.0.0.10.in-addr.arpa.", Rtype::PTR).packet(), &snapshot, HELD).unwrap();
    let want: Vec<String> = ids.iter().map(|id| format!("7.0.0.10.in-addr.arpa 5 IN PTR n{id}-x.tf.local.")).collect();
    assert_eq!(records(m.answer().unwrap()), want);
    assert_eq!(m.header_counts().ancount(), ids.len() as u16);

    // 40 members at one address: more than 512 bytes, so none over UDP, all over TCP.
    let members: BTreeMap<u32, Record> = (1..=40).map(|id| (id * 1000, shared)).collect();
    let snapshot = build(&pattern, &members, 1, None);
    let query = q("7.0.0.10.in-addr.arpa.", Rtype::PTR);
    let m = ask(&query.packet(), &snapshot, HELD).unwrap();
    assert!(m.header().tc());
    assert_eq!(m.header_counts().ancount(), 0);
    let tcp = Context { transport: Transport::Tcp, identity_held: true, forward: None };
    let m = ask(&query.packet(), &snapshot, tcp).unwrap();
    assert!(!m.header().tc());
    assert_eq!(records(m.answer().unwrap()).len(), 40);
    assert_eq!(records(m.answer().unwrap())[39], "7.0.0.10.in-addr.arpa 5 IN PTR n40000-x.tf.local.");
}

#[test]
fn pointer_records_for_member_addresses() {
    let m = answer(q("1.0.0.10.in-addr.arpa.", Rtype::PTR));
    assert_eq!(records(m.answer().unwrap()), ["1.0.0.10.in-addr.arpa 5 IN PTR worker1.tf.local."]);
    assert!(m.header().aa());
    let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
    let m = ask(&q(Box::leak(v6.to_uppercase().into_boxed_str()), Rtype::PTR).packet(), &snapshot(None), HELD).unwrap();
    assert_eq!(m.answer().unwrap().count(), 1);
    assert_eq!(records(m.answer().unwrap())[0].rsplit(' ').next(), Some("worker1.tf.local."));
    // Addresses of nobody are not ours to answer for.
    assert_eq!(rcode(&answer(q("9.0.0.10.in-addr.arpa.", Rtype::PTR))), OptRcode::REFUSED);
}

#[test]
fn reverse_names_answer_their_pointer_records_and_nothing_else() {
    // No reverse zone is ours, only the members' PTR records: any other question there is a
    // name outside the zone (no negative answer without an SOA, which must not be cached).
    #[derive(Debug, PartialEq)]
    enum Expect {
        Pointer,
        Refused,
        Forward,
    }
    let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
    let (all, arpa, corp): (&[u8], &[u8], &[u8]) = (b"\0", b"\x04arpa\0", b"\x04corp\0");
    let cases: [(&'static str, Rtype, Option<&[u8]>, Expect); 13] = [
        ("1.0.0.10.in-addr.arpa.", Rtype::PTR, None, Expect::Pointer),
        ("1.0.0.10.in-addr.arpa.", Rtype::ANY, None, Expect::Pointer),
        ("1.0.0.10.in-addr.arpa.", Rtype::PTR, Some(all), Expect::Pointer),
        ("1.0.0.10.in-addr.arpa.", Rtype::TXT, None, Expect::Refused),
        ("1.0.0.10.in-addr.arpa.", Rtype::A, None, Expect::Refused),
        ("1.0.0.10.in-addr.arpa.", Rtype::SOA, None, Expect::Refused),
        ("1.0.0.10.in-addr.arpa.", Rtype::NS, None, Expect::Refused),
        (v6, Rtype::AAAA, None, Expect::Refused),
        ("0.0.10.in-addr.arpa.", Rtype::SOA, None, Expect::Refused),
        ("1.0.0.10.in-addr.arpa.", Rtype::TXT, Some(all), Expect::Forward),
        ("1.0.0.10.in-addr.arpa.", Rtype::NS, Some(arpa), Expect::Forward),
        (v6, Rtype::SOA, Some(arpa), Expect::Forward),
        ("1.0.0.10.in-addr.arpa.", Rtype::TXT, Some(corp), Expect::Refused),
    ];
    let s = snapshot(Some("worker2.tf.local."));
    let mut out = vec![0u8; 1232];
    for (name, rtype, forward, expect) in cases {
        let context = Context { forward, ..HELD };
        let got = match respond(&q(name, rtype).packet(), &s, context, &mut out) {
            Action::Forward { qtype } if qtype == rtype => Expect::Forward,
            Action::Reply { len, .. } => {
                let m = Message::from_octets(out[..len].to_vec()).unwrap();
                match (rcode(&m), m.header().aa(), m.header_counts().ancount(), m.header_counts().nscount()) {
                    (OptRcode::NOERROR, true, 1, 0) => Expect::Pointer,
                    (OptRcode::REFUSED, false, 0, 0) => Expect::Refused,
                    other => panic!("{name} {rtype}: {other:?}"),
                }
            }
            other => panic!("{name} {rtype}: {other:?}"),
        };
        assert_eq!(got, expect, "{name} {rtype} with forward {forward:?}");
    }
}

#[test]
fn with_forward_names_outside_the_zone_go_upstream() {
    let forward = Context { transport: Transport::Udp, identity_held: true, forward: Some(b"\0") };
    let s = snapshot(Some("worker2.tf.local."));
    let mut out = vec![0u8; 1232];
    assert_eq!(
        respond(&q("example.com.", Rtype::AAAA).packet(), &s, forward, &mut out),
        Action::Forward { qtype: Rtype::AAAA }
    );
    assert_eq!(
        respond(&q("9.0.0.10.in-addr.arpa.", Rtype::PTR).packet(), &s, forward, &mut out),
        Action::Forward { qtype: Rtype::PTR }
    );
    // Other classes are not for stub resolvers' upstreams.
    for class in [Class::ANY, Class::CH] {
        let m = ask(&q("example.com.", Rtype::A).class(class).packet(), &s, forward).unwrap();
        assert_eq!(rcode(&m), OptRcode::REFUSED, "{class}");
    }
    // Ours stay ours, now with recursion available.
    let Action::Reply { len, rcode: code, .. } =
        respond(&q("worker1.tf.local.", Rtype::A).packet(), &s, forward, &mut out)
    else {
        panic!()
    };
    let m = Message::from_octets(out[..len].to_vec()).unwrap();
    assert!(m.header().ra() && m.header().aa() && code == OptRcode::NOERROR);
    let nx = ask(&q("nobody.tf.local.", Rtype::A).packet(), &s, forward).unwrap();
    assert_eq!(rcode(&nx), OptRcode::NXDOMAIN, "a name in our zone is never forwarded");
    // Only names under FROM.
    let only_corp = Context { forward: Some(b"\x04corp\x00"), ..forward };
    assert_eq!(
        respond(&q("db.corp.", Rtype::A).packet(), &s, only_corp, &mut out),
        Action::Forward { qtype: Rtype::A }
    );
    let m =
        ask(&q("example.com.", Rtype::A).packet(), &s, Context { forward: Some(b"\x04corp\x00"), ..forward }).unwrap();
    assert_eq!(rcode(&m), OptRcode::REFUSED);
}

#[test]
fn answers_belong_to_their_questions() {
    let query = q("worker1.tf.local.", Rtype::A).packet();
    let m = ask(&query, &snapshot(None), HELD).unwrap();
    assert!(answers(&query, m.as_slice()));
    let mut other = q("WORKER1.tf.local.", Rtype::A).packet();
    other[..2].copy_from_slice(&query[..2]);
    assert!(answers(&other, m.as_slice()), "letter case aside");
    assert!(!answers(&q("worker2.tf.local.", Rtype::A).packet(), m.as_slice()));
    assert!(!answers(&query, &query), "a query is no answer");
    let mut wrong_id = m.as_slice().to_vec();
    set_id(&mut wrong_id, id(&query) ^ 1);
    assert!(!answers(&query, &wrong_id));
}

#[test]
fn service_records_of_a_huge_cluster_still_fit_one_message() {
    let pattern = Pattern::parse("worker{{.ID}}.tf.local.").unwrap();
    let members: BTreeMap<u32, Record> = (1..=5000)
        .map(|id| (id, Record { ipv4: Some(std::net::Ipv4Addr::from(0x0a00_0000 + id)), ipv6: None, port: Some(53) }))
        .collect();
    let s = build(&pattern, &members, 3, None);
    let tcp = Context { transport: Transport::Tcp, identity_held: true, forward: None };
    let m = ask(&q("_idetcd._tcp.tf.local.", Rtype::SRV).packet(), &s, tcp).unwrap();
    assert!(!m.header().tc());
    let listed = m.header_counts().ancount();
    assert!((1400..2000).contains(&listed), "{listed} SRV records");
    assert!(m.as_slice().len() <= 65535);
    assert_eq!(records(m.answer().unwrap())[0], "_idetcd._tcp.tf.local 5 IN SRV 0 0 53 worker1.tf.local");
    // A cluster whose addresses all fit, past the 16 KiB a compression pointer reaches: each
    // address still belongs to its target.
    let s = build(&pattern, &members.into_iter().take(700).collect(), 3, None);
    let m = ask(&q("_idetcd._tcp.tf.local.", Rtype::SRV).packet(), &s, tcp).unwrap();
    assert!(m.as_slice().len() > 0x4000 * 2, "{} bytes", m.as_slice().len());
    let targets: Vec<String> =
        records(m.answer().unwrap()).iter().map(|r| r.rsplit(' ').next().unwrap().into()).collect();
    let owners: Vec<String> =
        records(m.additional().unwrap()).iter().map(|r| r.split(' ').next().unwrap().into()).collect();
    assert_eq!(owners, targets);
}

/// A query for `name` as a packet, for names made at run time.
fn packet(name: &str, rtype: Rtype) -> Vec<u8> {
    let mut b = MessageBuilder::new_vec().question();
    b.push(Question::new(Name::<Vec<u8>>::from_str(name).unwrap(), rtype, Class::IN)).unwrap();
    b.finish()
}

/// Roles `ps` and `worker` in `tf.local.`, any ID.
fn ps_and_workers() -> Vec<Role> {
    ["ps", "worker"]
        .iter()
        .map(|name| Role {
            name: name.to_string(),
            pattern: Pattern::parse(&format!("{name}{{{{.ID}}}}.tf.local.")).unwrap(),
            ids: 0..=u32::MAX,
        })
        .collect()
}

/// Asserts that two snapshots answer each question with the same bytes.
fn same_answers(left: &Snapshot, right: &Snapshot, questions: &[(String, Rtype)], when: &str) {
    for (name, rtype) in questions {
        let (mut a, mut b) = (vec![0u8; 65535], vec![0u8; 65535]);
        let query = packet(name, *rtype);
        let (one, other) = (respond(&query, left, HELD, &mut a), respond(&query, right, HELD, &mut b));
        assert_eq!(one, other, "{when}: {name} {rtype}");
        let len = reply_len(one);
        assert_eq!(a[..len], b[..len], "{when}: {name} {rtype}");
    }
}

/// The snapshot a change makes from the last one shares most of it; whatever the changes, it
/// must answer every question byte for byte as one built afresh from the same members.
#[test]
fn an_updated_snapshot_answers_as_one_built_afresh() {
    use crate::view::{Slot, Touch};
    let roles = ps_and_workers();
    // Few addresses, so that members share them; IDs over three runs of the member tables.
    let v4 = |n: usize| format!("10.0.0.{}", n % 7).parse().unwrap();
    let v6 = |n: usize| format!("fd00::{}", n % 5).parse().unwrap();
    let mut random = crate::random::Random::from_seed(12);
    let mut members: Vec<BTreeMap<u32, Record>> = vec![BTreeMap::new(); 2];
    fn inputs<'a>(roles: &'a [Role], members: &'a [BTreeMap<u32, Record>], serial: u32) -> Inputs<'a, Record> {
        Inputs { roles, ttl: 5, serial, nameservers: 2, own_name: Some("ps1.tf.local."), members }
    }
    let mut updated = Snapshot::build(&inputs(&roles, &members, 0));
    for round in 1..=120u32 {
        let mut touched = Vec::new();
        for _ in 0..=random.below(4) {
            let slot = Slot { role: random.below(2), id: [0, 1, 2, 255, 256, 300, 511, 512, 600][random.below(9)] };
            let before = members[slot.role].get(&slot.id).copied();
            let after = match random.below(4) {
                0 => None,
                n => Some(Record {
                    ipv4: (n != 3).then(|| v4(random.below(100))),
                    ipv6: (n != 1).then(|| v6(random.below(100))),
                    port: (n == 2).then_some(53),
                }),
            };
            match after {
                Some(record) => members[slot.role].insert(slot.id, record),
                None => members[slot.role].remove(&slot.id),
            };
            touched.push(Touch { slot, before, after });
        }
        updated = updated.update(&inputs(&roles, &members, round), &touched);
        let fresh = Snapshot::build(&inputs(&roles, &members, round));
        let mut questions = vec![
            ("tf.local.".to_string(), Rtype::SOA),
            ("tf.local.".to_string(), Rtype::NS),
            ("_idetcd._udp.tf.local.".to_string(), Rtype::SRV),
            ("nothing.tf.local.".to_string(), Rtype::A),
        ];
        for id in [0, 1, 2, 3, 255, 256, 300, 511, 512, 600] {
            for role in ["ps", "worker"] {
                for rtype in [Rtype::A, Rtype::AAAA, Rtype::ANY, Rtype::TXT] {
                    questions.push((format!("{role}{id}.tf.local."), rtype));
                }
            }
        }
        for n in 0..7 {
            questions.push((format!("{n}.0.0.10.in-addr.arpa."), Rtype::PTR));
        }
        for n in 0..5u16 {
            let ip: std::net::Ipv6Addr = v6(usize::from(n));
            questions
                .push((domain::base::Name::<Vec<u8>>::reverse_from_addr(ip.into()).unwrap().to_string(), Rtype::PTR));
        }
        same_answers(&updated, &fresh, &questions, &format!("round {round}"));
    }
}

/// Random puts, deletes, watched batches, whole reads and reads that break off, through the view
/// into snapshots updated as the etcd thread updates them: each answers as one built afresh.
#[test]
fn snapshots_updated_as_the_etcd_thread_does_answer_as_one_built_afresh() {
    use crate::etcd::{KeyValue, WatchEvent};
    use crate::view::View;
    fn inputs<'a>(roles: &'a [Role], view: &'a View, serial: u32) -> Inputs<'a, crate::view::Member> {
        Inputs { roles, ttl: 5, serial, nameservers: 2, own_name: None, members: view.members() }
    }
    let roles = ps_and_workers();
    let ids = [0u32, 1, 2, 255, 256, 300, 511, 512];
    for seed in 0..12u64 {
        let mut random = crate::random::Random::from_seed(seed + 100);
        let mut view = View::new(&roles, b"{\"ipv4\":\"10.9.9.9\"}");
        let mut etcd: BTreeMap<String, (String, i64)> = BTreeMap::new();
        let mut revision = 1i64;
        let mut pending: Vec<WatchEvent> = Vec::new();
        let mut snapshot = Snapshot::empty("tf.local.");
        let mut serial = 0u32;
        for step in 0..300 {
            let changes = match random.below(10) {
                0..=5 => {
                    revision += 1;
                    let role = ["ps", "worker"][random.below(2)];
                    let key = match random.below(12) {
                        0 => format!("{role}0{}.tf.local.", ids[random.below(ids.len())]),
                        1 => format!("{role}{}.other.zone.", ids[random.below(ids.len())]),
                        _ => format!("{role}{}.tf.local.", ids[random.below(ids.len())]),
                    };
                    let kv = |value: &str| KeyValue {
                        key: key.clone().into_bytes(),
                        value: value.as_bytes().to_vec(),
                        create_revision: revision,
                        mod_revision: revision,
                        lease: 0,
                    };
                    if etcd.contains_key(&key) && random.below(3) == 0 {
                        etcd.remove(&key);
                        pending.push(WatchEvent { deleted: true, kv: kv("") });
                    } else {
                        let value = match random.below(6) {
                            0 => "nonsense".to_string(),
                            n => format!(r#"{{"ipv4":"10.0.0.{}","ipv6":"fd00::{}"}}"#, n % 3, random.below(3)),
                        };
                        etcd.insert(key.clone(), (value.clone(), revision));
                        pending.push(WatchEvent { deleted: false, kv: kv(&value) });
                    }
                    None
                }
                6..=7 => {
                    let n = random.below(pending.len() + 1);
                    view.apply(pending.drain(..n).collect())
                }
                _ => {
                    let breaks = random.below(3) == 0;
                    let stop_after = random.below(etcd.len() + 1);
                    let mut loading = view.loading();
                    for (n, (key, (value, modified))) in etcd.iter().enumerate() {
                        if breaks && n == stop_after {
                            break;
                        }
                        let Some(role) = roles.iter().position(|r| r.pattern.in_key_range(key.as_bytes())) else {
                            continue;
                        };
                        let kv = KeyValue {
                            key: key.clone().into_bytes(),
                            value: value.clone().into_bytes(),
                            create_revision: *modified,
                            mod_revision: *modified,
                            lease: 0,
                        };
                        loading.put(role, kv);
                    }
                    match breaks {
                        // As membership::read: published only when a member was touched.
                        true => Some(loading.abandon()).filter(|c| !c.touched.is_empty()),
                        false => Some(loading.finish(revision)),
                    }
                }
            };
            if let (Some(changes), Some(_)) = (changes, view.revision()) {
                serial = view.newest().unwrap_or(0) as u32;
                snapshot = match changes.first {
                    true => Snapshot::build(&inputs(&roles, &view, serial)),
                    false => snapshot.update(&inputs(&roles, &view, serial), &changes.touched),
                };
            }
            if view.revision().is_none() {
                continue;
            }
            let fresh = Snapshot::build(&inputs(&roles, &view, serial));
            let mut questions = vec![
                ("tf.local.".to_string(), Rtype::NS),
                ("_idetcd._udp.tf.local.".to_string(), Rtype::SRV),
                ("nothing.tf.local.".to_string(), Rtype::A),
            ];
            for id in ids {
                for role in ["ps", "worker"] {
                    questions.push((format!("{role}{id}.tf.local."), Rtype::A));
                    questions.push((format!("{role}{id}.tf.local."), Rtype::AAAA));
                }
            }
            for n in 0..3 {
                questions.push((format!("{n}.0.0.10.in-addr.arpa."), Rtype::PTR));
            }
            same_answers(&snapshot, &fresh, &questions, &format!("seed {seed} step {step}"));
        }
    }
}
