//! etcd going away and coming back, and records this daemon did not write.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use domain::base::iana::{OptRcode, Rtype};

use crate::support::{eventually, Etcd, Setup};

#[test]
fn answers_go_on_while_etcd_is_down_and_changes_show_when_it_is_back() {
    let mut etcd = Etcd::start();
    let setup = Setup { lease: 20, ..Setup::new(&etcd, "down.test.") };
    let mut first = setup.start();
    assert_eq!(first.claimed(), "worker1.down.test.");
    let mut second = setup.start();
    assert_eq!(second.claimed(), "worker2.down.test.");
    eventually("both members seen", Duration::from_secs(5), || {
        (first.query("worker2.down.test.", Rtype::A).rcode == OptRcode::NOERROR).then_some(())
    });

    etcd.stop();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for node in [&first, &second] {
            assert_eq!(node.query("worker1.down.test.", Rtype::A).data(), [first.ip.to_string()]);
            assert_eq!(node.query("worker2.down.test.", Rtype::A).data(), [second.ip.to_string()]);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(first.log().contains("WARN"), "etcd trouble is a warning:\n{}", first.log());

    etcd.resume();
    let mut third = setup.start();
    assert_eq!(third.claimed(), "worker3.down.test.");
    for node in [&first, &second] {
        let a = eventually("the newcomer to show", Duration::from_secs(10), || {
            Some(node.query("worker3.down.test.", Rtype::A)).filter(|a| !a.answers.is_empty())
        });
        assert_eq!(a.data(), [third.ip.to_string()]);
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
    eventually("the lost name to be named", Duration::from_secs(10), || {
        node.log().contains("for worker1.lost.test. ran out while etcd could not be reached").then_some(())
    });
    assert_eq!(node.identity(), None, "no longer answers as worker1");
    etcd.resume();
    eventually("the claim after", Duration::from_secs(15), || {
        node.log().contains("claimed worker1.lost.test. again").then_some(())
    });
    // The log line comes just before the answering threads are told: wait for them to say it.
    assert_eq!(node.claimed(), "worker1.lost.test.");
}

#[test]
fn a_node_started_before_etcd_claims_once_etcd_is_up() {
    let mut etcd = Etcd::start();
    etcd.stop();
    let mut node = Setup::new(&etcd, "late.test.").start();
    std::thread::sleep(Duration::from_secs(1));
    assert!(node.exited().is_none(), "it waits for etcd:\n{}", node.log());
    let a = node.query("worker1.late.test.", Rtype::A);
    assert_eq!(a.rcode, OptRcode::SERVFAIL, "nothing read yet, so no NXDOMAIN");
    etcd.resume();
    assert_eq!(node.claimed(), "worker1.late.test.");
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
    eventually("worker4 to show", Duration::from_secs(5), || {
        (node.query("worker4.bad.test.", Rtype::A).data() == [second.ip.to_string()]).then_some(())
    });
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
    eventually("the bad key in our zone to be told", Duration::from_secs(5), || {
        ours.log().contains("ignoring etcd key \"worker2.ours.test.\"").then_some(())
    });
    let mut third = Setup::new(&etcd, "ours.test.").start();
    assert_eq!(third.claimed(), "worker3.ours.test.");
    eventually("the newcomer to show", Duration::from_secs(5), || {
        (ours.query("worker3.ours.test.", Rtype::A).data() == [third.ip.to_string()]).then_some(())
    });
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
    eventually("the count of members", Duration::from_secs(5), || {
        node.log().contains("41 members at etcd revision").then_some(())
    });
    assert_eq!(node.log().matches("member joined").count(), 0, "{}", node.log());
    let mut newcomer = setup.start();
    assert_eq!(newcomer.claimed(), "worker42.crowd.test.");
    let joined = format!("member joined: worker42.crowd.test. {}", newcomer.ip);
    eventually("the join", Duration::from_secs(5), || node.log().contains(&joined).then_some(()));
    newcomer.signal(libc::SIGTERM);
    let left = format!("member left: worker42.crowd.test. {}", newcomer.ip);
    eventually("the leave", Duration::from_secs(5), || node.log().contains(&left).then_some(()));
}

#[test]
fn with_watch_changes_show_long_before_the_next_poll() {
    let mut etcd = Etcd::start();
    let setup = Setup { poll: "30s", extra: "        watch\n".into(), ..Setup::new(&etcd, "watch.test.") };
    let mut observer = setup.start();
    assert_eq!(observer.claimed(), "worker1.watch.test.");
    let seen_within = |what: &str, node: &crate::support::Node, name: &str, rcode: OptRcode| {
        let started = Instant::now();
        eventually(what, Duration::from_secs(3), || (node.query(name, Rtype::A).rcode == rcode).then_some(()));
        started.elapsed()
    };

    let mut joiner = setup.start();
    assert_eq!(joiner.claimed(), "worker2.watch.test.");
    seen_within("the join", &observer, "worker2.watch.test.", OptRcode::NOERROR);
    joiner.signal(libc::SIGTERM);
    joiner.wait_exit(Duration::from_secs(5));
    seen_within("the leave", &observer, "worker2.watch.test.", OptRcode::NXDOMAIN);

    // The stream breaks with etcd and is reopened where it left off.
    etcd.stop();
    std::thread::sleep(Duration::from_millis(500));
    etcd.resume();
    let mut late = setup.start();
    assert_eq!(late.claimed(), "worker2.watch.test.");
    let took = seen_within("a join after etcd came back", &observer, "worker2.watch.test.", OptRcode::NOERROR);
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn with_watch_every_change_of_one_transaction_shows() {
    let etcd = Etcd::start();
    let setup = Setup { poll: "30s", extra: "        watch\n".into(), ..Setup::new(&etcd, "batch.test.") };
    let mut observer = setup.start();
    observer.claimed();
    let put = |key: &str, ip: &str| {
        let value = format!(r#"{{"ipv4":"{ip}"}}"#);
        serde_json::json!({ "requestPut": { "key": BASE64.encode(key), "value": BASE64.encode(value) } })
    };
    etcd.post("/v3/kv/txn", serde_json::json!({ "success": [put("worker5.batch.test.", "10.0.0.5"), put("worker6.batch.test.", "10.0.0.6")] }));
    for (name, ip) in [("worker5.batch.test.", "10.0.0.5"), ("worker6.batch.test.", "10.0.0.6")] {
        eventually(name, Duration::from_secs(3), || (observer.query(name, Rtype::A).data() == [ip]).then_some(()));
    }
    // One transaction changing both: both change.
    etcd.post("/v3/kv/txn", serde_json::json!({ "success": [put("worker5.batch.test.", "10.1.0.5"), put("worker6.batch.test.", "10.1.0.6")] }));
    for (name, ip) in [("worker5.batch.test.", "10.1.0.5"), ("worker6.batch.test.", "10.1.0.6")] {
        eventually(name, Duration::from_secs(3), || (observer.query(name, Rtype::A).data() == [ip]).then_some(()));
    }
}
