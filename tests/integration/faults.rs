//! etcd going away and coming back, and records this daemon did not write.

use std::time::{Duration, Instant};

use domain::base::iana::{OptRcode, Rtype};

use crate::support::{eventually, Etcd, Query, Setup, Transport, WAIT};

#[test]
fn answers_go_on_while_etcd_is_down_and_changes_show_when_it_is_back() {
    let mut etcd = Etcd::start();
    let setup = Setup { lease: 20, ..Setup::new(&etcd, "down.test.") };
    let mut first = setup.start();
    assert_eq!(first.claimed(), "worker1.down.test.");
    let mut second = setup.start();
    assert_eq!(second.claimed(), "worker2.down.test.");
    first.wait_for_rcode("worker2.down.test.", OptRcode::NOERROR);

    etcd.stop();
    // For a while, on purpose: every answer in that time is right.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for node in [&first, &second] {
            assert_eq!(node.query("worker1.down.test.", Rtype::A).data(), [first.ip.to_string()]);
            assert_eq!(node.query("worker2.down.test.", Rtype::A).data(), [second.ip.to_string()]);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // etcd trouble is a warning.
    first.wait_for_log("WARN");

    etcd.resume();
    let mut third = setup.start();
    assert_eq!(third.claimed(), "worker3.down.test.");
    for node in [&first, &second] {
        node.wait_for_address("worker3.down.test.", &third.ip.to_string());
    }
    // Both kept their names: etcd came back within the lease TTL.
    assert_eq!(first.identity().as_deref(), Some("worker1.down.test."));
    assert_eq!(second.identity().as_deref(), Some("worker2.down.test."));
    assert_eq!(etcd.names("down.test."), ["worker1.down.test.", "worker2.down.test.", "worker3.down.test."]);
    assert!(first.log().contains("answers again"), "{}", first.log());
}

#[test]
fn a_name_lost_while_etcd_was_down_is_said_and_so_is_the_claim_after() {
    let mut etcd = Etcd::start();
    let mut node = Setup { lease: 2, ..Setup::new(&etcd, "lost.test.") }.start();
    assert_eq!(node.claimed(), "worker1.lost.test.");
    etcd.stop();
    node.wait_for_log("for worker1.lost.test. ran out while etcd could not be reached");
    assert_eq!(node.identity(), None, "no longer answers as worker1");
    etcd.resume();
    node.wait_for_log("claimed worker1.lost.test. again");
    // The log line comes just before the answering threads are told: wait for them to say it.
    assert_eq!(node.claimed(), "worker1.lost.test.");
}

#[test]
fn a_node_started_before_etcd_claims_once_etcd_is_up() {
    let mut etcd = Etcd::start();
    etcd.stop();
    let mut node = Setup::new(&etcd, "late.test.").start();
    let a =
        eventually("an answer", WAIT, || node.try_query(Transport::Udp, &Query::new("worker1.late.test.", Rtype::A)));
    assert_eq!(a.rcode, OptRcode::SERVFAIL, "nothing read yet, so no NXDOMAIN");
    // A second of etcd down, on purpose: the node waits for it, and does not give up.
    std::thread::sleep(Duration::from_secs(1));
    assert!(node.exited().is_none(), "it waits for etcd:\n{}", node.log());
    etcd.resume();
    assert_eq!(node.claimed(), "worker1.late.test.");
}

#[test]
fn a_claim_waits_for_a_slow_etcd_instead_of_giving_up() {
    let etcd = Etcd::start();
    // etcd answers nothing for longer than a request of a node that holds a name may take (a
    // quarter of the lease), as when a thousand nodes start together.
    etcd.signal(libc::SIGSTOP);
    let mut node = Setup::new(&etcd, "slow.test.").start();
    std::thread::sleep(Duration::from_secs(5));
    etcd.signal(libc::SIGCONT);
    assert_eq!(node.claimed(), "worker1.slow.test.");
    assert!(!node.log().contains("cannot claim"), "{}", node.log());
    // One lease: none granted to a request given up on, and left to expire.
    let leases = etcd.post("/v3/lease/leases", serde_json::json!({}));
    assert_eq!(leases["leases"].as_array().map(Vec::len), Some(1), "{leases}");
}

#[test]
fn records_written_by_the_original_plugin_are_served() {
    let etcd = Etcd::start();
    // Exactly as the Go plugin's json.Marshal writes them, one with every field, one with a few.
    etcd.put("worker7.orig.test.", r#"{"ipv4":"10.9.9.7","ipv6":"fd00::77","port":"53"}"#);
    let lease = etcd.grant(60);
    etcd.put_with_lease("worker8.orig.test.", r#"{"ipv4":"10.9.9.8"}"#, lease);
    let mut node = Setup::new(&etcd, "orig.test.").start();
    assert_eq!(node.claimed(), "worker1.orig.test.");
    assert_eq!(node.query("worker7.orig.test.", Rtype::A).data(), ["10.9.9.7"]);
    assert_eq!(node.query("worker7.orig.test.", Rtype::AAAA).data(), ["fd00::77"]);
    assert_eq!(node.query("worker8.orig.test.", Rtype::A).data(), ["10.9.9.8"]);
    let nodata = node.query("worker8.orig.test.", Rtype::AAAA);
    assert_eq!((nodata.rcode, nodata.answers.len()), (OptRcode::NOERROR, 0));
}

#[test]
fn bad_values_in_etcd_are_skipped_with_one_warning() {
    let etcd = Etcd::start();
    etcd.put("worker2.bad.test.", "this is not json");
    etcd.put("worker3.bad.test.", r#"{"ipv4":"10.0.0.300"}"#);
    etcd.put("worker04.bad.test.", r#"{"ipv4":"10.0.0.4"}"#);
    etcd.put("worker5.bad.test.", &format!(r#"{{"ipv4":"10.0.0.5","pad":"{}"}}"#, "x".repeat(5000)));
    let mut node = Setup::new(&etcd, "bad.test.").start();
    // IDs 2 and 3 have keys, bad or not: they are taken.
    assert_eq!(node.claimed(), "worker1.bad.test.");
    let mut second = Setup::new(&etcd, "bad.test.").start();
    assert_eq!(second.claimed(), "worker4.bad.test.");
    for name in ["worker2.bad.test.", "worker3.bad.test.", "worker04.bad.test.", "worker5.bad.test."] {
        assert_eq!(node.query(name, Rtype::A).rcode, OptRcode::NXDOMAIN, "{name}");
    }
    node.wait_for_address("worker4.bad.test.", &second.ip.to_string());
    let log = node.log();
    for key in ["worker2.bad.test.", "worker3.bad.test.", "worker04.bad.test.", "worker5.bad.test."] {
        let warnings = log.lines().filter(|l| l.contains("WARN") && l.contains(&format!("\"{key}\""))).count();
        assert_eq!(warnings, 1, "one warning for {key}:\n{log}");
    }

    // `idetcd members` says why IDs 2 and 3 were skipped, in ID order.
    let (status, out, err) = node.run("members", &[]);
    assert!(status.success(), "{err}");
    let rows: Vec<(&str, &str)> = out
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("worker "))
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (cells[2], cells[3])
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("worker1.bad.test.", node.ip.to_string().as_str()),
            ("worker2.bad.test.", "(unreadable)"),
            ("worker3.bad.test.", "(unreadable)"),
            ("worker4.bad.test.", second.ip.to_string().as_str()),
            ("worker5.bad.test.", "(unreadable)"),
        ],
        "{out}"
    );
    assert!(out.contains("worker2.bad.test.: its value is no record"), "{out}");
}

#[test]
fn another_clusters_keys_in_the_same_etcd_are_none_of_our_business() {
    let etcd = Etcd::start();
    let mut ours = Setup::new(&etcd, "ours.test.").start();
    let mut theirs = Setup::new(&etcd, "jobb.internal.").start();
    assert_eq!(ours.claimed(), "worker1.ours.test.");
    assert_eq!(theirs.claimed(), "worker1.jobb.internal.");
    etcd.put("worker2.ours.test.", "garbage");
    etcd.put("worker7.jobb.internal.", "garbage too");
    ours.wait_for_log("ignoring etcd key \"worker2.ours.test.\"");
    let mut third = Setup::new(&etcd, "ours.test.").start();
    assert_eq!(third.claimed(), "worker3.ours.test.");
    ours.wait_for_address("worker3.ours.test.", &third.ip.to_string());
    let told = |log: String, zone: &str| log.lines().any(|l| !l.contains("DEBUG") && l.contains(zone));
    assert!(!told(ours.log(), "jobb.internal"), "{}", ours.log());
    assert!(!told(theirs.log(), "ours.test"), "{}", theirs.log());
}

#[test]
fn the_start_counts_the_members_and_later_joins_and_leaves_are_told_with_addresses() {
    let etcd = Etcd::start();
    for id in 1..=40 {
        etcd.put(&format!("worker{id}.crowd.test."), &format!(r#"{{"ipv4":"10.0.1.{id}"}}"#));
    }
    let setup = Setup { limit: 50, ..Setup::new(&etcd, "crowd.test.") };
    let mut node = setup.start();
    assert_eq!(node.claimed(), "worker41.crowd.test.");
    node.wait_for_log("41 members at etcd revision");
    assert_eq!(node.log().matches("member joined").count(), 0, "{}", node.log());
    let mut newcomer = setup.start();
    assert_eq!(newcomer.claimed(), "worker42.crowd.test.");
    node.wait_for_log(&format!("member joined: worker42.crowd.test. {}", newcomer.ip));
    newcomer.signal(libc::SIGTERM);
    node.wait_for_log(&format!("member left: worker42.crowd.test. {}", newcomer.ip));
}

#[test]
fn with_watch_changes_show_long_before_the_next_poll() {
    let mut etcd = Etcd::start();
    // `poll` with `watch`, the watch kept on over a poll: the one test of that combination.
    // Polling once an hour: within the test, only the watch can bring a change.
    let setup = Setup { poll: "1h", extra: "        watch\n".into(), ..Setup::new(&etcd, "watch.test.") };
    let mut observer = setup.start();
    assert_eq!(observer.claimed(), "worker1.watch.test.");

    let mut joiner = setup.start();
    assert_eq!(joiner.claimed(), "worker2.watch.test.");
    observer.wait_for_address("worker2.watch.test.", &joiner.ip.to_string());
    joiner.signal(libc::SIGTERM);
    joiner.wait_exit(Duration::from_secs(5));
    observer.wait_for_rcode("worker2.watch.test.", OptRcode::NXDOMAIN);

    // The stream breaks with etcd, cannot be reopened while etcd is down, and is reopened where
    // it left off once etcd is back.
    etcd.stop();
    observer.wait_for_log("cannot open the etcd watch");
    etcd.resume();
    let mut late = setup.start();
    assert_eq!(late.claimed(), "worker2.watch.test.");
    observer.wait_for_address("worker2.watch.test.", &late.ip.to_string());
}

#[test]
fn with_watch_every_change_of_one_transaction_shows() {
    let etcd = Etcd::start();
    // Followed by the watch alone, the default: only the watch can bring a change.
    let setup = Setup::new(&etcd, "batch.test.");
    let mut observer = setup.start();
    observer.claimed();
    let record = |ip: &str| format!(r#"{{"ipv4":"{ip}"}}"#);
    etcd.put_all(&[("worker5.batch.test.", &record("10.0.0.5")), ("worker6.batch.test.", &record("10.0.0.6"))]);
    observer.wait_for_address("worker5.batch.test.", "10.0.0.5");
    observer.wait_for_address("worker6.batch.test.", "10.0.0.6");
    // One transaction changing both: both change.
    etcd.put_all(&[("worker5.batch.test.", &record("10.1.0.5")), ("worker6.batch.test.", &record("10.1.0.6"))]);
    observer.wait_for_address("worker5.batch.test.", "10.1.0.5");
    observer.wait_for_address("worker6.batch.test.", "10.1.0.6");
}
