//! The member list for the subcommands: `idetcd members` shows it, `idetcd tf-config` turns it into
//! TensorFlow's `TF_CONFIG`. Both read etcd once (or until enough members are there) with the
//! daemon's Corefile, and never write to it.

use std::fmt;
use std::io::Write;
use std::time::Duration;

use serde_json::json;

use crate::address::{self, Addresses};
use crate::config::Config;
use crate::etcd;
use crate::pattern::Pattern;
use crate::record::Record;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u32,
    pub name: String,
    pub record: Record,
    /// Seconds its lease has left; `None` without a lease (a record put by hand, say).
    pub ttl: Option<i64>,
}

#[derive(Debug)]
pub enum Error {
    Etcd(etcd::Error),
    /// This host's addresses are on no member's record.
    NotAMember {
        addresses: String,
        pattern: String,
    },
    /// This host holds a name past the first `wanted`: it is no task of that cluster.
    Beyond {
        name: String,
        wanted: usize,
    },
    /// `--wait` asked for more members than the Corefile's limit allows.
    TooMany {
        wanted: usize,
        limit: usize,
    },
    Output(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Etcd(e) => e.fmt(f),
            Error::NotAMember { addresses, pattern } => write!(
                f,
                "this host ({addresses}) is no member of {pattern}; is idetcd running here, with the same Corefile?"
            ),
            Error::Beyond { name, wanted } => {
                write!(f, "this host holds {name}, which is not among the first {wanted} of the cluster")
            }
            Error::TooMany { wanted, limit } => {
                write!(f, "--wait {wanted} asks for more members than the limit of {limit} allows")
            }
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
    let members = read(&mut client, &config.pattern, true)?;
    match json {
        true => writeln!(out, "{}", to_json(&members))?,
        false => write!(out, "{}", table(&members))?,
    }
    Ok(())
}

/// `idetcd tf-config`. With `--wait N` the cluster is the first N IDs, whatever else joins, so
/// that every node that runs it prints the same cluster; without, it is every member right now.
pub fn tf_config(
    config: &Config,
    job: &str,
    port: u16,
    wait: Option<usize>,
    out: &mut impl Write,
) -> Result<(), Error> {
    let mut client = etcd::Client::new(config)?;
    let own = match (config.ipv4, config.ipv6) {
        (None, None) => address::detect(&config.endpoints),
        (ipv4, ipv6) => Addresses { ipv4, ipv6 },
    };
    let not_a_member = || Error::NotAMember { addresses: describe(&own), pattern: config.pattern.to_string() };
    let Some(n) = wait else {
        let members = read(&mut client, &config.pattern, false)?;
        let spec = spec(&members, &own, job, port).ok_or_else(not_a_member)?;
        writeln!(out, "{spec}")?;
        return Ok(());
    };
    let first = *config.ids.start();
    let last = first.saturating_add(u32::try_from(n - 1).unwrap_or(u32::MAX));
    if last > *config.ids.end() {
        return Err(Error::TooMany { wanted: n, limit: config.ids.clone().count() });
    }
    // SAFETY: isatty only inspects a descriptor number.
    let terminal = unsafe { libc::isatty(libc::STDERR_FILENO) } == 1;
    let mut progress = String::new();
    loop {
        let status = match read(&mut client, &config.pattern, false) {
            Ok(members) => {
                if let Some(beyond) = position(&members, &own).map(|i| &members[i]).filter(|m| m.id > last) {
                    return Err(Error::Beyond { name: beyond.name.clone(), wanted: n });
                }
                let wanted: Vec<Member> = members.into_iter().filter(|m| (first..=last).contains(&m.id)).collect();
                let own_place = position(&wanted, &own);
                if wanted.len() == n && own_place.is_some() {
                    if terminal && !progress.is_empty() {
                        eprint!("\r\x1b[K");
                    }
                    let spec = spec(&wanted, &own, job, port).ok_or_else(not_a_member)?;
                    writeln!(out, "{spec}")?;
                    return Ok(());
                }
                match own_place {
                    Some(_) => format!("waiting for members: {} of {n}", wanted.len()),
                    None => format!(
                        "waiting for members: {} of {n}, this host ({}) not among them yet",
                        wanted.len(),
                        describe(&own)
                    ),
                }
            }
            Err(e) => format!("waiting for etcd: {e}"),
        };
        if terminal && status != progress {
            eprint!("\r\x1b[K{status}");
            progress = status;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The members in ID order, each with its lease's time left if asked.
pub fn read(client: &mut etcd::Client, pattern: &Pattern, with_ttl: bool) -> Result<Vec<Member>, etcd::Error> {
    let (start, end) = pattern.key_range();
    let range = client.range(start.as_bytes(), end.as_bytes())?;
    let mut members = Vec::new();
    for kv in range.kvs {
        let Ok(name) = String::from_utf8(kv.key) else { continue };
        let Some(id) = pattern.id_of(&name) else { continue };
        let Ok(record) = Record::parse(&kv.value) else { continue };
        let ttl = match (with_ttl, kv.lease) {
            (true, lease) if lease != 0 => client.lease_ttl(lease)?,
            _ => None,
        };
        members.push(Member { id, name, record, ttl });
    }
    members.sort_by_key(|m| m.id);
    Ok(members)
}

fn table(members: &[Member]) -> String {
    let rows: Vec<[String; 6]> = members
        .iter()
        .map(|m| {
            [
                m.id.to_string(),
                m.name.clone(),
                m.record.ipv4.map_or("-".into(), |ip| ip.to_string()),
                m.record.ipv6.map_or("-".into(), |ip| ip.to_string()),
                m.record.port.map_or("-".into(), |p| p.to_string()),
                m.ttl.map_or("-".into(), |t| format!("{t}s")),
            ]
        })
        .collect();
    let header = ["ID", "NAME", "IPV4", "IPV6", "PORT", "LEASE"].map(String::from);
    let widths: Vec<usize> =
        (0..6).map(|i| rows.iter().chain([&header]).map(|r| r[i].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in [&header].into_iter().chain(&rows) {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn to_json(members: &[Member]) -> String {
    let list: Vec<_> = members
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "name": m.name,
                "ipv4": m.record.ipv4.map(|ip| ip.to_string()),
                "ipv6": m.record.ipv6.map(|ip| ip.to_string()),
                "port": m.record.port,
                "lease_ttl": m.ttl,
            })
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

/// This host's place among the members: the first whose record carries one of its addresses.
fn position(members: &[Member], own: &Addresses) -> Option<usize> {
    members.iter().position(|m| {
        (own.ipv4.is_some() && m.record.ipv4 == own.ipv4) || (own.ipv6.is_some() && m.record.ipv6 == own.ipv6)
    })
}

/// The `TF_CONFIG` document, or `None` when this host is no member.
fn spec(members: &[Member], own: &Addresses, job: &str, port: u16) -> Option<String> {
    let index = position(members, own)?;
    let hosts: Vec<String> = members.iter().map(|m| format!("{}:{port}", m.name.trim_end_matches('.'))).collect();
    Some(json!({ "cluster": { job: hosts }, "task": { "type": job, "index": index } }).to_string())
}

fn describe(own: &Addresses) -> String {
    let list: Vec<String> =
        [own.ipv4.map(|ip| ip.to_string()), own.ipv6.map(|ip| ip.to_string())].into_iter().flatten().collect();
    if list.is_empty() {
        "no address found".to_string()
    } else {
        list.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u32, ipv4: &str, ttl: Option<i64>) -> Member {
        Member {
            id,
            name: format!("worker{id}.tf.local."),
            record: Record { ipv4: Some(ipv4.parse().unwrap()), ipv6: None, port: Some(53) },
            ttl,
        }
    }

    #[test]
    fn tf_config_names_every_member_and_this_one() {
        let members = [member(1, "10.0.0.1", None), member(2, "10.0.0.2", None), member(5, "10.0.0.5", None)];
        let own = Addresses { ipv4: Some("10.0.0.5".parse().unwrap()), ipv6: None };
        let got: serde_json::Value = serde_json::from_str(&spec(&members, &own, "worker", 2222).unwrap()).unwrap();
        let want = json!({
            "cluster": { "worker": ["worker1.tf.local:2222", "worker2.tf.local:2222", "worker5.tf.local:2222"] },
            "task": { "type": "worker", "index": 2 },
        });
        assert_eq!(got, want);
        let stranger = Addresses { ipv4: Some("10.9.9.9".parse().unwrap()), ipv6: None };
        assert_eq!(spec(&members, &stranger, "worker", 2222), None);
        assert_eq!(spec(&members, &Addresses::default(), "worker", 2222), None, "no address matches nothing");
    }

    #[test]
    fn table_and_json() {
        let members = [member(1, "10.0.0.1", Some(17)), member(12, "10.0.0.12", None)];
        assert_eq!(
            table(&members),
            "ID  NAME                IPV4       IPV6  PORT  LEASE\n\
             1   worker1.tf.local.   10.0.0.1   -     53    17s\n\
             12  worker12.tf.local.  10.0.0.12  -     53    -\n"
        );
        let json: serde_json::Value = serde_json::from_str(&to_json(&members)).unwrap();
        assert_eq!(
            json[0],
            json!({"id": 1, "name": "worker1.tf.local.", "ipv4": "10.0.0.1", "ipv6": null, "port": 53, "lease_ttl": 17})
        );
        assert_eq!(table(&[]), "ID  NAME  IPV4  IPV6  PORT  LEASE\n");
    }
}
