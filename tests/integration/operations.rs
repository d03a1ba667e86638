//! What operators use besides DNS: the health and metrics endpoints, and the subcommands.

use std::time::Duration;

use domain::base::iana::Rtype;

use crate::support::{eventually, free_port, next_loopback, Etcd, Node, Setup};

fn get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(3)))
        .build()
        .into();
    let mut response = agent.get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (response.status().as_u16(), response.body_mut().read_to_string().unwrap())
}

#[test]
fn health_and_metrics() {
    let mut etcd = Etcd::start();
    let ip = next_loopback();
    let (health, metrics) = (free_port(ip), free_port(ip));
    let corefile = Setup::new(&etcd, "ops.test.").corefile(ip, free_port(ip));
    let corefile = corefile.replacen(
        "    idetcd {",
        &format!("    health {ip}:{health}\n    prometheus {ip}:{metrics}\n    idetcd {{"),
        1,
    );
    let mut node = Node::start_with(corefile, ip);
    node.claimed();
    let health_url = format!("http://{ip}:{health}/health");
    let metrics_url = format!("http://{ip}:{metrics}/metrics");
    assert_eq!(get(&health_url), (200, "OK\n".to_string()));

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
    let (status, body) = eventually("health to turn bad", Duration::from_secs(10), || {
        Some(get(&health_url)).filter(|(status, _)| *status == 503)
    });
    assert_eq!((status, body.as_str()), (503, "etcd is not answering\n"));
    assert!(get(&metrics_url).1.lines().any(|l| l.starts_with("idetcd_etcd_errors_total ") && !l.ends_with(" 0")));
}

fn idetcd(args: &[&str]) -> (Option<i32>, String, String) {
    let (status, out, err) = crate::support::run_binary(args);
    (status.code(), out, err)
}

#[test]
fn members_and_tf_config() {
    let etcd = Etcd::start();
    let setup = Setup::new(&etcd, "tf.test.");
    let mut nodes: Vec<Node> = (0..3).map(|_| setup.start()).collect();
    for node in &mut nodes {
        node.claimed();
    }
    nodes.sort_by_key(|n| crate::support::id_of(&n.identity().unwrap()));
    let conf = |node: &Node| node.corefile_path().to_str().unwrap().to_string();

    let (code, table, _) = idetcd(&["members", "-conf", &conf(&nodes[0])]);
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ROLE  ") && lines[0].ends_with("LEASE"), "{table}");
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["ROLE", "ID", "NAME", "IPV4", "IPV6", "PORT", "LEASE"]
    );
    assert_eq!(lines.len(), 4, "{table}");
    for (line, node) in lines[1..].iter().zip(&nodes) {
        assert!(line.contains(&node.identity().unwrap()) && line.contains(&node.ip.to_string()), "{table}");
        let ttl = line.rsplit(' ').next().unwrap();
        assert!(ttl.ends_with('s') && ttl.trim_end_matches('s').parse::<u32>().unwrap() <= 20, "{table}");
    }
    let (code, json, _) = idetcd(&["members", "--json", "--conf", &conf(&nodes[0])]);
    assert_eq!(code, Some(0));
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    assert_eq!(json[1]["name"], "worker2.tf.test.");
    assert_eq!(json[1]["ipv4"], nodes[1].ip.to_string());

    // The second node's Corefile names its own address: it is task 1.
    let (code, spec, err) = idetcd(&["tf-config", "--job", "worker", "-conf", &conf(&nodes[1])]);
    assert_eq!(code, Some(0), "{err}");
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    let want = serde_json::json!({
        "cluster": { "worker": ["worker1.tf.test:2222", "worker2.tf.test:2222", "worker3.tf.test:2222"] },
        "task": { "type": "worker", "index": 1 },
    });
    assert_eq!(spec, want);

    // --wait blocks until enough members are there.
    let waiting = std::process::Command::new(crate::support::BINARY)
        .args(["tf-config", "--job", "ps", "--port", "5000", "--wait", "4", "-conf", &conf(&nodes[0])])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mut fourth = setup.start();
    assert_eq!(fourth.claimed(), "worker4.tf.test.");
    let output = waiting.wait_with_output().unwrap();
    assert!(output.status.success());
    let spec: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
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
