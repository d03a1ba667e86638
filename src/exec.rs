//! `idetcd exec`: runs the job's command on this node, and stops it when the node loses its name.
//!
//! The command gets the job in its environment, and the signals exec receives. Meanwhile a fence
//! thread follows this node's key in etcd (its watch stream, and the lease's time to live now and
//! then): when the key goes, holds another node's record, or cannot be confirmed before its lease
//! would run out, the command is stopped, so that a training process never runs on under a name
//! another node may hold by then.

use std::ffi::OsString;
use std::fmt;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use signal_hook::consts::{SIGHUP, SIGINT, SIGKILL, SIGTERM};
use signal_hook::iterator::Signals;

use crate::clock::boottime;
use crate::etcd::{self, WatchRange};
use crate::job::Job;
use crate::membership;
use crate::messages::Watched;
use crate::record::Record;

/// How long a fenced command has between SIGTERM and SIGKILL.
const KILL_AFTER: Duration = Duration::from_secs(10);
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
    // The key as it is now: ours, and on which lease; followed from here on.
    let key = name.clone().into_bytes();
    let (now, revision) = read_key(client, &key)?;
    let lease_id = match now {
        Some((value, lease_id)) if Record::parse(&value).ok() == Some(own.record) => lease_id,
        _ => return Err(Error::Lost { name, why: "its key holds another node's record, or none".into() }),
    };

    // Caught before the command starts, so that none is missed in between.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(Error::Setup)?;
    let (program, args) = command.split_first().ok_or_else(|| Error::Spawn {
        command: String::new(),
        error: std::io::Error::new(std::io::ErrorKind::NotFound, "no command"),
    })?;
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .spawn()
        .map_err(|error| Error::Spawn { command: program.to_string_lossy().into_owned(), error })?;
    let pid = child.id() as i32;

    let (exited_tx, exited) = crossbeam_channel::bounded(1);
    spawn("exec-wait", move || {
        let _ = exited_tx.send(child.wait());
    })?;
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
        lease: lease_id,
        max_ttl: Duration::from_secs(u64::from(lease.max(1))),
    };
    spawn("exec-fence", move || fence.run(revision, lost_tx))?;

    supervise(pid, &exited, &caught, &lost, &name)
}

/// Waits for the command to end, passing signals on and stopping it when the name is lost.
fn supervise(
    pid: i32,
    exited: &Receiver<std::io::Result<ExitStatus>>,
    caught: &Receiver<i32>,
    lost: &Receiver<String>,
    name: &str,
) -> Result<u8, Error> {
    let mut fenced: Option<(String, Instant)> = None;
    let mut lost = lost.clone();
    loop {
        let timeout =
            fenced.as_ref().map_or(Duration::from_secs(3600), |(_, at)| at.saturating_duration_since(Instant::now()));
        select! {
            recv(exited) -> status => {
                let status = status.map_err(|_| Error::Setup(std::io::Error::other("the wait thread is gone")))?;
                let status = status.map_err(Error::Setup)?;
                if let Some((why, _)) = fenced {
                    return Err(Error::Lost { name: name.to_string(), why });
                }
                return Ok(exit_code(status));
            }
            recv(caught) -> signal => {
                if let Ok(signal) = signal {
                    send(pid, signal);
                }
            }
            recv(lost) -> why => {
                let why = why.unwrap_or_else(|_| "the fence stopped".to_string());
                eprintln!("idetcd: this host no longer holds {name}: {why}; stopping the command");
                send(pid, SIGTERM);
                fenced = Some((why, Instant::now() + KILL_AFTER));
                lost = crossbeam_channel::never();
            }
            default(timeout) => {
                if fenced.is_some() {
                    eprintln!("idetcd: the command did not stop within {}s of SIGTERM; killing it", KILL_AFTER.as_secs());
                    send(pid, SIGKILL);
                    fenced = fenced.map(|(why, _)| (why, Instant::now() + Duration::from_secs(3600)));
                }
            }
        }
    }
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

fn send(pid: i32, signal: i32) {
    // SAFETY: kill only sends a signal; `pid` is our child, which the wait thread reaps only once
    // it has ended, after which no signal is sent any more.
    unsafe { libc::kill(pid, signal) };
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<(), Error> {
    std::thread::Builder::new().name(name.to_string()).spawn(body).map(|_| ()).map_err(Error::Setup)
}

/// The key's value and lease (`None` when it is gone), and the revision it was read at.
type KeyNow = (Option<(Vec<u8>, i64)>, i64);

fn read_key(client: &mut etcd::Client, key: &[u8]) -> Result<KeyNow, Error> {
    let range = client.range(key, &[key, &[0]].concat()).map_err(Error::Etcd)?;
    Ok((range.kvs.into_iter().next().map(|kv| (kv.value, kv.lease)), range.revision))
}

/// What the fence thread follows: this node's key, its record and the lease it is on.
struct Fence {
    client: etcd::Client,
    key: Vec<u8>,
    record: Record,
    lease: i64,
    /// The longest a lease lasts unrenewed, as the Corefile asks for it.
    max_ttl: Duration,
}

impl Fence {
    /// Follows the key from `revision` on until the name is lost, then says why on `lost`.
    fn run(mut self, revision: i64, lost: Sender<String>) {
        let (changes_tx, changes) = crossbeam_channel::unbounded();
        let range =
            WatchRange { start: self.key.clone(), end: [self.key.as_slice(), &[0]].concat(), from: revision + 1 };
        let client = self.client.clone();
        if std::thread::Builder::new()
            .name("exec-watch".into())
            .spawn(move || membership::follow(client, vec![range], changes_tx))
            .is_err()
        {
            let _ = lost.send("cannot follow the key in etcd".into());
            return;
        }
        // Until etcd says otherwise, the lease may end as early as a full TTL after we read it.
        let mut deadline = boottime() + self.max_ttl;
        let mut next_check = Instant::now();
        let why = loop {
            let timeout = next_check.saturating_duration_since(Instant::now());
            select! {
                recv(changes) -> message => match message {
                    Ok(Watched::Changes(events)) => {
                        let mut now = events.iter().map(|e| (!e.deleted).then_some((e.kv.value.as_slice(), e.kv.lease)));
                        if let Some(why) = now.find_map(|key| self.judge(key)) {
                            break why;
                        }
                    }
                    // The watch missed changes: the key as it is now says all.
                    Ok(Watched::Resync) => match read_key(&mut self.client, &self.key) {
                        Ok((now, _)) => {
                            if let Some(why) = self.judge(now.as_ref().map(|(value, lease)| (value.as_slice(), *lease))) {
                                break why;
                            }
                        }
                        Err(_) => next_check = Instant::now(),
                    },
                    Err(_) => break "the watch on its key stopped".to_string(),
                },
                default(timeout) => {}
            }
            if Instant::now() < next_check {
                continue;
            }
            let before = boottime();
            match self.client.lease_ttl(self.lease) {
                Ok(Some(ttl)) => {
                    deadline = before + Duration::from_secs(ttl.max(0) as u64);
                    // As often as the daemon renews it.
                    next_check = Instant::now() + (self.max_ttl / 3).max(Duration::from_secs(1));
                }
                Ok(None) => break format!("its lease {:x} is gone", self.lease),
                Err(e) => {
                    if boottime() >= deadline {
                        break format!("etcd could not confirm it before its lease would end ({e})");
                    }
                    next_check = Instant::now() + Duration::from_secs(1);
                }
            }
        };
        let _ = lost.send(why);
    }

    /// Why the key's new value and lease (`None`: deleted) mean the name is lost, if they do.
    /// The same record on another lease is this node's daemon restarted: it kept the name.
    fn judge(&mut self, now: Option<(&[u8], i64)>) -> Option<String> {
        let Some((value, lease)) = now else {
            return Some("its key was deleted (its lease ended or was revoked)".into());
        };
        match Record::parse(value) {
            Ok(record) if record == self.record => {
                self.lease = lease;
                None
            }
            _ => Some(format!("its key now holds another node's record, {}", String::from_utf8_lossy(value))),
        }
    }
}
