//! `idetcd exec`: runs the job's command on this node, and stops it when the node loses its name.
//!
//! The command gets the job in its environment, and the signals exec receives. Meanwhile a fence
//! thread follows this node's key in etcd (its watch stream, and the lease's time to live now and
//! then): when the key goes, holds another node's record, or cannot be confirmed before its lease
//! would run out, the command is stopped, so that a training process never runs on under a name
//! another node may hold by then.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use signal_hook::consts::{SIGALRM, SIGCONT, SIGHUP, SIGINT, SIGKILL, SIGQUIT, SIGTERM, SIGTSTP, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;

use crate::clock::boottime;
use crate::etcd::{self, WatchRange};
use crate::job::Job;
use crate::membership;
use crate::messages::Watched;
use crate::record::Record;
use crate::sys::{self, ChildState};

/// Signals exec passes on to the command: the stopping ones, and those programs use to be told
/// something (SLURM's SIGUSR1 before a job's time is up, say), which would otherwise end exec.
const PASSED_ON: [i32; 7] = [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM];

/// How long a fenced command has between SIGTERM and SIGKILL.
const KILL_AFTER: Duration = Duration::from_secs(10);
/// Why the fence stops the command, and by when (`boottime`) it must be gone, if sooner than
/// `KILL_AFTER` from now: before the lease could end and another node take the name.
struct Lost {
    why: String,
    kill_by: Option<Duration>,
}

impl Lost {
    fn now(why: impl Into<String>) -> Lost {
        Lost { why: why.into(), kill_by: None }
    }
}

/// The exit status when this node lost its name (EX_TEMPFAIL: try again later).
pub const LOST_NAME: u8 = 75;

#[derive(Debug)]
pub enum Error {
    /// This node's key is not (or no longer) its own; the command was stopped, or never started.
    Lost {
        name: String,
        why: String,
    },
    /// The command could not be started.
    Spawn {
        command: String,
        error: std::io::Error,
    },
    Etcd(etcd::Error),
    Setup(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Lost { name, why } => write!(f, "this host no longer holds {name}: {why}"),
            Error::Spawn { command, error } => write!(f, "cannot run {command}: {error}"),
            Error::Etcd(e) => e.fmt(f),
            Error::Setup(e) => write!(f, "cannot watch over the command: {e}"),
        }
    }
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Lost { .. } => LOST_NAME,
            // As shells do: 127 for a command not found, 126 for one that cannot be run.
            Error::Spawn { error, .. } if error.kind() == std::io::ErrorKind::NotFound => 127,
            Error::Spawn { .. } => 126,
            _ => 1,
        }
    }
}

/// Runs `command` with `env` added, and returns its exit status (128 + the signal that ended it).
/// `lease` is the Corefile's, the most a lease lasts unrenewed.
pub fn run(
    client: &mut etcd::Client,
    job: &Job,
    env: &[(String, String)],
    command: &[OsString],
    lease: u32,
) -> Result<u8, Error> {
    let own = job.own().ok_or_else(|| Error::Lost { name: "a name".into(), why: "this host is no member".into() })?;
    let name = own.slot.name(job.roles);
    // The key as it is now: ours, and since when; followed from here on.
    let key = name.clone().into_bytes();
    let (now, revision) = read_key(client, &key)?;
    let held = match now {
        Some(held) if Record::parse(&held.value).ok() == Some(own.record) => held,
        _ => return Err(Error::Lost { name, why: "its key holds another node's record, or none".into() }),
    };

    // The wait below needs the command's exit reported to us, whatever was inherited.
    sys::default_sigchld();
    // Caught before the command starts, so that none is missed in between.
    let mut signals = Signals::new(PASSED_ON.iter().copied().chain([SIGTSTP, SIGCONT])).map_err(Error::Setup)?;
    let (caught_tx, caught) = crossbeam_channel::unbounded();
    spawn("exec-signals", move || {
        for signal in signals.forever() {
            if caught_tx.send(signal).is_err() {
                return;
            }
        }
    })?;
    let (lost_tx, lost) = crossbeam_channel::bounded(1);
    let fence = Fence {
        client: client.clone(),
        key,
        record: own.record,
        held,
        max_ttl: Duration::from_secs(u64::from(lease.max(1))),
    };
    spawn("exec-fence", move || fence.run(revision, lost_tx))?;

    let (program, args) = command.split_first().ok_or_else(|| Error::Spawn {
        command: String::new(),
        error: std::io::Error::new(std::io::ErrorKind::NotFound, "no command"),
    })?;
    let terminal = Terminal::of_job();
    let mut spawn_command = Command::new(program);
    spawn_command.args(args).envs(env.iter().map(|(k, v)| (k, v)));
    // A process group of its own, so that a signal reaches every process the command started
    // (torchrun's workers, a shell's children), not only the first.
    spawn_command.process_group(0);
    // Without exec nothing fences the command: if exec is killed outright, the command goes too.
    sys::die_with_parent(&mut spawn_command);
    if terminal.as_ref().is_some_and(Terminal::ours) {
        // So that it reads the terminal and gets Ctrl-C and Ctrl-Z as a shell's foreground job would.
        sys::take_terminal(&mut spawn_command);
    }
    let mut child = spawn_command
        .spawn()
        .map_err(|error| Error::Spawn { command: program.to_string_lossy().into_owned(), error })?;
    let group = Group(child.id() as i32);
    let (events_tx, events) = crossbeam_channel::unbounded();
    if let Err(e) = spawn("exec-wait", move || group.watch(&events_tx)) {
        // Nothing could watch over it: it must not run at all.
        group.signal(SIGKILL);
        let _ = child.wait();
        return Err(e);
    }

    let fenced = supervise(group, terminal.as_ref(), &events, &caught, &lost, &name);
    if fenced.is_some() {
        // What the command left running must not run on under a lost name either; sent before
        // the leader is reaped, while the group's ID is still ours.
        group.signal(SIGKILL);
    }
    // The command has ended, but is not reaped yet: until now its process ID, which is the
    // group's, could not be reused, so no signal above could reach a stranger.
    let status = child.wait().map_err(Error::Setup);
    if let Some(terminal) = terminal.filter(|_| group.has_terminal()) {
        terminal.give(sys::own_group());
    }
    match fenced {
        Some(why) => Err(Error::Lost { name, why }),
        None => status.map(exit_code),
    }
}

/// What the wait thread tells of the command.
enum ChildEvent {
    /// Stopped by a signal (Ctrl-Z, or reading the terminal from the background).
    Stopped,
    /// Ended; not reaped yet.
    Exited,
}

/// Waits for the command to end, passing signals on, following job control in a terminal, and
/// stopping the command when the name is lost; returns why it was stopped, if it was.
fn supervise(
    group: Group,
    terminal: Option<&Terminal>,
    events: &Receiver<ChildEvent>,
    caught: &Receiver<i32>,
    lost: &Receiver<Lost>,
    name: &str,
) -> Option<String> {
    let mut fenced: Option<String> = None;
    // When SIGKILL follows the SIGTERM of a fence, and how long after it.
    let mut kill_at: Option<(Instant, Duration)> = None;
    let mut lost = lost.clone();
    loop {
        let timeout = kill_at.map_or(Duration::from_secs(3600), |(at, _)| at.saturating_duration_since(Instant::now()));
        select! {
            recv(events) -> event => match event {
                Ok(ChildEvent::Stopped) => {
                    // A shell's job: stop with the command, so that the shell sees it and takes
                    // the terminal back; `fg` or `bg` continues both.
                    if terminal.is_some() {
                        suspend(group, terminal);
                    }
                }
                Ok(ChildEvent::Exited) | Err(_) => return fenced,
            },
            recv(caught) -> signal => match signal {
                Ok(SIGTSTP) => {
                    group.signal(SIGTSTP);
                    suspend(group, terminal);
                }
                Ok(SIGCONT) => resume(group, terminal),
                Ok(signal) => group.signal(signal),
                Err(_) => {}
            },
            recv(lost) -> verdict => {
                let Lost { why, kill_by } = verdict.unwrap_or_else(|_| Lost::now("the fence stopped"));
                eprintln!("idetcd: this host no longer holds {name}: {why}; stopping the command");
                group.signal(SIGTERM);
                // A stopped command must run to end.
                group.signal(SIGCONT);
                fenced = Some(why);
                let grace = kill_by.map_or(KILL_AFTER, |by| by.saturating_sub(boottime()).min(KILL_AFTER));
                kill_at = Some((Instant::now() + grace, grace));
                lost = crossbeam_channel::never();
            }
            default(timeout) => {
                if let Some((_, grace)) = kill_at.take() {
                    eprintln!("idetcd: the command did not stop within {grace:.1?} of SIGTERM; killing it");
                    group.signal(SIGKILL);
                }
            }
        }
    }
}

/// Stops exec itself until it is continued, then continues the command.
fn suspend(group: Group, terminal: Option<&Terminal>) {
    if let Some(terminal) = terminal.filter(|_| group.has_terminal()) {
        terminal.give(sys::own_group());
    }
    sys::stop_self();
    resume(group, terminal);
}

/// Continues the command, with the terminal when exec has it (`fg`, not `bg`).
fn resume(group: Group, terminal: Option<&Terminal>) {
    if let Some(terminal) = terminal.filter(|t| t.ours()) {
        terminal.give(group.0);
    }
    group.signal(SIGCONT);
}

/// The shell's convention: the exit code, or 128 + the signal's number.
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => (128 + signal) as u8,
        (None, None) => 1,
    }
}

/// The command's process group; its ID is the command's process ID.
#[derive(Clone, Copy)]
struct Group(i32);

impl Group {
    fn signal(self, signal: i32) {
        // The group's leader is our child, and is reaped only after the last signal: until then
        // its ID names this group and no other.
        sys::signal_group(self.0, signal);
    }

    /// Whether the group is the terminal's foreground.
    fn has_terminal(self) -> bool {
        sys::terminal_group() == self.0
    }

    /// Tells `events` of every stop of the leader and, last, of its end, leaving it unreaped.
    fn watch(self, events: &Sender<ChildEvent>) {
        while sys::wait_child(self.0) == ChildState::Stopped {
            if events.send(ChildEvent::Stopped).is_err() {
                return;
            }
        }
        let _ = events.send(ChildEvent::Exited);
    }
}

/// The terminal whose foreground job exec is, in an interactive shell; the command gets it while it
/// runs.
struct Terminal;

impl Terminal {
    /// Only when exec runs on a terminal and leads a process group of its own: a shell with job
    /// control started it, in the foreground or not. A script without job control keeps Ctrl-C
    /// for itself too.
    fn of_job() -> Option<Terminal> {
        sys::leads_a_terminal_job().then_some(Terminal)
    }

    /// Whether exec's group has the terminal (after `fg`, not after `bg`).
    fn ours(&self) -> bool {
        sys::terminal_group() == sys::own_group()
    }

    /// Makes `group` the terminal's foreground process group.
    fn give(&self, group: libc::pid_t) {
        sys::give_terminal(group);
    }
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<(), Error> {
    std::thread::Builder::new().name(name.to_string()).spawn(body).map(|_| ()).map_err(Error::Setup)
}

/// This node's key as read: its value, its lease (0 for none) and when it was created.
#[derive(Clone, Debug)]
struct Held {
    value: Vec<u8>,
    lease: i64,
    create_revision: i64,
}

/// The key (`None` when it is gone), and the revision it was read at.
fn read_key(client: &mut etcd::Client, key: &[u8]) -> Result<(Option<Held>, i64), Error> {
    let range = client.range(key, &[key, &[0]].concat()).map_err(Error::Etcd)?;
    let held = range.kvs.into_iter().next().map(|kv| Held {
        value: kv.value,
        lease: kv.lease,
        create_revision: kv.create_revision,
    });
    Ok((held, range.revision))
}

/// What the fence thread follows: this node's key, its record and the lease it is on.
struct Fence {
    client: etcd::Client,
    key: Vec<u8>,
    record: Record,
    /// The key as last seen.
    held: Held,
    /// The longest a lease lasts unrenewed, as the Corefile asks for it.
    max_ttl: Duration,
}

impl Fence {
    /// Follows the key from `revision` on until the name is lost, or could be before the command
    /// is gone, then says why on `lost`.
    fn run(mut self, revision: i64, lost: Sender<Lost>) {
        let range =
            WatchRange { start: self.key.clone(), end: [self.key.as_slice(), &[0]].concat(), from: revision + 1 };
        let client = self.client.clone();
        // Ends with the fence, which drops `changes`.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let follow = move |changes_tx| membership::follow(client, vec![range], changes_tx, stop);
        let Ok(changes) = membership::spawn_watch("exec-watch", follow) else {
            let _ = lost.send(Lost::now("cannot follow the key in etcd"));
            return;
        };
        // The command is stopped while this much of the lease is left unconfirmed, so that it is
        // gone before the lease could end unrenewed and another node take the name. A lease
        // renewed every third of its TTL never comes this close.
        let grace = (self.max_ttl / 4).min(KILL_AFTER);
        // All times on the boot-time clock, which counts through suspends and pauses. Until etcd
        // says otherwise, the lease may end a full TTL after the key was read.
        let mut deadline = boottime() + self.max_ttl;
        let mut next_check = boottime();
        let mut resync = false;
        let mut trouble: Option<String> = None;
        let verdict = loop {
            let wake = next_check.min(deadline.saturating_sub(grace));
            let timeout = wake.saturating_sub(boottime()).min(Duration::from_secs(1));
            select! {
                recv(changes) -> message => match message {
                    Ok(Watched::Changes(events)) => {
                        let mut seen = events.iter().map(|e| {
                            let kv = &e.kv;
                            (!e.deleted).then(|| Held { value: kv.value.clone(), lease: kv.lease, create_revision: kv.create_revision })
                        });
                        if let Some(why) = seen.find_map(|now| self.judge(now)) {
                            break Lost::now(why);
                        }
                    }
                    // The watch missed changes: the key as it is now says all.
                    Ok(Watched::Resync) => resync = true,
                    // How far the watch got matters only to itself.
                    Ok(Watched::Progress { .. } | Watched::Opened(_)) => {}
                    Ok(Watched::Ended(_)) | Err(_) => break Lost::now("the watch on its key stopped"),
                },
                default(timeout) => {}
            }
            if resync {
                if let Ok((now, _)) = read_key(&mut self.client, &self.key) {
                    resync = false;
                    if let Some(why) = self.judge(now) {
                        break Lost::now(why);
                    }
                }
            }
            if self.held.lease == 0 {
                // A record put without a lease (by hand, say) holds its name until it is deleted.
                deadline = Duration::MAX;
            } else if boottime() >= next_check {
                let before = boottime();
                match self.client.lease_ttl(self.held.lease) {
                    Ok(Some(ttl)) => {
                        trouble = None;
                        let ttl = Duration::from_secs(ttl.remaining as u64);
                        deadline = before + ttl;
                        // As often as the daemon renews it, and oftener as its end nears.
                        let every = (self.max_ttl / 3).min(ttl / 2).max(Duration::from_millis(250));
                        next_check = boottime() + every;
                    }
                    Ok(None) => break Lost::now(format!("its lease {:x} is gone", self.held.lease)),
                    Err(e) => {
                        trouble = Some(e.to_string());
                        next_check = boottime() + Duration::from_secs(1);
                    }
                }
            }
            if deadline.saturating_sub(boottime()) <= grace {
                let why = match &trouble {
                    Some(e) => format!("etcd cannot confirm it, and its lease could end within {grace:?} ({e})"),
                    None => format!("its lease could end within {grace:?}, unrenewed (is the idetcd daemon running?)"),
                };
                break Lost { why, kill_by: Some(deadline) };
            }
        };
        let _ = lost.send(verdict);
    }

    /// Why the key as it is now (`None`: deleted) means the name is lost, if it does. Our record
    /// on another lease, the key not re-created meanwhile, is this node's daemon restarted: it
    /// kept the name all along.
    fn judge(&mut self, now: Option<Held>) -> Option<String> {
        let Some(now) = now else {
            return Some("its key was deleted (its lease ended or was revoked)".into());
        };
        if Record::parse(&now.value).ok() != Some(self.record) {
            return Some(format!("its key now holds another node's record, {}", String::from_utf8_lossy(&now.value)));
        }
        if now.create_revision != self.held.create_revision {
            return Some("its key was deleted and taken anew meanwhile".into());
        }
        self.held = now;
        None
    }
}
