//! The validated configuration every other module works from, with its defaults.
//!
//! `corefile` is the only producer; everything here has already been checked, so the rest of the
//! daemon never re-validates a setting.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use crate::pattern::Pattern;

pub const DEFAULT_LIMIT: u32 = 10;
pub const DEFAULT_PORT: u16 = 53;
pub const DEFAULT_TTL: u32 = 5;
pub const DEFAULT_LEASE: u32 = 20;
/// How often etcd's member list is read (`autosync`): as often as a member is added or replaced,
/// which is rarely, and a read costs etcd one small request.
pub const DEFAULT_AUTOSYNC: Duration = Duration::from_secs(300);
/// How many members the zone's NS set names: enough that one node down leaves two.
pub const DEFAULT_NAMESERVERS: u32 = 3;
/// The most `nameservers` takes: the root zone's count, and about what fits a 512-byte answer.
pub const MAX_NAMESERVERS: u32 = 13;
/// How often to poll when a watch cannot be had (its thread could not start, or ended).
pub const FALLBACK_POLL: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct Config {
    /// Where the configuration came from, for messages.
    pub source: PathBuf,
    /// Things worth a warning at start (a world-readable password, say).
    pub warnings: Vec<String>,
    /// Things worth an info line at start: CoreDNS directives that mean nothing here, and why.
    pub notes: Vec<String>,
    /// Where to answer DNS (`bind`); empty means every address.
    pub listen: Vec<Listen>,
    /// Where questions outside the zone go; refused when `None`.
    pub forward: Option<Forward>,
    /// Where `GET /health` and `GET /metrics` are served, if anywhere.
    pub health: Option<std::net::SocketAddr>,
    pub prometheus: Option<std::net::SocketAddr>,
    /// Where `GET /ready` is served (CoreDNS's `ready` plugin), if anywhere.
    pub ready: Option<std::net::SocketAddr>,
    /// One line per query at info level (CoreDNS's `log` plugin).
    pub log: bool,
    pub port: u16,
    /// etcd client URLs, tried in this order.
    pub endpoints: Vec<String>,
    /// TLS to etcd; `https://` endpoints without it verify etcd against the public CAs.
    pub tls: Option<TlsFiles>,
    pub credentials: Option<Credentials>,
    /// The kinds of node, in Corefile order; never empty. Their patterns share one zone, and no
    /// name (or etcd key) of one role can be a name of another.
    pub roles: Vec<Role>,
    /// Addresses to publish; `None` for both means detect them.
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub ttl: u32,
    /// How many members, the first by role and ID, the zone's SOA and NS records name.
    pub nameservers: u32,
    /// etcd lease TTL in seconds.
    pub lease: u32,
    /// How the members are followed: `poll` and `watch`.
    pub follow: Follow,
    /// How often etcd's member list is read, to use every member's client URL; `None`: never, only
    /// the `endpoint`s are used.
    pub autosync: Option<Duration>,
    /// UDP answering threads per listen address, sharing it with `SO_REUSEPORT`.
    pub threads: u32,
}

/// How the etcd thread follows the members once it has read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follow {
    /// Apply etcd's watch stream, reading everything again only when the watch cannot go on: the
    /// default, and `watch` alone. Idle, it costs etcd nothing but the lease's keep-alives.
    Watch,
    /// Ask etcd every so often whether anything changed (`poll` without `watch`), for etcd
    /// deployments where watches are unwanted.
    Poll(Duration),
    /// Both (`watch` and `poll`): polling underneath the watch, a safety net.
    WatchAndPoll(Duration),
}

impl Follow {
    pub fn watches(self) -> bool {
        matches!(self, Follow::Watch | Follow::WatchAndPoll(_))
    }

    /// How often to poll, if at all.
    pub fn poll(self) -> Option<Duration> {
        match self {
            Follow::Watch => None,
            Follow::Poll(every) | Follow::WatchAndPoll(every) => Some(every),
        }
    }
}

/// One kind of node of a job, `role ps ps{{.ID}}.tf.local. 2`: a Corefile with only `pattern`
/// and `limit` has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    /// A letter, then letters, digits and `_`: TensorFlow's rule for job names.
    pub name: String,
    pub pattern: Pattern,
    /// The IDs its members may hold: `start` to `start + limit - 1`.
    pub ids: RangeInclusive<u32>,
}

impl Role {
    /// How many members the role holds at most.
    pub fn limit(&self) -> u64 {
        u64::from(self.ids.end() - self.ids.start()) + 1
    }
}

impl Config {
    /// The zone every role's names live in, with its trailing dot.
    pub fn zone(&self) -> &str {
        zone_of(&self.roles)
    }

    /// The role of that name, or an error that lists the roles there are.
    pub fn role_named(&self, name: &str) -> Result<usize, String> {
        self.roles.iter().position(|r| r.name == name).ok_or_else(|| {
            format!("unknown role {name:?}; the roles of {} are {}", self.source.display(), self.role_names())
        })
    }

    /// `chief, ps, worker`.
    pub fn role_names(&self) -> String {
        self.roles.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// The zone every role's names live in, with its trailing dot.
pub fn zone_of(roles: &[Role]) -> &str {
    roles.first().map_or(".", |r| r.pattern.zone())
}

/// Whether `name` can name a role: a letter, then letters, digits and `_` (TensorFlow's job names,
/// so that every role can stand in `TF_CONFIG` as it is).
pub fn is_role_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One word of `bind`: an address, or an interface whose addresses the daemon finds when it
/// binds (the Corefile is read without looking at the machine).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Address(IpAddr),
    /// `bind eth0`: every address the interface has then, IPv4 and IPv6.
    Interface(String),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Address(ip) => ip.fmt(f),
            Listen::Interface(name) => f.write_str(name),
        }
    }
}

/// `forward FROM TO…`: names under `from` that are not ours are asked of `upstreams`, in turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    /// A zone in text form, `.` for every name.
    pub from: String,
    pub upstreams: Vec<std::net::SocketAddr>,
}

/// The PEM files for TLS to etcd, as the CoreDNS etcd plugin's `tls` directive names them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// This node's client certificate (with its chain), for etcd's `--client-cert-auth`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The CA that signed etcd's certificate; the public CAs when not given.
    pub ca: Option<PathBuf>,
}

/// An etcd user (`credentials USER PASSWORD`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: Secret,
}

/// A string that never shows in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"(secret)\"")
    }
}

/// Reads a Go-style duration (`500ms`, `2s`, `1m30s`, `1.5s`), or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (examples: 500ms, 2s, 1m)");
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = 0f64;
    let mut rest = text;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        let cases = [
            ("500ms", ms(500)),
            ("2s", ms(2000)),
            ("1m30s", ms(90_000)),
            ("1.5s", ms(1500)),
            ("3", ms(3000)),
            ("1h", ms(3_600_000)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for text in ["", "s", "5x", "ms5", "1..5s", "-1s", "5 s"] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
    }
}
