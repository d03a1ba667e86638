//! The subcommands that read the members: `idetcd members` lists them; the launchers
//! (`tf-config`, `torch-env`, `hostfile`, `exec`) wait until they make the job, then say it.
//! They read etcd with the daemon's Corefile and never write to it.

use std::fmt;
use std::io::Write;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde_json::json;

use crate::address::{self, Addresses};
use crate::cli::{HostFormat, Launcher, Wait};
use crate::config::Config;
use crate::etcd;
use crate::exec;
use crate::job::{self, Job, Me, Pending, Progress};
use crate::record::Record;
use crate::view::{self, View};

/// While waiting, a progress line comes as soon as etcd first answers (or this long after the
/// start if it does not), then one this often: whoever reads the log of a job that hangs sees what
/// it waits for, terminal or not.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How often etcd is read while waiting.
const READ_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub enum Error {
    Etcd(etcd::Error),
    /// The members do not make the job, and waiting would not help.
    Job(String),
    /// `--timeout` passed first.
    TimedOut {
        after: Duration,
        waiting: Waiting,
    },
    Exec(exec::Error),
    Output(std::io::Error),
    /// The thread that reads etcd while waiting could not start, or stopped.
    Reader(String),
}

impl Error {
    /// The exit status it ends the process with.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Exec(e) => e.exit_code(),
            _ => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Etcd(e) => e.fmt(f),
            Error::Job(why) => f.write_str(why),
            Error::TimedOut { after, waiting } => write!(f, "gave up after {} waiting{waiting}", humane(*after)),
            Error::Exec(e) => e.fmt(f),
            Error::Output(e) => write!(f, "cannot write the output: {e}"),
            Error::Reader(why) => write!(f, "reading etcd while waiting: {why}"),
        }
    }
}

impl From<etcd::Error> for Error {
    fn from(e: etcd::Error) -> Self {
        Error::Etcd(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Output(e)
    }
}

/// `idetcd members`.
pub fn members(config: &Config, json: bool, out: &mut impl Write) -> Result<(), Error> {
    let mut client = etcd::Client::new(config)?;
    // The nodes spread over the members the list names, as the daemons read it.
    if config.autosync.is_some() {
        // Unreachable, the read says so; else the Corefile's endpoints do.
        if let Err(e) = client.sync_members() {
            log::debug!("cannot read etcd's member list: {e}");
        }
    }
    let view = read(&mut client, config)?;
    let members = view.records().map(|(slot, record, lease)| (slot, lease, Ok(*record)));
    // A value that is no record still blocks its ID: listed, so that a skipped ID has a reason.
    let unreadable = view.unreadable().map(|(slot, lease, why)| (slot, lease, Err(why.to_string())));
    let mut found: Vec<_> = members.chain(unreadable).collect();
    found.sort_by_key(|(slot, _, _)| (slot.role, slot.id));
    let mut rows = Vec::new();
    for (slot, lease, record) in found {
        let ttl = match lease {
            0 => None,
            lease => client.lease_ttl(lease)?.map(|ttl| ttl.remaining),
        };
        rows.push(Row {
            role: &config.roles[slot.role].name,
            id: slot.id,
            name: slot.name(&config.roles),
            etcd: record.is_ok().then(|| client.preferred_for(slot.rank(&config.roles))),
            record,
            ttl,
        });
    }
    match json {
        true => writeln!(out, "{}", to_json(&rows))?,
        false => write!(out, "{}", table(&rows))?,
    }
    Ok(())
}

/// The launchers: wait until the members make the job `wait` asks for, then print it, or run a
/// command with it.
pub fn launch(
    config: &Config,
    wait: Wait,
    timeout: Option<Duration>,
    launcher: &Launcher,
    out: &mut impl Write,
) -> Result<u8, Error> {
    if let Launcher::TfConfig { job: Some(_), .. } = launcher {
        if config.roles.len() > 1 {
            return Err(Error::Job(format!(
                "--job renames the only role of a single-role Corefile; this one has roles, which are the job names: {}",
                config.role_names()
            )));
        }
    }
    let mut client = etcd::Client::new(config)?;
    let own = match (config.ipv4, config.ipv6) {
        (None, None) => address::detect(&config.endpoints),
        (ipv4, ipv6) => Addresses { ipv4, ipv6 },
    };
    let me = match launcher {
        Launcher::Hostfile { .. } => Me::NotNeeded,
        _ => Me::Needed,
    };
    let job = wait_for_job(&mut client, config, &own, wait, timeout, me)?;
    let short = job.short_roles();
    if matches!(wait, Wait::First(_)) && !short.is_empty() {
        eprintln!(
            "idetcd: note: --wait N counts this node's role only, and the others are short ({}): nodes \
             may see them differently; --wait all waits for every role",
            short.join(", ")
        );
    }
    let not_a_member = || Error::Job(format!("this host ({}) is no member", own));
    match launcher {
        Launcher::TfConfig { job: name, port } => {
            writeln!(out, "{}", job.tf_config(name.as_deref(), *port).ok_or_else(not_a_member)?)?;
        }
        Launcher::TorchEnv { port } => {
            for (key, value) in job.torch_env(*port).ok_or_else(not_a_member)? {
                writeln!(out, "{key}={value}")?;
            }
        }
        Launcher::Hostfile { slots, format } => {
            let hosts = job.hostfile(*slots, *format);
            // Horovod's discovery script runs on and on: no members is an answer, not an error.
            if hosts.is_empty() && *format != HostFormat::Horovod {
                return Err(Error::Job("no members yet".into()));
            }
            write!(out, "{hosts}")?;
        }
        Launcher::Exec { port, master_port, command } => {
            let env = environment(&job, *port, *master_port)?;
            return exec::run(&mut client, &job, &env, command, config.lease).map_err(Error::Exec);
        }
    }
    Ok(0)
}

/// Reads the members until they make the job, with a progress line on stderr now and then; gives
/// up after `timeout`. Without waiting, one read, and etcd trouble is an error at once.
fn wait_for_job<'c>(
    client: &mut etcd::Client,
    config: &'c Config,
    own: &Addresses,
    wait: Wait,
    timeout: Option<Duration>,
    me: Me,
) -> Result<Job<'c>, Error> {
    let settle = |view: &View| job::settle(&config.roles, view.members(), own, wait, me);
    if wait == Wait::Now {
        return match settle(&read(client, config)?) {
            Ok(job) => Ok(job),
            Err(Pending::Failed(why)) => Err(Error::Job(why)),
            Err(Pending::Waiting(progress)) => Err(Error::Job(progress.to_string())),
        };
    }
    let started = Instant::now();
    let deadline = timeout.map(|t| started + t);
    // What the job needs while nothing was read (whether this host is a member is not known yet):
    // a wait that can never end fails at once.
    let needed = match job::settle::<Record>(&config.roles, &[], own, wait, Me::NotNeeded) {
        Ok(job) => return Ok(job),
        Err(Pending::Failed(why)) => return Err(Error::Job(why)),
        Err(Pending::Waiting(progress)) => progress,
    };
    let mut waiting = Waiting { progress: needed, read: false, etcd: EtcdState::Asking(config.endpoints.join(", ")) };
    let reads = reader(client.clone(), config)?;
    let mut next_line = started + PROGRESS_EVERY;
    let mut said = false;
    loop {
        let wake = deadline.map_or(next_line, |d| d.min(next_line));
        match reads.recv_deadline(wake) {
            Ok(Ok(view)) => match settle(&view) {
                Ok(job) => return Ok(job),
                Err(Pending::Failed(why)) => return Err(Error::Job(why)),
                Err(Pending::Waiting(progress)) => {
                    waiting = Waiting { progress, read: true, etcd: EtcdState::Answers };
                }
            },
            Ok(Err(e)) if e.is_permanent() => return Err(e.into()),
            Ok(Err(e)) => waiting.etcd = EtcdState::Fails(e.to_string()),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err(Error::Reader("the reading thread stopped".into())),
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(Error::TimedOut { after: timeout.unwrap_or_default(), waiting });
        }
        // The first line as soon as etcd said something (or failed to), then one every few seconds.
        let first = !said && !matches!(waiting.etcd, EtcdState::Asking(_));
        if first || now >= next_line {
            eprintln!("idetcd: waiting{waiting}");
            said = true;
            next_line = now + PROGRESS_EVERY;
        }
    }
}

/// What a wait is at: how much of the job etcd showed, and whether etcd answers.
#[derive(Debug)]
pub struct Waiting {
    /// The last read's, or what the job needs while nothing was read.
    progress: Progress,
    /// Whether etcd ever answered.
    read: bool,
    etcd: EtcdState,
}

#[derive(Debug)]
enum EtcdState {
    /// Not a word from etcd yet: the first request is still under way (at these endpoints).
    Asking(String),
    Answers,
    Fails(String),
}

/// Follows `waiting` in a sentence: `waiting: saw 1 of 3 members …`, `waiting for 3 members …`.
impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.progress;
        match self.read {
            true => write!(f, ": {p}")?,
            false => write!(f, " for {} member{}{}", p.wanted, if p.wanted == 1 { "" } else { "s" }, p.detail)?,
        }
        match &self.etcd {
            EtcdState::Answers => Ok(()),
            EtcdState::Asking(endpoints) => write!(f, "; etcd ({endpoints}) has not answered yet"),
            EtcdState::Fails(trouble) if self.read => write!(f, "; etcd does not answer now: {trouble}"),
            EtcdState::Fails(trouble) => write!(f, "; etcd does not answer: {trouble}"),
        }
    }
}

/// Reads the members every `READ_EVERY` on a thread of its own, so that an etcd that does not
/// answer (a request may take seconds, for each endpoint, and a login first) holds up neither the
/// progress lines nor the timeout. The thread ends at its next read once the receiver is gone.
fn reader(mut client: etcd::Client, config: &Config) -> Result<Receiver<Result<View, etcd::Error>>, Error> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let config = config.clone();
    let spawned = std::thread::Builder::new().name("read".into()).spawn(move || loop {
        let started = Instant::now();
        if tx.send(read(&mut client, &config)).is_err() {
            return;
        }
        std::thread::sleep(READ_EVERY.saturating_sub(started.elapsed()));
    });
    match spawned {
        Ok(_) => Ok(rx),
        Err(e) => Err(Error::Reader(format!("cannot start a thread: {e}"))),
    }
}

/// Every role's members, read at one revision.
pub fn read(client: &mut etcd::Client, config: &Config) -> Result<View, etcd::Error> {
    let ranges = view::ranges(&config.roles);
    let read = client.read(&ranges)?;
    let mut view = View::new(&config.roles, b"");
    let revision = read.first().map_or(0, |r| r.revision);
    view.load(revision, read.into_iter().map(|r| r.kvs).collect());
    Ok(view)
}

/// What `exec` gives its command: TF_CONFIG, torchrun's variables and idetcd's own.
fn environment(job: &Job, port: u16, master_port: u16) -> Result<Vec<(String, String)>, Error> {
    let not_a_member = || Error::Job("this host is no member".into());
    let own = job.own().ok_or_else(not_a_member)?;
    let mut env = vec![("TF_CONFIG".to_string(), job.tf_config(None, port).ok_or_else(not_a_member)?)];
    env.extend(job.torch_env(master_port).ok_or_else(not_a_member)?.into_iter().map(|(k, v)| (k.to_string(), v)));
    let members: Vec<&str> = job.everyone().map(|m| m.host.as_str()).collect();
    env.extend([
        ("IDETCD_NAME".to_string(), own.host.clone()),
        ("IDETCD_ID".to_string(), own.slot.id.to_string()),
        ("IDETCD_ROLE".to_string(), job.roles[own.slot.role].name.clone()),
        ("IDETCD_MEMBERS".to_string(), members.join(",")),
    ]);
    Ok(env)
}

/// `2s`, `1m30s`.
fn humane(d: Duration) -> String {
    let secs = d.as_secs_f64();
    match secs < 60.0 {
        true => format!("{}s", (secs * 10.0).round() / 10.0),
        false => format!("{}m{}s", d.as_secs() / 60, d.as_secs() % 60),
    }
}

/// One line of `idetcd members`.
struct Row<'a> {
    role: &'a str,
    id: u32,
    name: String,
    /// Or why the key's value is none.
    record: Result<Record, String>,
    /// Seconds its lease has left; `None` without a lease (a record put by hand, say).
    ttl: Option<i64>,
    /// The etcd endpoint the node uses while it answers (see `etcd::Client::spread`).
    etcd: Option<String>,
}

fn table(rows: &[Row]) -> String {
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|m| {
            let (ipv4, ipv6, port) = match &m.record {
                Ok(r) => (
                    r.ipv4.map_or("-".into(), |ip| ip.to_string()),
                    r.ipv6.map_or("-".into(), |ip| ip.to_string()),
                    r.port.map_or("-".into(), |p| p.to_string()),
                ),
                Err(_) => ("(unreadable)".to_string(), "-".to_string(), "-".to_string()),
            };
            [
                m.role.to_string(),
                m.id.to_string(),
                m.name.clone(),
                ipv4,
                ipv6,
                port,
                m.ttl.map_or("-".into(), |t| format!("{t}s")),
                m.etcd.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = ["ROLE", "ID", "NAME", "IPV4", "IPV6", "PORT", "LEASE", "ETCD"].map(String::from);
    let widths: Vec<usize> =
        (0..8).map(|i| cells.iter().chain([&header]).map(|r| r[i].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in [&header].into_iter().chain(&cells) {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for m in rows {
        if let Err(why) = &m.record {
            out.push_str(&format!(
                "{}: its value is no record, and the ID stays taken until the key goes: {why}\n",
                m.name
            ));
        }
    }
    out
}

fn to_json(rows: &[Row]) -> String {
    let list: Vec<_> = rows
        .iter()
        .map(|m| {
            json!({
                "role": m.role,
                "id": m.id,
                "name": m.name,
                "ipv4": m.record.as_ref().ok().and_then(|r| r.ipv4).map(|ip| ip.to_string()),
                "ipv6": m.record.as_ref().ok().and_then(|r| r.ipv6).map(|ip| ip.to_string()),
                "port": m.record.as_ref().ok().and_then(|r| r.port),
                "lease_ttl": m.ttl,
                "etcd": m.etcd,
                "error": m.record.as_ref().err(),
            })
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(role: &'static str, id: u32, ipv4: &str, ttl: Option<i64>) -> Row<'static> {
        Row {
            role,
            id,
            name: format!("{role}{id}.tf.local."),
            record: Ok(Record { ipv4: Some(ipv4.parse().unwrap()), ipv6: None, port: Some(53) }),
            ttl,
            etcd: Some(format!("http://10.1.0.{}:2379", id % 3 + 1)),
        }
    }

    #[test]
    fn table_and_json() {
        let garbage = Row { record: Err("not JSON".into()), etcd: None, ..row("worker", 4, "10.0.0.4", None) };
        let rows = [row("ps", 1, "10.0.0.1", Some(17)), garbage, row("worker", 12, "10.0.0.12", None)];
        assert_eq!(
            table(&rows),
            "ROLE    ID  NAME                IPV4          IPV6  PORT  LEASE  ETCD\n\
             ps      1   ps1.tf.local.       10.0.0.1      -     53    17s    http://10.1.0.2:2379\n\
             worker  4   worker4.tf.local.   (unreadable)  -     -     -      -\n\
             worker  12  worker12.tf.local.  10.0.0.12     -     53    -      http://10.1.0.1:2379\n\
             worker4.tf.local.: its value is no record, and the ID stays taken until the key goes: not JSON\n"
        );
        let json: serde_json::Value = serde_json::from_str(&to_json(&rows)).unwrap();
        assert_eq!(
            json[0],
            json!({"role": "ps", "id": 1, "name": "ps1.tf.local.", "ipv4": "10.0.0.1", "ipv6": null, "port": 53, "lease_ttl": 17, "etcd": "http://10.1.0.2:2379", "error": null})
        );
        assert_eq!(json[1]["error"], "not JSON");
        assert_eq!(table(&[]), "ROLE  ID  NAME  IPV4  IPV6  PORT  LEASE  ETCD\n");
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(humane(Duration::from_secs(2)), "2s");
        assert_eq!(humane(Duration::from_millis(2500)), "2.5s");
        assert_eq!(humane(Duration::from_secs(90)), "1m30s");
    }
}
