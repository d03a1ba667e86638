//! Claiming, holding and releasing names.

use std::collections::BTreeSet;
use std::time::Duration;

use domain::base::iana::{OptRcode, Rtype};

use crate::support::{eventually, free_port, http_get, next_loopback, Etcd, Node, Setup, WAIT};

#[test]
fn one_node_claims_worker1() {
    let etcd = Etcd::start();
    let mut node = Setup::new(&etcd, "one.test.").start();
    assert_eq!(node.claimed(), "worker1.one.test.");

    let kv = etcd.get("worker1.one.test.").expect("the key in etcd");
    assert_eq!(
        kv.value,
        format!(r#"{{"ipv4":"{}","ipv6":"fd00::{}","port":"{}"}}"#, node.ip, node.ip.octets()[3], node.port)
    );
    assert_ne!(kv.lease, 0, "the key is attached to a lease");
    assert_eq!(node.query("worker1.one.test.", Rtype::A).data(), [node.ip.to_string()]);
    assert!(node.log().contains("claimed worker1.one.test."), "{}", node.log());
}

#[test]
fn the_claim_is_the_first_read_of_the_members() {
    let etcd = Etcd::start();
    etcd.put("worker7.first.test.", r#"{"ipv4":"10.0.0.7"}"#);
    let ip = next_loopback();
    let metrics = free_port(ip);
    // Polling once an hour: the members this node knows are those its claim read.
    let setup =
        Setup { poll: "1h", server: format!("    prometheus {ip}:{metrics}\n"), ..Setup::new(&etcd, "first.test.") };
    let mut node = setup.start_on(ip, free_port(ip));
    assert_eq!(node.claimed(), "worker1.first.test.");
    node.wait_for_log("2 members at etcd revision");
    assert_eq!(node.query("worker7.first.test.", Rtype::A).data(), ["10.0.0.7"]);
    assert_eq!(node.query("worker1.first.test.", Rtype::A).data(), [ip.to_string()]);
    // The lease, a place in the queue, the name: three requests, and no read of the members
    // after them; then etcd's member list, the fourth.
    let requests = || {
        let (_, text) = http_get(&format!("http://{ip}:{metrics}/metrics")).unwrap();
        let count = text.lines().find_map(|l| l.strip_prefix("idetcd_etcd_request_duration_seconds_count "));
        (count.map(str::to_string), text)
    };
    eventually("the member list after the claim", WAIT, || (requests().0.as_deref() == Some("4")).then_some(()));
    std::thread::sleep(Duration::from_millis(500));
    let (count, text) = requests();
    assert_eq!(count.as_deref(), Some("4"), "{}", node.log());
    let at_etcd = format!("idetcd_etcd_endpoint_requests_total{{endpoint=\"{}\"}} 4", etcd.url);
    assert!(text.lines().any(|l| l == at_etcd), "{text}");
}

#[test]
fn a_large_role_is_read_in_two_halves_and_followed_from_there() {
    let etcd = Etcd::start();
    // 20 000 IDs: the claim reads the names in two requests at once, cut between leading digits.
    let members = [1, 2, 9, 10_000, 15_000, 19_999, 4, 5, 7];
    let puts: Vec<(String, String)> = members
        .iter()
        .map(|id| (format!("worker{id}.halves.test."), format!(r#"{{"ipv4":"10.1.{}.{}"}}"#, id / 256, id % 256)))
        .collect();
    etcd.put_all(&puts.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>());
    let mut node = Setup { limit: 20_000, ..Setup::new(&etcd, "halves.test.") }.start();
    assert_eq!(node.claimed(), "worker3.halves.test.");
    // The join with the first half, the second half, the name.
    assert!(node.log().contains(", 3 etcd requests)"), "{}", node.log());
    node.wait_for_log("10 members at etcd revision");
    for id in members {
        let name = format!("worker{id}.halves.test.");
        assert_eq!(node.query(&name, Rtype::A).data(), [format!("10.1.{}.{}", id / 256, id % 256)], "{name}");
    }
    assert_eq!(node.query("worker14999.halves.test.", Rtype::A).rcode, OptRcode::NXDOMAIN);
    // Followed from the read: a change in either half shows.
    etcd.put("worker14999.halves.test.", r#"{"ipv4":"10.9.9.9"}"#);
    etcd.delete("worker5.halves.test.");
    assert_eq!(node.wait_for_rcode("worker14999.halves.test.", OptRcode::NOERROR).data(), ["10.9.9.9"]);
    node.wait_for_rcode("worker5.halves.test.", OptRcode::NXDOMAIN);
}

#[test]
fn a_watch_put_off_for_claims_queued_opens_when_the_queue_stands_still() {
    let etcd = Etcd::start();
    // Tickets left in the claim queue by nodes that stopped claiming (their leases would remove
    // them): more than the few a node opens its watch at once for.
    for i in 0..10 {
        etcd.put(&format!("worker_claims/worker{{{{.ID}}}}.defer.test./7b7d{i}"), "");
    }
    let mut node = Setup { limit: 20, ..Setup::new(&etcd, "defer.test.") }.start();
    // The claims ahead would take worker1 to worker10.
    assert_eq!(node.claimed(), "worker11.defer.test.");
    node.wait_for_log("10 claims queued: following the members in");
    etcd.put("worker7.defer.test.", r#"{"ipv4":"10.0.0.7"}"#);
    assert_eq!(node.wait_for_rcode("worker7.defer.test.", OptRcode::NOERROR).data(), ["10.0.0.7"]);
    assert!(node.log().contains("etcd watch opened"), "{}", node.log());
}

#[test]
fn five_nodes_take_1_to_5_and_resolve_each_other() {
    let etcd = Etcd::start();
    let setup = Setup { limit: 5, ..Setup::new(&etcd, "five.test.") };
    let nodes = setup.start_together(5);
    let names: BTreeSet<String> = nodes.iter().map(|n| n.identity().unwrap()).collect();
    let want: BTreeSet<String> = (1..=5).map(|i| format!("worker{i}.five.test.")).collect();
    assert_eq!(names, want);

    for asker in &nodes {
        for owner in &nodes {
            let name = owner.identity().unwrap();
            let a = asker.wait_for_rcode(&name, OptRcode::NOERROR);
            assert_eq!(a.data(), [owner.ip.to_string()], "{name} asked at {}", asker.ip);
            assert!(a.aa);
            let aaaa = asker.query(&name, Rtype::AAAA);
            assert_eq!(aaaa.data(), [format!("fd00::{}", owner.ip.octets()[3])]);
        }
    }
}

#[test]
fn a_node_beyond_the_limit_exits_with_a_clear_message() {
    let etcd = Etcd::start();
    let setup = Setup { limit: 5, ..Setup::new(&etcd, "full.test.") };
    let _nodes = setup.start_together(5);
    let mut sixth = setup.start();
    let status = sixth.wait_exit(Duration::from_secs(10));
    assert!(!status.success(), "the sixth node must fail");
    assert_eq!(status.code(), Some(1));
    let log = sixth.log();
    assert!(log.contains("limit of 5 nodes"), "{log}");
    assert_eq!(etcd.names("full.test.").len(), 5, "the sixth node left no key behind");
    assert!(etcd.range("worker_claims/", "worker_claims0").is_empty(), "nor a place in the claim queue");
}

#[test]
fn sigterm_frees_the_name_at_once_and_a_new_node_takes_it() {
    let etcd = Etcd::start();
    let setup = Setup { lease: 30, ..Setup::new(&etcd, "term.test.") };
    let mut nodes = setup.start_together(3);
    let leaving = nodes.iter().position(|n| n.identity().as_deref() == Some("worker2.term.test.")).unwrap();
    let mut leaving = nodes.remove(leaving);

    leaving.signal(libc::SIGTERM);
    let status = leaving.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{}", leaving.log());
    // The lease was revoked, not left to expire (30 s).
    assert!(etcd.get("worker2.term.test.").is_none(), "worker2 still in etcd after SIGTERM");
    assert!(leaving.log().contains("released worker2.term.test."), "{}", leaving.log());

    let gone = nodes[0].wait_for_rcode("worker2.term.test.", OptRcode::NXDOMAIN);
    assert!(gone.aa);

    let mut newcomer = setup.start();
    assert_eq!(newcomer.claimed(), "worker2.term.test.");
    nodes[0].wait_for_address("worker2.term.test.", &newcomer.ip.to_string());
}

#[test]
fn sigint_releases_too() {
    let etcd = Etcd::start();
    let mut node = Setup { lease: 30, ..Setup::new(&etcd, "int.test.") }.start();
    node.claimed();
    node.signal(libc::SIGINT);
    assert_eq!(node.wait_exit(Duration::from_secs(5)).code(), Some(0));
    assert!(etcd.get("worker1.int.test.").is_none());
}

#[test]
fn sigkill_frees_the_name_when_the_lease_expires() {
    let etcd = Etcd::start();
    let setup = Setup { lease: 2, ..Setup::new(&etcd, "kill.test.") };
    let mut first = setup.start();
    let mut second = setup.start();
    let killed_name = first.claimed();
    second.claimed();

    first.kill();
    assert!(etcd.get(&killed_name).is_some(), "nobody released the name: it waits for the lease");
    // The lease expires.
    etcd.wait_until_gone(&killed_name);
    second.wait_for_rcode(&killed_name, OptRcode::NXDOMAIN);
    let mut third = setup.start();
    assert_eq!(third.claimed(), killed_name);
}

#[test]
fn a_restarted_node_takes_its_old_name_back() {
    let etcd = Etcd::start();
    // Long enough that the old lease is still there at the restart.
    let setup = Setup { lease: 9, ..Setup::new(&etcd, "restart.test.") };
    let mut other = setup.start();
    assert_eq!(other.claimed(), "worker1.restart.test.");
    let mut node = setup.start();
    assert_eq!(node.claimed(), "worker2.restart.test.");
    let corefile = std::fs::read_to_string(node.corefile_path()).unwrap();
    let ip = node.ip;
    let old_lease = etcd.get("worker2.restart.test.").unwrap().lease;

    // Killed without a chance to release: the old lease lives on, but nobody renews it.
    node.kill();
    let mut again = Node::start_with(corefile, ip);
    assert_eq!(again.claimed(), "worker2.restart.test.");
    assert!(again.log().contains("claimed worker2.restart.test. back"), "{}", again.log());
    let kv = etcd.get("worker2.restart.test.").unwrap();
    assert_ne!(kv.lease, old_lease, "the key moved to the new lease");
    assert_eq!(etcd.names("restart.test."), ["worker1.restart.test.", "worker2.restart.test."], "no second name");
}

/// A node restarted within its old lease takes its record back only once that lease is seen not
/// renewed, seconds later: the names it read on joining the queue are that old by then. What it
/// serves from its claim on must be the members as they are then: one that left meanwhile is not
/// among them, not even until the watch would bring its leaving.
#[test]
fn a_node_that_waited_to_take_its_name_back_serves_the_members_as_of_its_claim() {
    let etcd = Etcd::start();
    // The wait for the old lease lasts at least 5 s: longer than a member's leaving.
    let setup = Setup { lease: 20, ..Setup::new(&etcd, "waited.test.") };
    let mut node = setup.start();
    assert_eq!(node.claimed(), "worker1.waited.test.");
    let mut leaving = setup.start();
    assert_eq!(leaving.claimed(), "worker2.waited.test.");
    let corefile = std::fs::read_to_string(node.corefile_path()).unwrap();
    let ip = node.ip;
    node.kill();
    let again = Node::start_with(corefile, ip);
    again.wait_for_log("watching whether anyone renews it");

    leaving.signal(libc::SIGTERM);
    leaving.wait_exit(Duration::from_secs(10));
    etcd.wait_until_gone("worker2.waited.test.");
    assert!(!again.log().contains("claimed worker1"), "claimed before the member left:\n{}", again.log());
    // The old lease is taken for abandoned once its time to live falls to 8 s unrenewed: up to
    // 12 s after the kill, more than `wait_for_log` waits.
    eventually("the claim back", Duration::from_secs(25), || {
        again.log().contains("claimed worker1.waited.test. back").then_some(())
    });
    again.wait_for_rcode("worker2.waited.test.", OptRcode::NXDOMAIN);
    // The members it served first, listed in its log at debug level, and every change after.
    let log = again.log();
    assert!(
        !log.contains("member worker2.waited.test.") && !log.contains("member left: worker2.waited.test."),
        "served worker2, gone before its claim:\n{log}"
    );
}

#[test]
fn a_revoked_lease_is_noticed_and_the_same_name_claimed_again() {
    let etcd = Etcd::start();
    let mut node = Setup { lease: 3, ..Setup::new(&etcd, "revoke.test.") }.start();
    assert_eq!(node.claimed(), "worker1.revoke.test.");
    let lease = etcd.get("worker1.revoke.test.").unwrap().lease;
    etcd.revoke(lease);

    let kv = eventually("the node to claim again", Duration::from_secs(10), || {
        etcd.get("worker1.revoke.test.").filter(|kv| kv.lease != lease)
    });
    assert_ne!(kv.lease, 0);
    let log = node.log();
    assert!(
        log.contains("WARN")
            && log.contains("is gone (expired or revoked): worker1.revoke.test. is lost; claiming a name again"),
        "{log}"
    );
    assert_eq!(node.claimed(), "worker1.revoke.test.");
}

#[test]
fn a_deleted_key_is_claimed_again_without_renewing_the_lease_to_find_out() {
    let etcd = Etcd::start();
    // Renewed every 10 s: what follows happens between two renewals.
    let mut node = Setup { lease: 30, ..Setup::new(&etcd, "deleted.test.") }.start();
    assert_eq!(node.claimed(), "worker1.deleted.test.");
    let lease = etcd.get("worker1.deleted.test.").unwrap().lease;
    let before = etcd.time_to_live(lease);
    // Letting the lease's time run, on purpose.
    std::thread::sleep(Duration::from_secs(3));
    etcd.delete("worker1.deleted.test.");
    // The node asks etcd whether its lease lives, finds it does, and claims on it again.
    node.wait_for_log("was deleted from etcd or moved off lease");
    let kv = eventually("the name claimed again", Duration::from_secs(5), || etcd.get("worker1.deleted.test."));
    assert_eq!(kv.lease, lease);
    let after = etcd.time_to_live(lease);
    assert!(after <= before - 2, "asking about the lease renewed it: {before} s left before, {after} s after");
    assert!(!node.log().contains("renewed lease"), "no renewal was due: {}", node.log());
}

#[test]
fn thirty_two_nodes_starting_together_get_1_to_32() {
    let etcd = Etcd::start();
    let setup = Setup { limit: 40, ..Setup::new(&etcd, "herd.test.") };
    let mut nodes: Vec<Node> = (0..32).map(|_| setup.start()).collect();
    let mut names: Vec<String> = nodes.iter_mut().map(|n| n.claimed()).collect();
    names.sort_by_key(|n| crate::support::id_of(n));
    let want: Vec<String> = (1..=32).map(|i| format!("worker{i}.herd.test.")).collect();
    assert_eq!(names, want, "32 distinct names, 1 to 32");
    assert_eq!(etcd.names("herd.test."), want);
    let leases: BTreeSet<i64> = etcd.range("worker0", "worker:").iter().map(|kv| kv.lease).collect();
    assert_eq!(leases.len(), 32, "each name on its own node's lease");
    assert!(etcd.range("worker_claims/", "worker_claims0").is_empty(), "every claim left the queue");
}

#[test]
fn a_second_live_node_with_the_same_address_leaves_the_name_to_the_first() {
    let etcd = Etcd::start();
    let setup = Setup { lease: 6, ..Setup::new(&etcd, "twin.test.") };
    let mut first = setup.start();
    assert_eq!(first.claimed(), "worker1.twin.test.");
    let lease = etcd.get("worker1.twin.test.").unwrap().lease;
    // Same published address and port as the first, listening elsewhere: a misconfiguration that
    // would otherwise have the two take worker1 from each other forever.
    let corefile = std::fs::read_to_string(first.corefile_path()).unwrap();
    let ip = crate::support::next_loopback();
    let twin_corefile = corefile.replacen(&format!("bind {}", first.ip), &format!("bind {ip}"), 1);
    let mut twin = Node::start_with(twin_corefile, ip);
    assert_eq!(twin.wait_exit(Duration::from_secs(10)).code(), Some(1));
    let log = twin.log();
    assert!(log.contains("another live node publishes this node's record"), "{log}");
    assert!(log.contains("worker1.twin.test.") && log.contains("`address`"), "{log}");
    assert!(first.exited().is_none(), "{}", first.log());
    assert_eq!(first.identity().as_deref(), Some("worker1.twin.test."));
    assert_eq!(etcd.get("worker1.twin.test.").unwrap().lease, lease, "untouched");
    assert_eq!(etcd.names("twin.test."), ["worker1.twin.test."]);
}

#[test]
fn a_second_key_on_the_nodes_lease_is_deleted() {
    let etcd = Etcd::start();
    let mut node = Setup::new(&etcd, "stray.test.").start();
    assert_eq!(node.claimed(), "worker1.stray.test.");
    let lease = etcd.get("worker1.stray.test.").unwrap().lease;
    // As a claim that got no answer but was applied late would leave it.
    etcd.put_with_lease("worker5.stray.test.", r#"{"ipv4":"10.0.0.5"}"#, lease);
    etcd.wait_until_gone("worker5.stray.test.");
    assert_eq!(etcd.names("stray.test."), ["worker1.stray.test."]);
    assert_eq!(node.identity().as_deref(), Some("worker1.stray.test."));
}

#[test]
fn names_are_claimed_in_lowercase_whatever_the_patterns_case() {
    let etcd = Etcd::start();
    let lower = Setup::new(&etcd, "case.test.");
    let upper = Setup { prefix: "Worker", zone: "CASE.Test.".into(), ..lower.clone() };
    let mut first = lower.start();
    assert_eq!(first.claimed(), "worker1.case.test.");
    let mut second = upper.start();
    assert_eq!(second.claimed(), "worker2.case.test.", "worker1 is held, in any case");
    assert_eq!(etcd.names("case.test."), ["worker1.case.test.", "worker2.case.test."]);
    for node in [&first, &second] {
        for (name, owner) in [("Worker1.Case.TEST.", &first), ("worker2.case.test.", &second)] {
            node.wait_for_address(name, &owner.ip.to_string());
        }
    }
}
