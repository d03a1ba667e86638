//! Faults, one test each, with the fencing checker running from the first claim to the end.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use domain::base::iana::{Class, OptRcode, Rcode, Rtype};
use domain::base::{Message, MessageBuilder, Name};
use domain::rdata::Txt;
use serde_json::json;

use crate::fencing::{Checker, EtcdReader};
use crate::lab::{self, Lab, LEASE_SECONDS, ZONE};
use crate::support::{eventually, http_get, within, Node};

/// Long enough for a lease to run out unrenewed, and for etcd to notice.
const LEASE_LOST_WITHIN: Duration = Duration::from_secs(LEASE_SECONDS as u64 * 3);

/// Starts nodes `which`, waits until each holds a name, and returns the names in that order.
fn start_all(lab: &mut Lab, which: std::ops::Range<usize>) -> Vec<String> {
    which.map(|i| lab.start(i).claimed()).collect()
}

/// A lab of `hosts` node hosts, the first three started and holding names, every node agreeing,
/// and the fencing checker running: the names, and their holders' addresses.
fn three_holding_names(hosts: usize) -> (Lab, Vec<String>, Checker, BTreeMap<String, Ipv4Addr>) {
    let mut lab = Lab::new(hosts);
    let names = start_all(&mut lab, 0..3);
    let checker = checker(&lab);
    let holders: BTreeMap<String, Ipv4Addr> =
        names.iter().enumerate().map(|(i, name)| (name.clone(), lab::node_ip(i))).collect();
    all_agree(&lab, &holders);
    (lab, names, checker, holders)
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

/// Which etcd member `node` sends its requests to, as its debug log last said: its share of the
/// members once it claimed, the next when a request fails over, and where a watch opens.
fn endpoint_in_use(lab: &Lab, node: &Node) -> usize {
    let mut url = lab.etcd[0].url.as_str();
    for line in node.log().lines() {
        // "claimed … ; etcd requests go to URL", "etcd requests go to URL now", "etcd watch
        // opened at URL from revision 7", "etcd URL/v3/...: why; URL is next"
        let named = match (line.find("etcd requests go to "), line.find("etcd watch "), line.rfind("; ")) {
            (Some(at), _, _) => line[at..].split(' ').nth(4),
            (None, Some(_), _) => line.split(" at ").nth(1).and_then(|rest| rest.split(' ').next()),
            (None, None, Some(at)) if line.ends_with(" is next") => line[at + 2..].strip_suffix(" is next"),
            _ => None,
        };
        if let Some(member) = named.and_then(|n| lab.etcd.iter().find(|m| m.url == n)) {
            url = &member.url;
        }
    }
    lab.etcd.iter().position(|m| m.url == url).expect("one of the lab's members")
}

/// etcd member `i`'s ID, as its status says.
fn member_id(lab: &Lab, i: usize) -> String {
    let status = lab.etcd[i].post("/v3/maintenance/status", json!({}));
    status["header"]["member_id"].as_str().expect("a member ID").to_string()
}

/// Whether etcd member `i` knows a leader (itself or another).
fn has_leader(lab: &Lab, i: usize) -> bool {
    let status = lab.etcd[i].post("/v3/maintenance/status", json!({}));
    status["leader"].as_str().is_some_and(|leader| leader != "0")
}

/// Makes etcd member `to` the leader: the leader hands over (etcd's MoveLeader).
fn move_leadership(lab: &Lab, to: usize) {
    let leader = lab.leader();
    if leader != to {
        let body = json!({ "targetID": member_id(lab, to) });
        lab.etcd[leader].post("/v3/maintenance/transfer-leadership", body);
    }
    eventually("the leadership to move", Duration::from_secs(30), || lab.etcd[to].is_leader().then_some(()));
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cut {
    Cut,
    Heal,
}

/// Cuts each of etcd members `members` off from every other member, both ways, or heals those
/// cuts. The nodes and the client still reach every member.
fn isolate_members(lab: &Lab, members: &[usize], cut: Cut) {
    let all = 0..lab.etcd.len();
    // Each pair once: two members cut off are cut off from each other too.
    let pairs = members.iter().flat_map(|&a| all.clone().map(move |b| (a, b)));
    for (a, b) in pairs.filter(|&(a, b)| a != b && !(members.contains(&b) && b < a)) {
        for (from, to) in [(a, b), (b, a)] {
            let host = format!("e{}", from + 1);
            match cut {
                Cut::Cut => lab.cut(&host, lab::etcd_ip(to)),
                Cut::Heal => lab.uncut(&host, lab::etcd_ip(to)),
            }
        }
    }
}

/// Waits until every running node names itself, and etcd holds exactly those names, each with
/// its node's address; returns them.
fn everyone_holds_a_name(lab: &Lab) -> BTreeMap<String, Ipv4Addr> {
    let etcd = EtcdReader::new(lab.etcd.iter().map(|m| m.url.clone()).collect());
    let running = lab.running().count();
    let held = within(Duration::from_secs(60), || {
        let named: BTreeMap<String, Ipv4Addr> =
            lab.running().filter_map(|(i, node)| Some((node.identity()?, lab::node_ip(i)))).collect();
        let in_etcd: BTreeMap<String, Ipv4Addr> =
            etcd.holders()?.into_iter().filter_map(|(name, holder)| Some((name, holder.ip?))).collect();
        (named.len() == running && named == in_etcd).then_some(named)
    });
    held.unwrap_or_else(|| {
        let named: Vec<_> = lab.running().map(|(i, node)| (i + 1, node.identity())).collect();
        let logs: Vec<String> = lab.running().map(|(i, node)| format!("node {}:\n{}", i + 1, node.log())).collect();
        panic!(
            "not every node holds a name that etcd holds for it: {named:?}, etcd {:?}\n{}",
            etcd.holders(),
            logs.join("\n")
        )
    })
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
    let (mut lab, names, checker, holders) = three_holding_names(4);

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
    let (mut lab, names, checker, mut holders) = three_holding_names(3);

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

/// The etcd leader's host cut off from the other two members, while every node still reaches
/// it: the two elect a leader of their own, and the nodes that talk to the old leader move to
/// them. Nobody gives up a name for it, a newcomer claims through the new leader, and once the
/// old leader is back in the cluster every node answers every name as etcd holds them.
pub fn etcd_leader_cut_off_from_the_other_members() {
    let (mut lab, names, checker, _) = three_holding_names(4);
    // The nodes spread over the members, one each: the member node 1 talks to is made the
    // leader, so that a node talks to the leader about to be cut off.
    let old = endpoint_in_use(&lab, lab.nodes[0].as_ref().expect("node 1 runs"));
    for (i, node) in lab.running() {
        println!("node {} talks to member {}", i + 1, endpoint_in_use(&lab, node) + 1);
    }
    move_leadership(&lab, old);

    isolate_members(&lab, &[old], Cut::Cut);
    let leader = eventually("the other two members to elect a leader", Duration::from_secs(30), || {
        (0..3).find(|&m| m != old && lab.etcd[m].is_leader())
    });
    println!("member {} leads while member {} is cut off", leader + 1, old + 1);
    // A newcomer claims through the new leader, and the nodes see it: they follow the members
    // that can commit, not the old leader, which cannot.
    let newcomer = lab.start(3).claimed();
    for (_, node) in lab.running() {
        node.wait_for_address(&newcomer, &lab::node_ip(3).to_string());
    }
    // Renewals go on through the new leader while a lease's time passes, three times: each node
    // keeps its name (one that lost its lease while its renewals failed over, on a machine too
    // busy, claims again).
    std::thread::sleep(LEASE_LOST_WITHIN);
    let during = everyone_holds_a_name(&lab);
    for (i, node) in lab.running() {
        let member = endpoint_in_use(&lab, node);
        let kept = match names.get(i) {
            None => "the newcomer".to_string(),
            Some(name) if during.get(name) == Some(&lab::node_ip(i)) => format!("keeps {name}"),
            Some(name) => format!("lost {name} with its lease, and claimed {:?}", node.identity()),
        };
        println!("node {} talks to member {} while member {} is cut off: {kept}", i + 1, member + 1, old + 1);
        assert_ne!(member, old, "node {} still talks to the member cut off:\n{}", i + 1, node.log());
    }

    isolate_members(&lab, &[old], Cut::Heal);
    eventually("the old leader to follow a leader", Duration::from_secs(30), || has_leader(&lab, old).then_some(()));
    let holders = everyone_holds_a_name(&lab);
    all_agree(&lab, &holders);
    checker.finish().assert_none("etcd_leader_cut_off_from_the_other_members");
}

/// Two of the three etcd members cut off from the others: no member has a quorum, so nothing
/// can be claimed or renewed. The nodes answer the others' names from what they hold, stop naming
/// themselves once their leases may have run out, and claim nothing, newcomer or not, until the
/// cluster is whole again; then every node holds a name again and all agree.
pub fn etcd_without_quorum() {
    let (mut lab, names, checker, _) = three_holding_names(4);

    let cut_at = Instant::now();
    isolate_members(&lab, &[1, 2], Cut::Cut);
    lab.start(3);
    let others_answered = |lab: &mut Lab| {
        for i in 0..3 {
            for (j, name) in names.iter().enumerate().filter(|&(j, _)| j != i) {
                lab.node(i).wait_for_address(name, &lab::node_ip(j).to_string());
            }
        }
    };
    others_answered(&mut lab);
    let quiet = within(LEASE_LOST_WITHIN, || lab.running().all(|(_, node)| node.identity().is_none()).then_some(()));
    let named: Vec<_> = lab.running().map(|(i, node)| (i + 1, node.identity())).collect();
    assert!(quiet.is_some(), "nodes still name themselves with no quorum in etcd: {named:?}");
    // Past every lease's deadline, however late the leases were renewed last: still no claim.
    std::thread::sleep(LEASE_LOST_WITHIN.saturating_sub(cut_at.elapsed()));
    others_answered(&mut lab);
    for (i, node) in lab.running() {
        let claims = node.log().matches("] claimed ").count();
        assert_eq!(claims, usize::from(i < 3), "node {} claimed with no quorum in etcd:\n{}", i + 1, node.log());
        assert_eq!(node.identity(), None, "node {}", i + 1);
    }
    println!("no quorum for {:.1}s: no claims, no node names itself", cut_at.elapsed().as_secs_f64());

    isolate_members(&lab, &[1, 2], Cut::Heal);
    let holders = everyone_holds_a_name(&lab);
    for (i, name) in names.iter().enumerate() {
        let again = holders.iter().find(|(_, ip)| **ip == lab::node_ip(i)).map(|(name, _)| name);
        println!("node {} held {name}, and claimed {again:?} once etcd had a quorum again", i + 1);
    }
    all_agree(&lab, &holders);
    checker.finish().assert_none("etcd_without_quorum");
}

/// A node's link flapping, down for a second and up again, for a minute, then steady: whatever
/// it held or lost meanwhile, it ends holding a name, and every node answers every name as etcd
/// holds them.
pub fn node_link_flapping() {
    let (mut lab, names, checker, _) = three_holding_names(3);

    // Up a quarter second longer than down: the flaps drift across the node's renewals, every
    // third of the lease, instead of keeping step with them, up or down at each.
    let flapping = Instant::now();
    while flapping.elapsed() < Duration::from_secs(60) {
        lab.link("n1", false);
        std::thread::sleep(Duration::from_secs(1));
        lab.link("n1", true);
        std::thread::sleep(Duration::from_millis(1250));
    }
    let holders = everyone_holds_a_name(&lab);
    let log = lab.node(0).log();
    println!(
        "node 1 after a minute of flapping holds {:?} (held {}); its log: {} renewals failed, {} names lost, {} claims",
        lab.node(0).identity(),
        names[0],
        log.matches("cannot renew the lease").count(),
        log.matches("claiming a name again").count(),
        log.matches("] claimed ").count()
    );
    all_agree(&lab, &holders);
    checker.finish().assert_none("node_link_flapping");
}
