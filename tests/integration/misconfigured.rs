//! A Corefile that does not fit its etcd: the node says which directive to change and exits at
//! start, instead of retrying forever as if etcd were down; once serving, it warns and answers on.

use std::time::Duration;

use domain::base::iana::Rtype;

use crate::support::{Etcd, Pki, Setup};

/// Starts a node that must give up at once, and returns its log.
fn refused_at_start(setup: &Setup) -> String {
    let mut node = setup.start();
    let status = node.wait_exit(Duration::from_secs(5));
    let log = node.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(node.identity().is_none());
    log
}

/// The error the daemon ended with, checked to be said once.
fn last_word(log: &str) -> &str {
    let line = log.lines().find(|l| l.starts_with("idetcd: error: ")).unwrap_or_else(|| panic!("no error in:\n{log}"));
    let message = line.trim_start_matches("idetcd: error: ");
    // Tests run at debug level, which may say more; at info and above it is said once.
    let said = log.lines().filter(|l| !l.contains(" DEBUG]") && l.contains(message)).count();
    assert_eq!(said, 1, "the error is printed once:\n{log}");
    message
}

#[test]
fn credentials_for_an_etcd_without_authentication() {
    let etcd = Etcd::start();
    let setup = Setup { extra: "        credentials node nodepw\n".into(), ..Setup::new(&etcd, "noauth.test.") };
    let log = refused_at_start(&setup);
    let error = last_word(&log);
    assert!(error.contains("authentication is not enabled") && error.contains("`credentials`"), "{log}");
    assert!(!log.contains("nodepw"), "{log}");
}

#[test]
fn no_credentials_for_an_etcd_with_authentication() {
    let mut etcd = Etcd::start();
    etcd.enable_auth("worker");
    let log = refused_at_start(&Setup::new(&etcd, "needauth.test."));
    let error = last_word(&log);
    assert!(error.contains("add `credentials USER PASSWORD`"), "{log}");
}

#[test]
fn urls_that_are_not_etcd_client_urls() {
    let etcd = Etcd::start();
    for (endpoint, says) in [
        (etcd.peer.clone(), "not an etcd 3.4+ client URL"),
        (format!("{}/v3", etcd.url), "not an etcd 3.4+ client URL"),
        (etcd.url.replace("http://", "https://"), "it speaks plain HTTP, not TLS"),
    ] {
        let setup = Setup { endpoints: endpoint.clone(), ..Setup::new(&etcd, "wrongurl.test.") };
        let log = refused_at_start(&setup);
        let error = last_word(&log);
        assert!(
            error.contains(says) && error.contains("`endpoint`") && error.contains(&endpoint),
            "{endpoint}:\n{log}"
        );
    }
}

#[test]
fn plain_http_to_an_etcd_that_speaks_only_tls() {
    let etcd = Etcd::start_tls(Pki::new(), false);
    let setup = Setup { endpoints: etcd.url.replace("https://", "http://"), ..Setup::new(&etcd, "plain.test.") };
    let error = refused_at_start(&setup);
    assert!(error.contains("it speaks TLS: write the endpoint with https://"), "{error}");
}

#[test]
fn once_serving_the_same_errors_are_warnings_and_answers_go_on() {
    let mut etcd = Etcd::start();
    // Polling: the next poll is refused. Following by the watch, see the test below.
    let setup = Setup { poll: "100ms", ..Setup::new(&etcd, "later.test.") };
    let mut node = setup.start();
    let name = node.claimed();
    // Authentication turned on under a running node: every request of it is refused from now on.
    etcd.enable_auth("worker");
    // A warning naming credentials.
    node.wait_for_log("add `credentials USER PASSWORD`");
    assert!(node.exited().is_none(), "{}", node.log());
    assert_eq!(node.query(&name, Rtype::A).data(), [node.ip.to_string()]);
}

/// A watch stream opened before authentication goes on (and etcd 3.4 renews leases without a
/// user); once it breaks, every attempt to reopen it is refused. The node must say so, as a
/// refused poll does, not retry in silence while changes no longer show.
#[test]
fn a_refused_watch_is_a_warning_and_answers_go_on() {
    let mut etcd = Etcd::start();
    let setup = Setup::new(&etcd, "watchauth.test.");
    let mut node = setup.start();
    let name = node.claimed();
    node.wait_for_log("etcd watch opened at");
    etcd.enable_auth("worker");
    // A restart breaks the stream; the one reopened is refused.
    etcd.stop();
    etcd.resume();
    node.wait_for_log("add `credentials USER PASSWORD`");
    assert!(node.exited().is_none(), "{}", node.log());
    assert_eq!(node.query(&name, Rtype::A).data(), [node.ip.to_string()]);
}

#[test]
fn one_endpoint_that_does_not_fit_leaves_the_others_to_serve() {
    let etcd = Etcd::start();
    for bad in [etcd.peer.clone(), etcd.url.replace("http://", "https://")] {
        let setup = Setup { endpoints: format!("{bad},{}", etcd.url), ..Setup::new(&etcd, "onebad.test.") };
        let mut node = setup.start();
        assert_eq!(node.claimed(), "worker1.onebad.test.", "{bad}");
        assert!(node.log().contains("trying the other endpoints") && node.log().contains(&bad), "{}", node.log());
        node.signal(libc::SIGTERM);
        assert_eq!(node.wait_exit(Duration::from_secs(5)).code(), Some(0));
    }
}
