//! What operators use besides DNS: the health and metrics endpoints, and the subcommands.

use std::net::Ipv4Addr;
use std::time::Duration;

use domain::base::iana::Rtype;

use crate::support::{
    eventually, free_port, http_get, next_loopback, within, Etcd, Node, Query, Setup, Transport, WAIT,
};

fn get(url: &str) -> (u16, String) {
    http_get(url).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

#[test]
fn health_and_metrics() {
    let mut etcd = Etcd::start();
    let ip = next_loopback();
    let (health, metrics) = (free_port(ip), free_port(ip));
    let server = format!("    health {ip}:{health}\n    ready {ip}:{health}\n    prometheus {ip}:{metrics}\n");
    let mut node = Setup { server, ..Setup::new(&etcd, "ops.test.") }.start_on(ip, free_port(ip));
    node.claimed();
    let health_url = format!("http://{ip}:{health}/health");
    let metrics_url = format!("http://{ip}:{metrics}/metrics");
    assert_eq!(get(&health_url), (200, "OK\n".to_string()));
    // `ready` shares the address `health` has.
    assert_eq!(get(&format!("http://{ip}:{health}/ready")), (200, "OK\n".to_string()));

    for _ in 0..3 {
        node.query("worker1.ops.test.", Rtype::A);
    }
    node.query("nobody.ops.test.", Rtype::AAAA);
    let (status, text) = get(&metrics_url);
    assert_eq!(status, 200);
    for line in [
        "idetcd_members 1",
        "idetcd_claims_total 1",
        "idetcd_name_held 1",
        "idetcd_dns_queries_total{type=\"AAAA\",rcode=\"NXDOMAIN\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing in\n{text}");
    }
    // The claim polls with id.server (TXT) and asks A three times.
    let a = text.lines().find(|l| l.starts_with("idetcd_dns_queries_total{type=\"A\",rcode=\"NOERROR\"}")).unwrap();
    assert_eq!(a.rsplit(' ').next(), Some("3"), "{text}");
    assert!(text.contains("idetcd_etcd_request_duration_seconds_bucket{le=\"+Inf\"}"));
    // Every answer's time, the claim's id.server polls included: all well under a second.
    let value = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '));
        line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    let answered = value("idetcd_dns_request_duration_seconds_count");
    assert!(answered >= 4.0, "{text}");
    assert_eq!(value("idetcd_dns_request_duration_seconds_bucket{le=\"1\"}"), answered, "{text}");
    assert!(value("idetcd_dns_request_duration_seconds_sum") < answered, "{text}");
    assert_eq!(value(&format!("idetcd_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))), 1.0);
    // What every Prometheus client library exports, read from /proc for the daemon's process.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let started = value("process_start_time_seconds");
    assert!(started <= now && started > now - 120.0, "started {started}, now {now}");
    assert!(value("process_cpu_seconds_total") >= 0.0);
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
    // Sockets, the eventfds and the etcd connection at least.
    assert!(value("process_open_fds") >= 5.0 && value("process_max_fds") >= value("process_open_fds"), "{text}");
    assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"), "{text}");
    assert_eq!(get(&format!("http://{ip}:{metrics}/health")).0, 404, "each endpoint on its own address");
    // Clients that trickle their request, or send nothing, do not hold up the others.
    let mut slow: Vec<std::net::TcpStream> =
        (0..5).map(|_| std::net::TcpStream::connect((ip, health)).unwrap()).collect();
    for s in &mut slow {
        std::io::Write::write_all(s, b"GET /hea").unwrap();
    }
    assert_eq!(get(&health_url), (200, "OK\n".to_string()));
    drop(slow);
    assert_eq!(get(&format!("http://{ip}:{health}/nothing")).0, 404);

    etcd.stop();
    // Following by the watch, the node finds etcd gone at its next renewal, every lease/3 (under
    // 7 s), which the wait must span.
    let (status, body) = eventually("health to turn bad", Duration::from_secs(20), || {
        Some(get(&health_url)).filter(|(status, _)| *status == 503)
    });
    assert_eq!(status, 503);
    assert!(body.starts_with("etcd is not answering: this node keeps its name "), "{body}");
    assert!(get(&metrics_url).1.lines().any(|l| l.starts_with("idetcd_etcd_errors_total ") && !l.ends_with(" 0")));
}

#[test]
fn ready_once_the_members_are_read_and_while_the_name_is_held() {
    let mut etcd = Etcd::start();
    etcd.stop();
    let ip = next_loopback();
    let ready = free_port(ip);
    let setup = Setup { lease: 3, server: format!("    ready {ip}:{ready}\n"), ..Setup::new(&etcd, "ready.test.") };
    let mut node = setup.start_on(ip, free_port(ip));
    let url = format!("http://{ip}:{ready}/ready");
    let (status, body) = eventually("/ready to answer", Duration::from_secs(10), || {
        std::net::TcpStream::connect((ip, ready)).ok().map(|_| get(&url))
    });
    assert_eq!((status, body.as_str()), (503, "the members were not read yet\n"), "{}", node.log());

    etcd.resume();
    node.claimed();
    eventually("/ready to say 200", Duration::from_secs(10), || (get(&url).0 == 200).then_some(()));
    // etcd gone: once the lease may have run out unrenewed, this node no longer holds its name.
    etcd.stop();
    let (_, body) = eventually("/ready to say 503", Duration::from_secs(10), || {
        Some(get(&url)).filter(|(status, _)| *status == 503)
    });
    assert_eq!(body, "this node holds no name\n");
    etcd.resume();
    eventually("/ready to say 200 again", Duration::from_secs(20), || (get(&url).0 == 200).then_some(()));
}

#[test]
fn log_writes_a_line_per_answered_query_in_coredns_format() {
    let etcd = Etcd::start();
    let mut node = Setup { server: "    log\n".into(), ..Setup::new(&etcd, "log.test.") }.start();
    node.claimed();
    let mut quiet = Setup::new(&etcd, "log.test.").start();
    quiet.claimed();
    let mut asked = Vec::new();
    for (name, rtype, transport) in [
        ("worker1.log.test.", Rtype::A, Transport::Udp),
        ("Worker1.LOG.test.", Rtype::A, Transport::Tcp),
        ("nobody.log.test.", Rtype::AAAA, Transport::Udp),
    ] {
        let query = Query::new(name, rtype);
        asked.push((query.clone(), transport, node.ask(transport, &query)));
        quiet.ask(transport, &query);
    }
    for (query, transport, answer) in asked {
        let proto = if transport == Transport::Udp { "udp" } else { "tcp" };
        let bufsize = if transport == Transport::Udp { 512 } else { 65535 };
        let head = format!(
            "\"{} IN {} {proto} {} false {bufsize}\" {} qr,aa,rd {} ",
            query.rtype,
            query.name.to_lowercase(),
            query.packet().len(),
            answer.rcode,
            answer.size
        );
        // The line is written once the answer is sent: it may come just after the answer.
        let line = within(WAIT, || node.log().lines().find(|l| l.contains(&head)).map(str::to_string))
            .unwrap_or_else(|| panic!("no {head:?} in\n{}", node.log()));
        // INFO client:port - ID "…" … seconds
        let (before, after) = line.split_once(&head).unwrap();
        let client: Option<std::net::SocketAddr> = before.rsplit(' ').nth(3).and_then(|c| c.parse().ok());
        assert!(client.is_some_and(|c| c.ip().is_loopback()) && before.contains(" INFO"), "{line}");
        // The answer time in seconds, as CoreDNS writes it ("0.000041s").
        let took = after.strip_suffix('s').and_then(|t| t.parse::<f64>().ok());
        assert!(took.is_some_and(|t| t >= 0.0), "{line}");
    }
    assert!(!quiet.log().contains("\" NOERROR qr,"), "without `log`, no lines:\n{}", quiet.log());
}

/// Each thread of a process with the times it went to sleep on its own: a wake-up each, what an
/// idle node must not spend on timers.
fn sleeps_by_thread(pid: u32) -> Vec<(String, u64)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default().trim().to_string();
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let sleeps = status.lines().find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"));
        threads.push((name, sleeps.and_then(|n| n.trim().parse().ok()).unwrap_or(0)));
    }
    threads.sort();
    threads
}

#[test]
fn an_idle_node_sleeps_until_something_happens() {
    let etcd = Etcd::start();
    let ip = next_loopback();
    let (health, metrics, upstream) = (free_port(ip), free_port(ip), free_port(Ipv4Addr::LOCALHOST));
    let server = format!(
        "    log\n    forward . 127.0.0.1:{upstream}\n    health {ip}:{health}\n    prometheus {ip}:{metrics}\n"
    );
    let setup = Setup { server, poll: "1h", ..Setup::new(&etcd, "idle.test.") };
    let mut node = setup.start_on(ip, free_port(ip));
    node.claimed();
    node.wait_for_log("members at etcd revision");
    // The threads that woke in three seconds in which nothing happens (no query, no change in
    // etcd, no signal) but for the etcd thread's lease renewals, the one wake-up an idle node
    // needs. The first such seconds may still see the last question of `claimed` answered.
    let mut windows = Vec::new();
    let quiet = within(Duration::from_secs(15), || {
        let before = sleeps_by_thread(node.pid());
        std::thread::sleep(Duration::from_secs(3));
        let after = sleeps_by_thread(node.pid());
        assert_eq!(before.len(), after.len(), "threads came or went: {before:?} then {after:?}");
        let woke: Vec<String> = before
            .iter()
            .zip(&after)
            .filter(|((name, then), (_, now))| !name.starts_with("etcd") && now != then)
            .map(|((name, then), (_, now))| format!("{name} woke {} times", now - then))
            .collect();
        windows.push(woke);
        windows.last().is_some_and(Vec::is_empty).then_some(())
    });
    assert!(quiet.is_some(), "no quiet three seconds: {windows:?}");
}

fn idetcd(args: &[&str]) -> (Option<i32>, String, String) {
    let (status, out, err) = crate::support::run_binary(args);
    (status.code(), out, err)
}

#[test]
fn members_and_tf_config() {
    let etcd = Etcd::start();
    let setup = Setup::new(&etcd, "tf.test.");
    let nodes = setup.start_together(3);
    let conf = |node: &Node| node.corefile_path().to_str().unwrap().to_string();

    let (code, table, _) = idetcd(&["members", "-conf", &conf(&nodes[0])]);
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ROLE  ") && lines[0].ends_with("ETCD"), "{table}");
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["ROLE", "ID", "NAME", "IPV4", "IPV6", "PORT", "LEASE", "ETCD"]
    );
    assert_eq!(lines.len(), 4, "{table}");
    for (line, node) in lines[1..].iter().zip(&nodes) {
        assert!(line.contains(&node.identity().unwrap()) && line.contains(&node.ip.to_string()), "{table}");
        let cells: Vec<&str> = line.split_whitespace().collect();
        let ttl = cells[6];
        assert!(ttl.ends_with('s') && ttl.trim_end_matches('s').parse::<u32>().unwrap() <= 20, "{table}");
        // One etcd member: every node uses it.
        assert_eq!(cells[7], etcd.url, "{table}");
    }
    let (code, json, _) = idetcd(&["members", "--json", "--conf", &conf(&nodes[0])]);
    assert_eq!(code, Some(0));
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    assert_eq!(json[1]["name"], "worker2.tf.test.");
    assert_eq!(json[1]["ipv4"], nodes[1].ip.to_string());
    assert_eq!(json[1]["etcd"], etcd.url);

    // The second node's Corefile names its own address: it is task 1.
    let (code, spec, err) = idetcd(&["tf-config", "--job", "worker", "-conf", &conf(&nodes[1])]);
    assert_eq!(code, Some(0), "{err}");
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    let want = serde_json::json!({
        "cluster": { "worker": ["worker1.tf.test:2222", "worker2.tf.test:2222", "worker3.tf.test:2222"] },
        "task": { "type": "worker", "index": 1 },
    });
    assert_eq!(spec, want);

    // --wait blocks until enough members are there: it has read the three, and waits on.
    let mut waiting = nodes[0].launch("tf-config", &["--job", "ps", "--port", "5000", "--wait", "4"]);
    eventually("tf-config to see 3 of 4", Duration::from_secs(10), || {
        waiting.stderr().contains("saw 3 of 4").then_some(())
    });
    assert!(waiting.exited().is_none(), "it did not wait for the fourth: {}", waiting.stderr());
    assert!(waiting.stdout().is_empty(), "{}", waiting.stdout());
    let mut fourth = setup.start();
    assert_eq!(fourth.claimed(), "worker4.tf.test.");
    assert!(waiting.wait_exit(Duration::from_secs(10)).success(), "{}", waiting.stderr());
    let spec: serde_json::Value = serde_json::from_str(&waiting.stdout()).unwrap();
    assert_eq!(spec["cluster"]["ps"].as_array().unwrap().len(), 4);
    assert_eq!(spec["cluster"]["ps"][3], "worker4.tf.test:5000");
    assert_eq!(spec["task"], serde_json::json!({ "type": "ps", "index": 0 }));

    // --wait 2 makes the cluster the first two IDs: the third node is no task of it.
    let (code, _, err) = idetcd(&["tf-config", "--job", "worker", "--wait", "2", "-conf", &conf(&nodes[2])]);
    assert_eq!(code, Some(1));
    assert!(err.contains("this host holds worker3.tf.test., which is not among the first 2"), "{err}");
    let (code, spec, _) = idetcd(&["tf-config", "--job", "worker", "--wait", "2", "-conf", &conf(&nodes[1])]);
    assert_eq!(code, Some(0));
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    assert_eq!(spec["cluster"]["worker"].as_array().unwrap().len(), 2, "the first two, though four are there");
    assert_eq!(spec["task"]["index"], 1);

    // A host that is no member is told so.
    let dir = crate::support::TempDir::new("stranger");
    let stranger = dir.path().join("Corefile");
    let text = std::fs::read_to_string(nodes[0].corefile_path()).unwrap();
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("address ") {
                "        address 10.99.0.1".to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&stranger, text.join("\n")).unwrap();
    let (code, _, err) = idetcd(&["tf-config", "--job", "worker", "-conf", stranger.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("this host (10.99.0.1") && err.contains("is no member of worker{{.ID}}.tf.test."), "{err}");
}

#[test]
fn subcommands_explain_themselves() {
    for command in ["members", "tf-config", "torch-env", "hostfile", "exec"] {
        let (code, out, _) = idetcd(&[command, "--help"]);
        assert_eq!(code, Some(0));
        assert!(out.starts_with(&format!("usage: idetcd {command}")), "{out}");
    }
    let (code, _, err) = idetcd(&["tf-config", "--port", "0"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--port: \"0\" is not a port") && err.contains("see `idetcd tf-config --help`"), "{err}");
    let (code, _, err) = idetcd(&["exec", "--wait", "2"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("exec needs a command to run") && err.contains("see `idetcd exec --help`"), "{err}");
    let (code, _, err) = idetcd(&["members", "-conf", "/nonexistent/Corefile"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no such file: looked for the Corefile in /nonexistent"), "{err}");
}
