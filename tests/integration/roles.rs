//! Roles: several patterns in one zone, which role a node takes, and every node answering for
//! every role's members.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use domain::base::iana::{OptRcode, Rtype};
use serde_json::Value;

use crate::support::{reverse_name, Background, Etcd, Node, Query, Setup, TempDir, Transport, BINARY};

/// Extra command-line arguments and environment variables for a node.
type Launch<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);

/// The six names, in Corefile order, that six nodes take with `Setup::three_roles`.
const SIX: [&str; 6] = ["chief0", "ps0", "ps1", "worker0", "worker1", "worker2"];

fn names(labels: &[&str], zone: &str) -> Vec<String> {
    labels.iter().map(|label| format!("{label}.{zone}")).collect()
}

/// Waits until `asker` answers `name` with `ip`, with authority.
fn resolves(asker: &Node, name: &str, ip: &str) {
    // A node may still answer with a member's old address until its next read.
    assert!(asker.wait_for_address(name, ip).aa);
}

/// The SRV targets `asker` lists for the zone, without their final dots.
fn services(asker: &Node, zone: &str) -> BTreeSet<String> {
    let srv = asker.ask(Transport::Tcp, &Query::new(&format!("_idetcd._udp.{zone}"), Rtype::SRV));
    srv.data().iter().map(|d| d.rsplit(' ').next().unwrap().trim_end_matches('.').to_string()).collect()
}

#[test]
fn six_nodes_fill_the_roles_in_corefile_order_and_resolve_each_other() {
    let etcd = Etcd::start();
    let zone = "roles6.test.";
    // A short lease: one of them is killed below.
    let setup = Setup { lease: 3, ..Setup::three_roles(&etcd, zone) };
    let mut nodes = setup.start_together(6);
    let held: Vec<String> = nodes.iter().map(|n| n.identity().unwrap()).collect();
    assert_eq!(held, names(&SIX, zone), "no --role: the first role with a free ID, in Corefile order");
    for (node, name) in nodes.iter().zip(&held) {
        let kv = etcd.get(name).expect("the key in etcd");
        assert_eq!(
            kv.value,
            format!(r#"{{"ipv4":"{}","ipv6":"fd00::{}","port":"{}"}}"#, node.ip, node.ip.octets()[3], node.port),
            "the Go plugin's record under the name"
        );
        assert_ne!(kv.lease, 0);
    }

    for asker in &nodes {
        for (owner, name) in nodes.iter().zip(&held) {
            resolves(asker, name, &owner.ip.to_string());
            let ipv6 = format!("fd00::{}", owner.ip.octets()[3]);
            assert_eq!(asker.query(name, Rtype::AAAA).data(), [ipv6.as_str()], "{name} at {}", asker.ip);
            for address in [IpAddr::V4(owner.ip), IpAddr::V6(ipv6.parse::<Ipv6Addr>().unwrap())] {
                let ptr = asker.query(&reverse_name(address), Rtype::PTR);
                let targets: Vec<String> = ptr.data().iter().map(|d| d.trim_end_matches('.').to_string()).collect();
                assert_eq!(targets, [name.trim_end_matches('.')], "PTR {address} at {}", asker.ip);
            }
        }
        let want: BTreeSet<String> = held.iter().map(|n| n.trim_end_matches('.').to_string()).collect();
        assert_eq!(services(asker, zone), want, "SRV at {}", asker.ip);
    }

    // ps1 dies without releasing; once its lease has run out, the next node to start takes it.
    let ps1 = format!("ps1.{zone}");
    let mut dead = nodes.remove(2);
    assert_eq!(dead.identity().as_deref(), Some(ps1.as_str()));
    dead.kill();
    // Its lease runs out.
    etcd.wait_until_gone(&ps1);
    let mut seventh = setup.start();
    assert_eq!(seventh.claimed(), ps1);
    for node in &nodes {
        resolves(node, &ps1, &seventh.ip.to_string());
    }
    let others: Vec<Option<String>> = nodes.iter().map(|n| n.identity()).collect();
    let want: Vec<Option<String>> =
        names(&["chief0", "ps0", "worker0", "worker1", "worker2"], zone).into_iter().map(Some).collect();
    assert_eq!(others, want, "the others kept their names");
}

#[test]
fn members_lists_every_role_in_corefile_order_then_by_id() {
    let etcd = Etcd::start();
    let zone = "rolelist.test.";
    // Not alphabetical: the Corefile's order is the order.
    let setup = Setup::with_roles(&etcd, zone, &[("worker", 16), ("ps", 8)]);
    let mut node = setup.start();
    assert_eq!(node.claimed(), format!("worker0.{zone}"));
    // Records as a Go plugin node writes them (one with `pattern ps{{.ID}}.<zone>`), without a lease.
    for (label, ip) in
        [("ps5", "10.9.0.5"), ("worker10", "10.9.0.10"), ("worker9", "10.9.0.9"), ("worker2", "10.9.0.2")]
    {
        etcd.put(&format!("{label}.{zone}"), &format!(r#"{{"ipv4":"{ip}","port":"2222"}}"#));
    }
    let want = [
        ("worker", 0, node.ip.to_string()),
        ("worker", 2, "10.9.0.2".to_string()),
        ("worker", 9, "10.9.0.9".to_string()),
        ("worker", 10, "10.9.0.10".to_string()),
        ("ps", 5, "10.9.0.5".to_string()),
    ];

    let (status, json, err) = node.run("members", &["--json"]);
    assert!(status.success(), "{err}");
    let json: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), want.len(), "{json}");
    for (row, (role, id, ipv4)) in rows.iter().zip(&want) {
        let keys: BTreeSet<&str> = row.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["role", "id", "name", "ipv4", "ipv6", "port", "lease_ttl", "etcd", "error"]),
            "{row}"
        );
        assert_eq!(row["role"], *role, "{json}");
        assert_eq!(row["id"], *id, "{json}");
        assert_eq!(row["name"], format!("{role}{id}.{zone}"), "{json}");
        assert_eq!(row["ipv4"], *ipv4, "{json}");
    }
    assert_eq!(rows[0]["ipv6"], format!("fd00::{}", node.ip.octets()[3]));
    assert!(rows[0]["lease_ttl"].as_i64().is_some_and(|ttl| ttl > 0 && ttl <= 20), "{json}");
    assert_eq!(rows[4]["ipv6"], Value::Null);
    assert_eq!(rows[4]["lease_ttl"], Value::Null, "a record without a lease");
    assert_eq!(rows[4]["port"].to_string().trim_matches('"'), "2222");

    let (status, table, err) = node.run("members", &[]);
    assert!(status.success(), "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), want.len() + 1, "{table}");
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["ROLE", "ID", "NAME", "IPV4", "IPV6", "PORT", "LEASE", "ETCD"]
    );
    assert!(lines[0].starts_with("ROLE  "), "{table}");
    for line in &lines {
        assert_eq!(line.trim_end(), *line, "trailing space in {line:?}");
        let gaps = line.trim_start().split(|c| c != ' ').filter(|gap| !gap.is_empty());
        assert!(gaps.clone().all(|gap| gap.len() >= 2), "columns apart by two spaces at least: {table}");
    }
    for (line, (role, id, ipv4)) in lines[1..].iter().zip(&want) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        let name = format!("{role}{id}.{zone}");
        assert_eq!(cells[..4], [*role, &id.to_string(), &name, ipv4], "{table}");
    }
    assert_eq!(lines[5].split_whitespace().nth(6), Some("-"), "no lease: {table}");

    // The Go plugin's ps5 is a member like any other: it resolves, both ways.
    resolves(&node, &format!("ps5.{zone}"), "10.9.0.5");
    resolves(&node, &format!("worker10.{zone}"), "10.9.0.10");
    let ptr = node.query(&reverse_name("10.9.0.5".parse().unwrap()), Rtype::PTR);
    assert_eq!(ptr.data().iter().map(|d| d.trim_end_matches('.')).collect::<Vec<_>>(), ["ps5.rolelist.test"]);
}

#[test]
fn role_flag_and_environment_pin_the_role() {
    let etcd = Etcd::start();
    let zone = "pin.test.";
    let setup = Setup::three_roles(&etcd, zone);
    let cases: [(Launch, &str); 6] = [
        // chief0 is free, but the flag says worker.
        ((&["--role", "worker"], &[]), "worker0"),
        ((&[], &[("IDETCD_ROLE", "worker")]), "worker1"),
        ((&["-role", "ps"], &[]), "ps0"),
        // The flag wins over the environment.
        ((&["--role=ps"], &[("IDETCD_ROLE", "worker")]), "ps1"),
        // Empty counts as unset: fill in order.
        ((&[], &[("IDETCD_ROLE", "")]), "chief0"),
        // chief and ps are full now.
        ((&[], &[]), "worker2"),
    ];
    let mut nodes = Vec::new();
    for ((args, env), want) in cases {
        let mut node = setup.start_with_args(args, env);
        assert_eq!(node.claimed(), format!("{want}.{zone}"), "{args:?} {env:?}");
        nodes.push(node);
    }
}

#[test]
fn an_unknown_role_is_an_error_naming_the_roles() {
    let etcd = Etcd::start();
    let zone = "unknown.test.";
    let setup = Setup::three_roles(&etcd, zone);
    let cases: [Launch; 2] = [(&["--role", "boss"], &[]), (&[], &[("IDETCD_ROLE", "boss")])];
    for (args, env) in cases {
        let mut node = setup.start_with_args(args, env);
        let status = node.wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(1), "{args:?} {env:?}: {}", node.log());
        let log = node.log();
        assert!(log.contains("unknown role \"boss\"") && log.contains("chief, ps, worker"), "{log}");
    }
    for label in ["chief0", "ps0", "worker0"] {
        assert!(etcd.get(&format!("{label}.{zone}")).is_none(), "{label} claimed by a node that failed");
    }

    // A single-role Corefile has one role, named after its pattern.
    let single = Setup::new(&etcd, "unknown1.test.");
    let mut node = single.start_with_args(&["--role", "ps"], &[]);
    assert_eq!(node.wait_exit(Duration::from_secs(10)).code(), Some(1));
    assert!(node.log().contains("unknown role \"ps\"") && node.log().contains("worker"), "{}", node.log());
    let mut node = single.start_with_args(&["--role", "worker"], &[]);
    assert_eq!(node.claimed(), "worker1.unknown1.test.");
}

#[test]
fn a_full_role_named_with_role_is_the_limit_error() {
    let etcd = Etcd::start();
    let zone = "fullrole.test.";
    let setup = Setup::three_roles(&etcd, zone);
    let mut nodes = Vec::new();
    for want in ["ps0", "ps1"] {
        let mut node = setup.start_with_args(&["--role", "ps"], &[]);
        assert_eq!(node.claimed(), format!("{want}.{zone}"));
        nodes.push(node);
    }
    let mut third = setup.start_with_args(&["--role", "ps"], &[]);
    let status = third.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{}", third.log());
    assert!(third.log().contains("limit of 2 ps nodes"), "{}", third.log());
    for label in ["ps2", "chief0", "worker0"] {
        assert!(etcd.get(&format!("{label}.{zone}")).is_none(), "the third ps node took {label}");
    }
}

/// Starts the daemon on a Corefile that must be refused; returns its exit code and stderr.
fn refused(path: &Path) -> (Option<i32>, String) {
    let mut command = std::process::Command::new(BINARY);
    command.arg("-conf").arg(path).env_remove("IDETCD_ROLE");
    let mut daemon = Background::start(command);
    let status = daemon.wait_exit(Duration::from_secs(10));
    (status.code(), daemon.stderr())
}

#[test]
fn role_lines_are_checked_and_errors_name_the_line() {
    let dir = TempDir::new("roles-corefile");
    let cases = [
        ("role-then-pattern", "    role ps ps{{.ID}}.t. 2\n    pattern worker{{.ID}}.t.\n", 4),
        ("pattern-then-role", "    pattern worker{{.ID}}.t.\n    role ps ps{{.ID}}.t. 2\n", 4),
        ("two-zones", "    role ps ps{{.ID}}.t. 2\n    role worker worker{{.ID}}.u. 4\n", 4),
        ("digit-first", "    role 2ps ps{{.ID}}.t. 2\n", 3),
        ("dash", "    role ps-a ps{{.ID}}.t. 2\n", 3),
    ];
    for (name, lines, line) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, format!(". {{\n  idetcd {{\n{lines}  }}\n}}\n")).unwrap();
        let (code, err) = refused(&path);
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(err.contains(&format!("{}:{line}:", path.display())), "{name}: {err}");
    }
}

#[test]
fn single_role_corefiles_in_one_etcd_each_serve_their_own_names() {
    let etcd = Etcd::start();
    let zone = "mixed.test.";
    let (worker1, worker2, ps1) = (format!("worker1.{zone}"), format!("worker2.{zone}"), format!("ps1.{zone}"));
    // Two different Corefiles, as two Go plugin deployments would have them.
    let mut worker = Setup::new(&etcd, zone).start();
    assert_eq!(worker.claimed(), worker1);
    let mut ps = Setup { prefix: "ps", ..Setup::new(&etcd, zone) }.start();
    assert_eq!(ps.claimed(), ps1);
    // A third Corefile lists both roles (IDs from 1 as the others'): it fills in order.
    let mut both = Setup { roles: vec![("worker", 10), ("ps", 10)], ..Setup::new(&etcd, zone) }.start();
    assert_eq!(both.claimed(), worker2);

    // The node with both roles answers for everyone.
    for (name, owner) in [(&worker1, &worker), (&worker2, &both), (&ps1, &ps)] {
        resolves(&both, name, &owner.ip.to_string());
    }
    let all: BTreeSet<String> =
        [&worker1, &worker2, &ps1].iter().map(|n| n.trim_end_matches('.').to_string()).collect();
    assert_eq!(services(&both, zone), all);

    // Each single-role node answers for its own role only.
    resolves(&worker, &worker2, &both.ip.to_string());
    let nx = worker.query(&ps1, Rtype::A);
    assert_eq!((nx.rcode, nx.aa), (OptRcode::NXDOMAIN, true), "{nx:?}");
    resolves(&ps, &ps1, &ps.ip.to_string());
    for name in [&worker1, &worker2] {
        let nx = ps.query(name, Rtype::A);
        assert_eq!((nx.rcode, nx.aa), (OptRcode::NXDOMAIN, true), "{name}: {nx:?}");
    }
}

#[test]
fn with_watch_every_roles_changes_show() {
    // One watch stream with a watcher per role; with no `poll`, only the watch can bring a change.
    let etcd = Etcd::start();
    let zone = "rwatch.test.";
    let setup = Setup::three_roles(&etcd, zone);
    let nodes = setup.start_together(2);
    let observer = &nodes[0];
    assert_eq!(observer.identity().unwrap(), format!("chief0.{zone}"));
    // Changes in every role, and one transaction touching two roles at once.
    for (name, ip) in [("ps1", "10.0.0.21"), ("worker7", "10.0.0.27")] {
        etcd.put(&format!("{name}.{zone}"), &format!(r#"{{"ipv4":"{ip}"}}"#));
        resolves(observer, &format!("{name}.{zone}"), ip);
    }
    let (ps1, worker7) = (format!("ps1.{zone}"), format!("worker7.{zone}"));
    etcd.put_all(&[(&ps1, r#"{"ipv4":"10.1.0.21"}"#), (&worker7, r#"{"ipv4":"10.1.0.27"}"#)]);
    resolves(observer, &ps1, "10.1.0.21");
    resolves(observer, &worker7, "10.1.0.27");
    etcd.delete(&worker7);
    observer.wait_for_rcode(&worker7, OptRcode::NXDOMAIN);
}
