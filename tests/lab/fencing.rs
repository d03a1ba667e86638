//! The fencing invariant, checked all through a fault: every 50 ms a checker in the client
//! namespace asks every node host `CH TXT id.server.` and reads the names from etcd before and
//! after. A violation is a sample where two nodes both say they hold one name, or where a node
//! says it holds a name whose etcd key carries another node's record in both reads (the key
//! unchanged between them, so that the sample cannot have straddled a hand-over).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use domain::base::iana::{Class, Rtype};
use domain::base::Message;
use serde_json::{json, Value};

use crate::support::{Answer, Query};

const EVERY: Duration = Duration::from_millis(50);
/// After no member answered a read, how long the checker asks only the nodes.
const ETCD_AGAIN_AFTER: Duration = Duration::from_secs(3);
/// How long a sample waits for the nodes' answers: a node cut off from the client gives none.
pub const ANSWERS_WITHIN: Duration = Duration::from_millis(40);

#[derive(Debug, Default)]
pub struct Counts {
    pub samples: u64,
    /// Samples whose etcd reads both succeeded, so that the second rule could be checked.
    pub checked_against_etcd: u64,
    pub violations: Vec<String>,
}

pub struct Checker {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Counts>,
}

/// A name's key as etcd holds it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Holder {
    /// The holder's IPv4 address, from its record.
    pub ip: Option<Ipv4Addr>,
    /// The revision the key was last put at.
    pub revision: i64,
    /// The revision it was created at: another one means it was deleted in between.
    pub created: i64,
}

pub type Holders = BTreeMap<String, Holder>;

impl Checker {
    /// Checks `nodes` (their addresses, all on port 53) against the etcd members at `endpoints`,
    /// from the calling thread's network namespace.
    pub fn start(nodes: Vec<Ipv4Addr>, endpoints: Vec<String>) -> Checker {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let socket = UdpSocket::bind("0.0.0.0:0").expect("a UDP socket in the client namespace");
            socket.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
            let etcd = EtcdReader::new(endpoints);
            let mut counts = Counts::default();
            let mut id = 0u16;
            // When no member answers (no quorum), reading etcd for every sample would take most
            // of a second each time: then the nodes alone are asked, every 50 ms still, and
            // etcd again three seconds later.
            let mut read_etcd_at = Instant::now();
            while !stopping.load(Ordering::Relaxed) {
                let started = Instant::now();
                let before = (started >= read_etcd_at).then(|| etcd.holders()).flatten();
                if before.is_none() && started >= read_etcd_at {
                    read_etcd_at = Instant::now() + ETCD_AGAIN_AFTER;
                }
                id = id.wrapping_add(1);
                let claims = identities(&socket, &nodes, id);
                let after = before.as_ref().and_then(|_| etcd.holders());
                counts.samples += 1;
                let both = before.zip(after);
                if both.is_some() {
                    counts.checked_against_etcd += 1;
                }
                for violation in violations(&claims, both.as_ref().map(|(b, a)| (b, a))) {
                    if counts.violations.len() < 5 {
                        eprintln!("fencing violation: {violation}");
                    }
                    counts.violations.push(violation);
                }
                std::thread::sleep(EVERY.saturating_sub(started.elapsed()));
            }
            counts
        });
        Checker { stop, thread }
    }

    pub fn finish(self) -> Counts {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the fencing checker")
    }
}

impl Counts {
    /// Prints the counts for the test's log and fails the test on any violation.
    pub fn assert_none(&self, test: &str) {
        println!(
            "{test}: fencing checker: {} samples ({} checked against etcd), {} violations",
            self.samples,
            self.checked_against_etcd,
            self.violations.len()
        );
        assert!(self.samples > 0, "the fencing checker took no sample");
        assert!(self.violations.is_empty(), "fencing violations: {:#?}", self.violations);
    }
}

/// The rules, for one sample: `claims` pairs each node that answered with the name it gave.
fn violations(claims: &[(Ipv4Addr, String)], etcd: Option<(&Holders, &Holders)>) -> Vec<String> {
    let mut found = Vec::new();
    let mut by_name: HashMap<&str, Vec<Ipv4Addr>> = HashMap::new();
    for (node, name) in claims {
        by_name.entry(name).or_default().push(*node);
    }
    for (name, nodes) in &by_name {
        if nodes.len() > 1 {
            found.push(format!("{nodes:?} all say they hold {name}"));
        }
    }
    if let Some((before, after)) = etcd {
        for (node, name) in claims {
            if let (Some(b), Some(a)) = (before.get(name), after.get(name)) {
                if b == a && b.ip != Some(*node) {
                    found.push(format!(
                        "{node} says it holds {name}, whose key in etcd is {:?}'s (revision {})",
                        b.ip, b.revision
                    ));
                }
            }
        }
    }
    found
}

/// Asks every node `CH TXT id.server.` at once; the nodes that answered within `ANSWERS_WITHIN`
/// with a name, and that name.
fn identities(socket: &UdpSocket, nodes: &[Ipv4Addr], id: u16) -> Vec<(Ipv4Addr, String)> {
    let question = Query::new("id.server.", Rtype::TXT).class(Class::CH);
    let questions: Vec<&Query> = nodes.iter().map(|_| &question).collect();
    let answers = ask_each(socket, nodes, &questions, id);
    nodes
        .iter()
        .zip(answers)
        .filter_map(|(node, answer)| {
            let answer = Answer::from(&answer?);
            let name = answer.answers.first()?.rsplit(' ').next()?.trim_matches('"').to_string();
            Some((*node, name))
        })
        .collect()
}

/// Sends `questions[h]` to host `h` on port 53, all at once, under ID `id`; each host's answer
/// to its own question, if it came within `ANSWERS_WITHIN`.
pub fn ask_each(
    socket: &UdpSocket,
    hosts: &[Ipv4Addr],
    questions: &[&Query],
    id: u16,
) -> Vec<Option<Message<Vec<u8>>>> {
    let packets: Vec<Vec<u8>> = questions
        .iter()
        .map(|question| {
            let mut packet = question.packet();
            packet[..2].copy_from_slice(&id.to_be_bytes());
            packet
        })
        .collect();
    for (host, packet) in hosts.iter().zip(&packets) {
        // A host whose link is down may refuse at once: then it has no answer either.
        let _ = socket.send_to(packet, SocketAddr::from((*host, 53)));
    }
    let mut got: Vec<Option<Message<Vec<u8>>>> = vec![None; hosts.len()];
    let deadline = Instant::now() + ANSWERS_WITHIN;
    let mut buf = [0u8; 512];
    while got.iter().any(Option::is_none) && Instant::now() < deadline {
        let Ok((len, SocketAddr::V4(from))) = socket.recv_from(&mut buf) else { continue };
        let Ok(message) = Message::from_octets(buf[..len].to_vec()) else { continue };
        let Some(host) = hosts.iter().position(|h| h == from.ip()) else { continue };
        // The question repeated, as sent: a late answer to an earlier round has another ID.
        let asked = message.first_question().map(|q| q.qname().to_string());
        let sent = questions[host].name.trim_end_matches('.');
        if message.header().id() != id || asked.as_deref().map(|a| a.trim_end_matches('.')) != Some(sent) {
            continue;
        }
        got[host] = Some(message);
    }
    got
}

/// Reads the names from whichever etcd member answers a linearizable read, starting with the
/// one that answered last.
pub struct EtcdReader {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    last: std::cell::Cell<usize>,
}

impl EtcdReader {
    pub fn new(endpoints: Vec<String>) -> EtcdReader {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_millis(300)))
            .build()
            .into();
        EtcdReader { endpoints, agent, last: std::cell::Cell::new(0) }
    }

    pub fn holders(&self) -> Option<Holders> {
        let n = self.endpoints.len();
        (0..n).map(|k| (self.last.get() + k) % n).find_map(|i| {
            let holders = self.read(&self.endpoints[i])?;
            self.last.set(i);
            Some(holders)
        })
    }

    fn read(&self, endpoint: &str) -> Option<Holders> {
        let body = json!({ "key": BASE64.encode("node"), "range_end": BASE64.encode("node:") });
        let mut response = self.agent.post(&format!("{endpoint}/v3/kv/range")).send_json(&body).ok()?;
        if response.status().as_u16() != 200 {
            return None;
        }
        let answer: Value = response.body_mut().read_json().ok()?;
        let decode = |v: &Value| String::from_utf8(BASE64.decode(v.as_str().unwrap_or("")).ok()?).ok();
        let kvs = answer["kvs"].as_array().cloned().unwrap_or_default();
        let mut holders = Holders::new();
        for kv in &kvs {
            let Some(key) = decode(&kv["key"]) else { continue };
            // Names only: the claim queue shares the prefix.
            if !key["node".len()..].starts_with(|c: char| c.is_ascii_digit()) {
                continue;
            }
            let record: Option<Value> = decode(&kv["value"]).and_then(|v| serde_json::from_str(&v).ok());
            let ipv4 = record.and_then(|r| r["ipv4"].as_str()?.parse().ok());
            let number = |field: &str| kv[field].as_str().and_then(|r| r.parse().ok()).unwrap_or(0);
            holders
                .insert(key, Holder { ip: ipv4, revision: number("mod_revision"), created: number("create_revision") });
        }
        Some(holders)
    }
}

#[cfg(test)]
mod tests {}
