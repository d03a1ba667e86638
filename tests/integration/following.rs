//! Following the members: read once, then the watch stream (the default), or polling. What a
//! stream that breaks, a compaction and a burst of changes come to, and what an idle node asks
//! of etcd.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use domain::base::iana::OptRcode;

use crate::support::{free_port, Etcd, Node, Setup};

fn record(ip: &str) -> String {
    format!(r#"{{"ipv4":"{ip}"}}"#)
}

/// How often the node read every role's key range whole.
fn reads(node: &Node) -> usize {
    node.log().matches("every role's keys at revision").count()
}

/// How often the node opened a watch stream, first or again.
fn watch_opens(node: &Node) -> usize {
    let log = node.log();
    log.matches("etcd watch opened at").count() + log.matches("etcd watch resumed at").count()
}

/// A node of `setup` that holds its name, follows the members on a watch stream, and has read
/// them once.
fn watching(setup: &Setup) -> Node {
    let mut node = setup.start();
    node.claimed();
    node.wait_for_log("etcd watch opened at");
    assert_eq!(reads(&node), 1, "{}", node.log());
    node
}

/// Stops the node's process while etcd restarts, which breaks its watch stream under it, and
/// runs `meanwhile` with etcd back but the node still stopped: what it does cannot reach the
/// node before its stream is open again.
fn break_the_stream(node: &Node, etcd: &mut Etcd, meanwhile: impl FnOnce(&Etcd)) {
    node.signal(libc::SIGSTOP);
    etcd.stop();
    etcd.resume();
    meanwhile(etcd);
    node.signal(libc::SIGCONT);
}

#[test]
fn an_idle_node_asks_etcd_for_nothing_but_keep_alives() {
    let etcd = Etcd::start();
    // Renewed every second, so that a few seconds show the renewals.
    let setup = Setup { lease: 3, ..Setup::new(&etcd, "idle.test.") };
    let _node = watching(&setup);
    let count = || ["Range", "Txn", "Watch", "LeaseKeepAlive"].map(|method| etcd.requests(method));
    let before = count();
    // Letting time pass idle, on purpose.
    std::thread::sleep(Duration::from_secs(4));
    let [ranges, txns, watches, keepalives] = count();
    assert_eq!([ranges, txns, watches], before[..3], "no read, no poll, no new watch: before {before:?}");
    assert!(keepalives >= before[3] + 2, "renewals go on: {} before, {keepalives} after", before[3]);
}

#[test]
fn polling_asks_one_key_and_reads_only_when_the_members_changed() {
    let etcd = Etcd::start();
    // `poll` without `watch` polls only, as it always did.
    let setup = Setup { poll: "100ms", ..Setup::new(&etcd, "polled.test.") };
    let mut node = setup.start();
    node.claimed();
    node.wait_for_log("every role's keys at revision");
    let txns = etcd.requests("Txn");
    let ranges = etcd.requests("Range");
    // Letting a dozen polls pass, on purpose.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(etcd.requests("Txn"), txns, "no range read while nothing changed");
    assert!(etcd.requests("Range") >= ranges + 5, "a one-key read per poll");
    assert!(!node.log().contains("etcd watch"), "no watch: {}", node.log());

    // A change elsewhere in etcd moves the revision: one look at the member ranges, no read.
    etcd.put("unrelated/key", "x");
    crate::support::eventually("a look at the member ranges", crate::support::WAIT, || {
        (etcd.requests("Txn") > txns).then_some(())
    });
    etcd.put("worker7.polled.test.", &record("10.0.0.7"));
    node.wait_for_address("worker7.polled.test.", "10.0.0.7");
    assert_eq!(reads(&node), 2, "one read at start, one for worker7: {}", node.log());
}

#[test]
fn the_watch_resumes_after_etcd_restarts() {
    let mut etcd = Etcd::start();
    let setup = Setup::new(&etcd, "restart.follow.test.");
    let node = watching(&setup);
    etcd.put("worker5.restart.follow.test.", &record("10.0.0.5"));
    node.wait_for_address("worker5.restart.follow.test.", "10.0.0.5");

    etcd.stop();
    node.wait_for_log("cannot open the etcd watch");
    etcd.resume();
    etcd.put("worker6.restart.follow.test.", &record("10.0.0.6"));
    etcd.delete("worker5.restart.follow.test.");
    etcd.put("worker7.restart.follow.test.", &record("10.0.0.7"));
    node.wait_for_address("worker6.restart.follow.test.", "10.0.0.6");
    node.wait_for_address("worker7.restart.follow.test.", "10.0.0.7");
    node.wait_for_rcode("worker5.restart.follow.test.", OptRcode::NXDOMAIN);
    assert_eq!(reads(&node), 1, "followed on, never read again: {}", node.log());
}

#[test]
fn changes_made_while_the_stream_is_broken_show_when_it_resumes_without_a_read() {
    let mut etcd = Etcd::start();
    let setup = Setup::new(&etcd, "broken.test.");
    let node = watching(&setup);
    etcd.put("worker5.broken.test.", &record("10.0.0.5"));
    node.wait_for_address("worker5.broken.test.", "10.0.0.5");

    break_the_stream(&node, &mut etcd, |etcd| {
        etcd.put("worker6.broken.test.", &record("10.0.0.6"));
        etcd.delete("worker5.broken.test.");
        etcd.put("worker6.broken.test.", &record("10.0.1.6"));
    });
    node.wait_for_address("worker6.broken.test.", "10.0.1.6");
    node.wait_for_rcode("worker5.broken.test.", OptRcode::NXDOMAIN);
    assert!(watch_opens(&node) >= 2, "the stream was opened again: {}", node.log());
    assert_eq!(reads(&node), 1, "resumed where it left off, not read again: {}", node.log());
}

#[test]
fn past_a_compaction_the_members_are_read_again_and_nothing_is_missed() {
    let mut etcd = Etcd::start();
    let setup = Setup::new(&etcd, "compacted.test.");
    let node = watching(&setup);
    etcd.put("worker5.compacted.test.", &record("10.0.0.5"));
    node.wait_for_address("worker5.compacted.test.", "10.0.0.5");

    break_the_stream(&node, &mut etcd, |etcd| {
        etcd.put("worker6.compacted.test.", &record("10.0.0.6"));
        etcd.delete("worker5.compacted.test.");
        // The changes the stream would resume from are gone.
        etcd.compact(etcd.revision());
    });
    node.wait_for_log("reading every member again");
    node.wait_for_address("worker6.compacted.test.", "10.0.0.6");
    node.wait_for_rcode("worker5.compacted.test.", OptRcode::NXDOMAIN);
    // And what comes after the read, through the stream that went on from the compaction.
    etcd.put("worker7.compacted.test.", &record("10.0.0.7"));
    node.wait_for_address("worker7.compacted.test.", "10.0.0.7");
    assert_eq!(reads(&node), 2, "{}", node.log());
}

#[test]
fn a_progress_notification_moves_where_the_watch_resumes() {
    let mut etcd = Etcd::start_with(&["--experimental-watch-progress-notify-interval", "500ms"]);
    let setup = Setup::new(&etcd, "progress.test.");
    let node = watching(&setup);
    // Others' changes move etcd's revision past the last member change.
    for i in 0..3 {
        etcd.put(&format!("unrelated/{i}"), "x");
    }
    let revision = etcd.revision();
    node.wait_for_log(&format!("etcd watch progress: role worker at revision {revision}"));

    // Their history gone, the watch resumes after them, from what the notification said.
    break_the_stream(&node, &mut etcd, |etcd| etcd.compact(revision));
    node.wait_for_log(&format!("etcd watch resumed at {} from revision {}", etcd.url, revision + 1));
    etcd.put("worker5.progress.test.", &record("10.0.0.5"));
    node.wait_for_address("worker5.progress.test.", "10.0.0.5");
    assert_eq!(reads(&node), 1, "no read: {}", node.log());
}

#[test]
fn the_changes_of_one_transaction_make_one_update() {
    let etcd = Etcd::start_with(&["--max-txn-ops", "1000"]);
    let setup = Setup { limit: 400, ..Setup::new(&etcd, "burst.test.") };
    let node = watching(&setup);
    let snapshots = || node.log().matches(" a snapshot of ").count();
    let before = snapshots();
    let records: Vec<(String, String)> = (10..310)
        .map(|id| (format!("worker{id}.burst.test."), record(&format!("10.0.{}.{}", id / 256, id % 256))))
        .collect();
    let pairs: Vec<(&str, &str)> = records.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
    etcd.put_all(&pairs);
    for (name, _) in &records {
        let id: u32 = crate::support::id_of(name);
        node.wait_for_address(name, &format!("10.0.{}.{}", id / 256, id % 256));
    }
    assert_eq!(snapshots(), before + 1, "300 members, one snapshot: {}", node.log());
}

#[test]
fn a_reload_switches_between_polling_and_watching() {
    let etcd = Etcd::start();
    // Polling once an hour: within the test, only the watch can bring a change.
    let setup = Setup { poll: "1h", ..Setup::new(&etcd, "switch.test.") };
    let mut node = setup.start();
    node.claimed();
    node.wait_for_log("every role's keys at revision");
    let corefile = std::fs::read_to_string(node.corefile_path()).unwrap();

    std::fs::write(node.corefile_path(), corefile.replace("        poll 1h\n", "")).unwrap();
    node.signal(libc::SIGHUP);
    node.wait_for_log("etcd watch opened at");
    etcd.put("worker5.switch.test.", &record("10.0.0.5"));
    node.wait_for_address("worker5.switch.test.", "10.0.0.5");

    // Back to polling, often now: changes still show, through polls.
    std::fs::write(node.corefile_path(), corefile.replace("poll 1h", "poll 100ms")).unwrap();
    node.signal(libc::SIGHUP);
    crate::support::eventually("the second reload", crate::support::WAIT, || {
        (node.log().matches("poll, watch took effect").count() == 2).then_some(())
    });
    // Polling starts from a read: its change detector needs a view true at one revision, which
    // one the watch was still bringing up to date may not be.
    crate::support::eventually("the read polling starts from", crate::support::WAIT, || {
        (reads(&node) == 2).then_some(())
    });
    etcd.put("worker6.switch.test.", &record("10.0.0.6"));
    node.wait_for_address("worker6.switch.test.", "10.0.0.6");
    assert_eq!(reads(&node), 3, "one read at start, one as polling starts, one by a poll for worker6: {}", node.log());
}

/// A TCP proxy to etcd that can go silent as a network does, without closing anything: once
/// `freeze` is called, the connections open then carry nothing ever again (a partition the far
/// end never saw, a middlebox that forgot them), and new ones carry nothing until `thaw`.
struct Proxy {
    url: String,
    state: Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    frozen: AtomicBool,
    /// Connections numbered below this are dead for good.
    dead_below: AtomicU64,
    next: AtomicU64,
    stopped: AtomicBool,
}

impl Proxy {
    fn to(etcd: &Etcd) -> Proxy {
        let ip = Ipv4Addr::LOCALHOST;
        let listener = TcpListener::bind((ip, free_port(ip))).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let target: SocketAddr = etcd.url.trim_start_matches("http://").parse().unwrap();
        let state = Arc::new(ProxyState::default());
        let shared = Arc::clone(&state);
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !shared.stopped.load(Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let Ok(server) = TcpStream::connect(target) else { continue };
                let n = shared.next.fetch_add(1, Relaxed);
                client.set_nonblocking(false).unwrap();
                for (from, to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    let shared = Arc::clone(&shared);
                    std::thread::spawn(move || pump(from, to, n, &shared));
                }
            }
        });
        Proxy { url, state }
    }

    fn freeze(&self) {
        self.state.frozen.store(true, Relaxed);
        self.state.dead_below.store(self.state.next.load(Relaxed), Relaxed);
    }

    fn thaw(&self) {
        self.state.frozen.store(false, Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Relaxed);
    }
}

/// Carries bytes one way on connection `n`, or swallows them while it is silent.
fn pump(mut from: TcpStream, mut to: TcpStream, n: u64, state: &ProxyState) {
    from.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = [0u8; 16 << 10];
    while !state.stopped.load(Relaxed) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(len) => {
                let silent = state.frozen.load(Relaxed) || n < state.dead_below.load(Relaxed);
                if !silent && to.write_all(&buf[..len]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[test]
fn a_watch_on_a_connection_gone_silent_is_restarted_once_renewals_get_through_again() {
    let etcd = Etcd::start();
    let proxy = Proxy::to(&etcd);
    // Renewed every 3 s, each renewal waiting 2.25 s at most: one fails well within the lease.
    // Without `autosync off`, the node would read etcd's own URL from its member list, and use it.
    let extra = "        autosync off\n".to_string();
    let setup = Setup { endpoints: proxy.url.clone(), lease: 9, extra, ..Setup::new(&etcd, "silent.test.") };
    let node = watching(&setup);
    etcd.put("worker5.silent.test.", &record("10.0.0.5"));
    node.wait_for_address("worker5.silent.test.", "10.0.0.5");

    proxy.freeze();
    node.wait_for_log("cannot renew the lease");
    etcd.put("worker6.silent.test.", &record("10.0.0.6"));
    proxy.thaw();
    // The old stream would stay silent for a minute before it is given up.
    node.wait_for_address("worker6.silent.test.", "10.0.0.6");
    assert!(node.log().contains("restarting the etcd watch"), "{}", node.log());
    assert_eq!(reads(&node), 1, "restarted where the members were, not read again: {}", node.log());
}

#[test]
fn a_watch_left_on_an_endpoint_gone_silent_follows_the_renewals_to_the_next() {
    let etcd = Etcd::start();
    let (a, b) = (Proxy::to(&etcd), Proxy::to(&etcd));
    let endpoints = format!("{} {}", a.url, b.url);
    let extra = "        autosync off\n".to_string();
    let setup = Setup { endpoints, lease: 9, extra, ..Setup::new(&etcd, "moved.test.") };
    let node = watching(&setup);
    // The node spread to one of the two.
    let (first, second) = match node.log().contains(&format!("etcd watch opened at {}", a.url)) {
        true => (a, b),
        false => (b, a),
    };
    assert!(node.log().contains(&format!("etcd watch opened at {}", first.url)), "{}", node.log());

    first.freeze();
    etcd.put("worker6.moved.test.", &record("10.0.0.6"));
    node.wait_for_address("worker6.moved.test.", "10.0.0.6");
    assert!(node.log().contains(&format!("restarting the etcd watch at {}", second.url)), "{}", node.log());
    assert_eq!(reads(&node), 1, "{}", node.log());
}
