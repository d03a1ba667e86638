//! The soak (`scripts/soak [MINUTES] [SEED]`, or `cargo test --test lab -- soak MINUTES [SEED]`):
//! the lab with 20 nodes under random churn for MINUTES, with dnsperf's load and two checkers
//! running throughout, then the figures and the verdict.
//!
//! - Churn, on hosts 5 to 20 (hosts 1 to 4 are steady: churn never touches them): SIGTERM,
//!   SIGKILL, start again, a host cut off from the three etcd members (blackhole routes) and
//!   healed 1 to 20 s later, a host's link down and up again 1 to 12 s later. Every choice comes
//!   from the seed, so that a seed gives the same sequence of steps at the same planned times.
//! - Load: dnsperf from the client namespace, 125 questions a second to each steady node for the
//!   whole time, over every name; its lost questions are figures, not checks.
//! - The fencing checker (fencing.rs) on every host, every 50 ms.
//! - The answer checker (below) on every host, every 50 ms.
//!
//! At the end churn stops, every fault is healed and every node started, and the soak passes
//! when:
//! - every node holds the name etcd holds for its address, and answers every name as etcd holds
//!   it (`faults::all_agree`);
//! - no answer was wrong: an answer naming an address (or NXDOMAIN) that etcd's reads did not
//!   show for the name at any time from 2 s before the question to the read after the answer
//!   (for a host under a fault, or within 10 s of its healing, from 2 s before the fault began),
//!   or any rcode but NOERROR with addresses, NXDOMAIN and SERVFAIL (a node before its first
//!   read; counted apart), or NOERROR without an address (see `judge`);
//! - the fencing checker counted no violation;
//! - no node ended on its own (but one started with its link down, which finds no address to
//!   publish and says so), or otherwise than its signal says (SIGTERM: exit 0);
//! - each steady node is the process it was, its RSS (`VmRSS`) at the end within 10% of its RSS
//!   60 s into the churn, and its threads (`/proc/PID/task`) and open descriptors
//!   (`/proc/PID/fd`) at the end no more than then.
//!
//! dnsperf's lost questions, the SERVFAIL and unanswered counts, and how long healed hosts
//! answered from what they held before are figures. A failed soak keeps every node process's
//! log, etcd's and the churn's steps, and says where.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use domain::base::iana::{OptRcode, Rtype};

use crate::faults::all_agree;
use crate::fencing::{ask_each, Checker, Counts, EtcdReader, Holders};
use crate::lab::{self, Lab, ZONE};
use crate::support::{arbitrary, dnsperf, dnsperf_field, within, Answer, Node, Query};

const NODES: usize = 20;
/// Hosts `0..STEADY` run one process each from start to end: the memory, thread and descriptor
/// checks are theirs, and so is dnsperf's load.
const STEADY: usize = 4;
/// dnsperf's questions a second, over all steady nodes.
const LOAD: u32 = 500;
/// At most this many churned hosts stopped (or stopping) at once, and this many cut off.
const MAX_DOWN: usize = 5;
const MAX_FAULTS: usize = 3;
/// The baseline of the memory, thread and descriptor checks, after the nodes settled in.
const BASELINE_AFTER: Duration = Duration::from_secs(60);
/// RSS at the end may differ from the baseline by this fraction at most.
const RSS_WITHIN: f64 = 0.10;

/// How long a node that reaches etcd may take to answer a change it made: the watch brings it
/// in milliseconds; this is for a loaded machine (20 debug-built nodes on two cores).
const LAG: Duration = Duration::from_secs(2);
/// How long after a fault healed a node may still answer from what it held before: its retry
/// backoff (at most 5 s), a request that was under way when the fault began (a quarter of the
/// lease), the read or the watch that follows, and `LAG`.
const CATCH_UP: Duration = Duration::from_secs(10);
/// How often the answer checker asks every host.
const EVERY: Duration = Duration::from_millis(50);

pub fn run(args: &[String]) {
    let usage = || -> ! {
        eprintln!("usage: scripts/soak [MINUTES] [SEED]   (MINUTES: 2 or more, default 2; SEED: a number)");
        std::process::exit(2);
    };
    let minutes: u64 = match args.first().map(|m| m.parse()) {
        None => 2,
        Some(Ok(m)) if m >= 2 => m,
        Some(_) => usage(),
    };
    let seed: u64 = match args.get(1).map(|s| s.parse()) {
        None => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            arbitrary(now.as_nanos() as u64) % 1_000_000_000
        }
        Some(Ok(seed)) => seed,
        Some(Err(_)) => usage(),
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("error: the soak makes network namespaces, which needs root: run scripts/soak as root");
        std::process::exit(1);
    }
    // Ctrl-C and SIGTERM end the churn early, so that the lab is still removed.
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [libc::SIGINT, libc::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&interrupted)).expect("a signal handler");
    }
    lab::note_machine_netns();
    println!("soak: {minutes} minutes, seed {seed} (scripts/soak {minutes} {seed} makes the same churn)");
    // A thread of its own joins the client namespace: the main thread stays in the machine's, so
    // that the teardown, which kills what runs in the lab's namespaces, does not reach this process.
    let soak = std::thread::Builder::new().name("soak".into()).spawn(move || soak(minutes, seed, &interrupted));
    match soak.expect("the soak's thread").join() {
        Ok(Verdict::Passed) => println!("\nsoak: passed"),
        Ok(Verdict::Failed(failures)) => {
            println!("\nsoak: FAILED:");
            for failure in failures {
                println!("  - {failure}");
            }
            std::process::exit(1);
        }
        Ok(Verdict::Interrupted) => {
            println!("\nsoak: interrupted, the lab removed");
            std::process::exit(130);
        }
        Err(_) => {
            println!("\nsoak: FAILED (see the panic above)");
            std::process::exit(1);
        }
    }
}

enum Verdict {
    Passed,
    Failed(Vec<String>),
    Interrupted,
}

fn soak(minutes: u64, seed: u64, interrupted: &AtomicBool) -> Verdict {
    let mut lab = Lab::new(NODES);
    for i in 0..NODES {
        lab.start(i);
    }
    for i in 0..NODES {
        lab.node(i).claimed();
    }
    // Nodes that start together follow the others only once the claims queued behind them are
    // done (up to 10 s): the checkers begin once every node answers every name.
    let mut failures = settled(&lab);
    let endpoints: Vec<String> = lab.etcd.iter().map(|m| m.url.clone()).collect();
    let hosts: Vec<Ipv4Addr> = (0..NODES).map(lab::node_ip).collect();
    let spans = Arc::new(Mutex::new(vec![Span::default(); NODES]));
    let checking = Instant::now();
    let fencing = Checker::start(hosts.clone(), endpoints.clone());
    let answers = AnswerChecker::start(hosts, endpoints.clone(), Arc::clone(&spans));
    let names: Vec<String> = (1..=NODES).map(|id| format!("node{id}.{ZONE}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let seconds = u32::try_from(minutes * 60).unwrap_or(u32::MAX);
    let load: Vec<JoinHandle<String>> =
        (0..STEADY).map(|i| dnsperf(lab.node(i), &names, LOAD / STEADY as u32, seconds)).collect();
    let steady: Vec<u32> = (0..STEADY).map(|i| lab.node(i).pid()).collect();
    let usage = UsageWatch::start(steady.clone(), Instant::now() + BASELINE_AFTER);
    println!("soak: {NODES} nodes hold a name; churn begins on hosts {} to {NODES}", STEADY + 1);

    let logs = Logs::new();
    let mut churn = Churn::new(&mut lab, seed, spans, &logs);
    let started = Instant::now();
    let mut plan = Duration::ZERO;
    while plan < Duration::from_secs(minutes * 60) && !interrupted.load(Ordering::Relaxed) {
        plan += churn.dice.duration(300..=2000);
        while Instant::now() < started + plan && !interrupted.load(Ordering::Relaxed) {
            std::thread::sleep((started + plan).saturating_duration_since(Instant::now()).min(EVERY));
        }
        churn.step(plan);
    }
    if interrupted.load(Ordering::Relaxed) {
        let _ = fs::remove_dir_all(&logs.dir);
        return Verdict::Interrupted;
    }
    println!("soak: churn over after {:.0} s; healing, starting every node", started.elapsed().as_secs_f64());
    churn.settle();
    let churned = churn.counts;
    failures.extend(churn.failures);
    failures.extend(settled(&lab));
    for (i, node) in lab.running() {
        logs.node(i, node, "still running at the end");
    }
    for (i, member) in lab.etcd.iter().enumerate() {
        let _ = fs::write(logs.dir.join(format!("etcd{}.log", i + 1)), member.log());
    }

    let baseline = usage.finish();
    let end: Vec<Option<Usage>> = steady.iter().map(|pid| Usage::of(*pid)).collect();
    let fenced = fencing.finish();
    let answered = answers.finish();
    let checked = checking.elapsed();
    let reports: Vec<String> = load.into_iter().map(|l| l.join().unwrap_or_default()).collect();
    for (i, pid) in steady.iter().enumerate() {
        if lab.nodes[i].as_ref().map(Node::pid) != Some(*pid) {
            failures.push(format!("steady node {} is no longer the process it was (PID {pid})", i + 1));
        }
    }

    let mut figures = String::new();
    let _ = writeln!(figures, "\nsoak figures: {minutes} minutes, seed {seed}, {NODES} nodes ({STEADY} steady)");
    let _ = writeln!(figures, "  churn      {churned}");
    fencing_figures(&mut figures, &fenced, checked, &mut failures);
    answer_figures(&mut figures, &answered, checked, &mut failures);
    dnsperf_figures(&mut figures, &reports);
    usage_figures(&mut figures, &baseline, &end, &mut failures);
    println!("{figures}");
    drop(lab);
    if failures.is_empty() {
        let _ = fs::remove_dir_all(&logs.dir);
        Verdict::Passed
    } else {
        failures
            .push(format!("the logs of every node process, of etcd and of the churn are in {}", logs.dir.display()));
        Verdict::Failed(failures)
    }
}

/// Waits until every node names itself, with the name etcd holds for its address, then until
/// every node answers every name as etcd holds it; what did not come is a failure.
fn settled(lab: &Lab) -> Vec<String> {
    let etcd = EtcdReader::new(lab.etcd.iter().map(|m| m.url.clone()).collect());
    let agreed = within(Duration::from_secs(30), || {
        let holders = etcd.holders()?;
        let named = lab.running().all(|(i, node)| {
            node.identity().is_some_and(|name| holders.get(&name).is_some_and(|h| h.ip == Some(lab::node_ip(i))))
        });
        (named && holders.len() == lab.running().count()).then_some(holders)
    });
    let Some(holders) = agreed else {
        let names: Vec<String> = lab.running().map(|(i, node)| format!("{}: {:?}", i + 1, node.identity())).collect();
        return vec![format!("the nodes did not all come to hold a name etcd agrees with: {names:?}")];
    };
    let holders: BTreeMap<String, Ipv4Addr> =
        holders.into_iter().filter_map(|(name, holder)| Some((name, holder.ip?))).collect();
    // all_agree fails the test by panicking: a panic here is a failure like the others.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| all_agree(lab, &holders))) {
        Ok(()) => {
            println!("soak: every node answers every name as etcd holds it");
            Vec::new()
        }
        Err(_) => vec!["the nodes did not all come to answer every name as etcd holds it (see the panic)".into()],
    }
}

// ---------------------------------------------------------------------------------------------
// Churn

/// Arbitrary but repeatable numbers for one seed (see `support::arbitrary`).
struct Dice {
    seed: u64,
    rolls: u64,
}

impl Dice {
    fn next(&mut self) -> u64 {
        self.rolls += 1;
        arbitrary(self.seed ^ arbitrary(self.rolls))
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick(&mut self, from: &[usize]) -> usize {
        from[self.below(from.len())]
    }

    fn duration(&mut self, millis: std::ops::RangeInclusive<u64>) -> Duration {
        let span = millis.end() - millis.start() + 1;
        Duration::from_millis(millis.start() + self.next() % span)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Stop {
    Term,
    Kill,
}

impl Stop {
    fn name(self) -> &'static str {
        match self {
            Stop::Term => "SIGTERM",
            Stop::Kill => "SIGKILL",
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// Blackhole routes from the host to the three etcd members: clients still reach it.
    FromEtcd,
    /// The host's link down: nothing reaches it.
    LinkDown,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::FromEtcd => "cut from etcd",
            Fault::LinkDown => "link down",
        }
    }
}

/// When a host's latest fault began and healed, as the answer checker sees it.
#[derive(Clone, Copy, Debug, Default)]
struct Span {
    since: Option<Instant>,
    healed: Option<Instant>,
}

impl Span {
    /// Since when the host may answer from what it held before: the beginning of its fault, while
    /// the fault lasts and for `CATCH_UP` after.
    fn lenient_since(&self, now: Instant) -> Option<Instant> {
        let since = self.since?;
        match self.healed {
            Some(healed) if now >= healed + CATCH_UP => None,
            _ => Some(since),
        }
    }

    /// A fault begins at `now`: a host still catching up from the one before keeps its older
    /// beginning.
    fn begin(&mut self, now: Instant) {
        self.since = Some(self.lenient_since(now).unwrap_or(now));
        self.healed = None;
    }
}

#[derive(Default)]
struct ChurnCounts {
    steps: u64,
    terms: u64,
    kills: u64,
    starts: u64,
    cuts: u64,
    links_down: u64,
    /// Nodes started with their link down, which ended at once finding no address to publish.
    no_address: u64,
    /// Steps whose choice did not apply: a stop with too many hosts down, a fault with too many
    /// faults on.
    quiet: u64,
}

impl std::fmt::Display for ChurnCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} steps: {} SIGTERM, {} SIGKILL, {} starts ({} with the link down: no address, exit 1), {} cut off \
             from etcd, {} links down, {} quiet",
            self.steps, self.terms, self.kills, self.starts, self.no_address, self.cuts, self.links_down, self.quiet
        )
    }
}

struct Churn<'a> {
    lab: &'a mut Lab,
    dice: Dice,
    /// Per host: a node sent a signal, until it is seen to end.
    stopping: Vec<Option<(Node, Stop)>>,
    /// Per host: its fault and the planned time it heals.
    faults: Vec<Option<(Fault, Duration)>>,
    spans: Arc<Mutex<Vec<Span>>>,
    /// Per host: whether its link was down when its node was last started.
    link_down_at_start: Vec<bool>,
    logs: &'a Logs,
    counts: ChurnCounts,
    failures: Vec<String>,
}

impl Churn<'_> {
    fn new<'a>(lab: &'a mut Lab, seed: u64, spans: Arc<Mutex<Vec<Span>>>, logs: &'a Logs) -> Churn<'a> {
        Churn {
            lab,
            dice: Dice { seed, rolls: 0 },
            stopping: (0..NODES).map(|_| None).collect(),
            faults: vec![None; NODES],
            spans,
            link_down_at_start: vec![false; NODES],
            logs,
            counts: ChurnCounts::default(),
            failures: Vec::new(),
        }
    }

    /// One step, at `plan` into the churn: the faults due heal, then one change. Which change,
    /// and to which host, depends only on the dice and on the steps before.
    fn step(&mut self, plan: Duration) {
        self.counts.steps += 1;
        for host in 0..NODES {
            if self.faults[host].is_some_and(|(_, heals)| heals <= plan) {
                self.heal(host);
            }
        }
        self.reap();
        let churned = STEADY..NODES;
        let up: Vec<usize> = churned.clone().filter(|h| self.lab.nodes[*h].is_some()).collect();
        let down: Vec<usize> = churned.clone().filter(|h| self.lab.nodes[*h].is_none()).collect();
        let unfaulted: Vec<usize> = churned.filter(|h| self.faults[*h].is_none()).collect();
        let faulted = NODES - STEADY - unfaulted.len();
        match self.dice.below(6) {
            0 | 1 if down.len() < MAX_DOWN && !up.is_empty() => {
                let host = self.dice.pick(&up);
                let how = if self.dice.below(2) == 0 { Stop::Term } else { Stop::Kill };
                self.stop(host, how);
            }
            2 | 3 if !down.is_empty() => {
                let host = self.dice.pick(&down);
                self.start(host);
            }
            4 | 5 if faulted < MAX_FAULTS && !unfaulted.is_empty() => {
                let host = self.dice.pick(&unfaulted);
                let (fault, lasts) = match self.dice.below(2) {
                    0 => (Fault::FromEtcd, self.dice.duration(1000..=20_000)),
                    _ => (Fault::LinkDown, self.dice.duration(1000..=12_000)),
                };
                self.fault(host, fault, plan + lasts);
            }
            _ => self.counts.quiet += 1,
        }
    }

    fn stop(&mut self, host: usize, how: Stop) {
        let Some(node) = self.lab.nodes[host].take() else { return };
        match how {
            Stop::Term => {
                node.signal(libc::SIGTERM);
                self.counts.terms += 1;
            }
            Stop::Kill => {
                node.signal(libc::SIGKILL);
                self.counts.kills += 1;
            }
        }
        self.logs.churn(&format!("{} host {} (PID {})", how.name(), host + 1, node.pid()));
        self.stopping[host] = Some((node, how));
    }

    /// Starts the host's node again, once the one stopped there ended; it claims meanwhile.
    fn start(&mut self, host: usize) {
        if let Some((mut node, how)) = self.stopping[host].take() {
            // A SIGTERM waits for the release, which a host cut off from etcd gives up after 10 s.
            match within(Duration::from_secs(20), || node.exited()) {
                Some(status) => self.check_exit(host, how, status, &node),
                None => {
                    self.logs.node(host, &node, "still running 20 s after its signal");
                    self.failures.push(format!("node {} did not end within 20 s of its signal", host + 1));
                }
            }
        }
        self.link_down_at_start[host] = self.faults[host].is_some_and(|(fault, _)| fault == Fault::LinkDown);
        let pid = self.lab.start(host).pid();
        self.counts.starts += 1;
        self.logs.churn(&format!("start host {} (PID {pid})", host + 1));
    }

    fn fault(&mut self, host: usize, fault: Fault, heals: Duration) {
        // The checker learns of the fault before it begins, and of the healing after it ended.
        self.spans.lock().unwrap()[host].begin(Instant::now());
        let netns = format!("n{}", host + 1);
        match fault {
            Fault::FromEtcd => {
                for member in 0..3 {
                    self.lab.cut(&netns, lab::etcd_ip(member));
                }
                self.counts.cuts += 1;
            }
            Fault::LinkDown => {
                self.lab.link(&netns, false);
                self.counts.links_down += 1;
            }
        }
        self.faults[host] = Some((fault, heals));
        self.logs.churn(&format!("{} host {}, until {:.1} s in", fault.name(), host + 1, heals.as_secs_f64()));
    }

    fn heal(&mut self, host: usize) {
        let Some((fault, _)) = self.faults[host].take() else { return };
        let netns = format!("n{}", host + 1);
        match fault {
            Fault::FromEtcd => {
                for member in 0..3 {
                    self.lab.uncut(&netns, lab::etcd_ip(member));
                }
            }
            Fault::LinkDown => self.lab.link(&netns, true),
        }
        self.spans.lock().unwrap()[host].healed = Some(Instant::now());
        self.logs.churn(&format!("heal host {}", host + 1));
    }

    /// Notes the nodes that ended since the last step: those signalled, and those that ended on
    /// their own, which is a failure.
    fn reap(&mut self) {
        for host in 0..NODES {
            if let Some(status) = self.stopping[host].as_mut().and_then(|(node, _)| node.exited()) {
                let (node, how) = self.stopping[host].take().expect("a node that ended");
                self.check_exit(host, how, status, &node);
            }
            if let Some(status) = self.lab.nodes[host].as_mut().and_then(Node::exited) {
                let node = self.lab.nodes[host].take().expect("a node that ended");
                self.logs.node(host, &node, &format!("ended on its own with {status}"));
                // Started with its link down, a node finds no address to publish and says so
                // (exit 1), for its supervisor to start it again later: systemd does, 5 s later
                // (scripts/idetcd.service); the churn starts it again at one of its next steps.
                if self.link_down_at_start[host]
                    && status.code() == Some(1)
                    && node.log().contains("error: found no address to publish for this node")
                {
                    self.counts.no_address += 1;
                    continue;
                }
                self.failures.push(format!(
                    "node {} ended on its own with {status}; its log ends:\n{}",
                    host + 1,
                    tail(&node.log(), 20)
                ));
            }
        }
    }

    fn check_exit(&mut self, host: usize, how: Stop, status: std::process::ExitStatus, node: &Node) {
        self.logs.node(host, node, &format!("ended with {status} after {}", how.name()));
        let expected = match how {
            Stop::Term => status.success(),
            Stop::Kill => status.signal() == Some(libc::SIGKILL),
        };
        if !expected {
            self.failures.push(format!(
                "node {} ended with {status} after {}; its log ends:\n{}",
                host + 1,
                how.name(),
                tail(&node.log(), 20)
            ));
        }
    }

    /// Heals every fault, waits for every stopped node to end and starts it again.
    fn settle(&mut self) {
        for host in 0..NODES {
            self.heal(host);
        }
        self.reap();
        for host in 0..NODES {
            if self.lab.nodes[host].is_none() {
                self.start(host);
            }
        }
    }
}

/// Where the soak keeps the log of every node process as it ends, etcd's, and what the churn
/// did when: removed when the soak passes.
struct Logs {
    dir: std::path::PathBuf,
}

impl Logs {
    fn new() -> Logs {
        let dir = std::env::temp_dir().join(format!("idetcd-soak-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("a directory for the soak's logs");
        Logs { dir }
    }

    fn node(&self, host: usize, node: &Node, end: &str) {
        let text = format!("==== PID {}, {end} at {}\n{}\n", node.pid(), clock(), node.log());
        self.append(&format!("host{}.log", host + 1), &text);
    }

    fn churn(&self, step: &str) {
        self.append("churn.log", &format!("{} {step}\n", clock()));
    }

    fn append(&self, file: &str, text: &str) {
        use std::io::Write;
        let file = fs::OpenOptions::new().create(true).append(true).open(self.dir.join(file));
        let _ = file.and_then(|mut f| f.write_all(text.as_bytes()));
    }
}

/// The time of day in UTC, as the nodes' logs show it: `20:24:53.123`.
fn clock() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let (seconds, millis) = (now.as_secs() % 86_400, now.subsec_millis());
    format!("{:02}:{:02}:{:02}.{millis:03}", seconds / 3600, seconds / 60 % 60, seconds % 60)
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// The answer checker

/// What a read of etcd showed for a name: its holder's address, `Held(None)` for no holder, or
/// `Unknown` when the read failed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Seen {
    Held(Option<Ipv4Addr>),
    Unknown,
}

/// A name's states as the checker's reads saw them: when each was first seen (the end of the
/// read), one entry per change.
type History = Vec<(Instant, Seen)>;

/// The states a node may answer from if it knew etcd as it was at any time since `since`: the
/// one seen last before it (it may have held until then), and every one seen after.
fn states_since(history: &History, since: Instant) -> Vec<Seen> {
    let first = history.iter().rposition(|(at, _)| *at < since).unwrap_or(0);
    history[first..].iter().map(|(_, state)| *state).collect()
}

/// A node's answer to a name's A question.
#[derive(Clone, Debug, PartialEq)]
enum Got {
    Addresses(Vec<Ipv4Addr>),
    NxDomain,
    ServFail,
    /// Anything else: another rcode, NOERROR with no address, an address that does not parse.
    Other(String),
}

impl Got {
    fn from(answer: &Answer) -> Got {
        match answer.rcode {
            OptRcode::NXDOMAIN => Got::NxDomain,
            OptRcode::SERVFAIL => Got::ServFail,
            OptRcode::NOERROR => {
                let addresses: Option<Vec<Ipv4Addr>> = answer.data().iter().map(|a| a.parse().ok()).collect();
                match addresses {
                    Some(addresses) if !addresses.is_empty() => Got::Addresses(addresses),
                    _ => Got::Other(format!("NOERROR {:?}", answer.answers)),
                }
            }
            rcode => Got::Other(format!("{rcode}")),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Judged {
    Right,
    Wrong,
    /// SERVFAIL, which a node answers before its first read of etcd; or an answer the checker
    /// cannot judge, etcd's reads having failed around it.
    Unjudged,
}

/// The rule: an answer is right when it is what etcd held for the name in one of `states` (the
/// one address of its holder, or NXDOMAIN when it had none). Another rcode, or NOERROR without
/// an address, is wrong whatever etcd held.
fn judge(got: &Got, states: &[Seen]) -> Judged {
    let right = match got {
        Got::ServFail => return Judged::Unjudged,
        Got::Other(_) => false,
        _ if states.contains(&Seen::Unknown) => return Judged::Unjudged,
        Got::Addresses(addresses) => states.iter().any(|s| matches!(s, Seen::Held(Some(ip)) if addresses == &[*ip])),
        Got::NxDomain => states.contains(&Seen::Held(None)),
    };
    if right {
        Judged::Right
    } else {
        Judged::Wrong
    }
}

#[derive(Debug, Default)]
struct AnswerCounts {
    asked: u64,
    unanswered: u64,
    servfail: u64,
    /// Not judged: etcd's reads around them failed.
    unread: u64,
    right: u64,
    /// Of those right, NXDOMAIN.
    right_nxdomain: u64,
    /// Of those judged, from a host under a fault or catching up, against what etcd held since
    /// the fault began.
    lenient: u64,
    /// Of those judged leniently, right only because the host may still answer from what it
    /// held before its fault, after the fault healed; and the longest such time after healing.
    stale_after_healing: u64,
    longest_stale: Duration,
    wrong: Vec<String>,
}

/// Every 50 ms: reads the names from etcd, asks every host the A question of one name (a
/// different name for each host, all names in turn), reads etcd again, and judges each answer
/// against what etcd held from `LAG` before the question to the second read; for a host under a
/// fault, or within `CATCH_UP` of its healing, from `LAG` before the fault began.
struct AnswerChecker {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<AnswerCounts>,
}

impl AnswerChecker {
    fn start(hosts: Vec<Ipv4Addr>, endpoints: Vec<String>, spans: Arc<Mutex<Vec<Span>>>) -> AnswerChecker {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let socket = UdpSocket::bind("0.0.0.0:0").expect("a UDP socket in the client namespace");
            socket.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
            let etcd = EtcdReader::new(endpoints);
            let names: Vec<String> = (1..=NODES).map(|id| format!("node{id}.{ZONE}")).collect();
            let mut histories: HashMap<String, History> = names.iter().map(|n| (n.clone(), Vec::new())).collect();
            // Each name's key's create revision, as last read.
            let mut created: HashMap<String, i64> = HashMap::new();
            let mut counts = AnswerCounts::default();
            let mut round = 0usize;
            let begun = Instant::now();
            while !stopping.load(Ordering::Relaxed) {
                let started = Instant::now();
                note(&mut histories, &mut created, etcd.holders());
                round += 1;
                let asked: Vec<&str> = (0..hosts.len()).map(|h| names[(round + h) % names.len()].as_str()).collect();
                let got = ask(&socket, &hosts, &asked, round as u16);
                note(&mut histories, &mut created, etcd.holders());
                let now = Instant::now();
                let now_spans: Vec<Span> = spans.lock().unwrap().clone();
                for (host, got) in got.into_iter().enumerate() {
                    counts.asked += 1;
                    let Some(got) = got else {
                        counts.unanswered += 1;
                        continue;
                    };
                    let lenient = now_spans[host].lenient_since(now);
                    let since = lenient.unwrap_or(started);
                    let states = states_since(&histories[asked[host]], since.checked_sub(LAG).unwrap_or(since));
                    match judge(&got, &states) {
                        Judged::Unjudged if got == Got::ServFail => counts.servfail += 1,
                        Judged::Unjudged => counts.unread += 1,
                        Judged::Right => {
                            counts.right += 1;
                            counts.right_nxdomain += u64::from(got == Got::NxDomain);
                            counts.lenient += u64::from(lenient.is_some());
                            // Healed, but answering from what it held before: a figure for how
                            // long catching up takes (CATCH_UP bounds it).
                            if let (Some(_), Some(healed)) = (lenient, now_spans[host].healed) {
                                let recent =
                                    states_since(&histories[asked[host]], started.checked_sub(LAG).unwrap_or(started));
                                if judge(&got, &recent) == Judged::Wrong {
                                    counts.stale_after_healing += 1;
                                    counts.longest_stale =
                                        counts.longest_stale.max(now.saturating_duration_since(healed));
                                }
                            }
                        }
                        Judged::Wrong => {
                            counts.lenient += u64::from(lenient.is_some());
                            let wrong = format!(
                                "{} ({:.1} s in): host {} ({}) answered {} with {got:?}; etcd held {states:?} in the {:.1} s \
                                 before{}",
                                clock(),
                                (now - begun).as_secs_f64(),
                                host + 1,
                                hosts[host],
                                asked[host],
                                (now - since + LAG).as_secs_f64(),
                                if lenient.is_some() { " (its fault began then)" } else { "" }
                            );
                            let recent: Vec<String> = histories[asked[host]]
                                .iter()
                                .filter(|(at, _)| now.duration_since(*at) < Duration::from_secs(60))
                                .map(|(at, seen)| {
                                    format!("{:.2} s ago {seen:?}", now.duration_since(*at).as_secs_f64())
                                })
                                .collect();
                            let wrong = format!("{wrong}; its changes in the last minute: {}", recent.join(", "));
                            if counts.wrong.len() < 20 {
                                eprintln!("wrong answer: {wrong}");
                            }
                            counts.wrong.push(wrong);
                        }
                    }
                }
                std::thread::sleep(EVERY.saturating_sub(started.elapsed()));
            }
            counts
        });
        AnswerChecker { stop, thread }
    }

    fn finish(self) -> AnswerCounts {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the answer checker")
    }
}

/// Adds what a read of etcd showed (`None`: it failed) to every name's history. A key created
/// again since the read before was deleted in between, however briefly (a lease that ran out,
/// its node back at once): its history gets that moment without a holder too.
fn note(histories: &mut HashMap<String, History>, created: &mut HashMap<String, i64>, read: Option<Holders>) {
    let now = Instant::now();
    for (name, history) in histories.iter_mut() {
        let holder = read.as_ref().map(|holders| holders.get(name));
        if let Some(Some(holder)) = holder {
            let before = created.insert(name.clone(), holder.created);
            if before.is_some_and(|c| c != holder.created)
                && history.last().map(|(_, last)| *last) != Some(Seen::Held(None))
            {
                history.push((now, Seen::Held(None)));
            }
        }
        let seen = match holder {
            Some(holder) => Seen::Held(holder.and_then(|h| h.ip)),
            None => Seen::Unknown,
        };
        if history.last().map(|(_, last)| *last) != Some(seen) {
            history.push((now, seen));
        }
    }
}

/// Asks host `h` the A question of `names[h]`, all at once; each host's answer, if it came
/// within `fencing::ANSWERS_WITHIN`.
fn ask(socket: &UdpSocket, hosts: &[Ipv4Addr], names: &[&str], id: u16) -> Vec<Option<Got>> {
    let questions: Vec<Query> = names.iter().map(|name| Query::new(name, Rtype::A)).collect();
    let questions: Vec<&Query> = questions.iter().collect();
    let answers = ask_each(socket, hosts, &questions, id);
    answers.into_iter().map(|answer| Some(Got::from(&Answer::from(&answer?)))).collect()
}

/// The answer checker's rules, on made-up histories (the lab's harness has no unit tests of its
/// own: this runs as one of its tests).
pub fn answer_checker_rules() {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let (a, b) = (Ipv4Addr::new(10, 77, 0, 11), Ipv4Addr::new(10, 77, 0, 12));
    // Held by a from 0 s, gone at 10 s, b's from 20 s.
    let history: History =
        vec![(at(0), Seen::Held(Some(a))), (at(10), Seen::Held(None)), (at(20), Seen::Held(Some(b)))];
    assert_eq!(states_since(&history, at(5)), [Seen::Held(Some(a)), Seen::Held(None), Seen::Held(Some(b))]);
    assert_eq!(states_since(&history, at(15)), [Seen::Held(None), Seen::Held(Some(b))]);
    assert_eq!(states_since(&history, at(25)), [Seen::Held(Some(b))]);
    assert_eq!(states_since(&history, at(20)), [Seen::Held(None), Seen::Held(Some(b))], "seen at 20: maybe later");
    let cases: &[(Got, &[Seen], Judged)] = &[
        (Got::Addresses(vec![a]), &[Seen::Held(Some(a))], Judged::Right),
        (Got::Addresses(vec![a]), &[Seen::Held(Some(b))], Judged::Wrong),
        (Got::Addresses(vec![a]), &[Seen::Held(None)], Judged::Wrong),
        (Got::Addresses(vec![a]), &[Seen::Held(Some(a)), Seen::Held(None), Seen::Held(Some(b))], Judged::Right),
        (Got::Addresses(vec![a, b]), &[Seen::Held(Some(a)), Seen::Held(Some(b))], Judged::Wrong),
        (Got::NxDomain, &[Seen::Held(Some(a))], Judged::Wrong),
        (Got::NxDomain, &[Seen::Held(Some(a)), Seen::Held(None)], Judged::Right),
        (Got::NxDomain, &[Seen::Held(Some(a)), Seen::Unknown], Judged::Unjudged),
        (Got::Addresses(vec![b]), &[Seen::Unknown, Seen::Held(Some(a))], Judged::Unjudged),
        (Got::ServFail, &[Seen::Held(Some(a))], Judged::Unjudged),
        (Got::Other("REFUSED".into()), &[Seen::Held(Some(a))], Judged::Wrong),
        (Got::Other("REFUSED".into()), &[Seen::Unknown], Judged::Wrong),
    ];
    for (got, states, want) in cases {
        assert_eq!(judge(got, states), *want, "{got:?} against {states:?}");
    }
    // A key deleted and put again between two reads (its lease ran out, its node claimed it back
    // at once) was without a holder for a moment: NXDOMAIN then was right.
    let name = format!("node1.{ZONE}");
    let read = |created: i64| {
        let holder = crate::fencing::Holder { ip: Some(a), revision: created, created };
        Some(Holders::from([(name.clone(), holder)]))
    };
    let mut histories = HashMap::from([(name.clone(), History::new())]);
    let mut created = HashMap::new();
    note(&mut histories, &mut created, read(7));
    note(&mut histories, &mut created, read(7));
    let seen =
        |histories: &HashMap<String, History>| -> Vec<Seen> { histories[&name].iter().map(|(_, s)| *s).collect() };
    assert_eq!(seen(&histories), [Seen::Held(Some(a))], "the same key, read twice");
    note(&mut histories, &mut created, read(9));
    assert_eq!(seen(&histories), [Seen::Held(Some(a)), Seen::Held(None), Seen::Held(Some(a))], "created again");
    assert_eq!(judge(&Got::NxDomain, &states_since(&histories[&name], t0)), Judged::Right);
    // A fault stretches the window back to its beginning, until CATCH_UP after it healed; a
    // second fault before then keeps the first one's beginning.
    let mut span = Span::default();
    assert_eq!(span.lenient_since(at(1)), None);
    span.begin(at(1));
    assert_eq!(span.lenient_since(at(5)), Some(at(1)));
    span.healed = Some(at(6));
    assert_eq!(span.lenient_since(at(6) + CATCH_UP - Duration::from_millis(1)), Some(at(1)));
    assert_eq!(span.lenient_since(at(6) + CATCH_UP), None);
    span.begin(at(8));
    assert_eq!(span.lenient_since(at(9)), Some(at(1)));
    span.healed = Some(at(9));
    span.begin(at(30));
    assert_eq!(span.lenient_since(at(30)), Some(at(30)));
}

// ---------------------------------------------------------------------------------------------
// Memory, threads, descriptors

#[derive(Clone, Debug)]
struct Usage {
    rss_kib: u64,
    threads: usize,
    /// What each open descriptor is (`socket`, `anon_inode:[eventfd]`, a path), for a failure
    /// to show what grew.
    fds: Vec<String>,
}

impl Usage {
    fn of(pid: u32) -> Option<Usage> {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
        let rss_kib = rss.trim().trim_end_matches("kB").trim().parse().ok()?;
        let threads = fs::read_dir(format!("/proc/{pid}/task")).ok()?.count();
        let fds = fs::read_dir(format!("/proc/{pid}/fd"))
            .ok()?
            .filter_map(|fd| {
                let target = fs::read_link(fd.ok()?.path()).ok()?.to_string_lossy().into_owned();
                // "socket:[1234]" is a socket; "anon_inode:[eventfd]" says what it is.
                Some(match target.split_once(":[") {
                    Some((kind, _)) if kind != "anon_inode" => kind.to_string(),
                    _ => target,
                })
            })
            .collect();
        Some(Usage { rss_kib, threads, fds })
    }
}

/// The steady nodes' usage at the baseline, and their largest RSS seen after it (every 5 s).
struct UsageWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Option<(Usage, u64)>>>,
}

impl UsageWatch {
    fn start(pids: Vec<u32>, baseline_at: Instant) -> UsageWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while Instant::now() < baseline_at && !stopping.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            if stopping.load(Ordering::Relaxed) {
                return vec![None; pids.len()];
            }
            let mut seen: Vec<Option<(Usage, u64)>> =
                pids.iter().map(|pid| Usage::of(*pid).map(|u| (u.clone(), u.rss_kib))).collect();
            let mut next = Instant::now() + Duration::from_secs(5);
            while !stopping.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if Instant::now() >= next {
                    next += Duration::from_secs(5);
                    for (pid, seen) in pids.iter().zip(&mut seen) {
                        if let (Some((_, max)), Some(now)) = (seen.as_mut(), Usage::of(*pid)) {
                            *max = (*max).max(now.rss_kib);
                        }
                    }
                }
            }
            seen
        });
        UsageWatch { stop, thread }
    }

    fn finish(self) -> Vec<Option<(Usage, u64)>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the usage watch")
    }
}

// ---------------------------------------------------------------------------------------------
// Figures

fn fencing_figures(out: &mut String, counts: &Counts, checked: Duration, failures: &mut Vec<String>) {
    let _ = writeln!(
        out,
        "  fencing    {} samples in {:.0} s ({:.1} a second), {} checked against etcd, {} violations",
        counts.samples,
        checked.as_secs_f64(),
        counts.samples as f64 / checked.as_secs_f64(),
        counts.checked_against_etcd,
        counts.violations.len()
    );
    if !counts.violations.is_empty() {
        failures.push(format!(
            "{} fencing violations, the first: {:?}",
            counts.violations.len(),
            &counts.violations[..counts.violations.len().min(5)]
        ));
    }
}

fn answer_figures(out: &mut String, counts: &AnswerCounts, checked: Duration, failures: &mut Vec<String>) {
    let _ = writeln!(
        out,
        "  answers    {} questions ({:.1} rounds a second): {} right ({} of them NXDOMAIN), {} wrong; {} judged against etcd since a fault \
         began ({} of them stale after the healing, at most {:.1} s after); {} SERVFAIL (before a first read), {} \
         unanswered (node down, link down, slow), {} not judged (etcd unread)",
        counts.asked,
        counts.asked as f64 / NODES as f64 / checked.as_secs_f64(),
        counts.right,
        counts.right_nxdomain,
        counts.wrong.len(),
        counts.lenient,
        counts.stale_after_healing,
        counts.longest_stale.as_secs_f64(),
        counts.servfail,
        counts.unanswered,
        counts.unread
    );
    if !counts.wrong.is_empty() {
        failures.push(format!(
            "{} wrong answers, the first: {:#?}",
            counts.wrong.len(),
            &counts.wrong[..counts.wrong.len().min(5)]
        ));
    }
}

fn dnsperf_figures(out: &mut String, reports: &[String]) {
    let _ = writeln!(out, "  dnsperf    {} q/s to each steady node, every name:", LOAD / STEADY as u32);
    for (i, report) in reports.iter().enumerate() {
        let field = |label| dnsperf_field(report, label).unwrap_or("?");
        let _ = writeln!(
            out,
            "             node {}: {} sent, {} completed, {} lost; {}",
            i + 1,
            field("Queries sent:"),
            field("Queries completed:"),
            field("Queries lost:"),
            field("Response codes:")
        );
    }
}

fn usage_figures(
    out: &mut String,
    baseline: &[Option<(Usage, u64)>],
    end: &[Option<Usage>],
    failures: &mut Vec<String>,
) {
    let _ = writeln!(
        out,
        "\n  {:<8}{:>16}{:>12}{:>10}{:>9}{:>18}{:>14}",
        "steady",
        format!("RSS KiB at {} s", BASELINE_AFTER.as_secs()),
        "max after",
        "at end",
        "change",
        "threads then/end",
        "fds then/end"
    );
    for (i, (seen, end)) in baseline.iter().zip(end).enumerate() {
        let (Some((base, max)), Some(end)) = (seen, end) else {
            let _ = writeln!(out, "  node {}  (not measured)", i + 1);
            failures.push(format!("steady node {}'s usage was not measured at the baseline and at the end", i + 1));
            continue;
        };
        let change = (end.rss_kib as f64 - base.rss_kib as f64) / base.rss_kib as f64;
        let _ = writeln!(
            out,
            "  {:<8}{:>16}{:>12}{:>10}{:>+8.1}%{:>18}{:>14}",
            format!("node {}", i + 1),
            base.rss_kib,
            max,
            end.rss_kib,
            change * 100.0,
            format!("{}/{}", base.threads, end.threads),
            format!("{}/{}", base.fds.len(), end.fds.len())
        );
        if change.abs() > RSS_WITHIN {
            failures.push(format!(
                "steady node {}'s RSS went from {} KiB to {} KiB ({:+.1}%)",
                i + 1,
                base.rss_kib,
                end.rss_kib,
                change * 100.0
            ));
        }
        if end.threads > base.threads {
            failures.push(format!("steady node {}'s threads went from {} to {}", i + 1, base.threads, end.threads));
        }
        if end.fds.len() > base.fds.len() {
            failures.push(format!(
                "steady node {}'s open descriptors went from {} to {}: {:?}, then {:?}",
                i + 1,
                base.fds.len(),
                end.fds.len(),
                kinds(&base.fds),
                kinds(&end.fds)
            ));
        }
    }
}

fn kinds(fds: &[String]) -> BTreeMap<&str, usize> {
    let mut kinds = BTreeMap::new();
    for fd in fds {
        *kinds.entry(fd.as_str()).or_default() += 1;
    }
    kinds
}
