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
    assert_eq!(get(&format!("http://{ip}:{health}/nothing")).0, 404);

    etcd.stop();
    let (status, body) = eventually("health to turn bad", Duration::from_secs(10), || {
        Some(get(&health_url)).filter(|(status, _)| *status == 503)
    });
    assert_eq!((status, body.as_str()), (503, "etcd is not answering\n"));
    assert!(get(&metrics_url).1.lines().any(|l| l.starts_with("idetcd_etcd_errors_total ") && !l.ends_with(" 0")));
}
