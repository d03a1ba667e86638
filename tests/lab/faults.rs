//! Faults, one test each, with the fencing checker running from the first claim to the end.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use domain::base::iana::{Class, OptRcode, Rcode, Rtype};
use domain::base::{Message, MessageBuilder, Name};
use domain::rdata::Txt;

use crate::fencing::Checker;
use crate::lab::{self, Lab, LEASE_SECONDS, ZONE};
use crate::support::{eventually, http_get, within, Node};

/// Long enough for a lease to run out unrenewed, and for etcd to notice.
const LEASE_LOST_WITHIN: Duration = Duration::from_secs(LEASE_SECONDS as u64 * 3);

/// Starts nodes `which`, waits until each holds a name, and returns the names in that order.
fn start_all(lab: &mut Lab, which: std::ops::Range<usize>) -> Vec<String> {
    which.map(|i| lab.start(i).claimed()).collect()
}

fn checker(lab: &Lab) -> Checker {
    let nodes = (0..lab.nodes.len()).map(lab::node_ip).collect();
    Checker::start(nodes, lab.etcd.iter().map(|m| m.url.clone()).collect())
}

/// What `node` answers for the A question of each name `node1.` .. `node<limit>.`: the address,
/// or the response code when there is none.
fn answers(node: &Node, limit: usize) -> BTreeMap<String, String> {
    (1..=limit)
        .map(|id| {
            let name = format!("node{id}.{ZONE}");
            let answer = node.query(&name, Rtype::A);
            let data = answer.data();
            (name, if data.is_empty() { format!("{}", answer.rcode) } else { data.join(" ") })
        })
        .collect()
}

/// Waits until every running node answers every name as the holders say: `holders` pairs each
/// name held with its holder's address; the other names do not exist.
pub fn all_agree(lab: &Lab, holders: &BTreeMap<String, Ipv4Addr>) {
    let limit = lab.nodes.len();
    let want: BTreeMap<String, String> = (1..=limit)
        .map(|id| {
            let name = format!("node{id}.{ZONE}");
            let data = holders.get(&name).map_or_else(|| "NXDOMAIN".to_string(), Ipv4Addr::to_string);
            (name, data)
        })
        .collect();
    for (i, node) in lab.running() {
        let agreed = within(Duration::from_secs(15), || (answers(node, limit) == want).then_some(()));
        assert!(agreed.is_some(), "node {} answers {:#?}, not {want:#?}", i + 1, answers(node, limit));
    }
}

/// The checker must be able to fail: a host that says it is node 1's name while node 1 runs
/// is a violation.
pub fn fencing_checker_sees_two_hosts_claiming_one_name() {
    let mut lab = Lab::new(2);
    let name = lab.start(0).claimed();
    // Host 2 runs no idetcd, but a responder that says it holds node 1's name.
    let impostor = lab.netns("n2");
    let answering = name.clone();
    std::thread::spawn(move || {
        lab::join_netns(&impostor);
        let socket = UdpSocket::bind((lab::node_ip(1), 53)).expect("port 53 in host 2");
        let mut buf = [0u8; 512];
        while let Ok((len, from)) = socket.recv_from(&mut buf) {
            if let Some(reply) = id_server_reply(&buf[..len], &answering) {
                let _ = socket.send_to(&reply, from);
            }
        }
    });
    let checker = checker(&lab);
    std::thread::sleep(Duration::from_millis(500));
    let counts = checker.finish();
    println!(
        "fencing checker on purpose faced an impostor: {} samples, {} violations",
        counts.samples,
        counts.violations.len()
    );
    assert!(!counts.violations.is_empty(), "the checker missed two hosts both saying they hold {name}");
    assert!(
        counts.violations.iter().any(|v| v.contains(&format!("all say they hold {name}"))),
        "{:?}",
        counts.violations
    );
    assert!(counts.violations.iter().any(|v| v.contains("whose key in etcd is")), "{:?}", counts.violations);
}

/// A `CH TXT` answer naming `name`, to a question.
fn id_server_reply(packet: &[u8], name: &str) -> Option<Vec<u8>> {
    let question = Message::from_octets(packet).ok()?;
    let mut answer = MessageBuilder::new_vec().start_answer(&question, Rcode::NOERROR).ok()?.answer();
    let owner: Name<Vec<u8>> = "id.server.".parse().ok()?;
    let text: Txt<Vec<u8>> = Txt::build_from_slice(name.as_bytes()).ok()?;
    answer.push((owner, Class::CH, 0, text)).ok()?;
    Some(answer.finish())
}

/// A node cut off from etcd, but not from its clients, answers the other names from what it
/// holds; once its lease may have run out it stops naming itself and /health says why; another
/// node then takes its name; healed, it claims again and says so.
pub fn node_cut_off_from_etcd() {
    let mut lab = Lab::new(4);
    let names = start_all(&mut lab, 0..3);
    let checker = checker(&lab);
    let holders: BTreeMap<String, Ipv4Addr> =
        names.iter().enumerate().map(|(i, name)| (name.clone(), lab::node_ip(i))).collect();
    all_agree(&lab, &holders);

    for member in 0..3 {
        lab.cut("n1", lab::etcd_ip(member));
    }
    let cut_name = names[0].clone();
    // Still answering the others, from what it holds.
    for (i, name) in names.iter().enumerate().skip(1) {
        lab.node(0).wait_for_address(name, &lab::node_ip(i).to_string());
    }
    let gave_up = within(LEASE_LOST_WITHIN, || lab.node(0).identity().is_none().then_some(()));
    assert!(gave_up.is_some(), "node 1, cut off from etcd, still says it holds {cut_name}:\n{}", lab.node(0).log());
    for (i, name) in names.iter().enumerate().skip(1) {
        lab.node(0).wait_for_address(name, &lab::node_ip(i).to_string());
    }
    let (status, why) = http_get(&format!("http://{}:8080/health", lab::node_ip(0))).expect("/health answers");
    println!("node 1's /health, cut off from etcd: {status} {why:?}");
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("its lease may have run out unrenewed (etcd is not answering)"), "{why}");

    // Once etcd lets the lease go, a newcomer takes the name.
    let etcd = &lab.etcd[lab.leader()];
    eventually("etcd to let node 1's lease go", LEASE_LOST_WITHIN, || etcd.get(&cut_name).is_none().then_some(()));
    let taken = lab.start(3).claimed();
    assert_eq!(taken, cut_name, "the newcomer takes the lowest free name, node 1's");

    for member in 0..3 {
        lab.uncut("n1", lab::etcd_ip(member));
    }
    let again = eventually("node 1 claims again", Duration::from_secs(20), || lab.node(0).identity());
    assert_eq!(again, format!("node4.{ZONE}"), "the lowest free name once its own was taken");
    lab.node(0).wait_for_log(&format!("in place of {cut_name}, which is no longer free"));
    let (status, _) = http_get(&format!("http://{}:8080/health", lab::node_ip(0))).expect("/health answers");
    assert_eq!(status, 200);

    let mut holders = holders;
    holders.insert(cut_name, lab::node_ip(3));
    holders.insert(again, lab::node_ip(0));
    all_agree(&lab, &holders);
    checker.finish().assert_none("node_cut_off_from_etcd");
}

/// A node cut off from everything: the others drop its name once etcd lets its lease go; healed,
/// it claims its name again, still free, and every node answers for it again.
pub fn node_cut_off_from_everything() {
    let mut lab = Lab::new(3);
    let names = start_all(&mut lab, 0..3);
    let checker = checker(&lab);
    let mut holders: BTreeMap<String, Ipv4Addr> =
        names.iter().enumerate().map(|(i, name)| (name.clone(), lab::node_ip(i))).collect();
    all_agree(&lab, &holders);

    lab.link("n1", false);
    let cut = holders.remove(&names[0]).map(|_| names[0].clone()).expect("node 1 held a name");
    for i in 1..3 {
        lab.node(i).wait_for_rcode(&cut, OptRcode::NXDOMAIN);
    }
    lab.link("n1", true);
    let again = eventually("node 1 to claim again", LEASE_LOST_WITHIN, || lab.node(0).identity());
    assert_eq!(again, cut, "its own name, still free");
    lab.node(0).wait_for_log(&format!("claimed {cut} again"));
    holders.insert(cut, lab::node_ip(0));
    all_agree(&lab, &holders);
    checker.finish().assert_none("node_cut_off_from_everything");
}
