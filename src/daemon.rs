//! Wiring the daemon together: sockets, threads, channels and signals, and the orderly stop.
//!
//! Sockets are bound first, so that a port already in use fails the start at once, before any
//! name is claimed. Then the answering threads start (answering SERVFAIL in the zone until the first
//! snapshot), then the etcd thread. The main thread only waits: for a signal, which makes the etcd
//! thread release the name, or for a thread that stopped, which ends the daemon with an error.

use std::fmt;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvError, Sender};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use crate::address;
use crate::claim::Choice;
use crate::config::Config;
use crate::etcd;
use crate::forward::Forwarder;
use crate::membership::{self, Settings};
use crate::messages::{Command, Event, Latest, Tuning, Update};
use crate::metrics::Metrics;
use crate::monitor;
use crate::record::Record;
use crate::reload;
use crate::server::{self, Forwarding, View};
use crate::wire;
use crate::zone::Snapshot;

/// How long the release may take before the daemon exits anyway; the lease then frees the name.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// The thread that holds the name: when it ends, releasing is the main thread's to do.
const ETCD_THREAD: &str = "etcd";

#[derive(Debug)]
pub enum Error {
    Bind(server::BindError),
    /// `bind` names an interface this machine does not have.
    Interface(address::UnknownInterface),
    Etcd(etcd::Error),
    NoAddress,
    /// `--role` or `IDETCD_ROLE` names no role of the Corefile.
    Role(String),
    Signals(std::io::Error),
    Spawn(std::io::Error),
    /// The etcd thread gave up, with its reason.
    Fatal(String),
    ThreadExited(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Bind(e) => e.fmt(f),
            Error::Interface(e) => e.fmt(f),
            Error::Etcd(e) => e.fmt(f),
            Error::NoAddress => write!(
                f,
                "found no address to publish for this node: no route to etcd, and no interface up but loopback (is the network up yet?); once it is, start again, or name the address with `address` in the Corefile"
            ),
            Error::Role(why) => f.write_str(why),
            Error::Signals(e) => write!(f, "cannot install signal handlers: {e}"),
            Error::Spawn(e) => write!(f, "cannot start a thread: {e}"),
            Error::Fatal(why) => write!(f, "{why}"),
            Error::ThreadExited(name) => write!(f, "thread {name} stopped unexpectedly"),
        }
    }
}

impl std::error::Error for Error {}

/// Runs the daemon; `role` is the `--role` flag's.
pub fn run(config: &Config, role: Option<&str>) -> Result<(), Error> {
    crate::sys::one_heap();
    // Secrets are masked by their Debug.
    log::debug!("configuration from {}: {config:?}", config.source.display());
    for warning in &config.warnings {
        log::warn!("{warning}");
    }
    for note in &config.notes {
        log::info!("{note}");
    }
    let choice = choice(config, role)?;
    // Interfaces are looked up now, not when the Corefile was read.
    let listen = address::listen_addresses(&config.listen).map_err(Error::Interface)?;
    let listeners = server::bind(&listen, config.port, config.threads as usize).map_err(Error::Bind)?;
    let record = own_record(config)?;
    let serving = match (config.roles.as_slice(), choice) {
        ([only], _) => only.pattern.to_string(),
        (_, Choice::Fill) => format!("{} (roles {}, the first with a free ID)", config.zone(), config.role_names()),
        (roles, Choice::Role(i)) => format!("{} (roles {}, as {})", config.zone(), config.role_names(), roles[i].name),
    };
    let listening = match listen.as_slice() {
        [] => format!("every address, port {}", config.port),
        ips => {
            ips.iter().map(|ip| std::net::SocketAddr::new(*ip, config.port).to_string()).collect::<Vec<_>>().join(" ")
        }
    };
    let monitors: String = [("health", config.health), ("metrics", config.prometheus), ("ready", config.ready)]
        .iter()
        .filter_map(|(what, address)| Some(format!(", {what} on {}", address.as_ref()?)))
        .collect();
    log::info!(
        "idetcd {} serving {serving} on {listening}, publishing {}, etcd at {}{monitors}",
        env!("CARGO_PKG_VERSION"),
        record.to_json(),
        config.endpoints.join(" "),
    );

    let (events_tx, events) = crossbeam_channel::unbounded();
    let (commands, commands_rx) = crossbeam_channel::unbounded();
    // SERVFAIL in the zone until the members are read.
    let first = Update { snapshot: Arc::new(Snapshot::empty(config.zone())), held_until: None, log: config.log };
    let metrics = Arc::new(Metrics::default());
    let mut running = Running {
        config: config.clone(),
        commands,
        events: events_tx.clone(),
        metrics: Arc::clone(&metrics),
        listen,
        record,
        routes: Vec::new(),
        forwarding: None,
        forward_thread: String::new(),
        monitors: Vec::new(),
        retiring: Vec::new(),
        generation: 0,
    };
    running.forwarding = match &config.forward {
        None => None,
        Some(forward) => Some(running.start_forwarding(forward)?),
    };
    let mut updates = Vec::new();
    let mut view = || {
        let (latest, rx) = Latest::channel();
        updates.push(latest);
        let (route, routes) = Latest::channel();
        running.routes.push(route);
        View::new(first.clone(), rx, (running.forwarding.clone(), routes), metrics.register())
    };
    for (i, udp) in listeners.udp.into_iter().enumerate() {
        let view = view();
        spawn(&format!("udp-{i}"), &events_tx, move || server::serve_udp(udp, view))?;
    }
    let view = view();
    spawn("tcp", &events_tx, move || server::serve_tcp(listeners.tcp, view))?;

    let settings = Settings {
        roles: config.roles.clone(),
        choice,
        record: running.record,
        lease_ttl: config.lease,
        tuning: tuning(config),
    };
    for (address, endpoints) in monitor_listeners(config) {
        running.start_monitor(address, endpoints)?;
    }

    let client = etcd::Client::new(config).map_err(Error::Etcd)?.with_metrics(Arc::clone(&metrics));
    let spare = client.clone();
    // Signals are caught before anything is claimed, so that no SIGTERM can end the process
    // without releasing the name.
    let mut signals = Signals::new(STOP.iter().chain(&RELOAD)).map_err(Error::Signals)?;
    let events_for_etcd = events_tx.clone();
    let channels = membership::Channels { commands: commands_rx, events: events_for_etcd, updates, metrics };
    spawn(ETCD_THREAD, &events_tx, move || membership::run(settings, client, channels, first))?;
    let events_for_signals = events_tx.clone();
    spawn("signals", &events_tx, move || {
        for signal in signals.forever() {
            if events_for_signals.send(Event::Signal(signal)).is_err() {
                return;
            }
        }
    })?;

    wait(&events, &mut running, spare)
}

/// Signals that release the name and stop the daemon; a second one stops it without waiting.
const STOP: [i32; 3] = [SIGTERM, SIGINT, SIGQUIT];
/// Signals that read the Corefile again (CoreDNS's SIGUSR1, and the daemons' SIGHUP).
const RELOAD: [i32; 2] = [SIGHUP, SIGUSR1];

/// What the main thread holds of the running daemon, to reload it and to stop it.
struct Running {
    config: Config,
    commands: Sender<Command>,
    events: Sender<Event>,
    metrics: Arc<Metrics>,
    /// The DNS addresses listened on, and the record published: `forward` never asks ourselves.
    listen: Vec<IpAddr>,
    record: Record,
    /// To each answering thread, where questions that are not ours go after a reload.
    routes: Vec<Latest<Option<Forwarding>>>,
    forwarding: Option<Forwarding>,
    /// The thread `forwarding` hands questions to.
    forward_thread: String,
    monitors: Vec<Monitor>,
    /// Threads a reload replaced: their end is expected, not a failure.
    retiring: Vec<String>,
    /// Reloads that started threads, to give each thread a name of its own.
    generation: u32,
}

/// A monitoring listener and how to stop it.
struct Monitor {
    address: SocketAddr,
    endpoints: monitor::Endpoints,
    stop: Arc<AtomicBool>,
    thread: String,
}

impl Running {
    /// Reads the Corefile again and applies what may change while running; anything else, or a
    /// Corefile that does not parse, leaves the running configuration as it is.
    fn reload(&mut self, signal: i32) {
        let (name, source) = (signal_name(signal), self.config.source.display().to_string());
        let config = match crate::corefile::load(&self.config.source, crate::corefile::Reader::Daemon) {
            Ok(config) => config,
            Err(e) => return log::warn!("{name}: reload failed: {e}; the running configuration stays"),
        };
        let plan = match reload::plan(&self.config, config) {
            Ok(plan) => plan,
            Err(refused) => return log::warn!("{name}: reload of {source} refused: {refused}"),
        };
        for warning in &plan.config.warnings {
            log::warn!("{warning}");
        }
        if plan.changed.is_empty() {
            return log::info!("{name}: reloaded {source}: nothing changed");
        }
        let config = plan.config;
        if plan.changed.contains(&"forward") {
            let retired_thread = self.forward_thread.clone();
            let forwarding = match &config.forward {
                None => None,
                Some(forward) => match self.start_forwarding(forward) {
                    Ok(forwarding) => Some(forwarding),
                    Err(e) => {
                        return log::warn!("{name}: reload of {source} failed: {e}; the running configuration stays")
                    }
                },
            };
            for route in &self.routes {
                route.send(forwarding.clone());
            }
            if let Some(old) = std::mem::replace(&mut self.forwarding, forwarding) {
                old.forwarder.retire();
                self.retiring.push(retired_thread);
            }
        }
        let _ = self.commands.send(Command::Retune(tuning(&config)));
        let wanted = monitor_listeners(&config);
        let (kept, gone): (Vec<Monitor>, Vec<Monitor>) =
            std::mem::take(&mut self.monitors).into_iter().partition(|m| wanted.contains(&(m.address, m.endpoints)));
        self.monitors = kept;
        // A listener whose address is wanted again (for other endpoints) must close first; one
        // that moves closes once its successor listens.
        let (reused, moved): (Vec<Monitor>, Vec<Monitor>) =
            gone.into_iter().partition(|m| wanted.iter().any(|(address, _)| *address == m.address));
        for monitor in reused {
            self.retire_monitor(monitor);
        }
        self.config = config;
        let mut failed = Vec::new();
        for (address, endpoints) in wanted {
            if self.monitors.iter().any(|m| m.address == address) {
                continue;
            }
            if let Err(e) = self.start_monitor(address, endpoints) {
                log::warn!("{name}: {e}; it stays off until a reload that works");
                failed.extend(monitor_directives(&self.config, address));
            }
        }
        for monitor in moved {
            self.retire_monitor(monitor);
        }
        let applied: Vec<&str> = plan.changed.iter().copied().filter(|d| !failed.contains(d)).collect();
        if !applied.is_empty() {
            log::info!("{name}: reloaded {source}: {} took effect", applied.join(", "));
        }
    }

    /// Starts a forwarding thread for `forward` (named anew after a reload) and returns the
    /// answering threads' end of it. The thread becomes `forward_thread`.
    fn start_forwarding(&mut self, forward: &crate::config::Forward) -> Result<Forwarding, Error> {
        let upstreams = upstreams_but_us(&self.config, &self.listen, &self.record, &forward.upstreams)?;
        let from = wire::wire_name(&forward.from).map_err(|e| Error::Fatal(format!("forward: {e}")))?;
        let (forwarder, forwarding) = Forwarder::new(upstreams, Arc::clone(&self.metrics)).map_err(Error::Spawn)?;
        let thread = self.thread_name("forward");
        spawn(&thread, &self.events, move || forwarding.run())?;
        self.forward_thread = thread;
        Ok(Forwarding { from, forwarder })
    }

    /// Binds a monitoring listener and starts its thread. After a reload, the listener it replaces
    /// at the same address may take a moment to close.
    fn start_monitor(&mut self, address: SocketAddr, endpoints: monitor::Endpoints) -> Result<(), Error> {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(address) {
                Ok(listener) => break listener,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && self.generation > 0 && tries < 20 => {
                    tries += 1;
                    thread::sleep(Duration::from_millis(50));
                }
                Err(error) => {
                    let directives = monitor_directives(&self.config, address);
                    return Err(Error::Bind(server::BindError::monitor(address, directives, error)));
                }
            }
        };
        let kind = match endpoints {
            monitor::Endpoints { metrics: true, .. } => "prometheus",
            monitor::Endpoints { health: true, .. } => "health",
            _ => "ready",
        };
        let thread = self.thread_name(kind);
        let stop = Arc::new(AtomicBool::new(false));
        let (metrics, stopped) = (Arc::clone(&self.metrics), Arc::clone(&stop));
        spawn(&thread, &self.events, move || monitor::serve(listener, endpoints, metrics, stopped))?;
        self.monitors.push(Monitor { address, endpoints, stop, thread });
        Ok(())
    }

    /// Stops a monitoring listener: its thread sees the flag when a connection wakes its accept.
    fn retire_monitor(&mut self, monitor: Monitor) {
        monitor.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.retiring.push(monitor.thread);
        let mut wake = monitor.address;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            });
        }
        let _ = std::net::TcpStream::connect_timeout(&wake, Duration::from_secs(1));
    }

    /// `kind` for the threads started at start-up, `kind-N` for those the Nth reload started.
    fn thread_name(&self, kind: &str) -> String {
        match self.generation {
            0 => kind.to_string(),
            n => format!("{kind}-{n}"),
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        SIGQUIT => "SIGQUIT",
        SIGHUP => "SIGHUP",
        SIGUSR1 => "SIGUSR1",
        _ => "a signal",
    }
}

/// What the etcd thread takes from the configuration and may be changed by a reload.
fn tuning(config: &Config) -> Tuning {
    Tuning {
        ttl: config.ttl,
        nameservers: config.nameservers,
        follow: config.follow,
        autosync: config.autosync,
        log: config.log,
    }
}

/// Waits for the reason to stop, reloading meanwhile when asked, then for the etcd thread to
/// release the name. If it cannot (etcd too slow, or the thread gone), revokes the last lease it
/// reported with a client of its own.
fn wait(events: &Receiver<Event>, running: &mut Running, mut client: etcd::Client) -> Result<(), Error> {
    let mut stopping = Stopping::default();
    let stop = loop {
        match events.recv() {
            Ok(Event::Signal(signal)) if RELOAD.contains(&signal) => {
                running.generation += 1;
                running.reload(signal);
            }
            Ok(Event::ThreadExited(name)) if running.retiring.contains(&name) => {
                running.retiring.retain(|retired| *retired != name);
                log::debug!("thread {name}, replaced by a reload, stopped");
            }
            event => {
                if let Some(stop) = stopping.until_stop(event) {
                    break stop;
                }
            }
        }
    };
    let failure = match stop {
        Stop::Failed(e) => return Err(e),
        Stop::Released => return Ok(()),
        Stop::Requested(failure) => failure,
    };
    let _ = running.commands.send(Command::Shutdown);
    match stopping.release(events, Instant::now() + RELEASE_TIMEOUT) {
        Release::Released => {}
        Release::Fatal(why) => return Err(Error::Fatal(why)),
        Release::Hurried => return failure.map_or(Ok(()), Err),
        Release::EtcdGone | Release::TimedOut => {
            if let Some(id) = stopping.lease {
                match client.lease_revoke(id) {
                    Ok(()) => log::info!("released lease {id:x}"),
                    Err(e) => log::warn!("could not revoke lease {id:x}: {e}; its name frees itself when it expires"),
                }
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

/// What the main thread knows of the etcd thread while the daemon runs and stops.
#[derive(Default)]
struct Stopping {
    /// The lease that holds the name, to revoke it here if the etcd thread cannot.
    lease: Option<i64>,
    /// The etcd thread has ended: nothing will release the name but us, so do not wait for it.
    etcd_gone: bool,
}

/// Why the daemon stops.
enum Stop {
    /// A signal, or a thread's end (the error): release the name, then stop.
    Requested(Option<Error>),
    /// The etcd thread gave up and cleaned up after itself, or every thread is gone.
    Failed(Error),
    Released,
}

/// How the release of the name ended.
#[derive(Debug, PartialEq)]
enum Release {
    Released,
    Fatal(String),
    /// The etcd thread is gone: the lease is ours to revoke.
    EtcdGone,
    TimedOut,
    /// A second signal to stop: the operator does not want to wait.
    Hurried,
}

impl Stopping {
    /// Follows one event of the running daemon (other than a reload's): whether it stops.
    fn until_stop(&mut self, event: Result<Event, RecvError>) -> Option<Stop> {
        match event {
            Ok(Event::Lease(id)) => self.lease = id,
            Ok(Event::Signal(signal)) if RELOAD.contains(&signal) => {}
            Ok(Event::Signal(signal)) => {
                log::info!("{}: releasing the name and stopping", signal_name(signal));
                return Some(Stop::Requested(None));
            }
            Ok(Event::Fatal(why)) => return Some(Stop::Failed(Error::Fatal(why))),
            Ok(Event::Released) => return Some(Stop::Released),
            Ok(Event::ThreadExited(name)) => {
                self.etcd_gone |= name == ETCD_THREAD;
                // The error itself is the daemon's last word, printed once by `main`.
                log::info!("releasing the name and stopping");
                return Some(Stop::Requested(Some(Error::ThreadExited(name))));
            }
            Err(_) => return Some(Stop::Failed(Error::ThreadExited("main".into()))),
        }
        None
    }

    /// Waits until `deadline` for the etcd thread to release the name.
    fn release(&mut self, events: &Receiver<Event>, deadline: Instant) -> Release {
        while !self.etcd_gone {
            match events.recv_deadline(deadline) {
                Ok(Event::Released) => return Release::Released,
                Ok(Event::Lease(id)) => self.lease = id,
                Ok(Event::Fatal(why)) => return Release::Fatal(why),
                Ok(Event::ThreadExited(name)) => self.etcd_gone |= name == ETCD_THREAD,
                Ok(Event::Signal(signal)) if STOP.contains(&signal) => return Release::Hurried,
                Ok(Event::Signal(_)) => {}
                Err(_) => return Release::TimedOut,
            }
        }
        Release::EtcdGone
    }
}

/// The upstream servers, less this daemon itself: forwarding to ourselves would send a question
/// round forever (a resolv.conf that lists this host, say).
fn upstreams_but_us(
    config: &Config,
    listen: &[std::net::IpAddr],
    record: &Record,
    upstreams: &[std::net::SocketAddr],
) -> Result<Vec<std::net::SocketAddr>, Error> {
    let wildcard = listen.is_empty() || listen.iter().any(|ip| ip.is_unspecified());
    let local = address::local_addresses();
    let ours = |a: &&std::net::SocketAddr| {
        let ip = a.ip();
        let published = record.ips().any(|published| published == ip);
        a.port() == config.port
            && (listen.contains(&ip)
                || (wildcard && (ip.is_loopback() || ip.is_unspecified() || published || local.contains(&ip))))
    };
    let (us, others): (Vec<_>, Vec<_>) = upstreams.iter().partition(|a| ours(a));
    for a in &us {
        log::warn!("forward: leaving out {a}, which is this server itself");
    }
    if others.is_empty() {
        return Err(Error::Fatal("forward: every upstream server is this server itself".into()));
    }
    Ok(others)
}

/// The monitoring listeners: one per address, serving what was asked of it (`health`, `ready`
/// and `prometheus` may share one).
fn monitor_listeners(config: &Config) -> Vec<(std::net::SocketAddr, monitor::Endpoints)> {
    let mut listeners: Vec<(std::net::SocketAddr, monitor::Endpoints)> = Vec::new();
    let asked = [
        (config.health, monitor::Endpoints { health: true, ..Default::default() }),
        (config.ready, monitor::Endpoints { ready: true, ..Default::default() }),
        (config.prometheus, monitor::Endpoints { metrics: true, ..Default::default() }),
    ];
    for (address, wanted) in asked {
        let Some(address) = address else { continue };
        match listeners.iter_mut().find(|(a, _)| *a == address) {
            Some((_, endpoints)) => {
                endpoints.health |= wanted.health;
                endpoints.ready |= wanted.ready;
                endpoints.metrics |= wanted.metrics;
            }
            None => listeners.push((address, wanted)),
        }
    }
    listeners
}

/// The directives that ask for an HTTP listener on `address`, for the error when it is taken.
fn monitor_directives(config: &Config, address: std::net::SocketAddr) -> Vec<&'static str> {
    let asked = [("health", config.health), ("prometheus", config.prometheus), ("ready", config.ready)];
    asked.into_iter().filter(|(_, a)| *a == Some(address)).map(|(name, _)| name).collect()
}

/// The role this node claims in: `--role`, else `IDETCD_ROLE`, else the first with a free ID.
fn choice(config: &Config, flag: Option<&str>) -> Result<Choice, Error> {
    let from_env = std::env::var("IDETCD_ROLE").ok().filter(|name| !name.is_empty());
    let (name, given_by) = match (flag, from_env) {
        (Some(name), _) => (name.to_string(), "--role"),
        (None, Some(name)) => (name, "IDETCD_ROLE"),
        (None, None) => return Ok(Choice::Fill),
    };
    config.role_named(&name).map(Choice::Role).map_err(|e| Error::Role(format!("{given_by}: {e}")))
}

/// The record this node publishes: the Corefile's addresses, or detected ones.
fn own_record(config: &Config) -> Result<Record, Error> {
    let (ipv4, ipv6) = match (config.ipv4, config.ipv6) {
        (None, None) => {
            let found = address::detect(&config.endpoints);
            (found.ipv4, found.ipv6)
        }
        given => given,
    };
    if ipv4.is_none() && ipv6.is_none() {
        return Err(Error::NoAddress);
    }
    Ok(Record { ipv4, ipv6, port: Some(config.port) })
}

/// Starts a named thread that tells the main thread when it ends, however it ends.
fn spawn(name: &str, events: &Sender<Event>, body: impl FnOnce() + Send + 'static) -> Result<(), Error> {
    let guard = ExitGuard { name: name.to_string(), events: events.clone() };
    thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _guard = guard;
            body();
        })
        .map(|_| ())
        .map_err(Error::Spawn)
}

struct ExitGuard {
    name: String,
    events: Sender<Event>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let _ = self.events.send(Event::ThreadExited(std::mem::take(&mut self.name)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stops on the events sent, then releases with a deadline already past: what the release
    /// does then tells whether it waited for a thread that could no longer answer.
    fn stop_then_release(sent: Vec<Event>) -> (Option<String>, Release, Option<i64>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        for event in sent {
            tx.send(event).unwrap();
        }
        let mut stopping = Stopping::default();
        let stop = loop {
            if let Some(stop) = stopping.until_stop(rx.try_recv().map_err(|_| RecvError)) {
                break stop;
            }
        };
        let why = match stop {
            Stop::Requested(failure) => failure.map(|e| e.to_string()),
            Stop::Failed(e) => panic!("unexpected failure: {e}"),
            Stop::Released => panic!("unexpected release"),
        };
        (why, stopping.release(&rx, Instant::now()), stopping.lease)
    }

    #[test]
    fn the_end_of_the_etcd_thread_makes_the_lease_ours_to_revoke_at_once() {
        let (why, release, lease) =
            stop_then_release(vec![Event::Lease(Some(7)), Event::ThreadExited(ETCD_THREAD.into())]);
        assert!(why.unwrap().contains("etcd"));
        assert_eq!((release, lease), (Release::EtcdGone, Some(7)));
    }

    #[test]
    fn the_end_of_another_thread_waits_for_the_etcd_thread_to_release() {
        let (_, release, _) = stop_then_release(vec![Event::ThreadExited("tcp".into()), Event::Released]);
        assert_eq!(release, Release::Released);
        let (_, release, _) = stop_then_release(vec![Event::Signal(SIGTERM)]);
        assert_eq!(release, Release::TimedOut);
        let (_, release, _) = stop_then_release(vec![Event::Signal(SIGTERM), Event::Signal(SIGINT)]);
        assert_eq!(release, Release::Hurried);
    }
}
