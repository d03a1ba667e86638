use std::time::Duration;

use super::*;
use crate::config;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse_ok(text: &str) -> Config {
    parse(text, Path::new("Corefile"), &no_env).unwrap_or_else(|e| panic!("{text}\n=> {e}"))
}

fn parse_err(text: &str) -> String {
    match parse(text, Path::new("Corefile"), &no_env) {
        Ok(c) => panic!("{text}\n=> parsed: {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_original_readme_example_parses() {
    // The example in the original plugin's README, with the braces its page lost put back.
    let c = parse_ok(
        ". {\n    idetcd {\n        endpoint ETCDENDPOINTS\n        limit 5\n        pattern worker{{.ID}}.tf.local.\n    }\n}\n",
    );
    assert_eq!(c.endpoints, ["http://ETCDENDPOINTS:2379"]);
    assert_eq!(c.roles[0].ids, 1..=5);
    assert_eq!(c.roles[0].pattern.name(1), "worker1.tf.local.");
    assert_eq!(c.port, 53);
}

#[test]
fn defaults() {
    let c = parse_ok(". {\n idetcd {\n  pattern worker{{.ID}}.tf.local.\n }\n}");
    assert_eq!(c.endpoints, ["http://localhost:2379"]);
    assert_eq!(c.roles[0].ids, 1..=10);
    assert_eq!((c.ttl, c.lease, c.follow, c.threads), (5, 20, Follow::Watch, 1));
    assert_eq!((c.ipv4, c.ipv6), (None, None));
    assert!(c.listen.is_empty());
    assert_eq!(c.port, 53);
}

#[test]
fn every_setting() {
    let c = parse_ok(
        r#"
        # a comment line
        .:1053 {    # a trailing comment
            bind 127.0.0.2 ::1
            idetcd {
                endpoint http://10.0.0.5:2379 https://[fd00::5]:2379/ 10.0.0.6
                limit 32
                pattern "worker{{ .ID }}.tf.local"
                address 10.0.0.3 fd00::3
                ttl 30
                lease 10
                poll 250ms
                threads 4
                watch
            }
        }
        "#,
    );
    assert_eq!(c.port, 1053);
    let addresses = ["127.0.0.2", "::1"].map(|ip| config::Listen::Address(ip.parse().unwrap()));
    assert_eq!(c.listen, addresses);
    assert_eq!(c.endpoints, ["http://10.0.0.5:2379", "https://[fd00::5]:2379", "http://10.0.0.6:2379"]);
    assert_eq!(c.roles[0].ids, 1..=32);
    assert_eq!(c.roles[0].pattern.to_string(), "worker{{.ID}}.tf.local.");
    assert_eq!(c.ipv4, Some("10.0.0.3".parse().unwrap()));
    assert_eq!(c.ipv6, Some("fd00::3".parse().unwrap()));
    assert_eq!((c.ttl, c.lease, c.follow, c.threads), (30, 10, Follow::WatchAndPoll(Duration::from_millis(250)), 4));
}

/// Neither is the new default, the watch; `poll` alone still polls only, as it always did.
#[test]
fn poll_and_watch_choose_how_members_are_followed() {
    let ms = Duration::from_millis;
    for (lines, want) in [
        ("", Follow::Watch),
        ("  watch\n", Follow::Watch),
        ("  poll 2s\n", Follow::Poll(ms(2000))),
        ("  poll 500ms\n  watch\n", Follow::WatchAndPoll(ms(500))),
        ("  watch\n  poll 500ms\n", Follow::WatchAndPoll(ms(500))),
    ] {
        let c = parse_ok(&format!(". {{\n idetcd {{\n  pattern worker{{{{.ID}}}}.tf.local.\n{lines} }}\n}}"));
        assert_eq!(c.follow, want, "{lines:?}");
    }
}

#[test]
fn autosync_reads_the_member_list_every_5_minutes_unless_told() {
    for (lines, want) in [
        ("", Some(Duration::from_secs(300))),
        ("  autosync 30s\n", Some(Duration::from_secs(30))),
        ("  autosync off\n", None),
    ] {
        let c = parse_ok(&format!(". {{\n idetcd {{\n  pattern worker{{{{.ID}}}}.tf.local.\n{lines} }}\n}}"));
        assert_eq!(c.autosync, want, "{lines:?}");
    }
}

#[test]
fn pattern_with_spaces_inside_the_braces() {
    let c = parse_ok(". {\n idetcd {\n  pattern worker{{ .ID }}.tf.local.\n }\n}");
    assert_eq!(c.roles[0].pattern.name(7), "worker7.tf.local.");
}

#[test]
fn server_block_keys() {
    for (key, port) in
        [(".", 53), (".:1053", 1053), ("dns://.:5300", 5300), ("tf.local.:53", 53), ("local:8053 tf.local:8053", 8053)]
    {
        let c = parse_ok(&format!("{key} {{\n idetcd {{\n  pattern w{{{{.ID}}}}.tf.local.\n }}\n}}"));
        assert_eq!(c.port, port, "{key}");
    }
}

#[test]
fn environment_placeholders() {
    let env = |name: &str| (name == "ETCD").then(|| "http://10.1.1.1:2379".to_string());
    let text = ". {\n idetcd {\n  endpoint {$ETCD}\n  limit {$LIMIT:7}\n  pattern w{{.ID}}.tf.local.\n }\n}";
    let c = parse(text, Path::new("Corefile"), &env).unwrap();
    assert_eq!(c.endpoints, ["http://10.1.1.1:2379"]);
    assert_eq!(c.roles[0].ids, 1..=7);
    let err = parse(". {\n idetcd {\n  endpoint {$NOPE}\n }\n}", Path::new("Corefile"), &env).unwrap_err();
    assert_eq!(err.to_string(), "Corefile:3: environment variable NOPE is not set");
}

#[test]
fn errors_name_the_line_and_the_problem() {
    // Server block directives, before an idetcd block that is fine.
    let server = |lines: &str| format!(". {{\n{lines}\n idetcd {{\n  pattern w{{{{.ID}}}}.z.\n }}\n}}\n");
    let idetcd =
        |body: &str| format!(". {{\n    idetcd {{\n        pattern w{{{{.ID}}}}.tf.local.\n{body}\n    }}\n}}\n");
    let cases = [
        (idetcd("        limit"), "Corefile:4: limit takes one number"),
        (idetcd("        limit five"), "Corefile:4: limit: \"five\" is not a number from 1 to 1000000"),
        (idetcd("        limit 0"), "Corefile:4: limit: \"0\" is not a number from 1 to 1000000"),
        (idetcd("        limit 5 6"), "Corefile:4: limit takes one number"),
        (idetcd("        endpoint"), "Corefile:4: endpoint needs at least one URL"),
        (idetcd("        endpoint ftp://x"), "Corefile:4: endpoint \"ftp://x\": scheme ftp:// is not supported, use http:// or https://"),
        (idetcd("        endpoint http://x:99999"), "Corefile:4: endpoint \"http://x:99999\": \"99999\" is not a valid port"),
        (idetcd("        endpoint http://::1:2379"), "Corefile:4: endpoint \"http://::1:2379\": write IPv6 addresses in brackets, as http://[::1]:2379"),
        (idetcd("        address 10.0.0.300"), "Corefile:4: address: \"10.0.0.300\" is not an IP address"),
        (idetcd("        address 10.0.0.3 10.0.0.4"), "Corefile:4: address takes at most one IPv4 and one IPv6 address"),
        (idetcd("        address 0.0.0.0"), "Corefile:4: address: 0.0.0.0 cannot be published as a node's address"),
        (idetcd("        ttl -1"), "Corefile:4: ttl: \"-1\" is not a number from 0 to 2147483647"),
        (idetcd("        lease 0"), "Corefile:4: lease: \"0\" is not a number from 1 to 86400"),
        (idetcd("        nameservers 0"), "Corefile:4: nameservers: \"0\" is not a number from 1 to 13"),
        (idetcd("        nameservers 3\n        nameservers 2"), "Corefile:5: nameservers is given twice"),
        (idetcd("        poll soon"), "Corefile:4: poll: \"soon\" is not a duration (examples: 500ms, 2s, 1m)"),
        (idetcd("        poll 1ms"), "Corefile:4: poll must be at least 10ms"),
        (idetcd("        tls a b c d"), "Corefile:4: tls takes [CACERT], [CERT KEY] or [CERT KEY CACERT]"),
        (
            idetcd("        endpoint http://10.0.0.5:2379\n        tls ca.pem"),
            "Corefile:5: tls is configured but endpoint http://10.0.0.5:2379 is plain http://; use https://",
        ),
        (idetcd("        credentials root"), "Corefile:4: credentials takes a user name and a password"),
        (idetcd("        start -1"), "Corefile:4: start: \"-1\" is not a number from 0 to 4294967295"),
        (
            idetcd("        start 4294967295\n        limit 2"),
            "Corefile:4: start 4294967295 with limit 2 runs past the largest ID, 4294967295",
        ),
        (idetcd("        watch yes"), "Corefile:4: watch takes no arguments: unexpected \"yes\""),
        (idetcd("        autosync 500ms"), "Corefile:4: autosync must be at least 1s, or off"),
        (idetcd("        autosync"), "Corefile:4: autosync takes one duration, such as 5m, or off"),
        (idetcd("        autosync never"), "Corefile:4: autosync: \"never\" is not a duration (examples: 500ms, 2s, 1m)"),
        (idetcd("        threads 0"), "Corefile:4: threads: \"0\" is not a number from 1 to 64"),
        (idetcd("        pattern x{{.ID}}.y."), "Corefile:4: pattern is given twice"),
        (idetcd("        limit 3\n        limit 4"), "Corefile:5: limit is given twice"),
        (
            ". {\n idetcd {\n  pattern w{{.ID}}.z. 5\n }\n}".into(),
            "Corefile:3: pattern takes one pattern: unexpected \"5\" after it",
        ),
        (idetcd("        upstream 8.8.8.8"), "Corefile:4: unknown directive \"upstream\" in idetcd block (known: endpoint, autosync, tls, credentials, limit, start, pattern, role, address, ttl, nameservers, lease, poll, watch, threads)"),
        (idetcd("        limit 3 {\n        }"), "Corefile:4: limit does not take a block"),
        (
            ". {\n idetcd {\n  pattern worker.tf.local.\n }\n}".into(),
            "Corefile:3: pattern \"worker.tf.local.\": pattern must contain {{.ID}}",
        ),
        (
            ". {\n idetcd {\n  pattern a.w{{.ID}}.tf.local.\n }\n}".into(),
            "Corefile:3: pattern \"a.w{{.ID}}.tf.local.\": {{.ID}} must be in the first label of the pattern",
        ),
        (". {\n idetcd {\n  pattern\n }\n}".into(), "Corefile:3: pattern needs a name pattern, such as worker{{.ID}}.tf.local."),
        (". {\n idetcd {\n  limit 3\n }\n}".into(), "Corefile:2: idetcd needs a pattern, such as `pattern worker{{.ID}}.tf.local.`, or roles, such as `role worker worker{{.ID}}.tf.local. 16`"),
        (server(" whoami"), "Corefile:2: unknown directive \"whoami\" in server block (known: bind, forward, log, errors, cache, reload, health, prometheus, ready, idetcd)"),
        (server(" bind"), "Corefile:2: bind needs at least one address or interface"),
        (server(" forward ."), "Corefile:2: forward needs at least one upstream server after FROM"),
        (server(" forward . 8.8.8.8:99999"), "Corefile:2: forward: \"8.8.8.8:99999\" is not an IP address or IP:port"),
        (server(" forward . tls://1.1.1.1"), "Corefile:2: forward: tls:// upstreams are not supported, only plain DNS"),
        (server(" forward . 1.1.1.1 {\n  max_fails 3\n }"), "Corefile:2: forward options are not supported; give FROM and the upstream servers"),
        (server(" forward . /nonexistent/resolv.conf"), "Corefile:2: forward: cannot read /nonexistent/resolv.conf: No such file or directory (os error 2)"),
        (server(" forward . 10.0.0.1:0"), "Corefile:2: forward: \"10.0.0.1:0\" is not an IP address or IP:port"),
        (server(" forward . 10.0.0.1\n forward . 10.0.0.2"), "Corefile:3: forward is given twice, first on line 2: idetcd forwards one zone"),
        (server(" bind 10.0.0.300"), "Corefile:2: bind: \"10.0.0.300\" is neither an IP address nor an interface name"),
        (server(" bind fe80::1%eth0"), "Corefile:2: bind: \"fe80::1%eth0\" is neither an IP address nor an interface name"),
        (server(" bind averyveryverylongname"), "Corefile:2: bind: \"averyveryverylongname\" is neither an IP address nor an interface name"),
        (server(" bind lo {\n  except 127.0.0.1\n }"), "Corefile:2: bind does not take a block"),
        (". {\n}".into(), "Corefile:1: server block has no idetcd { ... } block"),
        (". {\n idetcd {\n  pattern w{{.ID}}.z.\n }\n idetcd {\n }\n}".into(), "Corefile:5: idetcd is configured twice in this server block"),
        (". {\n idetcd extra {\n }\n}".into(), "Corefile:2: idetcd takes no arguments, only a block: unexpected \"extra\""),
        (". {\n idetcd {\n  pattern w{{.ID}}.z.\n }\n".into(), "Corefile:1: block opened here is never closed with '}'"),
        ("\n\n. {\n idetcd {\n  pattern w{{.ID}}.z.\n".into(), "Corefile:4: block opened here is never closed with '}'"),
        (". {\n idetcd {\n  pattern w{{.ID}}.z.\n }\n}\n}".into(), "Corefile:6: unexpected '}': expected a server block key such as `.:53`"),
        (".\n{\n}".into(), "Corefile:1: expected '{' after the server block key(s) on the same line"),
        (".:0 {\n idetcd {\n  pattern w{{.ID}}.z.\n }\n}".into(), "Corefile:1: \"0\" is not a valid port"),
        (".:53 z:54 {\n idetcd {\n  pattern w{{.ID}}.z.\n }\n}".into(), "Corefile:1: all keys of a server block must use the same port"),
        ("tls://. {\n idetcd {\n  pattern w{{.ID}}.z.\n }\n}".into(), "Corefile:1: tls:// servers are not supported, only plain DNS"),
        (". {\n idetcd {\n  pattern \"w{{.ID}}.z.\n }\n}".into(), "Corefile:3: unterminated quoted string"),
        ("# only a comment\n".into(), "Corefile: no server block; expected something like `. { idetcd { ... } }`"),
        (
            ". {\n idetcd {\n  pattern w{{.ID}}.z.\n }\n}\nz {\n idetcd {\n  pattern w{{.ID}}.z.\n }\n}".into(),
            "Corefile:7: idetcd is configured in a second server block (the first on line 2): exactly one block serves the cluster",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(parse_err(&text), want, "\n{text}");
    }
}

#[test]
fn a_missing_file_is_a_clear_error() {
    // Where it looked, and how to look elsewhere.
    let err = load(Path::new("/nonexistent/Corefile"), Reader::Daemon).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/nonexistent/Corefile: no such file: looked for the Corefile in /nonexistent; name yours with `-conf PATH` (see `idetcd --help`)"
    );
    let err = load(Path::new("Corefile.idetcd-test-none"), Reader::Client).unwrap_err();
    let cwd = std::env::current_dir().unwrap();
    assert!(err.to_string().contains(&format!("looked for the Corefile in {}; ", cwd.display())), "{err}");
    let err = load(Path::new("/"), Reader::Daemon).unwrap_err();
    assert!(err.to_string().starts_with("/: cannot read the Corefile: "), "{err}");
}

#[test]
fn forward_upstreams() {
    let c = parse_ok(
        ". {\n forward . 10.0.0.1 dns://10.0.0.2:5353 [fd00::1]:53 fd00::2\n idetcd {\n  pattern w{{.ID}}.z.\n }\n}",
    );
    let forward = c.forward.unwrap();
    assert_eq!(forward.from, ".");
    let want: Vec<std::net::SocketAddr> =
        ["10.0.0.1:53", "10.0.0.2:5353", "[fd00::1]:53", "[fd00::2]:53"].iter().map(|a| a.parse().unwrap()).collect();
    assert_eq!(forward.upstreams, want);
    assert!(parse_ok(". {\n idetcd {\n  pattern w{{.ID}}.z.\n }\n}").forward.is_none());
    let dir = std::env::temp_dir().join(format!("idetcd-resolv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "# comment\nsearch example.org\nnameserver 10.9.0.1\nnameserver fd00::53\n").unwrap();
    let c =
        parse_ok(&format!(". {{\n forward corp. {}\n idetcd {{\n  pattern w{{{{.ID}}}}.z.\n }}\n}}", resolv.display()));
    let forward = c.forward.unwrap();
    assert_eq!(forward.from, "corp.");
    assert_eq!(forward.upstreams, ["10.9.0.1:53".parse().unwrap(), "[fd00::53]:53".parse().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn monitoring_addresses() {
    let with = |lines: &str| parse_ok(&format!(". {{\n{lines}\n idetcd {{\n  pattern w{{{{.ID}}}}.z.\n }}\n}}"));
    let c = with(" health\n prometheus");
    assert_eq!(c.health, Some("0.0.0.0:8080".parse().unwrap()));
    assert_eq!(c.prometheus, Some("127.0.0.1:9153".parse().unwrap()));
    let c = with(" health 127.0.0.2:8081\n prometheus [::1]:9000");
    assert_eq!(c.health, Some("127.0.0.2:8081".parse().unwrap()));
    assert_eq!(c.prometheus, Some("[::1]:9000".parse().unwrap()));
    let c = with("");
    assert_eq!((c.health, c.prometheus), (None, None));
    for (lines, want) in [
        (" health 8080", "Corefile:2: health: \"8080\" needs a port, as in :8080"),
        (" prometheus host.example:9153", "Corefile:2: prometheus: \"host.example\" is not an IP address"),
        (" health :80 :81", "Corefile:2: health takes one address, such as :8080"),
        (" health {\n  lameduck 5s\n }", "Corefile:2: health options are not supported"),
    ] {
        assert_eq!(parse_err(&format!(". {{\n{lines}\n idetcd {{\n  pattern w{{{{.ID}}}}.z.\n }}\n}}")), want);
    }
}

#[test]
fn ids_can_start_at_zero() {
    // TensorFlow task indexes start at 0.
    let c = parse_ok(". {\n idetcd {\n  pattern w{{.ID}}.z.\n  start 0\n  limit 4\n }\n}");
    assert_eq!(c.roles[0].ids, 0..=3);
    let c = parse_ok(". {\n idetcd {\n  pattern w{{.ID}}.z.\n  start 100\n }\n}");
    assert_eq!(c.roles[0].ids, 100..=109);
}

#[test]
fn tls_and_credentials() {
    let text = |body: &str| format!(". {{\n idetcd {{\n  pattern w{{{{.ID}}}}.z.\n{body}\n }}\n}}");
    let parse_at = |body: &str| parse(&text(body), Path::new("/etc/idetcd/Corefile"), &no_env).unwrap();
    let c = parse_at("  endpoint 10.0.0.5:2379 https://10.0.0.6\n  tls client.pem client.key /pki/ca.pem");
    assert_eq!(c.endpoints, ["https://10.0.0.5:2379", "https://10.0.0.6:2379"]);
    let tls = c.tls.unwrap();
    assert_eq!(tls.cert.as_deref(), Some(Path::new("/etc/idetcd/client.pem")));
    assert_eq!(tls.key.as_deref(), Some(Path::new("/etc/idetcd/client.key")));
    assert_eq!(tls.ca.as_deref(), Some(Path::new("/pki/ca.pem")));
    let c = parse_at("  tls ca.pem");
    assert_eq!(c.endpoints, ["https://localhost:2379"]);
    assert_eq!(c.tls.unwrap(), config::TlsFiles { ca: Some("/etc/idetcd/ca.pem".into()), cert: None, key: None });
    assert_eq!(parse_at("  tls").tls, Some(config::TlsFiles::default()));
    let c = parse_at("  credentials idetcd s3cret");
    let credentials = c.credentials.unwrap();
    assert_eq!((credentials.user.as_str(), credentials.password.expose()), ("idetcd", "s3cret"));
    assert!(!format!("{credentials:?}").contains("s3cret"), "the password never shows in debug output");
}

#[test]
fn a_world_readable_password_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("idetcd-corefile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("Corefile");
    std::fs::write(&path, ". {\n idetcd {\n  pattern w{{.ID}}.z.\n  credentials u p\n }\n}\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let warnings = load(&path, Reader::Daemon).unwrap().warnings;
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("chmod 600"), "{warnings:?}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(load(&path, Reader::Client).unwrap().warnings.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_fuzz_corpus_and_regressions_replay_cleanly() {
    let inputs = crate::dns::tests::fuzz_inputs("corefile");
    assert!(inputs.len() > 50, "the corpus in fuzz/corpus/corefile is there");
    for (path, bytes) in inputs {
        let Ok(text) = std::str::from_utf8(&bytes) else { continue };
        if let Err(e) = parse(text, Path::new("Corefile"), &no_env) {
            assert!(e.to_string().starts_with("Corefile"), "{}: {e}", path.display());
        }
    }
}

/// The three-role example of the README, with `extra` lines in the idetcd block.
fn three_roles(extra: &str) -> String {
    format!(
        ". {{\n idetcd {{\n  start 0\n  role chief  chief{{{{.ID}}}}.tf.local.  1\n  role ps     ps{{{{ .ID }}}}.tf.local.     2\n  role worker worker{{{{.ID}}}}.tf.local. 16\n{extra} }}\n}}\n"
    )
}

#[test]
fn roles_in_order_share_the_start() {
    let c = parse_ok(&three_roles(""));
    let roles: Vec<(&str, String, std::ops::RangeInclusive<u32>)> =
        c.roles.iter().map(|r| (r.name.as_str(), r.pattern.to_string(), r.ids.clone())).collect();
    assert_eq!(
        roles,
        [
            ("chief", "chief{{.ID}}.tf.local.".to_string(), 0..=0),
            ("ps", "ps{{.ID}}.tf.local.".to_string(), 0..=1),
            ("worker", "worker{{.ID}}.tf.local.".to_string(), 0..=15),
        ]
    );
    assert_eq!((c.zone(), c.role_names()), ("tf.local.", "chief, ps, worker".to_string()));
    assert_eq!(c.role_named("ps"), Ok(1));
    assert!(c.role_named("evaluator").unwrap_err().ends_with("are chief, ps, worker"));
    let c = parse_ok(". {\n idetcd {\n  role w w{{.ID}}.z.\n }\n}");
    assert_eq!(c.roles[0].ids, 1..=10, "the default limit and start");
}

#[test]
fn a_lone_pattern_is_a_role_named_after_its_text() {
    for (pattern, name) in [
        ("worker{{.ID}}.tf.local.", "worker"),
        ("gpu-node-{{.ID}}.x.", "gpu_node"),
        ("{{.ID}}.nodes.example.", "node"),
        ("9lives{{.ID}}.x.", "node"),
        ("Ps{{.ID}}.x.", "ps"),
    ] {
        let c = parse_ok(&format!(". {{\n idetcd {{\n  pattern {pattern}\n }}\n}}"));
        assert_eq!(c.roles.len(), 1);
        assert_eq!(c.roles[0].name, name, "{pattern}");
    }
}

#[test]
fn role_errors_name_the_line() {
    let roles = |body: &str| format!(". {{\n idetcd {{\n  role w w{{{{.ID}}}}.z. 3\n{body}\n }}\n}}\n");
    let cases = [
        (roles("  role"), "Corefile:4: role takes a name, a pattern and optionally a limit: role worker worker{{.ID}}.tf.local. 16"),
        (roles("  role ps"), "Corefile:4: role takes a name, a pattern and optionally a limit: role worker worker{{.ID}}.tf.local. 16"),
        (roles("  role ps ps{{.ID}}.z. zero"), "Corefile:4: role ps: limit \"zero\" is not a number from 1 to 1000000"),
        (roles("  role ps ps{{ .ID }}.z five"), "Corefile:4: role ps: limit \"five\" is not a number from 1 to 1000000"),
        (roles("  role ps ps{{.ID}}.z. 5 extra"), "Corefile:4: role ps: unexpected \"extra\" after the limit"),
        (roles("  role ps 3"), "Corefile:4: pattern \"3\": pattern must contain {{.ID}}"),
        (roles("  role w x{{.ID}}.z."), "Corefile:4: role w is given twice"),
        (roles("  role my-ps ps{{.ID}}.z."), "Corefile:4: role: \"my-ps\" is not a role name (a letter, then letters, digits or _)"),
        (roles("  role ps ps.z."), "Corefile:4: pattern \"ps.z.\": pattern must contain {{.ID}}"),
        (roles("  role ps ps{{.ID}}.z. 0"), "Corefile:4: role ps: limit \"0\" is not a number from 1 to 1000000"),
        (roles("  role ps ps{{.ID}}.y."), "Corefile:4: role ps is in zone y., role w in z.: all roles share one zone"),
        (
            roles("  role w1 w1x{{.ID}}.z."),
            "Corefile:4: role w1: names of w1x{{.ID}}.z. could be names of role w's w{{.ID}}.z.; let the text before {{.ID}} differ by more than digits",
        ),
        (roles("  pattern p{{.ID}}.z."), "Corefile:4: pattern and role cannot be used together: write each role as `role NAME PATTERN [LIMIT]`"),
        (roles("  limit 4"), "Corefile:4: limit goes with pattern; give each role its own: `role NAME PATTERN LIMIT`"),
        (roles("  start 4294967294"), "Corefile:4: start 4294967294 with limit 3 runs past the largest ID, 4294967295"),
        (roles("  role ps ps{{.ID}}5.z."), "Corefile:4: pattern \"ps{{.ID}}5.z.\": a digit right after {{.ID}} would run into the ID; put another character between"),
    ];
    for (text, want) in cases {
        assert_eq!(parse_err(&text), want, "\n{text}");
    }
    let many: String = (0..33).map(|i| format!("  role r{i} r{i}x{{{{.ID}}}}.z.\n")).collect();
    assert_eq!(parse_err(&format!(". {{\n idetcd {{\n{many} }}\n}}")), "Corefile:35: at most 32 roles are supported");
    // Zones compare as DNS names do.
    assert_eq!(parse_ok(&roles("  role ps ps{{.ID}}.Z.")).roles.len(), 2);
}

#[test]
fn endpoints_may_be_comma_separated_as_etcdctl_takes_them() {
    let with =
        |endpoints: &str| format!(". {{\n idetcd {{\n  pattern w{{{{.ID}}}}.z.\n  endpoint {endpoints}\n }}\n}}");
    for (endpoints, want) in [
        ("a:2379,b:2379", &["http://a:2379", "http://b:2379"][..]),
        (
            "http://a:2379, b c:1,https://[fd00::5]:2379",
            &["http://a:2379", "http://b:2379", "http://c:1", "https://[fd00::5]:2379"],
        ),
        ("a,", &["http://a:2379"]),
    ] {
        assert_eq!(parse_ok(&with(endpoints)).endpoints, want, "{endpoints}");
    }
    for (endpoints, want) in [
        ("a:2379,ftp://b", "Corefile:4: endpoint \"ftp://b\": scheme ftp:// is not supported, use http:// or https://"),
        (
            "a:2379,::1:2379",
            "Corefile:4: endpoint \"::1:2379\": write IPv6 addresses in brackets, as http://[::1]:2379",
        ),
        ("a:2379,b:0", "Corefile:4: endpoint \"b:0\": \"0\" is not a valid port"),
        (",", "Corefile:4: endpoint needs at least one URL"),
    ] {
        assert_eq!(parse_err(&with(endpoints)), want, "{endpoints}");
    }
}

#[test]
fn clients_need_only_the_variables_of_the_idetcd_block() {
    let env = |name: &str| (name == "ETCD").then(|| "10.1.1.1:2379".to_string());
    let text = "{$ZONE:.}:53 {\n bind {$NODE_IP}\n forward . {$UPSTREAM}\n health {$HEALTH}\n idetcd {\n  endpoint {$ETCD}\n  pattern w{{.ID}}.z.\n  lease {$LEASE:30}\n }\n}\n{$OTHER}:53 {\n forward . {$CORP}\n}\n";
    let c = parse_as(text, Path::new("Corefile"), &env, Reader::Client).unwrap();
    assert_eq!(c.endpoints, ["http://10.1.1.1:2379"]);
    assert_eq!((c.roles[0].pattern.to_string().as_str(), c.lease), ("w{{.ID}}.z.", 30));
    assert!(c.listen.is_empty() && c.forward.is_none() && c.health.is_none());
    // The daemon uses every directive.
    let err = parse(text, Path::new("Corefile"), &env).unwrap_err();
    assert_eq!(err.to_string(), "Corefile:2: environment variable NODE_IP is not set");
    // What the idetcd block says, clients need too: the etcd endpoints, the roles, the addresses.
    for (line, want) in [
        ("  endpoint {$NOPE}", "Corefile:3: environment variable NOPE is not set"),
        ("  address {$NODE_IP}", "Corefile:3: environment variable NODE_IP is not set"),
        ("  role {$ROLE} r{{.ID}}.z.", "Corefile:3: environment variable ROLE is not set"),
    ] {
        let text = format!(". {{\n idetcd {{\n{line}\n  pattern w{{{{.ID}}}}.z.\n }}\n}}");
        let err = parse_as(&text, Path::new("Corefile"), &env, Reader::Client).unwrap_err();
        assert_eq!(err.to_string(), want, "{line}");
    }
    // Nor does a client read the server blocks' other errors.
    let text = ". {\n bind 10.0.0.300\n idetcd {\n  pattern w{{.ID}}.z.\n }\n}";
    assert!(parse_as(text, Path::new("Corefile"), &env, Reader::Client).is_ok());
}

#[test]
fn what_coredns_users_type_first_is_understood() {
    let with = |lines: &str| parse_ok(&format!(". {{\n{lines}\n idetcd {{\n  pattern w{{{{.ID}}}}.z.\n }}\n}}"));
    let c = with("");
    assert_eq!((c.log, c.ready, c.notes.len()), (false, None, 0));
    let c = with(" log\n errors\n cache 30\n reload\n ready");
    assert!(c.log);
    assert_eq!(c.ready, Some("0.0.0.0:8181".parse().unwrap()));
    assert_eq!(
        c.notes,
        [
            "cache: answers already come from memory; nothing to cache, the directive is ignored",
            "reload: idetcd does not poll the Corefile for changes; it reads it again on SIGHUP",
        ]
    );
    assert!(c.warnings.is_empty());
    let c = with(" cache\n cache 3600 example.org\n reload 10s 5s\n ready 127.0.0.2:8282");
    assert_eq!(c.notes.len(), 2, "one note per directive: {:?}", c.notes);
    assert_eq!(c.ready, Some("127.0.0.2:8282".parse().unwrap()));
    for (lines, want) in [
        (" log stdout", "Corefile:2: log takes no arguments here: unexpected \"stdout\"; idetcd logs every question at info, as CoreDNS's `log` does without arguments"),
        (" log {\n  class denial\n }", "Corefile:2: log options are not supported; idetcd logs every question at info, as CoreDNS's `log` does without arguments"),
        (" errors {\n  consolidate 5m \".*\"\n }", "Corefile:2: errors options are not supported; errors are always logged"),
        (" errors stderr", "Corefile:2: errors takes no arguments here: unexpected \"stderr\"; errors are always logged"),
        (" cache 3x", "Corefile:2: cache: \"3x\" is not a TTL in seconds"),
        (" cache {\n  success 100\n }", "Corefile:2: cache does not take a block"),
        (" reload soon", "Corefile:2: reload: \"soon\" is not a duration (examples: 500ms, 2s, 1m)"),
        (" reload 1s 2s 3s", "Corefile:2: reload takes at most an interval and a jitter, such as `reload 30s 15s`"),
        (" ready 8181", "Corefile:2: ready: \"8181\" needs a port, as in :8181"),
        (" ready\n ready :8282", "Corefile:3: ready is given twice"),
    ] {
        assert_eq!(parse_err(&format!(". {{\n{lines}\n idetcd {{\n  pattern w{{{{.ID}}}}.z.\n }}\n}}")), want, "{lines}");
    }
}

#[test]
fn bind_takes_addresses_and_interface_names() {
    let c = parse_ok(". {\n bind lo 10.0.0.1\n bind eth0.100 br-1a2b ::1\n idetcd {\n  pattern w{{.ID}}.z.\n }\n}");
    let interface = |name: &str| config::Listen::Interface(name.into());
    let address = |ip: &str| config::Listen::Address(ip.parse().unwrap());
    assert_eq!(
        c.listen,
        [interface("lo"), address("10.0.0.1"), interface("eth0.100"), interface("br-1a2b"), address("::1")]
    );
}

/// `idetcd` in one block, what CoreDNS users put in another.
fn two_blocks(idetcd_key: &str, other: &str) -> String {
    format!("{idetcd_key} {{\n idetcd {{\n  pattern w{{{{.ID}}}}.tf.local.\n }}\n}}\n{other}\n")
}

#[test]
fn several_server_blocks_split_zones_as_in_coredns() {
    let c = parse_ok(&two_blocks("tf.local:53", ".:53 {\n forward . 10.0.0.2\n log\n health :8081\n}"));
    let forward = c.forward.unwrap();
    assert_eq!((forward.from.as_str(), forward.upstreams.as_slice()), (".", &["10.0.0.2:53".parse().unwrap()][..]));
    assert_eq!((c.port, c.log, c.health), (53, true, Some("0.0.0.0:8081".parse().unwrap())));
    // What a block forwards: what both its keys and forward's FROM cover.
    for (other, from) in [
        ("corp.example {\n forward . 10.0.0.2\n}", "corp.example"),
        (". {\n forward corp.example 10.0.0.2\n}", "corp.example"),
        ("corp.example {\n forward sub.corp.example 10.0.0.2\n}", "sub.corp.example"),
        ("dns://corp.example.:53 {\n forward . 10.0.0.2\n}", "corp.example."),
        ("corp.example {\n forward corp.example. 10.0.0.2\n}", "corp.example."),
    ] {
        let c = parse_ok(&two_blocks("tf.local", other));
        assert_eq!(c.forward.unwrap().from, from, "{other}");
    }
    // In the idetcd block, forward's FROM alone says it, as with one block.
    let c = parse_ok("tf.local {\n forward . 10.0.0.2\n idetcd {\n  pattern w{{.ID}}.tf.local.\n }\n}");
    assert_eq!(c.forward.unwrap().from, ".");
    // The idetcd block's keys: `.`, the pattern's zone, or a zone above it.
    for key in [".", "tf.local", "TF.local.", "local", "dns://tf.local:53", ". local"] {
        parse_ok(&two_blocks(key, "corp.example {\n}"));
    }
    // bind, given in one block or the same in several, is where every block listens.
    let listen = |c: Config| c.listen.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    let c = parse_ok(&two_blocks("tf.local", ". {\n bind 127.0.0.2 lo\n}"));
    assert_eq!(listen(c), ["127.0.0.2", "lo"]);
    let c = parse_ok(
        "tf.local {\n bind lo\n bind 127.0.0.2\n idetcd {\n  pattern w{{.ID}}.tf.local.\n }\n}\n. {\n bind 127.0.0.2 lo\n}\n",
    );
    assert_eq!(listen(c), ["lo", "127.0.0.2"]);
}

#[test]
fn several_server_blocks_errors() {
    let cases = [
        (two_blocks("other.zone", ". {\n}"), "Corefile:1: server block key other.zone: this block's idetcd serves tf.local., its pattern's zone; the block's keys may be `.`, tf.local. or a zone above it"),
        (two_blocks(". sub.tf.local", "corp {\n}"), "Corefile:1: server block key sub.tf.local: this block's idetcd serves tf.local., its pattern's zone; the block's keys may be `.`, tf.local. or a zone above it"),
        (two_blocks("tf.local:53", ".:1053 {\n forward . 10.0.0.2\n}"), "Corefile:6: this server block is on port 1053, the one on line 1 on port 53: idetcd answers on one port, give every block the same"),
        (two_blocks("tf.local", "tf.local. {\n forward . 10.0.0.2\n}"), "Corefile:6: zone tf.local. has a server block already, on line 1: give each zone one block"),
        (two_blocks(".", ". {\n}"), "Corefile:6: zone . has a server block already, on line 1: give each zone one block"),
        (two_blocks(".", "worker1.tf.local {\n forward . 10.0.0.2\n}"), "Corefile:6: server block key worker1.tf.local is within tf.local., the cluster's zone, which the idetcd block on line 1 answers"),
        (two_blocks(".", "local {\n forward . 10.0.0.2\n}"), "Corefile:6: server block key local is closer to tf.local. than the idetcd block's keys: CoreDNS would send the cluster's names to this block; key the idetcd block tf.local."),
        (
            "tf.local {\n forward . 10.0.0.1\n idetcd {\n  pattern w{{.ID}}.tf.local.\n }\n}\n. {\n forward . 10.0.0.2\n}\n".into(),
            "Corefile:8: forward is given twice, first on line 2: idetcd forwards one zone",
        ),
        (two_blocks("tf.local", "corp.example {\n forward other.example 10.0.0.2\n}"), "Corefile:7: forward other.example: this server block only gets names under corp.example, none under other.example"),
        (two_blocks("tf.local", "a.example b.example {\n forward . 10.0.0.2\n}"), "Corefile:7: forward here would forward both a.example and b.example; idetcd forwards one zone: give this block one key"),
        (two_blocks("tf.local", ". {\n pattern w{{.ID}}.tf.local.\n}"), "Corefile:7: unknown directive \"pattern\" in server block (known: bind, forward, log, errors, cache, reload, health, prometheus, ready, idetcd)"),
        (two_blocks("tf.local", ". {\n health\n}\ncorp {\n health :8082\n}"), "Corefile:10: health is given twice"),
        (
            "tf.local {\n bind 127.0.0.2\n idetcd {\n  pattern w{{.ID}}.tf.local.\n }\n}\n. {\n bind 127.0.0.3 127.0.0.2\n}\n".into(),
            "Corefile:8: bind 127.0.0.3 127.0.0.2 differs from bind 127.0.0.2 on line 2: idetcd listens on one set of addresses for every server block; give each the same, or bind in one block only",
        ),
        (". {\n}\ncorp {\n forward . 10.0.0.2\n}\n".into(), "Corefile: no server block has an idetcd { ... } block"),
        (two_blocks("tf.local", ". {\n idetcd {\n }\n}"), "Corefile:7: idetcd is configured in a second server block (the first on line 2): exactly one block serves the cluster"),
    ];
    for (text, want) in cases {
        assert_eq!(parse_err(&text), want, "\n{text}");
    }
}
