//! Signals: SIGHUP and SIGUSR1 read the Corefile again, SIGTERM, SIGINT and SIGQUIT release the
//! name and stop.

use std::time::Duration;

use domain::base::iana::{OptRcode, Rtype};

use crate::support::{eventually, free_port, http_get, Etcd, Node, Setup};

/// The TTL of the node's A answer for `name`.
fn answer_ttl(node: &Node, name: &str) -> u32 {
    let answer = node.query(name, Rtype::A);
    let record = answer.answers.first().unwrap_or_else(|| panic!("no answer for {name}"));
    record.split_whitespace().nth(1).and_then(|ttl| ttl.parse().ok()).expect("a TTL")
}

fn rewrite(node: &Node, from: &str, to: &str) {
    let path = node.corefile_path();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from:?} in\n{text}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn sighup_and_sigusr1_reload_what_may_change_and_refuse_the_rest() {
    let etcd = Etcd::start();
    let mut node = Setup::new(&etcd, "reload.test.").start();
    let name = node.claimed();
    assert_eq!(answer_ttl(&node, &name), 5);

    node.signal(libc::SIGHUP);
    node.wait_for_log("nothing changed");

    rewrite(&node, "ttl 5", "ttl 42");
    node.signal(libc::SIGUSR1);
    eventually("the new TTL", Duration::from_secs(5), || (answer_ttl(&node, &name) == 42).then_some(()));
    assert!(node.log().contains("SIGUSR1: reloaded") && node.log().contains("ttl took effect"), "{}", node.log());

    // A new endpoint needs a restart: refused, naming it, and nothing of that reload applies.
    rewrite(&node, "ttl 42", "ttl 7");
    rewrite(&node, &etcd.url, "http://127.0.0.1:1");
    node.signal(libc::SIGHUP);
    node.wait_for_log("`endpoint` changed, which takes a restart");
    // A Corefile that does not parse changes nothing either.
    std::fs::write(node.corefile_path(), ". {\n  idetcd {\n").unwrap();
    node.signal(libc::SIGHUP);
    node.wait_for_log("reload failed");
    assert!(node.exited().is_none(), "{}", node.log());
    assert_eq!(answer_ttl(&node, &name), 42);
    assert_eq!(node.identity().as_deref(), Some(name.as_str()));
}

#[test]
fn sigquit_releases_the_name_and_exits_0() {
    let etcd = Etcd::start();
    let mut node = Setup::new(&etcd, "quit.test.").start();
    let name = node.claimed();
    node.signal(libc::SIGQUIT);
    assert_eq!(node.wait_exit(Duration::from_secs(5)).code(), Some(0));
    assert!(etcd.get(&name).is_none(), "released at once");
    assert!(node.log().contains("SIGQUIT: releasing the name"), "{}", node.log());
}

/// The status of a GET, or `None` when nothing answers.
fn get(url: &str) -> Option<u16> {
    http_get(url).ok().map(|(status, _)| status)
}

#[test]
fn a_reload_turns_forwarding_logging_and_monitoring_on_moves_and_off() {
    let etcd = Etcd::start();
    let mut upstream = Setup::new(&etcd, "up.test.").start();
    assert_eq!(upstream.claimed(), "worker1.up.test.");
    let mut node = Setup::new(&etcd, "rl.test.").start();
    assert_eq!(node.claimed(), "worker1.rl.test.");
    assert_eq!(node.query("worker1.up.test.", Rtype::A).rcode, OptRcode::REFUSED);

    let (first, second) = (free_port(node.ip), free_port(node.ip));
    let health = |port: u16| format!("http://{}:{port}/health", node.ip);
    rewrite(
        &node,
        "    idetcd {",
        &format!(
            "    forward . {}:{}\n    log\n    health {}:{first}\n    idetcd {{",
            upstream.ip, upstream.port, node.ip
        ),
    );
    node.signal(libc::SIGHUP);
    eventually("/health", Duration::from_secs(5), || (get(&health(first)) == Some(200)).then_some(()));
    node.wait_for_address("worker1.up.test.", &upstream.ip.to_string());
    node.wait_for_log("\"A IN worker1.up.test. udp");
    assert!(node.log().contains("forward, log, health took effect"), "{}", node.log());

    // The health endpoint moves; forwarding and logging go.
    let before = std::fs::read_to_string(node.corefile_path()).unwrap();
    let moved = before
        .replace(&format!("health {}:{first}", node.ip), &format!("health {}:{second}", node.ip))
        .replace(&format!("    forward . {}:{}\n    log\n", upstream.ip, upstream.port), "");
    std::fs::write(node.corefile_path(), moved).unwrap();
    node.signal(libc::SIGUSR1);
    eventually("/health at the new address", Duration::from_secs(5), || {
        (get(&health(second)) == Some(200)).then_some(())
    });
    eventually("the old address closed", Duration::from_secs(5), || get(&health(first)).is_none().then_some(()));
    node.wait_for_rcode("worker1.up.test.", OptRcode::REFUSED);
    // One UDP thread answers both in turn: had the first been logged, its line would be written
    // before the second is answered.
    node.query("worker1.rl.test.", Rtype::A);
    node.query("worker1.rl.test.", Rtype::AAAA);
    assert!(!node.log().contains("\"A IN worker1.rl.test."), "logging is off:\n{}", node.log());
    // Retired threads end quietly (the forwarding one after a second's grace); the daemon goes on.
    eventually("the retired threads to end", Duration::from_secs(5), || {
        (node.log().matches("replaced by a reload, stopped").count() == 2).then_some(())
    });
    assert!(node.exited().is_none(), "{}", node.log());
    assert_eq!(node.identity().as_deref(), Some("worker1.rl.test."));
    node.signal(libc::SIGTERM);
    assert_eq!(node.wait_exit(Duration::from_secs(5)).code(), Some(0), "{}", node.log());
}
