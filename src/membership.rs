//! The etcd thread: claims this node's name, keeps its lease alive, reads the other members and
//! hands answering threads a new snapshot whenever they change, and releases the name at shutdown.
//!
//! It is the only thread that changes anything in etcd. Members are followed as Kubernetes
//! informers do, by default: every role's key range is read once (at start, after a claim), then
//! a helper thread follows etcd's watch stream and forwards each change at once. A stream that
//! breaks is reopened where each range left off; the ranges are read again only when etcd no
//! longer has the changes since (it compacted them). An idle node costs etcd only its lease's
//! keep-alives, and this thread sleeps until one is due, a command or a change. With `poll`, it
//! asks etcd every so often whether anything changed instead (one key's answer, which says the
//! store's revision), or underneath the watch with `watch` too. What the members are is the
//! `view`'s to say, and what the lease and the name on it come to is `lease`'s; this thread does
//! the I/O.
//! Everything is retried with backoff when etcd cannot be reached; meanwhile answering threads go
//! on with the last snapshot they received.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};

use crate::address::Addresses;
use crate::claim::{self, Choice, ClaimError};
use crate::clock::boottime;
use crate::config::{self, Role, FALLBACK_POLL};
use crate::etcd::{self, Compare, Op, RangeRequest, Refusal, Txn, WatchMessage, WatchRange};
use crate::lease::{renew_interval, Holding, Lease, LeaseState, Loss};
use crate::messages::{Command, Event, Latest, Tuning, Update, Watched};
use crate::metrics::Metrics;
use crate::random::Random;
use crate::record::Record;
use crate::view::{self, Changes, Own, Touch, View};
use crate::zone::{Inputs, Snapshot};

/// While etcd cannot be reached, repeat the warning this often, not at every retry.
const WARN_EVERY: Duration = Duration::from_secs(30);
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// A member list that could not be read is read again after this long, or `autosync` if sooner.
const SYNC_RETRY: Duration = Duration::from_secs(30);
/// How long after the first of a run of snapshot updates freed memory is given back.
const TRIM_AFTER: Duration = Duration::from_secs(2);
/// Polling without a watch, read everything this often however quiet the change detector: a
/// backstop against any way the copy in memory could drift from etcd unnoticed.
const FULL_READ_EVERY: Duration = Duration::from_secs(600);
/// A node that takes its name while other claims are still queued waits this long per claim
/// before it follows the members, then counts the queue again, and waits again while the claims
/// move on, at most `WATCH_DEFERRED_AT_MOST` in all. Every node of a fleet starting together
/// would otherwise be sent every later claim as it happens, one message per node and claim: at
/// 1000 nodes half a million messages through etcd's JSON gateway, about 65 µs of etcd CPU each,
/// that slow the claims themselves severalfold. A watch opened after the claims gets them all in
/// one message, at about 15 µs each. Meanwhile the node answers with the members it read. (An
/// etcd that keeps only its last few thousand revisions may compact them away meanwhile: then
/// the watch says so and the members are read whole.)
const WATCH_DEFERRED_PER_CLAIM: Duration = Duration::from_millis(3);
/// Between two counts of the queue, however short: each is a request to etcd. Doubled at each
/// count, so that a node that claimed early in a long burst does not count the queue all along it,
/// adding requests exactly while etcd is the busiest.
const WATCH_DEFERRED_AT_LEAST: Duration = Duration::from_millis(200);
/// So few claims queued that the watch opens now: a count is a gateway request, about as dear to
/// etcd as ten changes sent to a stream one at a time.
const WATCH_DEFERRED_FEW: i64 = 8;
const WATCH_DEFERRED_AT_MOST: Duration = Duration::from_secs(10);

pub struct Settings {
    pub roles: Vec<Role>,
    /// The role to claim in, or filling them in order.
    pub choice: Choice,
    pub record: Record,
    /// Requested lease TTL in seconds; etcd may grant more.
    pub lease_ttl: u32,
    /// What a reload may change.
    pub tuning: Tuning,
}

struct Membership {
    settings: Settings,
    value: String,
    client: etcd::Client,
    events: Sender<Event>,
    updates: Vec<Latest<Update>>,
    metrics: Arc<Metrics>,
    /// What the answering threads were last sent.
    state: Update,
    /// The lease and the name on it.
    holding: Holding,
    view: View,
    /// Set when everything must be read again: at start, after a claim, when the watch missed
    /// changes, and now and then as a backstop when polling without a watch.
    read_due: bool,
    /// When to try that read again after one failed.
    next_read: Instant,
    read_retry: Backoff,
    /// The store's revision as the last read or poll saw it: a poll that sees it unmoved is done.
    last_seen: Option<i64>,
    /// The watch stream, when one runs.
    watch: Following,
    /// Claims were still queued when this node took its name: the watch waits for them.
    watch_deferred: Option<Deferral>,
    /// Set when a renewal failed, until one gets through.
    renewal_failed: bool,
    /// When to give freed memory back after snapshot updates; `None` when nothing waits.
    trim_at: Option<Instant>,
    /// The endpoint the watch was last restarted for, having moved to it.
    moved_to: Option<String>,
    /// Set when this node cannot go on; the loop ends with it.
    fatal: Option<String>,
    /// Whether the members were counted in the log once: after that, each join is told.
    members_told: bool,
    /// Whether this node spread over the etcd endpoints by its address yet (see `claim`).
    spread: bool,
    trouble: Trouble,
    next_keepalive: Instant,
    next_poll: Instant,
    next_full_read: Instant,
    /// When to read etcd's member list next (`autosync`).
    next_sync: Instant,
}

/// A watch put off while other nodes claim (see `WATCH_DEFERRED_PER_CLAIM`).
struct Deferral {
    since: Instant,
    until: Instant,
    /// Claims queued at the last count.
    queued: i64,
    /// Waits so far.
    waits: u32,
}

impl Deferral {
    /// After a claim at `now` that left `queued` claims in the queue.
    fn first(queued: i64, now: Instant) -> Option<Deferral> {
        Deferral { since: now, until: now, queued: 0, waits: 0 }.again(queued, now)
    }

    /// Waits again after counting `queued` claims at `now`, while claims come and go: a count that
    /// stays is a ticket left by a node that stopped claiming, which its lease will remove.
    fn again(self, queued: i64, now: Instant) -> Option<Deferral> {
        let moving = queued > WATCH_DEFERRED_FEW && queued != self.queued;
        let wait = WATCH_DEFERRED_PER_CLAIM.saturating_mul(u32::try_from(queued).unwrap_or(u32::MAX));
        let at_least = WATCH_DEFERRED_AT_LEAST.saturating_mul(1 << self.waits.min(8));
        let until = now + wait.max(at_least).min(WATCH_DEFERRED_AT_MOST);
        let waits = self.waits + 1;
        let deferral = Deferral { until: until.min(self.since + WATCH_DEFERRED_AT_MOST), queued, waits, ..self };
        match moving && now < deferral.until {
            true => {
                log::debug!("{queued} claims queued: following the members in {:?}, after them", deferral.until - now);
                Some(deferral)
            }
            false => None,
        }
    }
}

/// How the etcd thread talks to the others.
pub struct Channels {
    pub commands: Receiver<Command>,
    pub events: Sender<Event>,
    /// One per answering thread.
    pub updates: Vec<Latest<Update>>,
    pub metrics: Arc<Metrics>,
}

/// Runs the etcd thread; `first` is what the answering threads started with.
pub fn run(settings: Settings, client: etcd::Client, channels: Channels, first: Update) {
    let Channels { commands, events, updates, metrics } = channels;
    let now = Instant::now();
    let value = settings.record.to_json();
    let mut m = Membership {
        view: View::new(&settings.roles, value.as_bytes()),
        value,
        settings,
        client,
        events,
        updates,
        metrics,
        state: first,
        holding: Holding::default(),
        read_due: true,
        next_read: now,
        read_retry: Backoff::new(),
        last_seen: None,
        watch: Following::default(),
        watch_deferred: None,
        renewal_failed: false,
        trim_at: None,
        moved_to: None,
        fatal: None,
        members_told: false,
        spread: false,
        trouble: Trouble::default(),
        next_keepalive: now,
        next_poll: now,
        next_full_read: now + FULL_READ_EVERY,
        next_sync: now,
    };
    let mut retry = Backoff::new();
    loop {
        if let Some(why) = m.fatal.take() {
            // The main thread prints why, once, as the daemon's last word.
            m.release();
            let _ = m.events.send(Event::Fatal(why));
            return;
        }
        let now = Instant::now();
        if m.sync_due().is_some_and(|at| now >= at) {
            m.sync_members();
            if m.fatal.is_some() {
                continue;
            }
        }
        if m.holding.held.is_none() {
            // A lease kept from an earlier attempt stays alive while the claims fail.
            if m.holding.lease.is_some() && now >= m.next_keepalive {
                m.keepalive();
            }
            match m.claim() {
                Ok(()) => retry.reset(),
                Err(ClaimError::Full(why) | ClaimError::Twin(why)) => {
                    m.fatal = Some(why);
                    continue;
                }
                Err(ClaimError::Etcd(e)) => {
                    m.failed("cannot claim a name", &e);
                    if m.fatal.is_some() {
                        continue;
                    }
                    if m.stop_requested(&commands, retry.next()) {
                        return m.stop();
                    }
                    continue;
                }
            }
        }
        if m.read_due {
            if now >= m.next_read {
                m.read();
            }
        } else if m.poll_every().is_some() && now >= m.next_poll && m.watch_deferred.is_none() {
            // Polls wait with the watch: while claims go on they would read everything each time.
            m.poll();
        }
        m.start_watch();
        // Nothing to do until then but what a command or the watch brings.
        let mut wake = m.trim_at.map_or(m.next_keepalive, |at| at.min(m.next_keepalive));
        match m.poll_every() {
            _ if m.read_due => wake = wake.min(m.next_read),
            Some(_) => wake = wake.min(m.next_poll),
            None => {}
        }
        if let Some(deferred) = &m.watch_deferred {
            wake = wake.min(deferred.until);
        }
        if let Some(at) = m.sync_due() {
            wake = wake.min(at);
        }
        let changes = m.watch.changes.clone();
        select! {
            recv(commands) -> command => match command {
                Ok(Command::Retune(tuning)) => m.retune(tuning),
                Ok(Command::Shutdown) | Err(_) => return m.stop(),
            },
            recv(changes) -> message => match message {
                Ok(message) => m.followed(message, &changes),
                // The channel closes only after the guard sent `Ended`, which already stopped listening.
                Err(_) => m.fall_back_to_polling(),
            },
            default(wake.saturating_duration_since(Instant::now())) => {}
        }
        if Instant::now() >= m.next_keepalive {
            m.keepalive();
        }
        if m.trim_at.is_some_and(|at| Instant::now() >= at) {
            m.trim_at = None;
            crate::sys::return_freed_memory();
        }
    }
}

/// The watch stream, when one runs.
struct Following {
    changes: Receiver<Watched>,
    /// Ends the watch thread; `None` when none runs.
    stop: Option<Arc<AtomicBool>>,
    /// Where its stream is open, as it last said.
    endpoint: Option<String>,
    /// The watch thread could not start, or ended: polling stands in until a reload asks for the
    /// watch again.
    failed: bool,
}

impl Default for Following {
    fn default() -> Following {
        Following { changes: crossbeam_channel::never(), stop: None, endpoint: None, failed: false }
    }
}

impl Following {
    fn failed() -> Following {
        Following { failed: true, ..Following::default() }
    }

    /// Ends the watch thread, at its next message or reconnection; whatever it still sends goes
    /// nowhere.
    fn retire(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.store(true, Relaxed);
        }
        *self = Following { failed: self.failed, ..Following::default() };
    }
}

impl Membership {
    /// Sleeps up to `timeout`, taking reloads meanwhile; true when told to shut down (or when the
    /// main thread is gone).
    fn stop_requested(&mut self, commands: &Receiver<Command>, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match commands.recv_deadline(deadline) {
                Ok(Command::Retune(tuning)) => self.retune(tuning),
                Ok(Command::Shutdown) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return true,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => return false,
            }
        }
    }

    /// Takes a reload's settings: answers carry the new TTL at once, the next poll comes at the
    /// new interval, and the watch starts or stops.
    fn retune(&mut self, tuning: Tuning) {
        let before = std::mem::replace(&mut self.settings.tuning, tuning);
        if let Some(every) = self.poll_every() {
            self.next_poll = Instant::now() + every;
        }
        match (before.follow.watches(), tuning.follow.watches()) {
            // Polling must start from a view true at one revision (see `fall_back_to_polling`).
            (true, false) => {
                self.watch.retire();
                self.watch_deferred = None;
                self.read_due = true;
            }
            // A watch that failed gets another chance.
            (false, true) => self.watch = Following::default(),
            _ => {}
        }
        if before.autosync != tuning.autosync {
            self.next_sync = Instant::now();
        }
        self.state.log = tuning.log;
        match (before.ttl, before.nameservers) != (tuning.ttl, tuning.nameservers) {
            true => self.rebuild(),
            false => self.broadcast(),
        }
    }

    /// When etcd's member list is to be read next, if at all: with `autosync`, once the name is
    /// held and the claims queued with this node's have gone by. A fleet starting together claims
    /// without it, a request lighter for etcd each (see `claim`).
    fn sync_due(&self) -> Option<Instant> {
        let waits = self.holding.last.is_none() || self.watch_deferred.is_some();
        (self.settings.tuning.autosync.is_some() && !waits).then_some(self.next_sync)
    }

    /// Reads etcd's member list, to use every member from now on (`autosync`, see
    /// `etcd::Client::sync_members`); again after `autosync`, or sooner if it failed.
    fn sync_members(&mut self) {
        let now = Instant::now();
        // Called only when `sync_due` says so, with `autosync` on.
        let Some(every) = self.settings.tuning.autosync else { return };
        self.next_sync = match self.client.sync_members() {
            Ok(_) => now + every,
            Err(e) => {
                match e {
                    // The other requests warn about that.
                    etcd::Error::Unreachable(_) => log::debug!("cannot read etcd's member list: {e}"),
                    // Ends a node that is still starting, as any request would.
                    _ if e.is_permanent() => self.failed("cannot read etcd's member list", &e),
                    _ => log::warn!("cannot read etcd's member list ({e}): the endpoints known are used"),
                }
                now + every.min(SYNC_RETRY)
            }
        };
    }

    fn claim(&mut self) -> Result<(), ClaimError> {
        let lease = match self.holding.lease {
            Some(lease) => lease,
            None => {
                let lease = self.grant()?;
                // The first grant went to the Corefile's first endpoint, so that one that does
                // not fit is heard of at once. Then, until it holds a name, a node spreads over
                // the Corefile's endpoints by its address: nodes that start together claim
                // through different ones. Once only: a claim that failed there (a member cut off
                // from the others) goes on where the failover took it. The member list comes
                // after the claim.
                if !std::mem::replace(&mut self.spread, true) {
                    self.client.spread(spread_key(&self.value));
                }
                lease
            }
        };
        let request = claim::Request {
            roles: &self.settings.roles,
            choice: self.settings.choice,
            value: self.value.as_bytes(),
            lease: lease.id,
            renew_every: renew_interval(lease.ttl),
            preferred: self.holding.last,
            first_read: match self.settings.tuning.follow.watches() && !self.watch.failed {
                true => claim::FirstRead::ToBeWatched,
                false => claim::FirstRead::AsOfClaim,
            },
        };
        let claimed = match claim::claim(&mut self.client, &request) {
            Ok(claimed) => claimed,
            Err(e @ (ClaimError::Full(_) | ClaimError::Twin(_))) => return Err(e),
            Err(ClaimError::Etcd(e)) => {
                // A transaction that got no answer may still be applied, late, and take a name
                // with this lease. A new lease for the next attempt keeps that from ever making
                // this node hold two names: the old lease is let go, and its keys with it.
                if !matches!(e, etcd::Error::Rejected { .. }) {
                    self.abandon_lease();
                } else if let etcd::Error::Rejected { refusal: etcd::Refusal::NotFound, .. } = e {
                    // The lease ran out while claims kept failing.
                    self.set_lease(None);
                }
                return Err(ClaimError::Etcd(e));
            }
        };
        self.trouble.recovered(&self.client);
        let role = &self.settings.roles[claimed.slot.role];
        let as_role = match self.settings.roles.len() {
            1 => String::new(),
            _ => format!("role {}, ", role.name),
        };
        // `last` is set once a name was held: a claim after that follows a loss.
        let again = match self.holding.last {
            _ if claimed.taken_back => " back, its record still there from an earlier run".to_string(),
            Some(last) if last == claimed.slot => " again".to_string(),
            Some(last) => format!(" in place of {}, which is no longer free", last.name(&self.settings.roles)),
            None => String::new(),
        };
        // From now on, a node spreads by its name: a cluster's nodes share the members evenly.
        self.client.spread(claimed.slot.rank(&self.settings.roles));
        log::info!(
            "claimed {}{again} ({as_role}ID {}, lease {:x} of {}s, {} etcd requests); etcd requests go to {}",
            claimed.name,
            claimed.slot.id,
            lease.id,
            lease.ttl.as_secs(),
            claimed.requests,
            self.client.endpoint()
        );
        self.holding.claimed(claimed.name, claimed.slot);
        self.watch_deferred = None;
        self.metrics.claims.fetch_add(1, Relaxed);
        self.metrics.holds_name.store(true, Relaxed);
        self.metrics.name_lost.store(false, Relaxed);
        self.state.held_until = self.holding.held_until();
        // A lease kept through failed claims, or through a claim that watched another lease, may
        // be due for renewal already, its deadline as known here even past: renewed now, so that
        // the answers name this node with a deadline still ahead.
        if lease.renewal_due(Instant::now()) {
            self.keepalive();
        }
        match claimed.listing {
            // The claim read every role's keys as of its own put: a full read.
            Some((revision, kvs)) => {
                let keys: usize = kvs.iter().map(Vec::len).sum();
                log::debug!("the claim read every role's keys at revision {revision}: {keys} keys");
                let known = self.view.revision();
                let changes = self.view.load(revision, kvs);
                self.took_read(revision, known, changes);
                // A watch that runs already (the name was lost and claimed again) goes on.
                let waits = self.watch.stop.is_none() && !self.watch.failed;
                if claimed.queued > 0 && self.settings.tuning.follow.watches() && waits {
                    self.watch_deferred = Deferral::first(claimed.queued, Instant::now());
                }
            }
            // Name ourselves in the answers at once, then read the members afresh.
            None => {
                self.refresh(&[]);
                self.read_due = true;
            }
        }
        Ok(())
    }

    /// Notes an etcd failure: most pass (they are logged and retried). One that needs the
    /// Corefile changed (a refused password, a URL that is not etcd's) ends a node that is still
    /// starting, so that the operator hears of it at once; a node that is serving keeps answering
    /// from what it has, and warns.
    fn failed(&mut self, what: &str, e: &etcd::Error) {
        // `last` is set once a name was held.
        match e.is_permanent() && self.holding.last.is_none() {
            true => self.fatal = Some(e.to_string()),
            false => self.trouble.failed(what, e),
        }
    }

    fn grant(&mut self) -> Result<Lease, etcd::Error> {
        let (before, asked) = (boottime(), Instant::now());
        let granted = self.client.patiently(|client| client.lease_grant(self.settings.lease_ttl))?;
        let lease = Lease::answered(granted.id, granted.ttl, before, asked);
        self.next_keepalive = lease.renew_at();
        self.set_lease(Some(lease));
        Ok(lease)
    }

    fn set_lease(&mut self, lease: Option<Lease>) {
        self.holding.lease = lease;
        let _ = self.events.send(Event::Lease(lease.map(|l| l.id)));
    }

    fn abandon_lease(&mut self) {
        if let Some(lease) = self.holding.lease {
            log::debug!("abandoning lease {:x}", lease.id);
            let _ = self.client.lease_revoke(lease.id);
            self.set_lease(None);
        }
    }

    fn keepalive(&mut self) {
        let Some(lease) = self.holding.lease else { return };
        let (before, asked) = (boottime(), Instant::now());
        match self.client.lease_keepalive(lease.id) {
            Ok(Some(ttl)) => {
                self.trouble.recovered(&self.client);
                self.check_watch();
                log::debug!("renewed lease {:x} for {ttl}s", lease.id);
                self.metrics.renewals.fetch_add(1, Relaxed);
                let lease = Lease::answered(lease.id, ttl, before, asked);
                self.holding.renewed(lease);
                self.next_keepalive = lease.renew_at();
                if self.holding.held.is_some() {
                    self.state.held_until = self.holding.held_until();
                    self.broadcast();
                }
            }
            Ok(None) => {
                self.trouble.recovered(&self.client);
                self.check_watch();
                self.lose(LeaseState::Gone);
            }
            Err(e) => {
                self.renewal_failed = true;
                self.failed("cannot renew the lease", &e);
                self.next_keepalive = Instant::now() + Duration::from_secs(1).min(renew_interval(lease.ttl));
                if self.holding.ran_out(boottime()) {
                    self.lose(LeaseState::RanOut);
                }
            }
        }
    }

    /// Forgets the name, and the lease if it is gone: the next loop turn claims again, preferring
    /// the same slot.
    fn lose(&mut self, state: LeaseState) {
        let lease = self.holding.lease;
        let loss = self.holding.lose(state);
        if self.holding.lease != lease {
            self.set_lease(None);
        }
        if let Loss::Nothing { lease_dropped, .. } = loss {
            if lease_dropped {
                log::debug!("{loss}");
            }
            return;
        }
        self.metrics.lease_losses.fetch_add(1, Relaxed);
        self.metrics.holds_name.store(false, Relaxed);
        self.metrics.name_lost.store(true, Relaxed);
        log::warn!("{loss}");
        self.state.held_until = None;
        // No answer may name this node by its old name any more.
        self.refresh(&[]);
    }

    /// How often to poll: as `poll` says, or, when the watch it asks for cannot be had, as often as
    /// polling used to by default. `None`: never, the watch brings every change.
    fn poll_every(&self) -> Option<Duration> {
        match self.settings.tuning.follow.poll() {
            None if self.watch.failed => Some(FALLBACK_POLL),
            every => every,
        }
    }

    /// Reads the members if anything changed since the last read, and publishes a new snapshot.
    fn poll(&mut self) {
        let now = Instant::now();
        self.next_poll = now + self.poll_every().unwrap_or(FALLBACK_POLL);
        if !self.settings.tuning.follow.watches() && now >= self.next_full_read {
            self.read_due = true;
            return self.read();
        }
        // One key's answer tells the store's revision, which any change anywhere in etcd moves: when
        // it stayed, nothing changed. etcd looks up one key for it, whatever the cluster's size.
        let Some(first) = self.ranges().into_iter().next() else { return };
        match self.client.range(&first.start, &[]) {
            Ok(answer) if Some(answer.revision) == self.last_seen => return self.trouble.recovered(&self.client),
            Ok(_) => self.trouble.recovered(&self.client),
            Err(e) => return self.failed("cannot read the members", &e),
        }
        // Something changed, perhaps elsewhere: each role's newest revision and count tell whether
        // it was ours. etcd passes over the ranges' keys for that.
        let newest: Vec<RangeRequest> = self.ranges().into_iter().map(|r| RangeRequest { newest: true, ..r }).collect();
        match self.client.read(&newest) {
            Ok(ranges) => {
                self.trouble.recovered(&self.client);
                let marker = |r: &etcd::Range| (r.count, r.kvs.first().map_or(0, |kv| kv.mod_revision));
                if ranges.iter().map(marker).eq(self.view.markers()) {
                    self.last_seen = ranges.first().map(|r| r.revision);
                    return;
                }
            }
            Err(e) => return self.failed("cannot read the members", &e),
        }
        self.read_due = true;
        self.read();
    }

    /// Reads every role's key range, at one revision, and publishes what changed. The answer is
    /// taken key by key as it arrives, never held whole.
    fn read(&mut self) {
        let ranges = self.ranges();
        let known = self.view.revision();
        let started = Instant::now();
        let mut keys = 0usize;
        let mut loading = self.view.loading();
        let read = self.client.read_each(&ranges, |range, kv| {
            keys += 1;
            loading.put(range, kv);
        });
        match read {
            Ok(revision) => {
                let changes = loading.finish(revision);
                self.trouble.recovered(&self.client);
                self.read_retry.reset();
                log::debug!(
                    "read every role's keys at revision {revision}: {keys} keys in {:.1} ms",
                    started.elapsed().as_secs_f64() * 1e3
                );
                self.took_read(revision, known, changes);
            }
            Err(e) => {
                // The keys read before the answer broke off are in the view: answered too.
                let changes = loading.abandon();
                if self.view.revision().is_some() {
                    self.publish(changes);
                }
                self.next_read = Instant::now() + self.read_retry.next();
                self.failed("cannot read the members", &e);
            }
        }
    }

    /// After a full read at `revision` (the view was at `known` before it): the members are
    /// followed from there.
    fn took_read(&mut self, revision: i64, known: Option<i64>, changes: Changes) {
        self.last_seen = Some(revision);
        let now = Instant::now();
        self.next_full_read = now + FULL_READ_EVERY;
        self.next_poll = now + self.poll_every().unwrap_or(FALLBACK_POLL);
        if known.is_some_and(|known| known > revision) {
            // etcd's data was restored or replaced: the watch waits for revisions that came
            // before, and must follow from this read instead.
            log::warn!("etcd's revision went back to {revision}: following the members from there");
            self.watch.retire();
        }
        self.read_due = false;
        self.publish(changes);
    }

    /// Takes what the watch thread sent: this message and every one already waiting behind it,
    /// so that a burst of changes (a transaction of many, or many within moments) costs one
    /// snapshot.
    fn followed(&mut self, first: Watched, changes: &Receiver<Watched>) {
        let waiting = changes.len();
        let (mut events, mut progress, mut resync, mut ended) = (Vec::new(), Vec::new(), false, None);
        for message in std::iter::once(first).chain(changes.try_iter().take(waiting)) {
            match message {
                Watched::Changes(batch) => events.extend(batch),
                Watched::Progress { range, revision } => progress.push((range, revision)),
                Watched::Opened(endpoint) => self.watch.endpoint = Some(endpoint),
                Watched::Resync => resync = true,
                Watched::Ended(why) => ended = Some(why),
            }
        }
        if !events.is_empty() {
            if let Some(changes) = self.view.apply(events) {
                self.publish(changes);
            }
        }
        // After the changes they follow: etcd sent them all, and all are applied.
        for (role, revision) in progress {
            let name = self.settings.roles.get(role).map_or("?", |r| r.name.as_str());
            log::debug!("etcd watch progress: role {name} at revision {revision}");
            self.view.progress(role, revision);
        }
        if resync {
            log::info!("etcd no longer has the changes the watch was to resume from: reading every member again");
            self.read_due = true;
        }
        if let Some(why) = ended {
            log::warn!("the etcd watch stopped ({why}); polling every {FALLBACK_POLL:?} instead");
            self.fall_back_to_polling();
        }
    }

    /// Starts the thread that follows every role's key range on one watch stream, each from the
    /// revision after the one its members reflect, if the watch is wanted and none runs.
    fn start_watch(&mut self) {
        let revisions = self.view.revisions();
        let wanted = self.settings.tuning.follow.watches() && !self.watch.failed && !self.read_due;
        if !wanted || self.watch.stop.is_some() || revisions.is_empty() {
            return;
        }
        if let Some(deferral) = self.watch_deferred.take() {
            let now = Instant::now();
            if now < deferral.until {
                self.watch_deferred = Some(deferral);
                return;
            }
            let counted = match now < deferral.since + WATCH_DEFERRED_AT_MOST {
                true => self.client.range_count(&claim::queue(&self.settings.roles)),
                false => Ok(0),
            };
            self.watch_deferred = match counted {
                Ok(queued) => deferral.again(queued, now),
                Err(e) => {
                    log::debug!("cannot count the claims queued ({e}): following the members now");
                    None
                }
            };
            if self.watch_deferred.is_some() {
                return;
            }
        }
        let ranges: Vec<WatchRange> = self
            .ranges()
            .into_iter()
            .zip(revisions)
            .map(|(r, revision)| WatchRange { start: r.start, end: r.end, from: revision + 1 })
            .collect();
        let (client, stop) = (self.client.clone(), Arc::new(AtomicBool::new(false)));
        let thread_stop = Arc::clone(&stop);
        match spawn_watch("etcd-watch", move |tx| follow(client, ranges, tx, thread_stop)) {
            Ok(changes) => self.watch = Following { changes, stop: Some(stop), endpoint: None, failed: false },
            Err(e) => {
                log::warn!("cannot start the watch thread ({e}); polling every {FALLBACK_POLL:?} instead");
                self.fall_back_to_polling();
            }
        }
    }

    /// Polls from now on. Polling tells changes by each role's newest revision and count, which
    /// holds only for a view that was true at some revision: one that the watch was to bring up
    /// to date (a claim's listing, see `claim::FirstRead`) may not be, so it is read again.
    fn fall_back_to_polling(&mut self) {
        self.watch = Following::failed();
        self.read_due = true;
    }

    /// After a renewal got an answer. A watch stream can die without a word (a partition, etcd's
    /// host gone without a reset) and stay silent until it is given up: a renewal that failed and
    /// now got through, or got through at another endpoint than the stream's, says that may have
    /// happened. The watch starts again then, from the members' revisions, at the endpoint that
    /// answered: one request, no read.
    fn check_watch(&mut self) {
        let recovered = std::mem::take(&mut self.renewal_failed);
        let endpoint = self.client.endpoint();
        // Once for each move: a watch whose own client went on to another endpoint than this
        // thread's would otherwise be restarted at every renewal.
        let moved = self.watch.endpoint.as_deref().is_some_and(|e| e != endpoint)
            && self.moved_to.as_deref() != Some(endpoint.as_str());
        if self.watch.stop.is_some() && (recovered || moved) {
            let why = if moved { "etcd answers at another endpoint" } else { "etcd answers again" };
            log::debug!("restarting the etcd watch at {endpoint}: {why}");
            if moved {
                self.moved_to = Some(endpoint.clone());
            }
            self.watch.retire();
        }
    }

    /// Every role's key range.
    fn ranges(&self) -> Vec<RangeRequest> {
        view::ranges(&self.settings.roles)
    }

    /// After the view changed: logs what changed, checks that this node still holds its name and
    /// only that, then builds and hands out a snapshot.
    fn publish(&mut self, changes: Changes) {
        for (key, why) in &changes.skipped {
            log::warn!("ignoring etcd key {key:?}: {why}");
        }
        for key in &changes.elsewhere {
            log::debug!("ignoring etcd key {key:?}: not in zone {}", config::zone_of(&self.settings.roles));
        }
        let count = self.view.count();
        let roles = &self.settings.roles;
        if !std::mem::replace(&mut self.members_told, true) {
            // The first read: one line, however large the cluster.
            log::info!("{count} members at etcd revision {}", self.view.revision().unwrap_or(0));
            if log::log_enabled!(log::Level::Debug) {
                for (slot, record, _) in self.view.records() {
                    log::debug!("member {} {}", slot.name(roles), addresses(record));
                }
            }
        }
        for touch in &changes.touched {
            let name = touch.slot.name(roles);
            match (touch.before, touch.after) {
                (None, Some(after)) => log::info!("member joined: {name} {}", addresses(&after)),
                (Some(_), Some(after)) => log::info!("member changed: {name} {}", addresses(&after)),
                (Some(before), None) => log::info!("member left: {name} {}", addresses(&before)),
                (None, None) => {}
            }
        }
        self.metrics.members.store(count as u64, Relaxed);
        // The snapshot first: a loss found next updates it again, from one that is whole.
        match changes.first {
            true => self.rebuild(),
            false => self.refresh(&changes.touched),
        }
        self.check_own_keys();
    }

    /// Our key deleted or moved to another lease means the name is no longer ours; any other key
    /// on our lease is a claim that arrived late and must go.
    fn check_own_keys(&mut self) {
        let Some(lease) = self.holding.lease else { return };
        // Until a read after the claim, the view may show our key as it was before it (on the
        // lease of an earlier run, say): nothing to judge by yet.
        if self.read_due {
            return;
        }
        let check = self.view.check(self.holding.held.as_deref().map(str::as_bytes), lease.id);
        for key in check.strays {
            log::warn!("deleting {:?}, which this node's lease holds besides its name", String::from_utf8_lossy(&key));
            let txn = Txn {
                compare: vec![Compare::LeaseIs(key.clone(), lease.id)],
                success: vec![Op::Delete { key }],
                failure: vec![],
            };
            if let Err(e) = self.client.txn(&txn) {
                log::warn!("could not delete it: {e}");
            }
        }
        match check.own {
            None | Some(Own::Held) => {}
            Some(Own::Twin) => {
                // Only a node publishing this very record takes a name over by value: two nodes
                // with one address, which would take the name from each other forever.
                let held = self.holding.held.as_deref().unwrap_or_default();
                self.fatal = Some(format!(
                    "another node publishes the same record {} and took over {held}; give each node its own address",
                    self.value
                ));
            }
            Some(Own::Missing | Own::Taken) => {
                let state = self.lease_state(lease);
                self.lose(state);
            }
        }
    }

    /// A revoked lease shows first as its keys vanishing; asking etcd tells whether it was that.
    /// The time-to-live call, unlike a keep-alive, leaves the lease as it is.
    fn lease_state(&mut self, lease: Lease) -> LeaseState {
        match self.client.lease_ttl(lease.id) {
            Ok(None) => LeaseState::Gone,
            Ok(Some(_)) | Err(_) => LeaseState::Alive,
        }
    }

    /// Builds a snapshot of the members as they are and hands it to the answering threads.
    fn rebuild(&mut self) {
        self.snapshot(None);
        // Reading a large member range briefly needs a few megabytes; a daemon that sits at its
        // peak forever looks (and is) wasteful.
        crate::sys::return_freed_memory();
    }

    /// Hands the answering threads the snapshot after the members `touched` changed: what they
    /// did not touch is shared with the last one.
    fn refresh(&mut self, touched: &[Touch]) {
        self.snapshot(Some(touched));
    }

    /// A new snapshot, built whole or (given what changed) from the last one.
    fn snapshot(&mut self, touched: Option<&[Touch]>) {
        let Some(revision) = self.view.revision() else {
            // Nothing read yet: the identity deadline is all that changed.
            return self.broadcast();
        };
        let started = Instant::now();
        // Serial arithmetic (RFC 1982) copes with the wrap. No member at all is serial 0 on every
        // node, rather than each node's own read revision.
        let serial = self.view.newest().unwrap_or(0) as u32;
        let inputs = Inputs {
            roles: &self.settings.roles,
            ttl: self.settings.tuning.ttl,
            serial,
            nameservers: self.settings.tuning.nameservers,
            own_name: self.holding.held.as_deref(),
            members: self.view.members(),
        };
        let snapshot = match touched {
            Some(touched) => self.state.snapshot.update(&inputs, touched),
            None => Snapshot::build(&inputs),
        };
        if touched.is_some_and(|t| !t.is_empty()) && self.trim_at.is_none() {
            // Each update frees the parts it replaced, scattered over the heap; once the changes
            // pause, what is whole pages goes back. Not at every change: that walks the heap.
            self.trim_at = Some(Instant::now() + TRIM_AFTER);
        }
        log::debug!(
            "{} a snapshot of {} members in {:.2} ms at revision {revision}",
            if touched.is_some() { "updated" } else { "built" },
            self.metrics.members.load(Relaxed),
            started.elapsed().as_secs_f64() * 1e3
        );
        self.state.snapshot = Arc::new(snapshot);
        self.metrics.snapshot_loaded.store(true, Relaxed);
        self.broadcast();
    }

    fn broadcast(&self) {
        self.metrics.set_held_until(self.state.held_until);
        for latest in &self.updates {
            latest.send(self.state.clone());
        }
    }

    /// Releases the name and tells the main thread.
    fn stop(mut self) {
        self.release();
        let _ = self.events.send(Event::Released);
    }

    /// Revokes the lease, which frees the name at once.
    fn release(&mut self) {
        let held = self.holding.held.take();
        self.metrics.holds_name.store(false, Relaxed);
        let Some(lease) = self.holding.lease else { return };
        match self.client.lease_revoke(lease.id) {
            Ok(()) => {
                self.set_lease(None);
                if let Some(name) = held {
                    log::info!("released {name}");
                }
            }
            Err(e) => {
                log::warn!("could not revoke lease {:x}: {e}; its name frees itself within {:?}", lease.id, lease.ttl);
            }
        }
    }
}

/// Starts a watch thread named `name` that runs `body` with the sending end of the channel it
/// returns. Like the daemon's threads it carries a guard that reports its end, panics included,
/// but to its owner, as the channel's last message: the owner starts and retires its watch, and
/// can do without one (the etcd thread polls; the fence stops the command). The main thread
/// could do neither: it would stop the daemon over a watch.
pub(crate) fn spawn_watch(
    name: &str,
    body: impl FnOnce(Sender<Watched>) + Send + 'static,
) -> std::io::Result<Receiver<Watched>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let guard = WatchEnd { name: name.to_string(), tx: tx.clone() };
    std::thread::Builder::new().name(name.to_string()).spawn(move || {
        let _guard = guard;
        body(tx);
    })?;
    Ok(rx)
}

/// Tells a watch thread's owner that the thread ended, however it ended. An owner that retired
/// the watch no longer listens, and the report goes nowhere.
struct WatchEnd {
    name: String,
    tx: Sender<Watched>,
}

impl Drop for WatchEnd {
    fn drop(&mut self) {
        let how = if std::thread::panicking() { "panicked" } else { "ended" };
        let _ = self.tx.send(Watched::Ended(format!("thread {} {how}", self.name)));
    }
}

/// The watch thread: forwards every change in the ranges, each from its revision on, and etcd's
/// progress notifications, reopening the stream where each left off (its last change or
/// notification) whenever it breaks, and saying where it opened it. Ends when its owner stopped
/// listening, or at the next message or reconnection once `stop` is set (a reload turned the
/// watch off, or the etcd thread restarts it).
pub(crate) fn follow(
    mut client: etcd::Client,
    mut ranges: Vec<WatchRange>,
    tx: Sender<Watched>,
    stop: Arc<AtomicBool>,
) {
    let mut retry = Backoff::new();
    let mut opened = false;
    while !stop.load(Relaxed) {
        match client.watch(&ranges) {
            Ok(mut watch) => {
                let from: Vec<String> = ranges.iter().map(|r| r.from.to_string()).collect();
                let how = if std::mem::replace(&mut opened, true) { "resumed" } else { "opened" };
                log::debug!("etcd watch {how} at {} from revision {}", watch.endpoint(), from.join(", "));
                if tx.send(Watched::Opened(watch.endpoint().to_string())).is_err() {
                    return;
                }
                while !stop.load(Relaxed) {
                    match watch.receive() {
                        Ok(WatchMessage::Changes(events)) => {
                            retry.reset();
                            // Each range's stream is in revision order, but the ranges are not in
                            // step: each resumes from its own.
                            for event in &events {
                                let key = event.kv.key.as_slice();
                                if let Some(range) =
                                    ranges.iter_mut().find(|r| r.start.as_slice() <= key && key < r.end.as_slice())
                                {
                                    range.from = range.from.max(event.kv.mod_revision + 1);
                                }
                            }
                            if tx.send(Watched::Changes(events)).is_err() {
                                return;
                            }
                        }
                        Ok(WatchMessage::Alive) => retry.reset(),
                        Ok(WatchMessage::Progress { range, revision }) => {
                            retry.reset();
                            // A stream that breaks resumes after it.
                            if let Some(range) = ranges.get_mut(range) {
                                range.from = range.from.max(revision + 1);
                            }
                            if tx.send(Watched::Progress { range, revision }).is_err() {
                                return;
                            }
                        }
                        Ok(WatchMessage::Compacted { revision }) => {
                            // What happened before `revision` is gone from etcd's history: have
                            // everything read again, and watch on from the oldest revision left, so
                            // that nothing after the read is missed either.
                            for range in &mut ranges {
                                range.from = range.from.max(revision);
                            }
                            if tx.send(Watched::Resync).is_err() {
                                return;
                            }
                            break;
                        }
                        Err(e) => {
                            log::debug!("etcd watch: {e}");
                            let forgotten = matches!(
                                e,
                                etcd::Error::Rejected { refusal: Refusal::InvalidToken | Refusal::NoUser, .. }
                            ) && client.has_credentials();
                            if forgotten {
                                // The watch was opened with a token etcd forgot (it restarted, or
                                // the token expired): the next one asks for a new token.
                                client.forget_token();
                            }
                            let e = client.misconfigured(e);
                            if e.is_permanent() {
                                // Authentication turned on without our user, a role without our
                                // keys: no retry can help. The etcd thread polls instead, and
                                // its polls say what to change.
                                let _ = tx.send(Watched::Ended(e.to_string()));
                                return;
                            }
                            break;
                        }
                    }
                }
            }
            Err(e) => log::debug!("cannot open the etcd watch: {e}"),
        }
        std::thread::sleep(retry.next());
    }
}

/// A member's addresses, as the log lines give them.
fn addresses(record: &Record) -> Addresses {
    Addresses { ipv4: record.ipv4, ipv6: record.ipv6 }
}

/// Keeps etcd trouble from flooding the log: a warning when it starts, a reminder now and then,
/// and a note when it is over.
#[derive(Default)]
struct Trouble {
    since: Option<Instant>,
    last_warning: Option<Instant>,
}

impl Trouble {
    fn failed(&mut self, what: &str, e: &etcd::Error) {
        let now = Instant::now();
        if matches!(e, etcd::Error::Unreachable(_)) {
            self.since.get_or_insert(now);
        }
        if self.last_warning.is_none_or(|t| now - t >= WARN_EVERY) {
            self.last_warning = Some(now);
            log::warn!("{what}: {e}");
        } else {
            log::debug!("{what}: {e}");
        }
    }

    fn recovered(&mut self, client: &etcd::Client) {
        self.last_warning = None;
        if let Some(since) = self.since.take() {
            log::info!("etcd at {} answers again after {:.1}s", client.endpoint(), since.elapsed().as_secs_f64());
        }
    }
}

/// What a node spreads over etcd's members by until it holds a name: its record, which holds its
/// address, hashed.
fn spread_key(record: &str) -> u64 {
    // FNV-1a: the same on every build, so that a node restarted goes where it went before.
    record.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Exponential backoff with jitter, so that a cluster's nodes do not retry in lockstep.
struct Backoff {
    next: Duration,
    random: Random,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { next: RETRY_MIN, random: Random::new() }
    }

    fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(RETRY_MAX);
        base / 2 + base.mul_f64(self.random.below(1000) as f64 / 2000.0)
    }

    fn reset(&mut self) {
        self.next = RETRY_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_waits_for_the_claims_while_they_move_and_not_for_long() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let first = |queued| Deferral::first(queued, t0);
        // 3 ms a claim queued, at least 200 ms, at most 10 s; a few claims are not waited for.
        assert_eq!(first(1000).map(|d| d.until), Some(at(3000)));
        assert_eq!(first(10).map(|d| d.until), Some(at(200)));
        assert_eq!(first(100_000).map(|d| d.until), Some(at(10_000)));
        assert!(first(8).is_none());
        assert!(first(0).is_none());
        // Counted again: fewer (or more) claims wait again, at least twice as long as the wait
        // before; the same count, a ticket left behind, or a few, do not; nor past 10 s from the
        // claim.
        let later = |queued, ms| first(1000).and_then(|d| d.again(queued, at(ms))).map(|d| d.until);
        assert_eq!(later(400, 3000), Some(at(4200)));
        assert_eq!(later(1200, 3000), Some(at(6600)));
        assert_eq!(later(20, 3000), Some(at(3400)));
        let third = first(1000).and_then(|d| d.again(500, at(3000))).and_then(|d| d.again(20, at(4500)));
        assert_eq!(third.map(|d| d.until), Some(at(5300)));
        assert_eq!(later(1000, 3000), None);
        assert_eq!(later(5, 3000), None);
        assert_eq!(later(0, 3000), None);
        assert_eq!(later(3000, 9000), Some(at(10_000)));
        assert_eq!(later(3000, 10_000), None);
    }

    #[test]
    fn a_watch_thread_tells_its_owner_how_it_ended() {
        type Body = fn(Sender<Watched>);
        let cases: [(Body, &[&str]); 3] = [
            (|_| {}, &["thread test-watch ended"]),
            (|tx| drop(tx.send(Watched::Resync)), &["resync", "thread test-watch ended"]),
            (|_| panic!("a bug in the watch thread, on purpose"), &["thread test-watch panicked"]),
        ];
        for (body, want) in cases {
            let messages = spawn_watch("test-watch", body).unwrap();
            // Every message until the thread is gone and its channel closed.
            let got: Vec<String> = messages
                .iter()
                .map(|message| match message {
                    Watched::Changes(_) => "changes".to_string(),
                    Watched::Progress { .. } | Watched::Opened(_) => "progress".to_string(),
                    Watched::Resync => "resync".to_string(),
                    Watched::Ended(why) => why,
                })
                .collect();
            assert_eq!(got, want);
        }
    }
}
