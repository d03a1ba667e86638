//! Signals: SIGHUP and SIGUSR1 read the Corefile again, SIGTERM, SIGINT and SIGQUIT release the
//! name and stop.

use std::time::Duration;

use domain::base::iana::Rtype;

use crate::support::{eventually, Etcd, Node, Setup};

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
    eventually("the reload", Duration::from_secs(5), || node.log().contains("nothing changed").then_some(()));

    rewrite(&node, "ttl 5", "ttl 42");
    node.signal(libc::SIGUSR1);
    eventually("the new TTL", Duration::from_secs(5), || (answer_ttl(&node, &name) == 42).then_some(()));
    assert!(node.log().contains("SIGUSR1: reloaded") && node.log().contains("ttl took effect"), "{}", node.log());

    // A new endpoint needs a restart: refused, naming it, and nothing of that reload applies.
    rewrite(&node, "ttl 42", "ttl 7");
    rewrite(&node, &etcd.url, "http://127.0.0.1:1");
    node.signal(libc::SIGHUP);
    eventually("the refusal", Duration::from_secs(5), || {
        node.log().contains("`endpoint` changed, which takes a restart").then_some(())
    });
    // A Corefile that does not parse changes nothing either.
    std::fs::write(node.corefile_path(), ". {\n  idetcd {\n").unwrap();
    node.signal(libc::SIGHUP);
    eventually("the failed reload", Duration::from_secs(5), || node.log().contains("reload failed").then_some(()));
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
