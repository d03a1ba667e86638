//! The `log` directive: one info line per answered query, in the common format of CoreDNS's `log`
//! plugin, so that whatever reads CoreDNS's query logs reads ours:
//!
//! ```text
//! 127.0.0.1:55238 - 4045 "A IN worker1.tf.local. udp 45 false 4096" NOERROR qr,aa,rd 90 0.000123s
//! ```
//!
//! The client's address and port, the query's ID, its type, class, name (lowercase), protocol,
//! size, DO bit and the buffer size the answer had to fit in, then the response code, the
//! response's flags, its size, and the time from reading the query to sending the answer.
//!
//! Without `log` nothing here runs. With it, each thread formats its lines in a buffer of its own
//! that it keeps: a UDP batch's lines after its answers left, a TCP answer's as it is queued on
//! its connection (TCP clients are few; a UDP batch is where the time goes).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use domain::base::name::Name;

use crate::dns::{self, Transport};

/// What a UDP answer must fit in without EDNS (RFC 1035), and what a TCP one may take.
const UDP_WITHOUT_EDNS: u16 = 512;
const TCP_MAX: u16 = u16::MAX;

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(256));
}

/// Logs one answered query at info level.
pub fn log(client: Option<SocketAddr>, transport: Transport, query: &[u8], answer: &[u8], took: Duration) {
    LINE.with_borrow_mut(|line| {
        line.clear();
        if write_line(line, client, transport, query, answer, took) {
            log::info!("{line}");
        }
    });
}

/// Writes the line for one exchange into `out`; false when the packets have no DNS header.
pub fn write_line(
    out: &mut String,
    client: Option<SocketAddr>,
    transport: Transport,
    query: &[u8],
    answer: &[u8],
    took: Duration,
) -> bool {
    let mut lower = [0u8; 255];
    let Some(x) = dns::exchange(query, answer, &mut lower) else { return false };
    let _ = match client {
        Some(a) => write!(out, "{a}"),
        None => write!(out, "-"),
    };
    let _ = write!(out, " - {} \"", x.id);
    let name = x.question.and_then(|(_, _, len)| Name::from_slice(&lower[..len]).ok());
    let _ = match (x.question, name) {
        (Some((rtype, class, _)), Some(name)) => write!(out, "{rtype} {class} {}", name.fmt_with_dot()),
        _ => write!(out, "- - -"),
    };
    let (proto, bufsize) = match transport {
        Transport::Udp => ("udp", x.payload.map_or(UDP_WITHOUT_EDNS, |p| p.max(UDP_WITHOUT_EDNS))),
        Transport::Tcp => ("tcp", TCP_MAX),
    };
    let _ = write!(out, " {proto} {} {} {bufsize}\" {} ", query.len(), x.dnssec_ok, x.rcode);
    for (i, flag) in dns::flag_names(x.flags).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(flag);
    }
    let _ = write!(out, " {} {}s", answer.len(), took.as_secs_f64());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::base::iana::{Class, Rcode, Rtype};
    use domain::base::{MessageBuilder, Question};

    /// A query, and an answer to it with the given flags and rcode (and an OPT record when the
    /// query had one, carrying the rcode's upper bits).
    fn exchange(name: &str, rtype: Rtype, edns: Option<(u16, bool)>, rcode: u16, flags: &[&str]) -> (Vec<u8>, Vec<u8>) {
        let build = |response: bool| {
            let mut b = MessageBuilder::new_vec();
            b.header_mut().set_id(4045);
            b.header_mut().set_rd(true);
            if response {
                b.header_mut().set_qr(true);
                b.header_mut().set_aa(flags.contains(&"aa"));
                b.header_mut().set_ra(flags.contains(&"ra"));
                b.header_mut().set_rcode(Rcode::masked_from_int((rcode & 0xF) as u8));
            }
            let mut b = b.question();
            b.push(Question::new(Name::<Vec<u8>>::from_str(name).unwrap(), rtype, Class::IN)).unwrap();
            let mut b = b.additional();
            if let Some((payload, dnssec_ok)) = edns {
                b.opt(|opt| {
                    opt.set_udp_payload_size(payload);
                    opt.set_dnssec_ok(dnssec_ok);
                    if response {
                        opt.set_rcode(domain::base::iana::OptRcode::masked_from_int(rcode));
                    }
                    Ok(())
                })
                .unwrap();
            }
            b.finish()
        };
        (build(false), build(true))
    }

    use std::str::FromStr;

    #[test]
    fn lines_in_coredns_common_format() {
        let client: SocketAddr = "127.0.0.1:55238".parse().unwrap();
        let v6: SocketAddr = "[fd00::1]:5353".parse().unwrap();
        let micros = Duration::from_micros;
        let cases = [
            (
                exchange("Worker1.TF.local.", Rtype::A, Some((4096, false)), 0, &["aa"]),
                Some(client),
                Transport::Udp,
                micros(123),
                "127.0.0.1:55238 - 4045 \"A IN worker1.tf.local. udp {q} false 4096\" NOERROR qr,aa,rd {a} 0.000123s",
            ),
            (
                exchange("nobody.tf.local.", Rtype::AAAA, None, 3, &["aa"]),
                Some(v6),
                Transport::Tcp,
                micros(1500),
                "[fd00::1]:5353 - 4045 \"AAAA IN nobody.tf.local. tcp {q} false 65535\" NXDOMAIN qr,aa,rd {a} 0.0015s",
            ),
            (
                exchange("example.org.", Rtype::MX, Some((1232, true)), 2, &["ra"]),
                Some(client),
                Transport::Udp,
                Duration::from_secs(2),
                "127.0.0.1:55238 - 4045 \"MX IN example.org. udp {q} true 1232\" SERVFAIL qr,rd,ra {a} 2s",
            ),
            (
                // A small EDNS size still means 512, an unknown type its number.
                exchange("x.tf.local.", Rtype::from_int(65280), Some((100, false)), 16, &[]),
                None,
                Transport::Udp,
                micros(5),
                "- - 4045 \"TYPE65280 IN x.tf.local. udp {q} false 512\" BADVERS qr,rd {a} 0.000005s",
            ),
        ];
        for ((query, answer), client, transport, took, want) in cases {
            let mut line = String::new();
            assert!(write_line(&mut line, client, transport, &query, &answer, took));
            let want = want.replace("{q}", &query.len().to_string()).replace("{a}", &answer.len().to_string());
            assert_eq!(line, want);
        }
        // A question that cannot be read still gets a line; a packet without a header none.
        let mut line = String::new();
        let (query, answer) = exchange("a.b.", Rtype::A, None, 1, &[]);
        assert!(write_line(&mut line, Some(client), Transport::Udp, &query[..14], &answer, micros(1)));
        assert!(line.starts_with("127.0.0.1:55238 - 4045 \"- - - udp 14 false 512\" FORMERR qr,rd "), "{line}");
        assert!(!write_line(&mut String::new(), None, Transport::Udp, b"short", &answer, micros(1)));
    }
}
