//! Counters for `/metrics` and the state behind `/health`.
//!
//! These are the one thing threads share besides their messages: plain atomic numbers, so that
//! counting costs the answering path a load and a store and never a lock. Each answering thread
//! has its own block of query counters, which only it writes; the etcd thread writes the rest;
//! the monitoring thread only reads. The `process_*` metrics are read from `/proc/self` when
//! scraped, with the names and meaning the Prometheus client libraries give them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::base::iana::{OptRcode, Rtype};

/// Query types counted by name; the rest count as "other", in the last place.
const TYPES: [Rtype; 8] =
    [Rtype::A, Rtype::AAAA, Rtype::SRV, Rtype::PTR, Rtype::SOA, Rtype::NS, Rtype::TXT, Rtype::ANY];
/// Response codes counted by name; the rest (BADVERS, ...) count as "other", in the last place.
const RCODES: [OptRcode; 6] =
    [OptRcode::NOERROR, OptRcode::FORMERR, OptRcode::SERVFAIL, OptRcode::NXDOMAIN, OptRcode::NOTIMP, OptRcode::REFUSED];
/// Upper bounds of the etcd request duration histogram, in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
/// Upper bounds of the DNS answer time histogram, in nanoseconds: an answer from the snapshot
/// takes microseconds, a forwarded one as long as its upstream.
const DNS_BUCKETS: [u64; 16] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// One answering thread's counts: written by that thread only.
pub struct QueryCounters {
    answered: [[AtomicU64; RCODES.len() + 1]; TYPES.len() + 1],
    forwarded: [AtomicU64; TYPES.len() + 1],
    durations: Durations,
}

impl QueryCounters {
    fn new() -> QueryCounters {
        QueryCounters {
            answered: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            forwarded: std::array::from_fn(|_| AtomicU64::new(0)),
            durations: Durations::default(),
        }
    }

    pub fn answered(&self, qtype: Rtype, rcode: OptRcode) {
        bump(&self.answered[type_index(qtype)][rcode_index(rcode)]);
    }

    pub fn forwarded(&self, qtype: Rtype) {
        bump(&self.forwarded[type_index(qtype)]);
    }

    /// `count` answers sent `took` after their queries were read: a whole batch at once, since
    /// its queries are read by one system call and answered by another.
    pub fn sent(&self, took: Duration, count: u64) {
        let (bucket, nanos) = Durations::place(took);
        add(&self.durations.buckets[bucket], count);
        add(&self.durations.nanos, nanos.saturating_mul(count));
    }
}

/// A histogram of DNS answer times.
#[derive(Default)]
pub struct Durations {
    buckets: [AtomicU64; DNS_BUCKETS.len() + 1],
    /// Their sum, in nanoseconds.
    nanos: AtomicU64,
}

impl Durations {
    /// The bucket a time falls in, and the time in nanoseconds.
    fn place(took: Duration) -> (usize, u64) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        (DNS_BUCKETS.iter().position(|&b| nanos <= b).unwrap_or(DNS_BUCKETS.len()), nanos)
    }

    /// One answer, from any thread: the forwarding threads share one block.
    pub fn observe(&self, took: Duration) {
        let (bucket, nanos) = Durations::place(took);
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.nanos.fetch_add(nanos, Relaxed);
    }
}

/// One writer per counter, so a load and a store do: no locked instruction on the answering path.
fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

fn add(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

fn type_index(qtype: Rtype) -> usize {
    TYPES.iter().position(|t| *t == qtype).unwrap_or(TYPES.len())
}

fn rcode_index(rcode: OptRcode) -> usize {
    RCODES.iter().position(|r| *r == rcode).unwrap_or(RCODES.len())
}

/// The names `/metrics` gives the counted types or codes, then "other".
fn labels<T: Copy>(known: &[T], name: fn(T) -> Option<&'static str>) -> impl Iterator<Item = &'static str> + '_ {
    known.iter().map(move |&k| name(k).unwrap_or("other")).chain(["other"])
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
    /// How long forwarded questions took, from the query read to the answer sent.
    pub forwarded_durations: Durations,
    etcd_requests: [AtomicU64; BUCKETS.len() + 1],
    etcd_seconds_micros: AtomicU64,
    /// Per etcd endpoint tried, in the order first tried: attempts, and those that got no answer.
    /// A failover tries several endpoints for one request.
    etcd_endpoints: Mutex<Vec<(String, u64, u64)>>,
    /// Whether this node holds a name, and whether etcd answered its last request: `/health`.
    pub holds_name: AtomicBool,
    /// Set when this node lost the name it held, until it claims one again: `/health` says so.
    pub name_lost: AtomicBool,
    pub etcd_reachable: AtomicBool,
    /// `/ready`: whether a snapshot of the members was ever built, and until when (nanoseconds on
    /// the boot-time clock, `clock::boottime`) this node holds its name, 0 when it holds none.
    pub snapshot_loaded: AtomicBool,
    pub held_until_nanos: AtomicU64,
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

    /// One attempt at `endpoint`; `answered` is false when it could not be reached.
    pub fn etcd_endpoint(&self, endpoint: &str, answered: bool) {
        let Ok(mut all) = self.etcd_endpoints.lock() else { return };
        let at = match all.iter().position(|(e, _, _)| e == endpoint) {
            Some(at) => at,
            None => {
                all.push((endpoint.to_string(), 0, 0));
                all.len() - 1
            }
        };
        all[at].1 += 1;
        all[at].2 += u64::from(!answered);
    }

    /// `/health` at `now` (`clock::boottime`): healthy when this node holds its name and etcd
    /// answers; otherwise why not, and what follows for the name.
    pub fn health(&self, now: Duration) -> Result<String, String> {
        let unanswered = match self.etcd_reachable.load(Relaxed) {
            true => "",
            false => " (etcd is not answering)",
        };
        let held_for =
            Duration::from_nanos(self.held_until_nanos.load(Relaxed)).checked_sub(now).filter(|d| !d.is_zero());
        match (self.holds_name.load(Relaxed), held_for) {
            // Whichever notices first, the answering threads (by the deadline) or the etcd
            // thread (by a renewal that failed once more), /health says the same.
            (false, _) if self.name_lost.load(Relaxed) && !unanswered.is_empty() => Err(format!(
                "this node lost its name: its lease may have run out unrenewed{unanswered}; it claims one again once etcd answers\n"
            )),
            (false, _) if self.name_lost.load(Relaxed) => {
                Err("this node lost its name: its lease ran out or was revoked; it is claiming one again\n".to_string())
            }
            (false, _) => Err(format!("this node holds no name{unanswered}\n")),
            (true, None) => Err(format!(
                "this node no longer answers for its name: its lease may have run out unrenewed{unanswered}\n"
            )),
            (true, Some(_)) if unanswered.is_empty() => Ok("OK\n".to_string()),
            (true, Some(left)) => Err(format!(
                "etcd is not answering: this node keeps its name {:.0}s more unless its lease is renewed\n",
                left.as_secs_f64().ceil()
            )),
        }
    }

    /// Notes until when this node holds its name (`clock::boottime`), for `/ready`.
    pub fn set_held_until(&self, until: Option<Duration>) {
        let nanos = until.map_or(0, |t| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX));
        self.held_until_nanos.store(nanos, Relaxed);
    }

    /// `/ready` at `now` (`clock::boottime`): ready once the members were read and while this
    /// node holds its name, which it stops doing when its lease may have run out unrenewed, as
    /// the answering threads stop naming themselves.
    pub fn ready(&self, now: Duration) -> Result<String, String> {
        let held = u128::from(self.held_until_nanos.load(Relaxed)) > now.as_nanos();
        match (self.snapshot_loaded.load(Relaxed), held) {
            (true, true) => Ok("OK\n".to_string()),
            (false, _) => Err("the members were not read yet\n".to_string()),
            (true, false) => Err("this node holds no name\n".to_string()),
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
        for (t, type_name) in labels(&TYPES, Rtype::to_mnemonic_str).enumerate() {
            for (r, rcode_name) in labels(&RCODES, OptRcode::to_mnemonic_str).enumerate() {
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
        for (t, type_name) in labels(&TYPES, Rtype::to_mnemonic_str).enumerate() {
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
        let endpoints = self.etcd_endpoints.lock().map(|e| e.clone()).unwrap_or_default();
        for (name, help, value) in [
            (
                "idetcd_etcd_endpoint_requests_total",
                "Requests sent to each etcd endpoint; a failover sends one request to several.",
                (|e: &(String, u64, u64)| e.1) as fn(&(String, u64, u64)) -> u64,
            ),
            ("idetcd_etcd_endpoint_unreachable_total", "Requests each etcd endpoint did not answer.", |e| e.2),
        ] {
            header(&mut out, name, "counter", help);
            for e in &endpoints {
                let _ = writeln!(out, "{name}{{endpoint=\"{}\"}} {}", e.0, value(e));
            }
        }
        histogram(
            &mut out,
            "idetcd_etcd_request_duration_seconds",
            "Time etcd requests took, failed ones included.",
            BUCKETS.iter().copied(),
            |i| self.etcd_requests[i].load(Relaxed),
            self.etcd_seconds_micros.load(Relaxed) as f64 / 1e6,
        );
        let blocks: Vec<&Durations> = all.iter().map(|c| &c.durations).chain([&self.forwarded_durations]).collect();
        histogram(
            &mut out,
            "idetcd_dns_request_duration_seconds",
            "Time from reading a DNS query to sending its answer, forwarded ones included.",
            DNS_BUCKETS.iter().map(|&b| b as f64 / 1e9),
            |i| blocks.iter().map(|d| d.buckets[i].load(Relaxed)).sum(),
            blocks.iter().map(|d| d.nanos.load(Relaxed)).sum::<u64>() as f64 / 1e9,
        );

        header(&mut out, "idetcd_build_info", "gauge", "A metric with a constant '1' value labeled by version.");
        let _ = writeln!(out, "idetcd_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        render_process(&mut out, &process::read());
        out
    }
}

/// The `process_*` metrics, each left out when it could not be read.
fn render_process(out: &mut String, p: &process::Process) {
    let gauges: [(&str, &str, &str, Option<f64>); 6] = [
        ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", p.cpu_seconds),
        ("process_open_fds", "gauge", "Number of open file descriptors.", p.open_fds.map(|n| n as f64)),
        ("process_max_fds", "gauge", "Maximum number of open file descriptors.", p.max_fds.map(|n| n as f64)),
        ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", p.virtual_bytes.map(|n| n as f64)),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            p.resident_bytes.map(|n| n as f64),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        ),
    ];
    for (name, kind, help, value) in gauges {
        if let Some(value) = value {
            header(out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
    }
}

/// What `/proc` says of this process, read when `/metrics` is scraped.
mod process {
    /// `None` for what could not be read.
    #[derive(Debug, Default, PartialEq)]
    pub struct Process {
        pub cpu_seconds: Option<f64>,
        pub resident_bytes: Option<u64>,
        pub virtual_bytes: Option<u64>,
        pub start_time_seconds: Option<f64>,
        pub open_fds: Option<u64>,
        pub max_fds: Option<u64>,
    }

    pub fn read() -> Process {
        let file = |path: &str| std::fs::read_to_string(path).ok();
        let (ticks, page) = crate::sys::ticks_and_page_size();
        let mut p = match file("/proc/self/stat") {
            Some(stat) => from_stat(&stat, ticks as f64, page.max(0) as u64, file("/proc/stat").as_deref()),
            None => Process::default(),
        };
        p.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64);
        p.max_fds = file("/proc/self/limits").as_deref().and_then(max_open_files);
        p
    }

    /// From `/proc/self/stat` (proc(5)), and the boot time in `/proc/stat` for the start time.
    pub fn from_stat(stat: &str, ticks_per_second: f64, page_size: u64, proc_stat: Option<&str>) -> Process {
        // The command name, in parentheses, may hold spaces and parentheses itself: fields count
        // from the last `)`, which ends it; the one after it is field 3, the state.
        let fields: Vec<&str> = stat.rsplit_once(')').map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        let seconds = |t: u64| (ticks_per_second > 0.0).then(|| t as f64 / ticks_per_second);
        let boot_time = proc_stat.and_then(|text| {
            text.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|t| t.trim().parse::<u64>().ok())
        });
        Process {
            cpu_seconds: field(14).zip(field(15)).and_then(|(user, system)| seconds(user + system)),
            virtual_bytes: field(23),
            resident_bytes: field(24).map(|pages| pages * page_size),
            start_time_seconds: field(22)
                .and_then(seconds)
                .zip(boot_time)
                .map(|(since_boot, boot)| boot as f64 + since_boot),
            open_fds: None,
            max_fds: None,
        }
    }

    /// The soft limit on open files from `/proc/self/limits`.
    pub fn max_open_files(limits: &str) -> Option<u64> {
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line["Max open files".len()..].split_whitespace().next()?.parse().ok()
    }
}

/// A histogram in Prometheus' text format: `count(i)` observations in bucket `i` of `bounds`
/// (upper bounds in seconds, then +Inf), written cumulative, with their `sum` in seconds.
fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    bounds: impl Iterator<Item = f64>,
    count: impl Fn(usize) -> u64,
    sum: f64,
) {
    header(out, name, "histogram", help);
    let mut cumulative = 0;
    for (i, bound) in bounds.map(|b| b.to_string()).chain(["+Inf".to_string()]).enumerate() {
        cumulative += count(i);
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
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
        a.answered(Rtype::A, OptRcode::NOERROR);
        a.answered(Rtype::A, OptRcode::NOERROR);
        b.answered(Rtype::A, OptRcode::NOERROR);
        b.answered(Rtype::AAAA, OptRcode::NXDOMAIN);
        b.answered(Rtype::from_int(99), OptRcode::BADVERS);
        a.forwarded(Rtype::A);
        metrics.members.store(5, Relaxed);
        metrics.etcd_request(Duration::from_micros(1500), true);
        metrics.etcd_request(Duration::from_secs(3), false);
        metrics.etcd_endpoint("http://10.0.0.1:2379", true);
        metrics.etcd_endpoint("http://10.0.0.1:2379", false);
        metrics.etcd_endpoint("http://10.0.0.2:2379", true);
        let text = metrics.render();
        for line in [
            "idetcd_dns_queries_total{type=\"A\",rcode=\"NOERROR\"} 3",
            "idetcd_dns_queries_total{type=\"AAAA\",rcode=\"NXDOMAIN\"} 1",
            "idetcd_dns_queries_total{type=\"other\",rcode=\"other\"} 1",
            "idetcd_dns_forwarded_total{type=\"A\"} 1",
            "idetcd_members 5",
            "idetcd_etcd_errors_total 1",
            "idetcd_etcd_endpoint_requests_total{endpoint=\"http://10.0.0.1:2379\"} 2",
            "idetcd_etcd_endpoint_requests_total{endpoint=\"http://10.0.0.2:2379\"} 1",
            "idetcd_etcd_endpoint_unreachable_total{endpoint=\"http://10.0.0.1:2379\"} 1",
            "idetcd_etcd_endpoint_unreachable_total{endpoint=\"http://10.0.0.2:2379\"} 0",
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
    fn answer_times_render_as_one_histogram() {
        let metrics = Metrics::default();
        let (a, b) = (metrics.register(), metrics.register());
        a.sent(Duration::from_micros(7), 3);
        b.sent(Duration::from_micros(30), 1);
        b.sent(Duration::from_secs(2), 1);
        metrics.forwarded_durations.observe(Duration::from_millis(20));
        let text = metrics.render();
        for line in [
            "# TYPE idetcd_dns_request_duration_seconds histogram",
            "idetcd_dns_request_duration_seconds_bucket{le=\"0.00001\"} 3",
            "idetcd_dns_request_duration_seconds_bucket{le=\"0.000025\"} 3",
            "idetcd_dns_request_duration_seconds_bucket{le=\"0.00005\"} 4",
            "idetcd_dns_request_duration_seconds_bucket{le=\"0.025\"} 5",
            "idetcd_dns_request_duration_seconds_bucket{le=\"1\"} 5",
            "idetcd_dns_request_duration_seconds_bucket{le=\"+Inf\"} 6",
            "idetcd_dns_request_duration_seconds_sum 2.020051",
            "idetcd_dns_request_duration_seconds_count 6",
            concat!("idetcd_build_info{version=\"", env!("CARGO_PKG_VERSION"), "\"} 1"),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.lines().any(|l| l.starts_with(&format!("{name} "))), "missing {name} in\n{text}");
        }
    }

    #[test]
    fn process_figures_from_proc() {
        // proc(5): a command name with a space and a parenthesis; utime 250 and stime 50 ticks,
        // started 1000 ticks after boot, 8 MiB virtual, 300 pages resident.
        let stat = "4242 (idet cd)) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 5 0 1000 8388608 300 18446744073709551615";
        let p = process::from_stat(stat, 100.0, 4096, Some("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"));
        assert_eq!(
            p,
            process::Process {
                cpu_seconds: Some(3.0),
                resident_bytes: Some(300 * 4096),
                virtual_bytes: Some(8388608),
                start_time_seconds: Some(1700000010.0),
                open_fds: None,
                max_fds: None,
            }
        );
        assert_eq!(process::from_stat("garbage", 100.0, 4096, None), process::Process::default());
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(process::max_open_files(limits), Some(1024));
        assert_eq!(process::max_open_files("Max open files unlimited unlimited files"), None);
    }

    #[test]
    fn ready_needs_the_members_read_and_a_name() {
        let metrics = Metrics::default();
        let (now, later) = (Duration::from_secs(100), Duration::from_secs(120));
        metrics.set_held_until(Some(later));
        assert_eq!(metrics.ready(now), Err("the members were not read yet\n".to_string()));
        metrics.snapshot_loaded.store(true, Relaxed);
        assert_eq!(metrics.ready(now), Ok("OK\n".to_string()));
        // The lease may have run out unrenewed.
        assert_eq!(metrics.ready(later), Err("this node holds no name\n".to_string()));
        metrics.set_held_until(None);
        assert_eq!(metrics.ready(now), Err("this node holds no name\n".to_string()));
    }

    #[test]
    fn health_needs_a_name_and_etcd_and_says_why_not() {
        let metrics = Metrics::default();
        let (now, later) = (Duration::from_secs(100), Duration::from_secs(120));
        metrics.etcd_request(Duration::from_millis(1), true);
        assert_eq!(metrics.health(now), Err("this node holds no name\n".to_string()));
        metrics.holds_name.store(true, Relaxed);
        metrics.set_held_until(Some(later));
        assert_eq!(metrics.health(now), Ok("OK\n".to_string()));
        metrics.etcd_request(Duration::from_millis(1), false);
        let unrenewed = "etcd is not answering: this node keeps its name 20s more unless its lease is renewed\n";
        assert_eq!(metrics.health(now), Err(unrenewed.to_string()));
        assert_eq!(
            metrics.health(later),
            Err("this node no longer answers for its name: its lease may have run out unrenewed (etcd is not answering)\n"
                .to_string())
        );
        metrics.holds_name.store(false, Relaxed);
        assert_eq!(metrics.health(now), Err("this node holds no name (etcd is not answering)\n".to_string()));
        metrics.name_lost.store(true, Relaxed);
        assert_eq!(
            metrics.health(later),
            Err("this node lost its name: its lease may have run out unrenewed (etcd is not answering); it claims one again once etcd answers\n".to_string())
        );
        metrics.etcd_request(Duration::from_millis(1), true);
        assert_eq!(
            metrics.health(later),
            Err("this node lost its name: its lease ran out or was revoked; it is claiming one again\n".to_string())
        );
    }
}
