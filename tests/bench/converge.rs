//! Convergence: how long from a node claiming (or releasing) its name in etcd until another
//! node's DNS answer shows it, with polling and with `watch`; then what a steady load loses while
//! members join and leave and an etcd member fails. Run by `scripts/bench-converge`.
//!
//! Two probes race for each change: one reads the key from etcd in a tight loop (when the claim or
//! release was committed), the other asks the observing node over DNS (when answers show it). The
//! difference is the convergence time; each probe samples every 0.2 ms plus its request time
//! (about 0.5 ms for etcd), which bounds the resolution.

#[path = "../integration/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use domain::base::iana::{OptRcode, Rtype};

use support::{churn, dnsperf, dnsperf_field, endpoints, Etcd, Node, Setup};

/// The load through churn: queries a second, and for how many seconds.
const CHURN_RATE: u32 = 5000;
const CHURN_SECONDS: u32 = 10;

fn main() {
    // `cargo bench` passes flags of its own (`--bench`); the first plain number is ours.
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(50);
    let etcd = Etcd::start();
    println!(
        "convergence over {rounds} joins and {rounds} graceful leaves, from the etcd commit to another node's answer"
    );
    println!("{:<22} {:>10} {:>10} {:>10}", "", "p50", "p99", "max");
    for (label, zone, extra) in [("poll 1s", "poll.conv.", ""), ("poll 1s + watch", "watch.conv.", "        watch\n")] {
        let setup = Setup { poll: "1s", extra: extra.to_string(), ..Setup::new(&etcd, zone) };
        let mut observer = setup.start();
        observer.claimed();
        let name = format!("worker2.{zone}");
        let (mut joins, mut leaves) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // Changes land at random points of the observer's poll cycle, as they do in life,
            // not in step with it.
            std::thread::sleep(jitter(round));
            let mut joiner = setup.start();
            joins.push(race(|| etcd.get(&name).is_some(), || answers(&observer, &name, OptRcode::NOERROR)));
            assert_eq!(joiner.claimed(), name);
            std::thread::sleep(jitter(round + rounds));
            joiner.signal(libc::SIGTERM);
            leaves.push(race(|| etcd.get(&name).is_none(), || answers(&observer, &name, OptRcode::NXDOMAIN)));
            joiner.wait_exit(Duration::from_secs(5));
        }
        report(&format!("{label}, join"), &mut joins);
        report(&format!("{label}, leave"), &mut leaves);
    }
    println!();
    churn_under_load();
}

/// dnsperf asks one node of a 3-member etcd cluster at a steady rate while two nodes join and
/// leave, the etcd member every node talks to is killed, and one more node joins: the queries
/// lost and the response codes. (tests/integration/reliability.rs checks the answers' data.)
fn churn_under_load() {
    let mut members = Etcd::cluster(3);
    let zone = "churn.bench.";
    let setup = Setup { endpoints: endpoints(&members), lease: 5, ..Setup::new(&members[0], zone) };
    let nodes = setup.start_together(2);
    let (first, second) = (format!("worker1.{zone}"), format!("worker2.{zone}"));
    nodes[0].wait_for_address(&second, &nodes[1].ip.to_string());
    let load = dnsperf(&nodes[0], &[&first, &second], CHURN_RATE, CHURN_SECONDS);
    let _late = churn(&setup, &mut members, &nodes[0]);
    let report = load.join().unwrap();
    println!("answers at {CHURN_RATE} q/s for {CHURN_SECONDS} s, through 2 joins, 2 leaves and an etcd member failing");
    for (label, field) in
        [("queries sent", "Queries sent:"), ("queries lost", "Queries lost:"), ("response codes", "Response codes:")]
    {
        let value =
            dnsperf_field(&report, field).unwrap_or_else(|| panic!("no {field:?} in dnsperf's report:\n{report}"));
        println!("{label:<22} {value}");
    }
}

/// A spread of delays over one poll interval, the same in every run.
fn jitter(i: usize) -> Duration {
    Duration::from_millis((i as u64 * 617) % 1000)
}

fn answers(node: &Node, name: &str, rcode: OptRcode) -> bool {
    node.try_query(support::Transport::Udp, &support::Query::new(name, Rtype::A)).is_some_and(|a| a.rcode == rcode)
}

/// The time from `committed` first holding to `visible` first holding, both probed concurrently.
fn race(committed: impl Fn() -> bool + Send, visible: impl Fn() -> bool + Send) -> Duration {
    let (at_etcd, at_dns) = std::thread::scope(|s| {
        let etcd = s.spawn(|| first(committed));
        let dns = s.spawn(|| first(visible));
        (etcd.join().unwrap(), dns.join().unwrap())
    });
    at_dns.saturating_duration_since(at_etcd)
}

fn first(check: impl Fn() -> bool) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if check() {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "no change within 20 s");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn report(label: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    println!("{label:<22} {:>10} {:>10} {:>10}", ms(at(0.5)), ms(at(0.99)), ms(samples[samples.len() - 1]));
}
