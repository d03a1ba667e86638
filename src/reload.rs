//! What a reload (SIGHUP, SIGUSR1) may change in a running daemon, decided from the running and
//! the newly read configuration alone.
//!
//! Whatever only shapes answers and monitoring takes effect at once: `ttl`, `poll`, `watch`,
//! `forward`, `log`, `health`, `prometheus`, `ready`. Whatever decides which name this node holds,
//! how it reaches etcd or where it listens needs a new claim or new sockets, which a reload must
//! not do behind the operator's back: a change there refuses the whole reload, naming the
//! directive, and the running configuration stays.

use crate::config::Config;

/// The reload to apply: the new configuration, and which of its parts differ from the running one.
#[derive(Debug)]
pub struct Plan {
    pub config: Config,
    /// Directives whose change takes effect, for the log: `ttl`, `forward`...
    pub changed: Vec<&'static str>,
}

/// Why a reload was refused: the directives that take a restart.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused(pub Vec<&'static str>);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.0.iter().map(|d| format!("`{d}`")).collect();
        write!(
            f,
            "{} changed, which takes a restart (a new claim or new sockets); the running configuration stays",
            names.join(", ")
        )
    }
}

pub fn plan(running: &Config, new: Config) -> Result<Plan, Refused> {
    // Which of the naming directives changed, as the Corefile says it.
    let single = running.roles.len() == 1 && new.roles.len() == 1;
    let names = |c: &Config| c.roles.iter().map(|r| (r.name.clone(), r.pattern.clone())).collect::<Vec<_>>();
    let starts = |c: &Config| c.roles.first().map(|r| *r.ids.start());
    let limits = |c: &Config| c.roles.iter().map(|r| r.limit()).collect::<Vec<_>>();
    let mut refused = differing(&[
        (running.endpoints != new.endpoints, "endpoint"),
        (running.credentials != new.credentials, "credentials"),
        (running.tls != new.tls, "tls"),
        (running.ipv4 != new.ipv4 || running.ipv6 != new.ipv6, "address"),
        (running.listen != new.listen, "bind"),
        (running.port != new.port, "port"),
        (running.lease != new.lease, "lease"),
        (running.threads != new.threads, "threads"),
        (names(running) != names(&new), if single { "pattern" } else { "role" }),
        (starts(running) != starts(&new), "start"),
        (limits(running) != limits(&new), if single { "limit" } else { "role" }),
    ]);
    refused.dedup();
    if !refused.is_empty() {
        return Err(Refused(refused));
    }
    let changed = differing(&[
        (running.ttl != new.ttl, "ttl"),
        (running.nameservers != new.nameservers, "nameservers"),
        (running.follow.poll() != new.follow.poll(), "poll"),
        (running.follow.watches() != new.follow.watches(), "watch"),
        (running.autosync != new.autosync, "autosync"),
        (running.forward != new.forward, "forward"),
        (running.log != new.log, "log"),
        (running.health != new.health, "health"),
        (running.prometheus != new.prometheus, "prometheus"),
        (running.ready != new.ready, "ready"),
    ]);
    Ok(Plan { config: new, changed })
}

/// The directives whose setting differs.
fn differing(settings: &[(bool, &'static str)]) -> Vec<&'static str> {
    settings.iter().filter(|(differs, _)| *differs).map(|(_, directive)| *directive).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corefile;
    use std::path::Path;

    fn config(body: &str) -> Config {
        let text = format!(".:5300 {{\n{body}\n}}\n");
        corefile::parse(&text, Path::new("Corefile"), &|_| None).unwrap_or_else(|e| panic!("{e}"))
    }

    const BASE: &str =
        "bind 127.0.0.1\n idetcd {\n endpoint http://127.0.0.1:2379\n pattern w{{.ID}}.tf.local.\n limit 4\n ttl 5\n }";

    fn with(from: &str, to: &str) -> Config {
        assert!(BASE.contains(from), "{from}");
        config(&BASE.replace(from, to))
    }

    #[test]
    fn answers_and_monitoring_change_at_once() {
        let running = config(BASE);
        let cases = [
            ("ttl 5", "ttl 30", vec!["ttl"]),
            ("ttl 5", "ttl 5\n nameservers 1", vec!["nameservers"]),
            // The default watches: `poll` with `watch` adds polling, `poll` alone stops watching.
            ("ttl 5", "ttl 5\n poll 250ms\n watch", vec!["poll"]),
            ("ttl 5", "ttl 5\n poll 250ms", vec!["poll", "watch"]),
            ("ttl 5", "ttl 5\n watch", vec![]),
            ("ttl 5", "ttl 5\n autosync 1m", vec!["autosync"]),
            ("ttl 5", "ttl 5\n autosync 5m", vec![]),
            ("bind 127.0.0.1", "bind 127.0.0.1\n forward . 10.0.0.2\n health :8080", vec!["forward", "health"]),
            ("bind 127.0.0.1", "bind 127.0.0.1\n prometheus :9153", vec!["prometheus"]),
            ("ttl 5", "ttl 5", vec![]),
        ];
        for (from, to, want) in cases {
            let plan = plan(&running, with(from, to)).unwrap_or_else(|e| panic!("{to}: {e}"));
            assert_eq!(plan.changed, want, "{to}");
        }
    }

    #[test]
    fn what_decides_the_name_or_the_sockets_refuses_the_reload() {
        let running = config(BASE);
        let cases = [
            ("endpoint http://127.0.0.1:2379", "endpoint http://127.0.0.2:2379", vec!["endpoint"]),
            ("ttl 5", "ttl 5\n credentials u p", vec!["credentials"]),
            ("ttl 5", "ttl 5\n address 10.0.0.1", vec!["address"]),
            ("bind 127.0.0.1", "bind 127.0.0.2", vec!["bind"]),
            ("w{{.ID}}.tf.local.", "x{{.ID}}.tf.local.", vec!["pattern"]),
            ("limit 4", "limit 5", vec!["limit"]),
            ("limit 4", "limit 4\n start 0", vec!["start"]),
            ("ttl 5", "ttl 5\n lease 60", vec!["lease"]),
            ("ttl 5", "ttl 9\n threads 2", vec!["threads"]),
            ("endpoint http://127.0.0.1:2379", "endpoint https://127.0.0.1:2379\n tls ca.pem", vec!["endpoint", "tls"]),
        ];
        for (from, to, want) in cases {
            assert_eq!(plan(&running, with(from, to)).map(|p| p.changed), Err(Refused(want)), "{to}");
        }
        let roles = |ps: u32| {
            config(&format!(
                " idetcd {{\n endpoint http://127.0.0.1:2379\n role chief c{{{{.ID}}}}.tf.local. 1\n role ps p{{{{.ID}}}}.tf.local. {ps}\n }}"
            ))
        };
        assert_eq!(plan(&roles(2), roles(3)).map(|p| p.changed), Err(Refused(vec!["role"])));
        let refused = plan(&running, with("limit 4", "limit 5")).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "`limit` changed, which takes a restart (a new claim or new sockets); the running configuration stays"
        );
    }
}
