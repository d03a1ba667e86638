//! The subcommands that read the members: `idetcd members` lists them; the launchers
//! (`tf-config`, `torch-env`, `hostfile`, `exec`) wait until they make the job, then say it.
//! They read etcd with the daemon's Corefile and never write to it.

use std::fmt;
use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::address::{self, Addresses};
use crate::cli::{HostFormat, Launcher, Wait};
use crate::config::Config;
use crate::etcd;
use crate::exec;
use crate::job::{self, Job, Me, Pending, Progress};
use crate::record::Record;
use crate::view::{self, View};

/// Progress lines while waiting come no more often than this...
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// ...and, while nothing changes, only this often.
const REMIND_EVERY: Duration = Duration::from_secs(30);
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
        progress: Progress,
    },
    Exec(exec::Error),
    Output(std::io::Error),
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
            Error::TimedOut { after, progress } => {
                write!(f, "gave up waiting after {}: {progress}", humane(*after))
            }
            Error::Exec(e) => e.fmt(f),
            Error::Output(e) => write!(f, "cannot write the output: {e}"),
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
    let not_a_member = || Error::Job(format!("this host ({}) is no member", job::describe(&own)));
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

/// Reads the members until they make the job, printing progress now and then; gives up after
/// `timeout`. Without waiting, one read, and etcd trouble is an error at once.
fn wait_for_job<'c>(
    client: &mut etcd::Client,
    config: &'c Config,
    own: &Addresses,
    wait: Wait,
    timeout: Option<Duration>,
    me: Me,
) -> Result<Job<'c>, Error> {
    let started = Instant::now();
    let mut said: Option<(String, Instant)> = None;
    loop {
        let status = match read(client, config) {
            Ok(view) => match job::settle(&config.roles, view.members(), own, wait, me) {
                Ok(job) => return Ok(job),
                Err(Pending::Failed(why)) => return Err(Error::Job(why)),
                Err(Pending::Waiting(progress)) if wait == Wait::Now => return Err(Error::Job(progress.to_string())),
                Err(Pending::Waiting(progress)) => Err(progress),
            },
            Err(e) if e.is_permanent() => return Err(e.into()),
            Err(e) if wait == Wait::Now => return Err(e.into()),
            Err(e) => Ok(e.to_string()),
        };
        let line = match &status {
            Err(progress) => format!("waiting: {progress}"),
            Ok(trouble) => format!("waiting for etcd: {trouble}"),
        };
        let due = match &said {
            None => true,
            Some((last, at)) => at.elapsed() >= if *last == line { REMIND_EVERY } else { PROGRESS_EVERY },
        };
        if due {
            eprintln!("idetcd: {line}");
            said = Some((line, Instant::now()));
        }
        let mut pause = READ_EVERY;
        if let Some(timeout) = timeout {
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                let progress = match status {
                    Err(progress) => progress,
                    Ok(trouble) => {
                        Progress { seen: 0, wanted: 0, detail: format!(" (etcd did not answer: {trouble})") }
                    }
                };
                return Err(Error::TimedOut { after: timeout, progress });
            }
            pause = pause.min(left);
        }
        std::thread::sleep(pause);
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
}

fn table(rows: &[Row]) -> String {
    let cells: Vec<[String; 7]> = rows
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
            ]
        })
        .collect();
    let header = ["ROLE", "ID", "NAME", "IPV4", "IPV6", "PORT", "LEASE"].map(String::from);
    let widths: Vec<usize> =
        (0..7).map(|i| cells.iter().chain([&header]).map(|r| r[i].len()).max().unwrap_or(0)).collect();
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
        }
    }

    #[test]
    fn table_and_json() {
        let garbage = Row { record: Err("not JSON".into()), ..row("worker", 4, "10.0.0.4", None) };
        let rows = [row("ps", 1, "10.0.0.1", Some(17)), garbage, row("worker", 12, "10.0.0.12", None)];
        assert_eq!(
            table(&rows),
            "ROLE    ID  NAME                IPV4          IPV6  PORT  LEASE\n\
             ps      1   ps1.tf.local.       10.0.0.1      -     53    17s\n\
             worker  4   worker4.tf.local.   (unreadable)  -     -     -\n\
             worker  12  worker12.tf.local.  10.0.0.12     -     53    -\n\
             worker4.tf.local.: its value is no record, and the ID stays taken until the key goes: not JSON\n"
        );
        let json: serde_json::Value = serde_json::from_str(&to_json(&rows)).unwrap();
        assert_eq!(
            json[0],
            json!({"role": "ps", "id": 1, "name": "ps1.tf.local.", "ipv4": "10.0.0.1", "ipv6": null, "port": 53, "lease_ttl": 17, "error": null})
        );
        assert_eq!(json[1]["error"], "not JSON");
        assert_eq!(table(&[]), "ROLE  ID  NAME  IPV4  IPV6  PORT  LEASE\n");
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(humane(Duration::from_secs(2)), "2s");
        assert_eq!(humane(Duration::from_millis(2500)), "2.5s");
        assert_eq!(humane(Duration::from_secs(90)), "1m30s");
    }
}
