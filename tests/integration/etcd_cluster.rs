//! The whole etcd cluster: nodes spread over its members, read its member list to find them all,
//! and move to the others when one dies, without losing a name or answering wrong.

use std::time::Duration;

use crate::support::{endpoints, eventually, Asker, Etcd, Node, Setup, WAIT};

/// What each member served of the client requests in `window`, from their own /metrics; the test
/// asks none of them anything meanwhile.
fn served_in(members: &[&Etcd], window: Duration) -> Vec<u64> {
    let before: Vec<u64> = members.iter().map(|m| m.requests_served()).collect();
    std::thread::sleep(window);
    members.iter().zip(before).map(|(m, before)| m.requests_served().saturating_sub(before)).collect()
}

/// Each node's name and address, for an `Asker`.
fn names(nodes: &[Node]) -> Vec<(String, String)> {
    nodes.iter().map(|n| (n.identity().expect("a node holds its name"), n.ip.to_string())).collect()
}

/// Waits until `node` says its requests go to `share`, of the members `order`.
fn on_its_share(node: &Node, share: &str, order: &[String]) {
    if crate::support::within(WAIT, || (node.etcd_endpoint() == share).then_some(())).is_none() {
        panic!("node {} is not on {share} of {order:?}:\n{}", node.ip, node.log());
    }
}

/// Every node answers every name with its holder's address.
fn all_agree(nodes: &[Node], names: &[(String, String)]) {
    for node in nodes {
        for (name, ip) in names {
            node.wait_for_address(name, ip);
        }
    }
}

#[test]
fn thirty_nodes_share_three_members_and_move_when_the_busiest_dies() {
    let zone = "spread.test.";
    let mut members = Etcd::cluster(3);
    // Renewed every 2 s: a few seconds make enough requests to tell the shares apart.
    let setup = Setup { endpoints: endpoints(&members), limit: 40, lease: 6, ..Setup::new(&members[0], zone) };
    let nodes = setup.start_together(30);
    let names = names(&nodes);
    // The watches open once the claims are done.
    std::thread::sleep(Duration::from_secs(2));

    let counts = served_in(&members.iter().collect::<Vec<_>>(), Duration::from_secs(10));
    let total: u64 = counts.iter().sum();
    let shares: Vec<f64> = counts.iter().map(|&c| c as f64 / total as f64).collect();
    println!("30 nodes, requests each member served in 10 s: {counts:?}, shares {shares:.2?}");
    assert!(total >= 100, "30 nodes renew every 2 s: {counts:?}");
    assert!(shares.iter().all(|s| (0.2..=0.5).contains(s)), "shares {shares:.2?} ({counts:?})");

    let busiest = (0..3).max_by_key(|&i| counts[i]).unwrap();
    let killed = members[busiest].url.clone();
    let (moving, staying): (Vec<&Node>, Vec<&Node>) = nodes.iter().partition(|n| n.etcd_endpoint() == killed);
    assert!(!moving.is_empty() && !staying.is_empty(), "{killed}");
    let survivor = (busiest + 1) % 3;
    let leases: Vec<i64> = names.iter().map(|(name, _)| members[survivor].get(name).unwrap().lease).collect();
    let askers = [moving[0], staying[0]].map(|node| Asker::start(node.address(), names.clone()));

    members[busiest].stop();
    // Three leases: long enough for any node that did not get its renewals through elsewhere
    // to lose its name.
    std::thread::sleep(Duration::from_secs(18));
    for ((name, _), lease) in names.iter().zip(&leases) {
        let kv = members[survivor].get(name);
        assert_eq!(kv.map(|kv| kv.lease), Some(*lease), "{name} kept on its lease");
    }
    for (node, (name, _)) in nodes.iter().zip(&names) {
        assert_eq!(node.identity().as_deref(), Some(name.as_str()), "{}", node.log());
    }
    let moved_to: std::collections::BTreeSet<String> = moving.iter().map(|n| n.etcd_endpoint()).collect();
    assert!(!moved_to.contains(&killed), "{moved_to:?}");
    assert_eq!(moved_to.len(), 2, "the nodes of the member that died spread over both others: {moved_to:?}");
    askers.into_iter().for_each(Asker::finish_all_right);
    all_agree(&nodes, &names);
    let live: Vec<&Etcd> = members.iter().filter(|m| m.url != killed).collect();
    let counts = served_in(&live, Duration::from_secs(6));
    println!("after {killed} died, the others served {counts:?} in 6 s");
    assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
}

#[test]
fn a_node_told_of_one_member_uses_every_member_and_one_added_later() {
    let zone = "discover.test.";
    let mut members = Etcd::cluster(3);
    let first = members[0].url.clone();
    // The member list is read every 2 s; renewals every 1.3 s.
    let extra = "        autosync 2s\n".to_string();
    let setup = Setup { endpoints: first.clone(), lease: 4, extra, ..Setup::new(&members[0], zone) };
    let nodes = setup.start_together(3);
    let names = names(&nodes);

    // Node k (worker k+1) uses the k-th member in the order of their IDs, once it read them.
    let order = members[0].member_urls();
    for (k, node) in nodes.iter().enumerate() {
        on_its_share(node, &order[k], &order);
    }
    let counts = served_in(&members.iter().collect::<Vec<_>>(), Duration::from_secs(4));
    assert!(counts.iter().all(|&c| c > 0), "every member serves: {counts:?}");

    // The only member the Corefile names dies: the nodes go on through the others.
    let asker = Asker::start(nodes[0].address(), names.clone());
    members[0].stop();
    std::thread::sleep(Duration::from_secs(12));
    for (node, (name, _)) in nodes.iter().zip(&names) {
        assert_eq!(node.identity().as_deref(), Some(name.as_str()), "{}", node.log());
        assert_ne!(node.etcd_endpoint(), first, "{}", node.log());
    }
    asker.finish_all_right();
    members[0].resume();

    // A fourth member: every node reads it in the next member list, and spreads again.
    let fourth = Etcd::add_to(&members);
    for node in &nodes {
        eventually("the fourth member in the node's endpoints", WAIT, || {
            node.log().lines().any(|l| l.contains("(from the member list)") && l.contains(&fourth.url)).then_some(())
        });
    }
    let order = members[1].member_urls();
    assert_eq!(order.len(), 4);
    for (k, node) in nodes.iter().enumerate() {
        on_its_share(node, &order[k], &order);
    }
    // With three nodes, the fourth member in the order is nobody's share: the member before it
    // stops, and its node goes on to the next, the fourth.
    let place = order.iter().position(|url| *url == fourth.url).unwrap();
    let mut stopped = None;
    if place == 3 {
        let before = members.iter_mut().find(|m| m.url == order[2]).unwrap();
        before.stop();
        stopped = Some(before);
        eventually("a node on the fourth member", WAIT, || (nodes[2].etcd_endpoint() == fourth.url).then_some(()));
    }
    let counts = served_in(&[&fourth], Duration::from_secs(3));
    assert!(counts[0] > 0, "the fourth member serves: {counts:?}");
    if let Some(member) = stopped {
        member.resume();
    }
    all_agree(&nodes, &names);
}

#[test]
fn a_member_advertising_a_url_the_node_cannot_reach_is_skipped_with_one_warning() {
    let zone = "unreachable.test.";
    let ip = std::net::Ipv4Addr::LOCALHOST;
    // Nothing listens there: a client URL that no node can use.
    let nowhere = format!("http://127.0.0.1:{}", crate::support::free_port(ip));
    let etcd = Etcd::start_with(&["--advertise-client-urls", &nowhere]);
    assert_eq!(etcd.member_urls(), std::slice::from_ref(&nowhere));
    let extra = "        autosync 1s\n".to_string();
    let mut node = Setup { extra, ..Setup::new(&etcd, zone) }.start();
    let name = node.claimed();
    // Several member-list reads, each skipping it, one warning.
    std::thread::sleep(Duration::from_secs(4));
    let log = node.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("cannot be reached from here")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("WARN") && warnings[0].contains(&nowhere), "{log}");
    assert!(log.matches("still cannot be reached").count() >= 2, "{log}");
    // The Corefile's endpoint has the final say.
    assert_eq!(node.etcd_endpoint(), etcd.url, "{log}");
    assert_eq!(node.identity(), Some(name));
}
