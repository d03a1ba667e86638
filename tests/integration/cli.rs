//! The command line and start-up errors, through the real binary.

use std::fs;

use crate::support::{free_port, next_loopback, run_binary, Etcd, Node, Setup, TempDir};

#[test]
fn help_and_version() {
    for args in [&["--help"][..], &["-h"], &["help"]] {
        let (status, out, _) = run_binary(args);
        assert!(status.success(), "{args:?}");
        assert!(out.contains("usage: idetcd [-conf PATH]"), "{args:?}: {out}");
        assert!(out.contains("see `man idetcd`"), "{args:?}: {out}");
    }
    let (status, out, _) = run_binary(&["help", "members"]);
    assert!(status.success());
    assert!(out.starts_with("usage: idetcd members"), "{out}");
    for args in [&["--version"][..], &["version"]] {
        let (status, out, _) = run_binary(args);
        assert!(status.success(), "{args:?}");
        assert_eq!(out.trim(), format!("idetcd {}", env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn a_bad_flag_is_a_short_usage_error() {
    let (status, _, err) = run_binary(&["--frobnicate"]);
    assert_eq!(status.code(), Some(2));
    assert_eq!(err, "idetcd: unknown option --frobnicate\nsee `idetcd --help`\n");
    let (status, _, err) = run_binary(&["-conf"]);
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("-conf needs a path"), "{err}");
    let (status, _, err) = run_binary(&["hostfile", "--slots", "none"]);
    assert_eq!(status.code(), Some(2));
    assert_eq!(err, "idetcd: --slots: \"none\" is not a number of slots\nsee `idetcd hostfile --help`\n");
}

#[test]
fn a_mistyped_command_gets_the_likely_one() {
    let (status, out, err) = run_binary(&["membres", "--json"]);
    assert_eq!(status.code(), Some(2));
    assert_eq!(out, "");
    assert_eq!(err, "idetcd: unknown command \"membres\"; did you mean `members`?\nsee `idetcd --help`\n");
}

#[test]
fn without_a_corefile_the_error_says_where_it_looked() {
    let dir = TempDir::new("empty");
    for args in [&[][..], &["members"], &["hostfile"]] {
        let output =
            std::process::Command::new(crate::support::BINARY).args(args).current_dir(dir.path()).output().unwrap();
        let err = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}: {err}");
        let looked = format!("looked for the Corefile in {}; ", dir.path().display());
        assert!(err.contains(&looked), "{args:?}: {err}");
        assert!(err.contains("`-conf PATH`") && err.contains("`idetcd --help`"), "{args:?}: {err}");
    }
}

#[test]
fn a_monitoring_port_in_use_names_its_directive() {
    // No etcd: the listeners are bound before anything talks to it.
    let ip = next_loopback();
    let holder = std::net::TcpListener::bind((ip, 0)).unwrap();
    let taken = holder.local_addr().unwrap();
    for (directives, names, hint) in [
        (format!("    health {taken}\n"), "health", "`health ADDR`"),
        (
            format!("    health {taken}\n    prometheus {taken}\n"),
            "health and prometheus",
            "`health ADDR` or `prometheus ADDR`",
        ),
    ] {
        let port = free_port(ip);
        let corefile = format!(
            ".:{port} {{\n    bind {ip}\n{directives}    idetcd {{\n        endpoint http://127.0.0.1:9\n        pattern worker{{{{.ID}}}}.busy.test.\n        address {ip}\n    }}\n}}\n"
        );
        let mut node = Node::start_with(corefile, ip);
        assert_eq!(node.wait_exit(std::time::Duration::from_secs(5)).code(), Some(1));
        let log = node.log();
        let want = format!("{names}: cannot listen on {taken} (HTTP): ");
        assert!(log.contains(&want), "{log}");
        assert!(
            log.contains(&format!("another program holds it: pick another address with {hint} in the Corefile")),
            "{log}"
        );
        assert!(!log.contains("systemd-resolved"), "not the DNS port's advice: {log}");
    }
}

#[test]
fn bad_corefiles_name_the_file_and_line() {
    let dir = TempDir::new("corefile");
    let cases = [
        (
            "limit",
            ". {\n  idetcd {\n    pattern worker{{.ID}}.t.\n    limit many\n  }\n}\n",
            ":4: limit: \"many\" is not a number",
        ),
        (
            "directive",
            ". {\n  idetcd {\n    pattern worker{{.ID}}.t.\n    colour blue\n  }\n}\n",
            ":4: unknown directive \"colour\"",
        ),
        (
            "pattern",
            ". {\n  idetcd {\n    pattern worker.t.\n  }\n}\n",
            ":3: pattern \"worker.t.\": pattern must contain {{.ID}}",
        ),
        ("brace", ". {\n  idetcd {\n    pattern worker{{.ID}}.t.\n", ":2: block opened here is never closed"),
    ];
    for (name, text, want) in cases {
        let path = dir.path().join(name);
        fs::write(&path, text).unwrap();
        let (status, _, err) = run_binary(&["-conf", path.to_str().unwrap()]);
        assert_eq!(status.code(), Some(1), "{name}: {err}");
        assert!(err.contains(&format!("{}{want}", path.display())), "{name}: {err}");
    }
    let (status, _, err) = run_binary(&["--conf", "/nonexistent/Corefile"]);
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("/nonexistent/Corefile: no such file: looked for the Corefile in /nonexistent"), "{err}");
}

#[test]
fn without_arguments_it_reads_the_corefile_in_the_working_directory() {
    let dir = TempDir::new("cwd");
    fs::write(dir.path().join("Corefile"), ". {\n  idetcd {\n    limit 0\n  }\n}\n").unwrap();
    let output = std::process::Command::new(crate::support::BINARY).current_dir(dir.path()).output().unwrap();
    let err = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(err.contains("Corefile:3: limit: \"0\" is not a number from 1 to 1000000"), "{err}");
}

#[test]
fn a_port_in_use_fails_the_start_before_claiming() {
    let etcd = Etcd::start();
    let mut holder = Setup::new(&etcd, "busy.test.").start();
    holder.claimed();
    let corefile = fs::read_to_string(holder.corefile_path()).unwrap();
    let mut twin = Node::start_with(corefile, holder.ip);
    let status = twin.wait_exit(std::time::Duration::from_secs(5));
    assert_eq!(status.code(), Some(1));
    let log = twin.log();
    assert!(log.contains(&format!("cannot listen on {}:{}", holder.ip, holder.port)), "{log}");
    assert_eq!(etcd.names("busy.test."), ["worker1.busy.test."], "the twin claimed nothing");
}
