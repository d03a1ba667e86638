//! Talking to etcd safely: TLS with and without client certificates, and etcd users.

use std::time::Duration;

use crate::support::{Etcd, Pki, Setup};

#[test]
fn tls_with_a_client_certificate() {
    let pki = Pki::new();
    let etcd = Etcd::start_tls(pki.clone(), true);
    assert!(etcd.url.starts_with("https://"));
    let files = format!(
        "{} {} {}",
        pki.path("client.crt").display(),
        pki.path("client.key").display(),
        pki.path("ca.crt").display()
    );
    let setup = Setup { extra: format!("        tls {files}\n"), ..Setup::new(&etcd, "tls.test.") };
    let mut first = setup.start();
    assert_eq!(first.claimed(), "worker1.tls.test.");
    let mut second = setup.start();
    assert_eq!(second.claimed(), "worker2.tls.test.");
    first.wait_for_address("worker2.tls.test.", &second.ip.to_string());
    assert!(etcd.get("worker1.tls.test.").is_some());

    // Without its certificate etcd turns the node away, and the node says which directive to fix.
    let ca_only =
        Setup { extra: format!("        tls {}\n", pki.path("ca.crt").display()), ..Setup::new(&etcd, "tls.test.") };
    let mut refused = ca_only.start();
    assert_eq!(refused.wait_exit(Duration::from_secs(5)).code(), Some(1));
    // TLS 1.3 lets etcd's alert arrive after the request went out, or not be read at all.
    let log = refused.log();
    assert!(log.contains("`tls`") && (log.contains("TLS failed") || log.contains("a client certificate")), "{log}");
}

#[test]
fn tls_verifying_the_server_only() {
    let pki = Pki::new();
    let etcd = Etcd::start_tls(pki.clone(), false);
    let setup =
        Setup { extra: format!("        tls {}\n", pki.path("ca.crt").display()), ..Setup::new(&etcd, "tlsca.test.") };
    let mut node = setup.start();
    assert_eq!(node.claimed(), "worker1.tlsca.test.");
    // A CA that did not sign etcd's certificate is not trusted.
    let stranger = Pki::new();
    let distrusting = Setup { extra: format!("        tls {}\n", stranger.path("ca.crt").display()), ..setup.clone() };
    let mut other = distrusting.start();
    assert_eq!(other.wait_exit(Duration::from_secs(5)).code(), Some(1));
    assert!(other.log().contains("TLS failed") && other.log().contains("`tls`"), "{}", other.log());
}

#[test]
fn a_missing_certificate_file_is_a_clear_error() {
    let etcd = Etcd::start();
    let setup = Setup {
        endpoints: etcd.url.replace("http://", "https://"),
        extra: "        tls /nonexistent/ca.pem\n".into(),
        ..Setup::new(&etcd, "nofile.test.")
    };
    let mut node = setup.start();
    assert_eq!(node.wait_exit(Duration::from_secs(5)).code(), Some(1));
    assert!(node.log().contains("tls: cannot read /nonexistent/ca.pem"), "{}", node.log());
}

#[test]
fn an_etcd_user_limited_to_the_pattern_prefix() {
    let mut etcd = Etcd::start();
    etcd.enable_auth("worker");
    let setup = Setup { extra: "        credentials node nodepw\n".into(), ..Setup::new(&etcd, "auth.test.") };
    let mut first = setup.start();
    assert_eq!(first.claimed(), "worker1.auth.test.");
    let mut second = setup.start();
    assert_eq!(second.claimed(), "worker2.auth.test.");
    assert!(!first.log().contains("nodepw"), "the password is never logged");

    // A restarted etcd forgets every token: the nodes get new ones and carry on.
    etcd.stop();
    etcd.resume();
    etcd.login();
    let mut third = setup.start();
    assert_eq!(third.claimed(), "worker3.auth.test.");
    first.wait_for_address("worker3.auth.test.", &third.ip.to_string());
    assert_eq!(first.identity().as_deref(), Some("worker1.auth.test."));

    second.signal(libc::SIGTERM);
    assert_eq!(second.wait_exit(Duration::from_secs(5)).code(), Some(0));
    assert!(etcd.get("worker2.auth.test.").is_none(), "released with the user's own rights");
}

#[test]
fn a_wrong_password_ends_the_daemon() {
    let mut etcd = Etcd::start();
    etcd.enable_auth("worker");
    let mut node =
        Setup { extra: "        credentials node wrong\n".into(), ..Setup::new(&etcd, "badpw.test.") }.start();
    let status = node.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1));
    let log = node.log();
    assert!(log.contains("refused the credentials") && log.contains("authentication failed"), "{log}");
    assert!(!log.contains("wrong"), "the password is never logged:\n{log}");
}

#[test]
fn debug_logs_say_what_the_node_does_and_never_the_password() {
    let mut etcd = Etcd::start();
    etcd.enable_auth("worker");
    let setup =
        Setup { lease: 3, extra: "        credentials node nodepw\n".into(), ..Setup::new(&etcd, "debug.test.") };
    let mut node = setup.start();
    assert_eq!(node.claimed(), "worker1.debug.test.");
    node.wait_for_log("renewed lease");
    let log = node.log();
    let start = log.lines().find(|l| l.contains("INFO") && l.contains("serving")).expect("a start line");
    assert!(start.contains(&node.address().to_string()) && start.contains(&etcd.url), "{start}");
    for said in [
        "configuration from",
        "\"(secret)\"",
        "etcd endpoints",
        "authenticated to etcd",
        "claim: in the queue since revision",
        "claimed worker1.debug.test.",
        "renewed lease",
    ] {
        assert!(log.contains(said), "{said:?} in:\n{log}");
    }
    assert!(!log.contains("nodepw"), "{log}");
}

#[test]
fn with_watch_a_restarted_etcd_gets_a_new_token_and_changes_still_show() {
    let mut etcd = Etcd::start();
    etcd.enable_auth("worker");
    // With no `poll`, only the watch can bring a change.
    let extra = "        credentials node nodepw\n".into();
    let setup = Setup { extra, ..Setup::new(&etcd, "authwatch.test.") };
    let mut observer = setup.start();
    assert_eq!(observer.claimed(), "worker1.authwatch.test.");
    // A restarted etcd forgets every token, the watch's too; it accepts a watch opened with a
    // forgotten token, then cancels it.
    etcd.stop();
    etcd.resume();
    etcd.login();
    let mut joiner = setup.start();
    assert_eq!(joiner.claimed(), "worker2.authwatch.test.");
    observer.wait_for_address("worker2.authwatch.test.", &joiner.ip.to_string());
}
