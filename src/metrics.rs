//! Counters for `/metrics` and the state behind `/health`.
//!
//! These are the one thing threads share besides their messages: plain atomic numbers, so that
//! counting costs the answering path a load and a store and never a lock. Each answering thread
//! has its own block of query counters, which only it writes; the etcd thread writes the rest;
//! the monitoring thread only reads.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Query types counted by name; the rest count as "other".
const TYPES: [(u16, &str); 9] =
    [(1, "A"), (28, "AAAA"), (33, "SRV"), (12, "PTR"), (6, "SOA"), (2, "NS"), (16, "TXT"), (255, "ANY"), (0, "other")];
/// Response codes counted by name; the rest (BADVERS, ...) count as "other".
const RCODES: [(u16, &str); 7] = [
    (0, "NOERROR"),
    (1, "FORMERR"),
    (2, "SERVFAIL"),
    (3, "NXDOMAIN"),
    (4, "NOTIMP"),
    (5, "REFUSED"),
    (u16::MAX, "other"),
];
/// Upper bounds of the etcd request duration histogram, in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// One answering thread's counts: written by that thread only.
pub struct QueryCounters {
    answered: [[AtomicU64; RCODES.len()]; TYPES.len()],
    forwarded: [AtomicU64; TYPES.len()],
}

impl QueryCounters {
    fn new() -> QueryCounters {
        QueryCounters {
            answered: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            forwarded: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    pub fn answered(&self, qtype: u16, rcode: u16) {
        bump(&self.answered[type_index(qtype)][rcode_index(rcode)]);
    }

    pub fn forwarded(&self, qtype: u16) {
        bump(&self.forwarded[type_index(qtype)]);
    }
}

/// One writer per counter, so a load and a store do: no locked instruction on the answering path.
fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Relaxed) + 1, Relaxed);
}

fn type_index(qtype: u16) -> usize {
    TYPES.iter().position(|(t, _)| *t == qtype).unwrap_or(TYPES.len() - 1)
}

fn rcode_index(rcode: u16) -> usize {
    RCODES.iter().position(|(r, _)| *r == rcode).unwrap_or(RCODES.len() - 1)
}

#[derive(Default)]
pub struct Metrics {
    /// Every answering thread's counters, registered before the threads start.
    queries: Mutex<Vec<Arc<QueryCounters>>>,
    pub members: AtomicU64,
    pub claims: AtomicU64,
    pub renewals: AtomicU64,
    pub lease_losses: AtomicU64,
    pub etcd_errors: AtomicU64,
    /// Forwarded questions answered SERVFAIL because too many were waiting or in flight.
    pub forward_dropped: AtomicU64,
    /// Forwarded questions no upstream server answered.
    pub forward_failures: AtomicU64,
    etcd_requests: [AtomicU64; BUCKETS.len() + 1],
    etcd_seconds_micros: AtomicU64,
    /// Whether this node holds a name, and whether etcd answered its last request: `/health`.
    pub holds_name: AtomicBool,
    pub etcd_reachable: AtomicBool,
}

impl Metrics {
    /// A block of query counters for one answering thread.
    pub fn register(&self) -> Arc<QueryCounters> {
        let counters = Arc::new(QueryCounters::new());
        if let Ok(mut all) = self.queries.lock() {
            all.push(Arc::clone(&counters));
        }
        counters
    }

    /// One etcd request and how long it took; `ok` is false when it failed.
    pub fn etcd_request(&self, took: Duration, ok: bool) {
        let seconds = took.as_secs_f64();
        let bucket = BUCKETS.iter().position(|&b| seconds <= b).unwrap_or(BUCKETS.len());
        self.etcd_requests[bucket].fetch_add(1, Relaxed);
        self.etcd_seconds_micros.fetch_add(took.as_micros() as u64, Relaxed);
        if !ok {
            self.etcd_errors.fetch_add(1, Relaxed);
        }
        self.etcd_reachable.store(ok, Relaxed);
    }

    /// `/health`: healthy when this node holds its name and etcd answers.
    pub fn health(&self) -> Result<String, String> {
        match (self.holds_name.load(Relaxed), self.etcd_reachable.load(Relaxed)) {
            (true, true) => Ok("OK\n".to_string()),
            (false, _) => Err("this node holds no name\n".to_string()),
            (true, false) => Err("etcd is not answering\n".to_string()),
        }
    }

    /// `/metrics` in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let all = self.queries.lock().map(|q| q.clone()).unwrap_or_default();
        let total = |f: &dyn Fn(&QueryCounters) -> &AtomicU64| all.iter().map(|c| f(c).load(Relaxed)).sum::<u64>();
        header(
            &mut out,
            "idetcd_dns_queries_total",
            "counter",
            "DNS queries answered, by query type and response code.",
        );
        for (t, (_, type_name)) in TYPES.iter().enumerate() {
            for (r, (_, rcode_name)) in RCODES.iter().enumerate() {
                let n = total(&|c| &c.answered[t][r]);
                if n > 0 {
                    let _ =
                        writeln!(out, "idetcd_dns_queries_total{{type=\"{type_name}\",rcode=\"{rcode_name}\"}} {n}");
                }
            }
        }
        header(
            &mut out,
            "idetcd_dns_forwarded_total",
            "counter",
            "DNS queries handed to the upstream servers, by query type.",
        );
        for (t, (_, type_name)) in TYPES.iter().enumerate() {
            let n = total(&|c| &c.forwarded[t]);
            if n > 0 {
                let _ = writeln!(out, "idetcd_dns_forwarded_total{{type=\"{type_name}\"}} {n}");
            }
        }
        for (name, kind, help, value) in [
            ("idetcd_members", "gauge", "Members in the last snapshot.", self.members.load(Relaxed)),
            (
                "idetcd_name_held",
                "gauge",
                "1 while this node holds its name.",
                u64::from(self.holds_name.load(Relaxed)),
            ),
            ("idetcd_claims_total", "counter", "Names claimed.", self.claims.load(Relaxed)),
            (
                "idetcd_lease_renewals_total",
                "counter",
                "Lease keep-alives that succeeded.",
                self.renewals.load(Relaxed),
            ),
            (
                "idetcd_lease_losses_total",
                "counter",
                "Leases found gone or names found taken.",
                self.lease_losses.load(Relaxed),
            ),
            ("idetcd_etcd_errors_total", "counter", "etcd requests that failed.", self.etcd_errors.load(Relaxed)),
            (
                "idetcd_forward_dropped_total",
                "counter",
                "Questions answered SERVFAIL because too many were waiting for upstream servers.",
                self.forward_dropped.load(Relaxed),
            ),
            (
                "idetcd_forward_failures_total",
                "counter",
                "Questions no upstream server answered.",
                self.forward_failures.load(Relaxed),
            ),
        ] {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        let histogram = "idetcd_etcd_request_duration_seconds";
        header(&mut out, histogram, "histogram", "Time etcd requests took, failed ones included.");
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().map(|b| b.to_string()).chain(["+Inf".to_string()]).enumerate() {
            cumulative += self.etcd_requests[i].load(Relaxed);
            let _ = writeln!(out, "{histogram}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let seconds = self.etcd_seconds_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{histogram}_sum {seconds}\n{histogram}_count {cumulative}");
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_in_prometheus_format() {
        let metrics = Metrics::default();
        let (a, b) = (metrics.register(), metrics.register());
        a.answered(1, 0);
        a.answered(1, 0);
        b.answered(1, 0);
        b.answered(28, 3);
        b.answered(99, 16);
        a.forwarded(1);
        metrics.members.store(5, Relaxed);
        metrics.etcd_request(Duration::from_micros(1500), true);
        metrics.etcd_request(Duration::from_secs(3), false);
        let text = metrics.render();
        for line in [
            "idetcd_dns_queries_total{type=\"A\",rcode=\"NOERROR\"} 3",
            "idetcd_dns_queries_total{type=\"AAAA\",rcode=\"NXDOMAIN\"} 1",
            "idetcd_dns_queries_total{type=\"other\",rcode=\"other\"} 1",
            "idetcd_dns_forwarded_total{type=\"A\"} 1",
            "idetcd_members 5",
            "idetcd_etcd_errors_total 1",
            "idetcd_etcd_request_duration_seconds_bucket{le=\"0.001\"} 0",
            "idetcd_etcd_request_duration_seconds_bucket{le=\"0.0025\"} 1",
            "idetcd_etcd_request_duration_seconds_bucket{le=\"+Inf\"} 2",
            "idetcd_etcd_request_duration_seconds_count 2",
            "# TYPE idetcd_dns_queries_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn health_needs_a_name_and_etcd() {
        let metrics = Metrics::default();
        assert!(metrics.health().is_err());
        metrics.holds_name.store(true, Relaxed);
        metrics.etcd_request(Duration::from_millis(1), true);
        assert_eq!(metrics.health(), Ok("OK\n".to_string()));
        metrics.etcd_request(Duration::from_millis(1), false);
        assert_eq!(metrics.health(), Err("etcd is not answering\n".to_string()));
    }
}
