//! Every kind of DNS answer, from the running daemon, over UDP and over TCP.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use domain::base::iana::{Class, Opcode, OptRcode, Rtype};
use domain::base::Message;

use crate::support::{self, eventually, Etcd, Node, Query, Setup, Transport};

/// One node holding worker1 and a second holding worker2 (IPv4 only), both seen by the first.
fn cluster(etcd: &Etcd, zone: &str) -> (Node, Node) {
    let mut first = Setup::new(etcd, zone).start();
    assert_eq!(first.claimed(), format!("worker1.{zone}"));
    let mut second = Setup { ipv6: false, ..Setup::new(etcd, zone) }.start();
    assert_eq!(second.claimed(), format!("worker2.{zone}"));
    first.wait_for_address(&format!("worker2.{zone}"), &second.ip.to_string());
    (first, second)
}

#[test]
fn answer_kinds_over_udp_and_tcp() {
    let etcd = Etcd::start();
    let (node, other) = cluster(&etcd, "kinds.test.");
    let own = node.ip.to_string();
    let soa = "kinds.test 5 IN SOA worker1.kinds.test. hostmaster.kinds.test.";
    for transport in [Transport::Udp, Transport::Tcp] {
        let ask = |q: Query| node.ask(transport, &q);

        let a = ask(Query::new("worker1.kinds.test.", Rtype::A));
        assert_eq!((a.rcode, a.aa), (OptRcode::NOERROR, true));
        assert_eq!(a.answers, [format!("worker1.kinds.test 5 IN A {own}")]);
        assert!(!a.tc);

        let aaaa = ask(Query::new("worker1.kinds.test.", Rtype::AAAA));
        assert_eq!(aaaa.data(), [format!("fd00::{}", node.ip.octets()[3])]);

        // Case-insensitive, and the question comes back as it was asked.
        let mixed = ask(Query::new("WORKER2.Kinds.Test.", Rtype::A));
        assert_eq!(mixed.question.as_deref(), Some("WORKER2.Kinds.Test"));
        assert_eq!(mixed.answers, [format!("WORKER2.Kinds.Test 5 IN A {}", other.ip)]);

        // NODATA: the name exists, the type does not.
        let nodata = ask(Query::new("worker2.kinds.test.", Rtype::AAAA));
        assert_eq!((nodata.rcode, nodata.aa, nodata.answers.len()), (OptRcode::NOERROR, true, 0));
        assert!(nodata.authority[0].starts_with(soa), "{nodata:?}");

        let nx = ask(Query::new("worker9.kinds.test.", Rtype::A));
        assert_eq!((nx.rcode, nx.aa, nx.answers.len()), (OptRcode::NXDOMAIN, true, 0));
        assert!(nx.authority[0].starts_with(soa), "{nx:?}");

        let apex = ask(Query::new("kinds.test.", Rtype::SOA));
        assert!(apex.answers[0].starts_with(soa), "{apex:?}");
        let ns = ask(Query::new("kinds.test.", Rtype::NS));
        assert_eq!(ns.answers, ["kinds.test 5 IN NS worker1.kinds.test.", "kinds.test 5 IN NS worker2.kinds.test."]);
        assert!(ns.additional.contains(&format!("worker1.kinds.test 5 IN A {own}")), "{ns:?}");
        assert!(ns.additional.contains(&format!("worker2.kinds.test 5 IN A {}", other.ip)), "{ns:?}");

        for name in ["id.server.", "hostname.bind."] {
            let id = ask(Query::new(name, Rtype::TXT).class(Class::CH));
            assert_eq!(id.data(), ["\"worker1.kinds.test.\""]);
        }

        let query = Query::new("example.com.", Rtype::A).edns(1232);
        let refused = ask(query.clone());
        assert_eq!((refused.rcode, refused.aa), (OptRcode::REFUSED, false));
        assert!(refused.size <= query.packet().len(), "no amplification: {} bytes", refused.size);

        let two = ask(Query::new("worker1.kinds.test.", Rtype::A).questions(2));
        assert_eq!(two.rcode, OptRcode::FORMERR);
        let notify = ask(Query::new("kinds.test.", Rtype::SOA).opcode(Opcode::NOTIFY));
        assert_eq!(notify.rcode, OptRcode::NOTIMP);

        let edns = ask(Query::new("worker1.kinds.test.", Rtype::A).edns(4096));
        assert_eq!(edns.edns_payload, Some(1232));
        assert_eq!(edns.answers.len(), 1);
        let plain = ask(Query::new("worker1.kinds.test.", Rtype::A));
        assert_eq!(plain.edns_payload, None);
    }
}

/// Every node describes the zone alike: the same SOA (primary, serial) and the same NS set with
/// the same glue, byte for byte, once they have read the same members; and the set follows the
/// members as they come and go.
#[test]
fn every_node_gives_the_same_soa_and_ns() {
    let etcd = Etcd::start();
    let zone = "same.test.";
    let setup = Setup { extra: "nameservers 2".into(), ..Setup::new(&etcd, zone) };
    let mut nodes: Vec<Node> = Vec::new();
    for id in 1..=3 {
        let mut node = setup.start();
        assert_eq!(node.claimed(), format!("worker{id}.{zone}"));
        nodes.push(node);
    }
    let last = format!("worker3.{zone}");
    for node in &nodes {
        node.wait_for_address(&last, &nodes[2].ip.to_string());
    }
    let same = |nodes: &[Node], name: &str, rtype: Rtype| {
        let packet = Query::new(name, rtype).edns(1232).packet();
        let answers: Vec<Vec<u8>> = nodes
            .iter()
            .map(|n| support::exchange(n.address(), Transport::Udp, &packet).expect("an answer").into_octets())
            .collect();
        assert!(answers.windows(2).all(|w| w[0] == w[1]), "{name} {rtype}: nodes differ");
        nodes[0].ask(Transport::Udp, &Query::new(name, rtype).edns(1232))
    };
    let ns = same(&nodes, zone, Rtype::NS);
    assert_eq!(ns.data(), [format!("worker1.{zone}"), format!("worker2.{zone}")]);
    assert_eq!(ns.additional.len(), 2 * 2, "A and AAAA of both: {ns:?}");
    let soa = same(&nodes, zone, Rtype::SOA);
    assert!(soa.answers[0].contains(&format!(" SOA worker1.{zone} hostmaster.{zone} ")), "{soa:?}");
    same(&nodes, &format!("nobody.{zone}"), Rtype::A);

    // The first server leaves: the next members take its place on every node.
    let old_serial = soa.data()[0].split(' ').nth(2).unwrap().to_string();
    let mut first = nodes.remove(0);
    first.signal(libc::SIGTERM);
    first.wait_exit(Duration::from_secs(10));
    for node in &nodes {
        node.wait_for_rcode(&format!("worker1.{zone}"), OptRcode::NXDOMAIN);
    }
    let ns = same(&nodes, zone, Rtype::NS);
    assert_eq!(ns.data(), [format!("worker2.{zone}"), format!("worker3.{zone}")]);
    let soa = same(&nodes, zone, Rtype::SOA);
    assert!(soa.answers[0].contains(&format!(" SOA worker2.{zone} ")), "{soa:?}");
    assert_eq!(soa.data()[0].split(' ').nth(2).unwrap(), old_serial, "the newest member record is the same");
}

#[test]
fn ttl_comes_from_the_corefile() {
    let etcd = Etcd::start();
    let mut node = Setup { ttl: 60, ..Setup::new(&etcd, "ttl.test.") }.start();
    node.claimed();
    let a = node.query("worker1.ttl.test.", Rtype::A);
    assert_eq!(a.answers, [format!("worker1.ttl.test 60 IN A {}", node.ip)]);
}

#[test]
fn dig_sees_what_a_user_expects() {
    let etcd = Etcd::start();
    let (node, other) = cluster(&etcd, "dig.test.");
    let dig = |args: &[&str]| node.dig(args);
    assert_eq!(dig(&["+short", "worker2.dig.test"]).trim(), other.ip.to_string());
    assert_eq!(dig(&["+short", "AAAA", "worker1.dig.test"]).trim(), format!("fd00::{}", node.ip.octets()[3]));
    assert_eq!(dig(&["+short", "+tcp", "worker1.dig.test"]).trim(), node.ip.to_string());
    assert_eq!(dig(&["+short", "CH", "TXT", "id.server"]).trim(), "\"worker1.dig.test.\"");
    let full = dig(&["worker7.dig.test"]);
    assert!(full.contains("status: NXDOMAIN") && full.contains("flags: qr aa rd;"), "{full}");
    let full = dig(&["worker1.dig.test"]);
    assert!(full.contains("status: NOERROR") && full.contains("udp: 1232"), "{full}");
}

/// With a zone name near the limit, a negative answer without EDNS still fits 512 bytes, since
/// the SOA's names point into the question: dig gets it over UDP, not truncated.
#[test]
fn negative_answers_in_a_long_zone_fit_over_udp() {
    let etcd = Etcd::start();
    let label = "z".repeat(49);
    let zone = format!("{label}.{label}.{label}.{label}.");
    let mut node = Setup::new(&etcd, &zone).start();
    node.claimed();
    for name in [format!("nobody.{zone}"), format!("worker1.{zone}")] {
        let out = node.dig(&["+noedns", "+ignore", "TXT", &name]);
        assert!(out.contains("flags: qr aa rd;") && out.contains("AUTHORITY: 1,"), "no TC, the SOA:\n{out}");
        assert!(dig_number(&out, "MSG SIZE  rcvd: ") <= 512, "{out}");
    }
}

#[test]
fn service_and_pointer_records_and_ids_from_zero() {
    let etcd = Etcd::start();
    let setup = Setup { limit: 50, extra: "        start 0\n".into(), ..Setup::new(&etcd, "srv.test.") };
    let mut node = setup.start();
    assert_eq!(node.claimed(), "worker0.srv.test.");
    for i in 1..=40 {
        etcd.put(&format!("worker{i}.srv.test."), &format!(r#"{{"ipv4":"10.1.0.{i}","port":"2222"}}"#));
    }
    let srv = Query::new("_idetcd._tcp.srv.test.", Rtype::SRV);
    let all = eventually("41 services", Duration::from_secs(5), || {
        Some(node.ask(Transport::Tcp, &srv)).filter(|a| a.answers.len() == 41)
    });
    assert_eq!(all.answers[0], format!("_idetcd._tcp.srv.test 5 IN SRV 0 0 {} worker0.srv.test", node.port));
    assert_eq!(all.answers[1], "_idetcd._tcp.srv.test 5 IN SRV 0 0 2222 worker1.srv.test");
    assert!(all.additional.contains(&"worker40.srv.test 5 IN A 10.1.0.40".to_string()), "{:?}", all.additional);
    // Over UDP it cannot fit in 512 bytes: truncated, and the client asks again over TCP.
    let udp = node.ask(Transport::Udp, &srv);
    assert!(udp.tc && udp.answers.is_empty() && udp.size <= 512, "{udp:?}");
    let udp = node.ask(Transport::Udp, &srv.clone().edns(1232));
    assert!(udp.size <= 1232, "{} bytes", udp.size);

    let dig = |args: &[&str]| node.dig(&[&["+short"], args].concat());
    assert_eq!(dig(&["SRV", "_idetcd._udp.srv.test"]).lines().count(), 41, "dig falls back to TCP by itself");
    assert_eq!(dig(&["-x", &node.ip.to_string()]).trim(), "worker0.srv.test.");
    assert_eq!(dig(&["-x", "10.1.0.7"]).trim(), "worker7.srv.test.");
}

#[test]
fn forward_sends_other_names_upstream() {
    let etcd = Etcd::start();
    // The upstream: another DNS server, here an idetcd serving its own zone.
    let mut upstream = Setup::new(&etcd, "up.test.").start();
    assert_eq!(upstream.claimed(), "worker1.up.test.");
    for i in 2..=40 {
        etcd.put(&format!("worker{i}.up.test."), &format!(r#"{{"ipv4":"10.2.0.{i}","port":"53"}}"#));
    }
    let server = format!("    forward . {}:{}\n    log\n", upstream.ip, upstream.port);
    let mut node = Setup { server, ..Setup::new(&etcd, "down.test.") }.start();
    assert_eq!(node.claimed(), "worker1.down.test.");

    for transport in [Transport::Udp, Transport::Tcp] {
        let a = node.ask(transport, &Query::new("worker1.up.test.", Rtype::A));
        assert_eq!(a.data(), [upstream.ip.to_string()], "{transport:?}");
        // We recursed for the client, whatever the upstream (authoritative, here) said of itself.
        assert!(a.ra && !upstream.ask(transport, &Query::new("worker1.up.test.", Rtype::A)).ra, "{transport:?}");
        // Our own names are still ours.
        let own = node.ask(transport, &Query::new("worker1.down.test.", Rtype::A));
        assert_eq!((own.data(), own.aa), (vec![node.ip.to_string()], true));
    }
    eventually("the upstream to see 40 members", Duration::from_secs(5), || {
        (upstream.ask(Transport::Tcp, &Query::new("_idetcd._udp.up.test.", Rtype::SRV)).answers.len() == 40)
            .then_some(())
    });
    // Too big for UDP upstream: a TCP client gets it all (fetched again over TCP), a UDP client
    // gets it truncated and would ask again over TCP.
    let srv = Query::new("_idetcd._udp.up.test.", Rtype::SRV);
    let tcp = node.ask(Transport::Tcp, &srv);
    assert_eq!((tcp.answers.len(), tcp.ra), (40, true));
    let udp = node.ask(Transport::Udp, &srv);
    assert!(udp.tc && udp.ra && udp.size <= 512, "{udp:?}");

    // When no upstream answers: SERVFAIL, not silence.
    upstream.kill();
    let failed = node.ask(Transport::Udp, &Query::new("worker1.up.test.", Rtype::A));
    assert_eq!((failed.rcode, failed.ra), (OptRcode::SERVFAIL, true));
    let own = node.ask(Transport::Udp, &Query::new("worker1.down.test.", Rtype::A));
    assert_eq!(own.data(), [node.ip.to_string()]);
    // `log` has a line for each forwarded answer too, sent by the forwarding thread: written
    // after the answer, perhaps after the client read it.
    for (proto, flags) in [("udp", "NOERROR qr,aa,rd,ra"), ("tcp", "NOERROR qr,aa,rd,ra"), ("udp", "SERVFAIL qr,rd,ra")]
    {
        let wanted = format!("\"A IN worker1.up.test. {proto} ");
        let logged = || node.log().lines().any(|l| l.contains(&wanted) && l.contains(flags)).then_some(());
        eventually(&format!("{wanted}…{flags} in the log:\n{}", node.log()), Duration::from_secs(5), logged);
    }
}

#[test]
fn forwarding_to_itself_is_refused() {
    let etcd = Etcd::start();
    let ip = crate::support::next_loopback();
    let port = crate::support::free_port(ip);
    let mut node =
        Setup { server: format!("    forward . {ip}:{port}\n"), ..Setup::new(&etcd, "loop.test.") }.start_on(ip, port);
    assert_eq!(node.wait_exit(Duration::from_secs(5)).code(), Some(1));
    assert!(node.log().contains("every upstream server is this server itself"), "{}", node.log());
}

#[test]
fn pipelined_tcp_questions_are_all_answered_in_order_to_a_slow_reader() {
    let etcd = Etcd::start();
    let mut node = Setup { limit: 1000, ..Setup::new(&etcd, "pipe.test.") }.start();
    assert_eq!(node.claimed(), "worker1.pipe.test.");
    for i in 2..=400 {
        etcd.put(
            &format!("worker{i}.pipe.test."),
            &format!(r#"{{"ipv4":"10.3.{}.{}","port":"53"}}"#, i / 256, i % 256),
        );
    }
    let srv = Query::new("_idetcd._tcp.pipe.test.", Rtype::SRV);
    eventually("400 services", Duration::from_secs(10), || {
        (node.ask(Transport::Tcp, &srv).answers.len() == 400).then_some(())
    });
    // 200 questions in one go, the service records (about 18 KB each) and a name in turn:
    // megabytes of answers, more than the sockets hold.
    let a = Query::new("worker1.pipe.test.", Rtype::A);
    let packets: Vec<Vec<u8>> = (0..200).map(|i| if i % 2 == 0 { srv.packet() } else { a.packet() }).collect();
    let mut stream = TcpStream::connect(node.address()).unwrap();
    stream
        .write_all(&packets.iter().flat_map(|p| [&(p.len() as u16).to_be_bytes()[..], p].concat()).collect::<Vec<u8>>())
        .unwrap();
    // Not reading for a while, on purpose (the server fills what the sockets hold and stops);
    // meanwhile others are answered.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(node.ask(Transport::Udp, &a).data(), [node.ip.to_string()]);
    // Then reading slowly, a piece at a time.
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut read_slowly = |buf: &mut [u8]| {
        for piece in buf.chunks_mut(8 * 1024) {
            stream.read_exact(piece).unwrap();
            // A slow reader, on purpose.
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    for (i, packet) in packets.iter().enumerate() {
        let mut len = [0u8; 2];
        read_slowly(&mut len);
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        read_slowly(&mut answer);
        let m = Message::from_octets(answer).unwrap();
        assert_eq!(m.header().id(), u16::from_be_bytes([packet[0], packet[1]]), "answer {i}");
        let (wanted, count) = if i % 2 == 0 { (&srv, 400) } else { (&a, 1) };
        let question = m.sole_question().unwrap();
        assert_eq!((question.qname().to_string() + ".", question.qtype()), (wanted.name.clone(), wanted.rtype));
        assert_eq!((m.opt_rcode(), m.header_counts().ancount()), (OptRcode::NOERROR, count), "answer {i}");
    }
}

/// The sections of dig's output that hold records: `ADDITIONAL` gives the lines under
/// `;; ADDITIONAL SECTION:`.
fn dig_section<'a>(output: &'a str, section: &str) -> Vec<&'a str> {
    let heading = format!(";; {section} SECTION:");
    output.lines().skip_while(|l| *l != heading).skip(1).take_while(|l| !l.is_empty()).collect()
}

/// A number dig prints after `label` (`ADDITIONAL: `, `MSG SIZE  rcvd: `).
fn dig_number(output: &str, label: &str) -> usize {
    let at = output.find(label).unwrap_or_else(|| panic!("no {label:?} in\n{output}")) + label.len();
    output[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

#[test]
fn dig_sees_partial_additional_sections_class_any_and_reverse_names() {
    let etcd = Etcd::start();
    let mut node = Setup { prefix: "w", limit: 40, ..Setup::new(&etcd, "p.test.") }.start();
    assert_eq!(node.claimed(), "w1.p.test.");
    // Thirty members, every third with an IPv6 address: their SRV records fit 1232 bytes, their
    // addresses only in part.
    for i in 2..=30 {
        let ipv6 = if i % 3 == 0 { format!(r#","ipv6":"fd00::{i}""#) } else { String::new() };
        etcd.put(&format!("w{i}.p.test."), &format!(r#"{{"ipv4":"10.1.0.{i}"{ipv6},"port":"2222"}}"#));
    }
    let srv = Query::new("_idetcd._udp.p.test.", Rtype::SRV);
    let all = eventually("30 services", Duration::from_secs(5), || {
        Some(node.ask(Transport::Tcp, &srv)).filter(|a| a.answers.len() == 30)
    });
    let udp = node.ask(Transport::Udp, &srv.clone().edns(1232));
    assert!(!udp.tc && udp.answers.len() == 30 && udp.size <= 1232, "{udp:?}");
    let (some, every) = (udp.additional.len(), all.additional.len());
    assert!(some > 0 && some < every, "{some} of {every} addresses");
    assert_eq!(udp.additional, all.additional[..some]);

    // What dig sees over UDP, without falling back to TCP.
    let out = node.dig(&["+bufsize=1232", "+ignore", "SRV", "_idetcd._udp.p.test"]);
    assert!(out.contains(";; flags: qr aa rd;") && out.contains("ANSWER: 30,"), "no TC:\n{out}");
    let addresses = dig_section(&out, "ADDITIONAL");
    assert_eq!(addresses.len(), some, "{out}");
    assert!(addresses.iter().all(|l| l.contains("\tA\t") || l.contains("\tAAAA\t")), "{out}");
    assert_eq!(dig_number(&out, "ADDITIONAL: "), some + 1, "the addresses and the OPT record:\n{out}");
    assert!(dig_number(&out, "MSG SIZE  rcvd: ") <= 1232, "{out}");

    // Class ANY is answered from class IN, not authoritatively, as NSD does.
    let out = node.dig(&["-c", "ANY", "-t", "A", "w2.p.test"]);
    assert!(out.contains("status: NOERROR") && out.contains(";; flags: qr rd;"), "{out}");
    assert_eq!(dig_section(&out, "ANSWER"), ["w2.p.test.\t\t5\tIN\tA\t10.1.0.2"], "{out}");
    let out = node.dig(&["-c", "ANY", "-t", "AAAA", "w2.p.test"]);
    assert!(
        out.contains("status: NOERROR") && out.contains(";; flags: qr rd; QUERY: 1, ANSWER: 0, AUTHORITY: 0,"),
        "{out}"
    );
    let out = node.dig(&["-c", "ANY", "-t", "A", "nobody.p.test"]);
    assert!(out.contains("status: NXDOMAIN") && out.contains(";; flags: qr rd;"), "{out}");

    // A member's reverse name has its PTR record and nothing else of ours: another type there is
    // REFUSED, as a name outside the zone, rather than a negative answer without an SOA.
    assert_eq!(node.dig(&["+short", "-x", "10.1.0.7"]).trim(), "w7.p.test.");
    assert_eq!(node.dig(&["+short", "-x", &node.ip.to_string()]).trim(), "w1.p.test.");
    let out = node.dig(&["-x", "10.1.0.7", "ANY"]);
    assert_eq!(dig_section(&out, "ANSWER"), ["7.0.1.10.in-addr.arpa.\t5\tIN\tPTR\tw7.p.test."], "{out}");
    for rtype in ["TXT", "A", "SOA"] {
        let out = node.dig(&["-x", "10.1.0.7", rtype]);
        assert!(out.contains("status: REFUSED") && out.contains("AUTHORITY: 0,"), "{rtype}:\n{out}");
    }
}
