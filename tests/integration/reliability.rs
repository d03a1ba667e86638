//! Faults: etcd members dying, etcd gone for longer than a lease, a paused node, many nodes at
//! once, and churn under load. Each test states what must not be lost.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use domain::base::iana::OptRcode;

use crate::support::{churn, dnsperf, dnsperf_field, endpoints, eventually, within, Asker, Etcd, Node, Setup, WAIT};

/// A 3-member etcd cluster, and nodes holding worker1 and worker2 of `zone` that see each other.
fn two_nodes_on_a_cluster(zone: &str, lease: u32) -> (Vec<Etcd>, Setup, Node, Node) {
    let members = Etcd::cluster(3);
    let setup = Setup { endpoints: endpoints(&members), lease, ..Setup::new(&members[0], zone) };
    let mut a = setup.start();
    assert_eq!(a.claimed(), format!("worker1.{zone}"));
    let mut b = setup.start();
    assert_eq!(b.claimed(), format!("worker2.{zone}"));
    a.wait_for_address(&format!("worker2.{zone}"), &b.ip.to_string());
    (members, setup, a, b)
}

#[test]
fn a_three_member_cluster_loses_a_member_then_its_quorum() {
    let (mut members, setup, mut a, mut b) = two_nodes_on_a_cluster("quorum.test.", 4);
    let lease = members[2].get("worker1.quorum.test.").unwrap().lease;
    let asker = Asker::start(
        a.address(),
        vec![("worker1.quorum.test.".into(), a.ip.to_string()), ("worker2.quorum.test.".into(), b.ip.to_string())],
    );

    // Kill the member a's requests go to. Renewals must go elsewhere, or the 4 s lease would be
    // gone after 6 s: the time passes on purpose.
    let used = a.etcd_endpoint();
    members.sort_by_key(|m| m.url != used);
    assert_eq!(members[0].url, used);
    members[0].stop();
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(members[2].get("worker1.quorum.test.").map(|kv| kv.lease), Some(lease), "the same lease, kept alive");
    asker.wait_for_a_round();
    let mut c = setup.start();
    assert_eq!(c.claimed(), "worker3.quorum.test.");
    a.wait_for_address("worker3.quorum.test.", &c.ip.to_string());

    // A second member down: no quorum, no writes, no renewals. Answers go on, nobody leaves: the
    // time passes on purpose, to show that nothing happens in it.
    members[1].stop();
    std::thread::sleep(Duration::from_secs(3));
    asker.wait_for_a_round();
    for node in [&mut a, &mut b, &mut c] {
        assert!(node.exited().is_none(), "{} exited:\n{}", node.ip, node.log());
    }
    members[0].launch();
    members[1].launch();
    // Until the cluster has a leader again, etcd answers "leader changed" and the like (503).
    eventually("quorum again", Duration::from_secs(20), || members[2].try_get("worker1.quorum.test.").ok().flatten());

    asker.finish_all_right();
    for (node, name) in [(&a, "worker1"), (&b, "worker2"), (&c, "worker3")] {
        let name = format!("{name}.quorum.test.");
        eventually("every node to name itself again", Duration::from_secs(10), || {
            (node.identity().as_deref() == Some(name.as_str())).then_some(())
        });
    }
    assert_eq!(
        members[2].names("quorum.test."),
        ["worker1.quorum.test.", "worker2.quorum.test.", "worker3.quorum.test."]
    );
    let mut d = setup.start();
    assert_eq!(d.claimed(), "worker4.quorum.test.");
    a.wait_for_address("worker4.quorum.test.", &d.ip.to_string());
}

#[test]
fn etcd_down_for_longer_than_the_lease_and_back() {
    let mut etcd = Etcd::start();
    let setup = Setup { lease: 2, ..Setup::new(&etcd, "outage.test.") };
    let mut nodes: Vec<Node> = (0..3).map(|_| setup.start()).collect();
    let before: Vec<String> = nodes.iter_mut().map(|n| n.claimed()).collect();

    etcd.stop();
    // Past the 2 s lease, unrenewed, a node no longer vouches for its name...
    for node in &nodes {
        let gone = within(WAIT, || node.identity().is_none().then_some(()));
        assert!(gone.is_some(), "{} still names itself:\n{}", node.ip, node.log());
    }
    etcd.resume();

    // ...and when etcd is back, each holds its old name again: no two the same.
    let logs = |nodes: &[Node]| nodes.iter().map(|n| n.log()).collect::<Vec<_>>().join("\n----\n");
    for (node, name) in nodes.iter().zip(&before) {
        let again =
            within(Duration::from_secs(20), || (node.identity().as_deref() == Some(name.as_str())).then_some(()));
        assert!(again.is_some(), "{} did not name itself {name} again:\n{}", node.ip, logs(&nodes));
    }
    let mut held = etcd.names("outage.test.");
    held.sort();
    let mut want = before.clone();
    want.sort();
    assert_eq!(held, want, "{}", logs(&nodes));
    let leases: BTreeSet<i64> = etcd.range("worker0", "worker:").iter().map(|kv| kv.lease).collect();
    assert_eq!(leases.len(), 3, "{}", logs(&nodes));
}

#[test]
fn a_paused_node_stops_naming_itself_and_claims_again() {
    let etcd = Etcd::start();
    let setup = Setup { lease: 2, ..Setup::new(&etcd, "pause.test.") };
    let mut paused = setup.start();
    assert_eq!(paused.claimed(), "worker1.pause.test.");
    let mut other = setup.start();
    assert_eq!(other.claimed(), "worker2.pause.test.");

    paused.signal(libc::SIGSTOP);
    // Its lease runs out.
    etcd.wait_until_gone("worker1.pause.test.");
    let mut newcomer = setup.start();
    assert_eq!(newcomer.claimed(), "worker1.pause.test.");

    paused.signal(libc::SIGCONT);
    // For a while after it wakes, on purpose: the old name must never come back in that time.
    let until = Instant::now() + Duration::from_secs(3);
    let mut names = BTreeSet::new();
    while Instant::now() < until {
        let name = paused.identity();
        assert_ne!(name.as_deref(), Some("worker1.pause.test."), "the resumed node named itself by a name it lost");
        names.extend(name);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(paused.claimed(), "worker3.pause.test.");
    assert!(names.iter().all(|n| n == "worker3.pause.test."), "{names:?}");
    assert!(paused.log().contains("is gone (expired or revoked): worker1.pause.test. is lost"), "{}", paused.log());
    let kv = etcd.get("worker1.pause.test.").unwrap();
    assert_ne!(kv.lease, etcd.get("worker3.pause.test.").unwrap().lease);
    other.wait_for_address("worker1.pause.test.", &newcomer.ip.to_string());
    other.wait_for_address("worker3.pause.test.", &paused.ip.to_string());
}

#[test]
fn sixty_four_nodes_ten_times_never_share_a_name() {
    let etcd = Etcd::start();
    let setup = Setup { limit: 64, ..Setup::new(&etcd, "rounds.test.") };
    let want: Vec<String> = (1..=64).map(|i| format!("worker{i}.rounds.test.")).collect();
    for round in 0..10 {
        let mut nodes: Vec<Node> = (0..64).map(|_| setup.start()).collect();
        let mut names: Vec<String> = nodes.iter_mut().map(|n| n.claimed()).collect();
        names.sort_by_key(|n| crate::support::id_of(n));
        assert_eq!(names, want, "round {round}: names by id.server");
        assert_eq!(etcd.names("rounds.test."), want, "round {round}: names in etcd");
        // In DNS too: 64 names, 64 distinct addresses, each its holder's.
        let observer = &nodes[round * 7 % 64];
        let mut addresses = BTreeSet::new();
        for node in &nodes {
            let name = node.identity().unwrap();
            let a = observer.wait_for_rcode(&name, OptRcode::NOERROR);
            assert_eq!(a.data(), [node.ip.to_string()], "round {round}: {name}");
            addresses.insert(node.ip);
        }
        assert_eq!(addresses.len(), 64);
        for node in &nodes {
            node.signal(libc::SIGTERM);
        }
        for node in &mut nodes {
            assert_eq!(node.wait_exit(Duration::from_secs(10)).code(), Some(0));
        }
        assert!(etcd.names("rounds.test.").is_empty(), "round {round}: every name released");
    }
}

#[test]
fn answers_stay_right_under_load_through_churn_and_failover() {
    let (mut members, setup, a, b) = two_nodes_on_a_cluster("load.test.", 5);
    // A steady 5000 queries a second for 10 s, through everything below. How many of them are
    // lost is a figure for scripts/bench-converge; here every answer must be right.
    let load = dnsperf(&a, &["worker1.load.test.", "worker2.load.test."], 5000, 10);
    let asker = Asker::start(
        a.address(),
        vec![("worker1.load.test.".into(), a.ip.to_string()), ("worker2.load.test.".into(), b.ip.to_string())],
    );
    let _late = churn(&setup, &mut members, &a);
    // Asked with the first etcd member down, too.
    asker.wait_for_a_round();

    let report = load.join().unwrap();
    asker.finish_all_right();
    // "Queries completed:    49998 (100.00%)": some answers came...
    let completed = dnsperf_field(&report, "Queries completed:").and_then(|f| f.split(' ').next()?.parse::<u64>().ok());
    assert!(completed.is_some_and(|n| n > 0), "{report}");
    // ...and every one was NOERROR: "Response codes:       NOERROR 49998 (100.00%)", nothing after.
    let rcodes = dnsperf_field(&report, "Response codes:").unwrap_or_default();
    assert!(rcodes.starts_with("NOERROR") && !rcodes.contains(','), "only NOERROR: {report}");
}
