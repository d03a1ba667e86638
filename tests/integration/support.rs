//! Test support: a real etcd per test, the real idetcd binary as child processes, and a small DNS
//! client. Every process is killed and reaped when its guard drops, also when a test fails.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use domain::base::iana::{Class, Opcode, OptRcode, Rtype};
use domain::base::{Message, MessageBuilder, Name, ParsedName, Question};
use domain::rdata::AllRecordData;
use serde_json::{json, Value};

pub use idetcd::dns::Transport;

pub const BINARY: &str = env!("CARGO_BIN_EXE_idetcd");

// ---------------------------------------------------------------------------------------------
// Temporary directories

pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("idetcd-test-{}-{what}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create a temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process that dies with the test: killed on drop, and by the kernel if the test
/// process itself dies first.
pub fn spawn(command: &mut Command) -> Child {
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command.spawn().unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"))
}

/// A port free for UDP and TCP on `ip`, never handed out before in this process, and below
/// Linux's ephemeral range (32768 and up): a stopped etcd's port must still be there when it is
/// started again, not taken by another test or by some client's outgoing connection meanwhile.
pub fn free_port(ip: Ipv4Addr) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 10_000 + std::process::id() * 7919 % 20_000;
    loop {
        let port = (10_000 + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % 22_000) as u16;
        if UdpSocket::bind((ip, port)).is_ok() && TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

/// A loopback address of its own for each node of this test process: 127.1.0.1, 127.1.0.2, ...
pub fn next_loopback() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ipv4Addr::new(127, 1 + (n / 250 / 250) as u8, (n / 250 % 250) as u8, (n % 250 + 1) as u8)
}

/// Polls `check` until it gives a value, or `timeout` passes (then `None`): the one waiting loop
/// of the tests. The timeout only bounds a wait that went wrong; nothing is asserted about how
/// long the wait took.
pub fn within<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// As `within`, and a test failure naming `what` when the time is up.
pub fn eventually<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    within(timeout, check).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// How long the `Node::wait_for_*` helpers wait for what should come at once: a change the watch
/// brings, a poll or two of a test that polls, a renewal of a short lease.
pub const WAIT: Duration = Duration::from_secs(10);

/// A GET with short timeouts: the status, whatever it is, and the body.
pub fn http_get(url: &str) -> Result<(u16, String), ureq::Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(3)))
        .build()
        .into();
    let mut response = agent.get(url).call()?;
    Ok((response.status().as_u16(), response.body_mut().read_to_string()?))
}

/// Arbitrary but repeatable bits for `seed`, for hostile input: std's SipHash with its fixed
/// default keys does the mixing, so that no test carries a random generator of its own.
pub fn arbitrary(seed: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut hasher);
    hasher.finish()
}

/// `len` arbitrary bytes, the same for the same `seed` (see `arbitrary`).
pub fn arbitrary_bytes(seed: u64, len: usize) -> Vec<u8> {
    let blocks = (len as u64).div_ceil(8);
    let mut bytes: Vec<u8> = (0..blocks).flat_map(|b| arbitrary(seed << 20 ^ b).to_le_bytes()).collect();
    bytes.truncate(len);
    bytes
}

// ---------------------------------------------------------------------------------------------
// etcd

/// One etcd member; `Etcd::start` makes a cluster of one, `Etcd::cluster` of several.
pub struct Etcd {
    child: Option<Child>,
    pub url: String,
    name: String,
    pub peer: String,
    initial_cluster: String,
    dir: TempDir,
    http: ureq::Agent,
    /// etcd's own certificate and whether clients must present one, when it speaks TLS.
    tls: Option<(Pki, bool)>,
    /// Sent with the test's own requests once auth is on.
    token: Option<String>,
    /// More command-line arguments, for every start.
    args: Vec<String>,
    /// The network namespace it runs in, in the lab (tests/lab).
    netns: Option<String>,
}

impl Etcd {
    pub fn start() -> Etcd {
        Etcd::cluster(1).pop().unwrap()
    }

    /// A single member started with more arguments: `--max-txn-ops 1000`.
    pub fn start_with(args: &[&str]) -> Etcd {
        let etcd = Etcd::cluster_of(1, None, args).pop().unwrap();
        etcd.wait_ready();
        etcd
    }

    /// A single member that speaks TLS with certificates from `pki`, and with
    /// `--client-cert-auth` asks every client for one too.
    pub fn start_tls(pki: Pki, client_cert_auth: bool) -> Etcd {
        let etcd = Etcd::cluster_of(1, Some((pki, client_cert_auth)), &[]).pop().unwrap();
        etcd.wait_ready();
        etcd
    }

    /// Starts `size` members that form one cluster, and waits until it answers.
    pub fn cluster(size: usize) -> Vec<Etcd> {
        let members = Etcd::cluster_of(size, None, &[]);
        for member in &members {
            member.wait_ready();
        }
        members
    }

    fn cluster_of(size: usize, tls: Option<(Pki, bool)>, args: &[&str]) -> Vec<Etcd> {
        let ip = Ipv4Addr::LOCALHOST;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(ip), free_port(ip))).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Etcd> = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| Etcd {
                child: None,
                url: format!("{scheme}://127.0.0.1:{client}"),
                name: format!("m{i}"),
                peer: format!("http://127.0.0.1:{peer}"),
                initial_cluster: initial_cluster.clone(),
                dir: TempDir::new("etcd"),
                http: http_agent(tls.as_ref().map(|(pki, _)| pki)),
                tls: tls.clone(),
                token: None,
                args: args.iter().map(|a| a.to_string()).collect(),
                netns: None,
            })
            .collect();
        for member in &mut members {
            member.launch();
        }
        members
    }

    /// A cluster of one member per `(network namespace, address)`, each on etcd's own ports,
    /// started and answering. The calling thread must be in a namespace that reaches them.
    #[allow(dead_code)] // the lab's (tests/lab)
    pub fn cluster_in(hosts: &[(String, Ipv4Addr)]) -> Vec<Etcd> {
        let initial_cluster =
            hosts.iter().enumerate().map(|(i, (_, ip))| format!("m{i}=http://{ip}:2380")).collect::<Vec<_>>().join(",");
        let mut members: Vec<Etcd> = hosts
            .iter()
            .enumerate()
            .map(|(i, (netns, ip))| Etcd {
                child: None,
                url: format!("http://{ip}:2379"),
                name: format!("m{i}"),
                peer: format!("http://{ip}:2380"),
                initial_cluster: initial_cluster.clone(),
                dir: TempDir::new("etcd"),
                http: http_agent(None),
                tls: None,
                token: None,
                args: Vec::new(),
                netns: Some(netns.clone()),
            })
            .collect();
        for member in &mut members {
            member.launch();
        }
        for member in &members {
            member.wait_ready();
        }
        members
    }

    /// A member added to the cluster of `members` (`member add`, then started to join it), and
    /// answering.
    #[allow(dead_code)] // not every test binary adds one
    pub fn add_to(members: &[Etcd]) -> Etcd {
        let ip = Ipv4Addr::LOCALHOST;
        let (client, peer) = (free_port(ip), free_port(ip));
        let name = format!("m{}", members.len());
        let peer = format!("http://127.0.0.1:{peer}");
        // A member that started moments ago makes etcd call the cluster unhealthy for a while.
        eventually("etcd to add a member", Duration::from_secs(30), || {
            members[0].try_post("/v3/cluster/member/add", &json!({ "peerURLs": [peer] })).ok()
        });
        let mut member = Etcd {
            child: None,
            url: format!("http://127.0.0.1:{client}"),
            initial_cluster: format!("{},{name}={peer}", members[0].initial_cluster),
            name,
            peer,
            dir: TempDir::new("etcd"),
            http: http_agent(None),
            tls: None,
            token: None,
            args: vec!["--initial-cluster-state".into(), "existing".into()],
            netns: None,
        };
        member.launch();
        member.wait_ready();
        member
    }

    /// The client URLs of the cluster's members, in the order of their IDs: the order in which
    /// nodes spread over them.
    #[allow(dead_code)] // not every test binary asks
    pub fn member_urls(&self) -> Vec<String> {
        let list = self.post("/v3/cluster/member/list", json!({}));
        let mut members: Vec<(u64, String)> = list["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["ID"].as_str().unwrap().parse().unwrap(), m["clientURLs"][0].as_str().unwrap().to_string()))
            .collect();
        members.sort();
        members.into_iter().map(|(_, url)| url).collect()
    }

    /// Whether this member is the cluster's leader, as it says itself.
    #[allow(dead_code)] // the lab's (tests/lab)
    pub fn is_leader(&self) -> bool {
        let status = self.try_post("/v3/maintenance/status", &json!({}));
        status.is_ok_and(|s| s["leader"].is_string() && s["leader"] == s["header"]["member_id"])
    }

    /// Starts this member (again) with the same ports and data directory, and waits until it
    /// answers, which in a cluster needs a quorum.
    pub fn resume(&mut self) {
        self.launch();
        self.wait_ready();
    }

    /// Starts this member without waiting for it.
    pub fn launch(&mut self) {
        let binary = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| panic!("etcd is not installed: run scripts/test, which installs Debian's etcd-server"));
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("etcd.log")).unwrap();
        let mut command = in_netns(self.netns.as_deref(), binary);
        command
            .args(["--name", &self.name, "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.url, "--advertise-client-urls", &self.url])
            .args(["--listen-peer-urls", &self.peer, "--initial-advertise-peer-urls", &self.peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log);
        if let Some((pki, client_cert_auth)) = &self.tls {
            command.arg("--cert-file").arg(pki.path("server.crt")).arg("--key-file").arg(pki.path("server.key"));
            if *client_cert_auth {
                command.arg("--client-cert-auth").arg("--trusted-ca-file").arg(pki.path("ca.crt"));
            }
        }
        let child = spawn(&mut command);
        self.child = Some(child);
    }

    /// Waits until the cluster answers: with a quorum, it answers even a request it refuses.
    fn wait_ready(&self) {
        let url = format!("{}/v3/kv/range", self.url);
        let answers = within(Duration::from_secs(20), || {
            let status = self.http.post(&url).send_json(json!({"key": "AA=="})).map(|r| r.status().as_u16());
            matches!(status, Ok(200 | 400 | 401)).then_some(())
        });
        assert!(answers.is_some(), "etcd did not start:\n{}", self.log());
    }

    /// Sends this member a signal: SIGSTOP to make it answer nothing, and keep every request it
    /// is sent meanwhile, until SIGCONT.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn try_post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        let mut request = self.http.post(&format!("{}{path}", self.url));
        if let Some(token) = &self.token {
            request = request.header("Authorization", token);
        }
        let mut response = request.send_json(body).map_err(|e| Failure::Other(e.to_string()))?;
        let status = response.status().as_u16();
        if status != 200 {
            let text = response.body_mut().read_to_string().unwrap_or_default();
            return Err(match status {
                503 => Failure::Unavailable(text),
                _ => Failure::Other(format!("{status} {text}")),
            });
        }
        response.body_mut().read_json().map_err(|e| Failure::Other(e.to_string()))
    }

    pub fn post(&self, path: &str, body: Value) -> Value {
        self.try_post(path, &body).unwrap_or_else(|e| panic!("etcd {path} {body} failed: {e}"))
    }

    /// Every key from `start` up to (not including) `end`, with values, as text.
    pub fn range(&self, start: &str, end: &str) -> Vec<Kv> {
        self.try_range(start, end).unwrap_or_else(|e| panic!("etcd range {start:?}..{end:?} failed: {e}"))
    }

    /// As `range`, but etcd's answer that it cannot serve the read now is the caller's to wait
    /// through; any other failure still fails the test.
    fn try_range(&self, start: &str, end: &str) -> Result<Vec<Kv>, Unavailable> {
        let body = json!({ "key": BASE64.encode(start), "range_end": BASE64.encode(end) });
        let answer = match self.try_post("/v3/kv/range", &body) {
            Ok(answer) => answer,
            Err(Failure::Unavailable(why)) => return Err(Unavailable(why)),
            Err(e) => panic!("etcd range {start:?}..{end:?} failed: {e}"),
        };
        let kvs = answer["kvs"].as_array().cloned().unwrap_or_default();
        Ok(kvs
            .iter()
            .map(|kv| Kv {
                key: text(&kv["key"]),
                value: text(&kv["value"]),
                lease: kv["lease"].as_str().unwrap_or("0").parse().unwrap(),
            })
            .collect())
    }

    /// The keys holding names of `worker{{.ID}}.<zone>`.
    pub fn names(&self, zone: &str) -> Vec<String> {
        let mut names: Vec<String> =
            self.range("worker0", "worker:").into_iter().map(|kv| kv.key).filter(|k| k.ends_with(zone)).collect();
        names.sort_by_key(|n| id_of(n));
        names
    }

    pub fn get(&self, key: &str) -> Option<Kv> {
        self.try_get(key).unwrap_or_else(|e| panic!("etcd get {key:?} failed: {e}"))
    }

    /// As `get`, for a wait through an election: while a cluster regains its quorum, etcd answers
    /// 503 ("leader changed", "no leader"), which is no answer yet, not a failure.
    pub fn try_get(&self, key: &str) -> Result<Option<Kv>, Unavailable> {
        let mut end = key.as_bytes().to_vec();
        end.push(0);
        Ok(self.try_range(key, std::str::from_utf8(&end).unwrap())?.into_iter().next())
    }

    /// Waits until `key` is gone: deleted, or its lease ran out.
    pub fn wait_until_gone(&self, key: &str) {
        eventually(&format!("{key} to go from etcd"), WAIT, || self.get(key).is_none().then_some(()));
    }

    pub fn put(&self, key: &str, value: &str) {
        self.post("/v3/kv/put", json!({ "key": BASE64.encode(key), "value": BASE64.encode(value) }));
    }

    /// Puts every pair in one transaction: a watcher gets them as one batch of events.
    pub fn put_all(&self, pairs: &[(&str, &str)]) {
        let puts: Vec<Value> = pairs
            .iter()
            .map(|(key, value)| json!({ "requestPut": { "key": BASE64.encode(key), "value": BASE64.encode(value) } }))
            .collect();
        self.post("/v3/kv/txn", json!({ "success": puts }));
    }

    pub fn put_with_lease(&self, key: &str, value: &str, lease: i64) {
        let body = json!({ "key": BASE64.encode(key), "value": BASE64.encode(value), "lease": lease.to_string() });
        self.post("/v3/kv/put", body);
    }

    pub fn delete(&self, key: &str) {
        self.post("/v3/kv/deleterange", json!({ "key": BASE64.encode(key) }));
    }

    pub fn grant(&self, ttl: u32) -> i64 {
        self.post("/v3/lease/grant", json!({ "TTL": ttl }))["ID"].as_str().unwrap().parse().unwrap()
    }

    pub fn revoke(&self, lease: i64) {
        self.post("/v3/lease/revoke", json!({ "ID": lease.to_string() }));
    }

    /// The seconds a lease has left, asked without renewing it.
    pub fn time_to_live(&self, lease: i64) -> i64 {
        let answer = self.post("/v3/lease/timetolive", json!({ "ID": lease.to_string() }));
        answer["TTL"].as_str().and_then(|ttl| ttl.parse().ok()).unwrap_or(-1)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// The store's revision now.
    pub fn revision(&self) -> i64 {
        let answer = self.post("/v3/kv/range", json!({ "key": BASE64.encode("\0") }));
        answer["header"]["revision"].as_str().unwrap().parse().unwrap()
    }

    /// Drops etcd's history before `revision`: a watch that would resume from earlier is refused.
    pub fn compact(&self, revision: i64) {
        self.post("/v3/kv/compaction", json!({ "revision": revision.to_string(), "physical": true }));
    }

    /// How many client requests this member started since it started, whatever the method,
    /// gateway requests included, from its own /metrics; 0 when it does not answer.
    #[allow(dead_code)] // not every test binary asks
    pub fn requests_served(&self) -> u64 {
        let Ok(mut response) = self.http.get(&format!("{}/metrics", self.url)).call() else { return 0 };
        let text = response.body_mut().read_to_string().unwrap_or_default();
        text.lines()
            .filter(|line| line.starts_with("grpc_server_started_total{"))
            .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
            .sum()
    }

    /// How many requests etcd started for a gRPC method (`Range`, `Txn`, `Watch`,
    /// `LeaseKeepAlive`) since it started, gateway requests included, from its own /metrics.
    pub fn requests(&self, method: &str) -> u64 {
        let mut response = self.http.get(&format!("{}/metrics", self.url)).call().expect("etcd's /metrics");
        let text = response.body_mut().read_to_string().unwrap();
        let label = format!("grpc_method=\"{method}\"");
        text.lines()
            .filter(|line| line.starts_with("grpc_server_started_total{") && line.contains(&label))
            .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
            .sum()
    }
}

impl Etcd {
    /// Turns authentication on, with a root user for the test itself and a user `node` (password
    /// `nodepw`) that may only read and write keys starting with `prefix`.
    pub fn enable_auth(&mut self, prefix: &str) {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        for (path, body) in [
            ("/v3/auth/user/add", json!({ "name": "root", "password": "rootpw" })),
            ("/v3/auth/user/grant", json!({ "user": "root", "role": "root" })),
            ("/v3/auth/role/add", json!({ "name": "idetcd" })),
            (
                "/v3/auth/role/grant",
                json!({ "name": "idetcd", "perm": {
                    "permType": "READWRITE", "key": BASE64.encode(prefix), "range_end": BASE64.encode(&end),
                }}),
            ),
            ("/v3/auth/user/add", json!({ "name": "node", "password": "nodepw" })),
            ("/v3/auth/user/grant", json!({ "user": "node", "role": "idetcd" })),
            ("/v3/auth/enable", json!({})),
        ] {
            self.post(path, body);
        }
        self.login();
    }

    /// Gets the test a root token again, as after a restart.
    pub fn login(&mut self) {
        self.token = None;
        let answer = self.post("/v3/auth/authenticate", json!({ "name": "root", "password": "rootpw" }));
        self.token = answer["token"].as_str().map(str::to_string);
    }
}

/// Why etcd gave no answer to a request.
enum Failure {
    /// HTTP 503 (gRPC Unavailable), with etcd's message: it cannot serve the request now.
    Unavailable(String),
    /// Anything else: no connection, a refusal, an answer that does not parse.
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unavailable(why) => write!(f, "503 {why}"),
            Failure::Other(why) => f.write_str(why),
        }
    }
}

/// etcd's message when it cannot serve a request now (HTTP 503), as while it elects a leader.
pub struct Unavailable(String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "503 {}", self.0)
    }
}

fn http_agent(pki: Option<&Pki>) -> ureq::Agent {
    let mut config =
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(5)));
    if let Some(pki) = pki {
        use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
        let read = |name: &str| fs::read(pki.path(name)).unwrap();
        let ca = Certificate::from_pem(&read("ca.crt")).unwrap();
        let cert = Certificate::from_pem(&read("client.crt")).unwrap();
        let key = PrivateKey::from_pem(&read("client.key")).unwrap();
        config = config.tls_config(
            TlsConfig::builder()
                .root_certs(RootCerts::new_with_certs(&[ca]))
                .client_cert(Some(ClientCert::new_with_certs(&[cert], key)))
                .build(),
        );
    }
    config.build().into()
}

/// A throwaway certificate authority with a server certificate for 127.0.0.1 and a client
/// certificate, made with `openssl`.
#[derive(Clone)]
pub struct Pki(std::sync::Arc<TempDir>);

impl Pki {
    pub fn new() -> Pki {
        let dir = TempDir::new("pki");
        let run = |args: &[&str]| {
            let status = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl is installed (scripts/test installs it)");
            assert!(status.success(), "openssl {args:?}");
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        run(&[
            &["req", "-x509"],
            &ec[..],
            &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=idetcd test CA"],
        ]
        .concat());
        for (name, extensions) in [
            // etcd's own gateway presents the server certificate to etcd as a client: it needs both.
            ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth"),
            ("client", "extendedKeyUsage=clientAuth"),
        ] {
            fs::write(dir.path().join(format!("{name}.ext")), extensions).unwrap();
            let (key, csr, crt, ext) =
                (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
            run(&[&["req"], &ec[..], &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={name}")]].concat());
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
        }
        Pki(std::sync::Arc::new(dir))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

/// Every member's client URL, space-separated as `endpoint` takes them.
/// `program`, run in network namespace `netns` when there is one.
fn in_netns(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns, program]);
            command
        }
        None => Command::new(program),
    }
}

pub fn endpoints(members: &[Etcd]) -> String {
    members.iter().map(|m| m.url.as_str()).collect::<Vec<_>>().join(" ")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Clone, Debug)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub lease: i64,
}

fn text(v: &Value) -> String {
    String::from_utf8(BASE64.decode(v.as_str().unwrap_or("")).unwrap()).unwrap()
}

/// The ID in `worker7.tf.local.`, for sorting.
pub fn id_of(name: &str) -> u32 {
    name.trim_start_matches("worker").split('.').next().unwrap().parse().unwrap_or(u32::MAX)
}

/// The role and the ID in `ps7.tf.local.`: `("ps", 7)`; the role is the first label's text
/// before its digits.
pub fn role_and_id(name: &str) -> (String, u32) {
    let label = name.split('.').next().unwrap_or("");
    let digits = label.len() - label.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
    let (role, id) = label.split_at(digits);
    (role.to_string(), id.parse().unwrap_or(u32::MAX))
}

/// The PTR question for an address: `4.3.2.1.in-addr.arpa.` for 1.2.3.4, nibbles under `ip6.arpa.`
/// for IPv6.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, c, d] = ip.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa.")
        }
        IpAddr::V6(ip) => {
            let nibbles: Vec<String> =
                ip.octets().iter().rev().flat_map(|b| [b & 0xf, b >> 4]).map(|n| format!("{n:x}")).collect();
            format!("{}.ip6.arpa.", nibbles.join("."))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// idetcd nodes

/// What goes into a node's Corefile; each test zone keeps tests from seeing each other's names.
#[derive(Clone)]
pub struct Setup {
    pub endpoints: String,
    pub zone: String,
    pub limit: u32,
    pub lease: u32,
    /// `poll`'s duration; empty (the default) for no `poll` line: the daemon's default of reading
    /// the members once, then following the watch stream, which is what the suite should exercise.
    /// A test that sets one says why.
    pub poll: &'static str,
    pub ttl: u32,
    pub ipv6: bool,
    /// Lines inside the idetcd block, after the generated ones.
    pub extra: String,
    /// Directives of the server block before the idetcd block (`    log\n`, `    health …\n`).
    pub server: String,
    /// The text before `{{.ID}}` in the single-role `pattern`.
    pub prefix: &'static str,
    /// `role NAME NAME{{.ID}}.<zone> LIMIT` lines, in this order, in place of `limit` and
    /// `pattern` when there are any.
    pub roles: Vec<(&'static str, u32)>,
    /// `start N`, when given.
    pub first_id: Option<u32>,
}

impl Setup {
    pub fn new(etcd: &Etcd, zone: &str) -> Setup {
        Setup {
            endpoints: etcd.url.clone(),
            zone: zone.to_string(),
            limit: 10,
            lease: 20,
            poll: "",
            ttl: 5,
            ipv6: true,
            extra: String::new(),
            server: String::new(),
            prefix: "worker",
            roles: Vec::new(),
            first_id: None,
        }
    }

    /// A Corefile with these roles, IDs from 0: `Setup::with_roles(&etcd, zone, &[("ps", 2)])`.
    pub fn with_roles(etcd: &Etcd, zone: &str, roles: &[(&'static str, u32)]) -> Setup {
        Setup { roles: roles.to_vec(), first_id: Some(0), ..Setup::new(etcd, zone) }
    }

    /// The three-role TensorFlow cluster of issue 8: chief (1), ps (2), worker (16), IDs from 0.
    pub fn three_roles(etcd: &Etcd, zone: &str) -> Setup {
        Setup::with_roles(etcd, zone, &[("chief", 1), ("ps", 2), ("worker", 16)])
    }

    pub fn corefile(&self, ip: Ipv4Addr, port: u16) -> String {
        let ipv6 = if self.ipv6 { format!(" fd00::{}", ip.octets()[3]) } else { String::new() };
        let mut names = match self.first_id {
            Some(start) => format!("        start {start}\n"),
            None => String::new(),
        };
        if self.roles.is_empty() {
            names +=
                &format!("        limit {}\n        pattern {}{{{{.ID}}}}.{}\n", self.limit, self.prefix, self.zone);
        }
        for (role, limit) in &self.roles {
            names += &format!("        role {role} {role}{{{{.ID}}}}.{} {limit}\n", self.zone);
        }
        let poll = match self.poll {
            "" => String::new(),
            every => format!("        poll {every}\n"),
        };
        format!(
            ".:{port} {{\n    bind {ip}\n{server}    idetcd {{\n        endpoint {endpoints}\n{names}        address {ip}{ipv6}\n        lease {lease}\n{poll}        ttl {ttl}\n{extra}    }}\n}}\n",
            server = self.server,
            endpoints = self.endpoints,
            lease = self.lease,
            ttl = self.ttl,
            extra = self.extra,
        )
    }

    pub fn start(&self) -> Node {
        self.start_with_args(&[], &[])
    }

    /// Starts a node with more command-line arguments (after `-conf PATH`) and environment.
    pub fn start_with_args(&self, args: &[&str], env: &[(&str, &str)]) -> Node {
        let ip = next_loopback();
        Node::start_with_args(self.corefile(ip, free_port(ip)), ip, args, env)
    }

    /// Starts a node on an address the test chose, for directives in `server` that name it.
    pub fn start_on(&self, ip: Ipv4Addr, port: u16) -> Node {
        Node::start_with(self.corefile(ip, port), ip)
    }

    /// Starts `n` nodes at once and waits until each has claimed a name; returns them in
    /// Corefile order of their roles, then by ID.
    pub fn start_together(&self, n: usize) -> Vec<Node> {
        let mut nodes: Vec<Node> = (0..n).map(|_| self.start()).collect();
        for node in &mut nodes {
            node.claimed();
        }
        nodes.sort_by_key(|node| {
            let (role, id) = role_and_id(&node.identity().expect("a node that claimed holds its name"));
            (self.roles.iter().position(|(r, _)| *r == role), id)
        });
        nodes
    }
}

pub struct Node {
    child: Option<Child>,
    pub ip: Ipv4Addr,
    pub port: u16,
    dir: TempDir,
    status: Option<ExitStatus>,
}

impl Node {
    /// Starts the binary on `corefile`, which must bind `ip` and say its port on its first line.
    pub fn start_with(corefile: String, ip: Ipv4Addr) -> Node {
        Node::start_with_args(corefile, ip, &[], &[])
    }

    /// As `start_with`, with more arguments after `-conf PATH` and more environment variables.
    /// `IDETCD_ROLE` is only set when `env` sets it.
    pub fn start_with_args(corefile: String, ip: Ipv4Addr, args: &[&str], env: &[(&str, &str)]) -> Node {
        Node::start_in(None, corefile, ip, args, env)
    }

    /// As `start_with_args`, in network namespace `netns` when there is one (the lab's hosts).
    pub fn start_in(netns: Option<&str>, corefile: String, ip: Ipv4Addr, args: &[&str], env: &[(&str, &str)]) -> Node {
        let port =
            corefile.split(['{', '\n']).next().and_then(|k| k.trim().rsplit(':').next()).and_then(|p| p.parse().ok());
        let dir = TempDir::new("node");
        let conf = dir.path().join("Corefile");
        fs::write(&conf, &corefile).unwrap();
        let log = fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut command = in_netns(netns, BINARY);
        command
            .arg("-conf")
            .arg(&conf)
            .args(args)
            .env_remove("IDETCD_ROLE")
            .envs(env.iter().copied())
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log);
        let child = spawn(&mut command);
        Node { child: Some(child), ip, port: port.unwrap_or(53), dir, status: None }
    }

    pub fn address(&self) -> SocketAddr {
        (self.ip, self.port).into()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn corefile_path(&self) -> PathBuf {
        self.dir.path().join("Corefile")
    }

    /// The command line `idetcd SUBCOMMAND -conf <this node's Corefile> ARGS…`, run as this host.
    pub fn command(&self, subcommand: &str, args: &[&str]) -> Command {
        let mut command = Command::new(BINARY);
        command.arg(subcommand).arg("-conf").arg(self.corefile_path()).args(args).env_remove("IDETCD_ROLE");
        command
    }

    /// Runs a subcommand as this host to completion: its status, stdout and stderr (both pipes).
    pub fn run(&self, subcommand: &str, args: &[&str]) -> (ExitStatus, String, String) {
        let output = self.command(subcommand, args).stdin(Stdio::null()).output().expect("run idetcd");
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        (output.status, text(output.stdout), text(output.stderr))
    }

    /// Starts a subcommand as this host in the background.
    pub fn launch(&self, subcommand: &str, args: &[&str]) -> Background {
        Background::start(self.command(subcommand, args))
    }

    /// Waits until the node answers `id.server.` with the name it claimed, and returns the name.
    pub fn claimed(&mut self) -> String {
        let name = within(Duration::from_secs(20), || {
            if let Some(status) = self.exited() {
                panic!("node {} exited with {status} before claiming:\n{}", self.ip, self.log());
            }
            self.identity()
        });
        name.unwrap_or_else(|| panic!("node {} claimed no name in time:\n{}", self.ip, self.log()))
    }

    /// The etcd endpoint the node said last that its requests go to (when it claimed, or moved).
    #[allow(dead_code)] // not every test binary asks
    pub fn etcd_endpoint(&self) -> String {
        let log = self.log();
        let said = log.rsplit("etcd requests go to ").next().filter(|_| log.contains("etcd requests go to "));
        let said = said.unwrap_or_else(|| panic!("{} never said where its etcd requests go:\n{log}", self.ip));
        said.split_whitespace().next().unwrap_or_default().to_string()
    }

    /// Waits until the node's log holds `text`.
    pub fn wait_for_log(&self, text: &str) {
        if within(WAIT, || self.log().contains(text).then_some(())).is_none() {
            panic!("no {text:?} in the log of {} within {WAIT:?}:\n{}", self.ip, self.log());
        }
    }

    /// Waits until the node answers `name`'s A question with `ip` and nothing else.
    pub fn wait_for_address(&self, name: &str, ip: &str) -> Answer {
        let answer = within(WAIT, || Some(self.query(name, Rtype::A)).filter(|a| a.data() == [ip]));
        answer.unwrap_or_else(|| panic!("{} did not answer {name} with {ip} within {WAIT:?}", self.ip))
    }

    /// Waits until the node answers `name`'s A question with `rcode`.
    pub fn wait_for_rcode(&self, name: &str, rcode: OptRcode) -> Answer {
        let answer = within(WAIT, || Some(self.query(name, Rtype::A)).filter(|a| a.rcode == rcode));
        answer.unwrap_or_else(|| panic!("{} did not answer {name} with {rcode} within {WAIT:?}", self.ip))
    }

    /// What `dig @<this node> -p <port> ARGS…` prints.
    pub fn dig(&self, args: &[&str]) -> String {
        let output = Command::new("dig")
            .arg(format!("@{}", self.ip))
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("dig is installed (scripts/test installs bind9-dnsutils)");
        String::from_utf8(output.stdout).unwrap()
    }

    /// The name `id.server.` answers right now, if any.
    pub fn identity(&self) -> Option<String> {
        let answer = self.try_query(Transport::Udp, &Query::new("id.server.", Rtype::TXT).class(Class::CH))?;
        let record = answer.answers.first()?;
        Some(record.rsplit(' ').next()?.trim_matches('"').to_string())
    }

    pub fn query(&self, name: &str, rtype: Rtype) -> Answer {
        self.ask(Transport::Udp, &Query::new(name, rtype))
    }

    pub fn ask(&self, transport: Transport, query: &Query) -> Answer {
        self.try_query(transport, query)
            .unwrap_or_else(|| panic!("no answer from {} to {query:?}:\n{}", self.ip, self.log()))
    }

    pub fn try_query(&self, transport: Transport, query: &Query) -> Option<Answer> {
        exchange(self.address(), transport, &query.packet()).map(|m| Answer::from(&m))
    }

    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// The exit status, once the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.as_mut()?.try_wait().ok()?;
        }
        self.status
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let status = within(timeout, || self.exited());
        status.unwrap_or_else(|| panic!("node {} still running after {timeout:?}:\n{}", self.ip, self.log()))
    }

    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        let status = self.wait_exit(Duration::from_secs(5));
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A command running in the background, in a process group of its own, its stdout and stderr
/// going to files; the whole group is killed on drop (what `idetcd exec` started too).
pub struct Background {
    child: Child,
    dir: TempDir,
    status: Option<ExitStatus>,
}

impl Background {
    pub fn start(mut command: Command) -> Background {
        let dir = TempDir::new("background");
        let stdout = fs::File::create(dir.path().join("stdout")).unwrap();
        let stderr = fs::File::create(dir.path().join("stderr")).unwrap();
        command.stdin(Stdio::null()).stdout(stdout).stderr(stderr).process_group(0);
        Background { child: spawn(&mut command), dir, status: None }
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Sends a signal to the process itself, not to its group.
    pub fn signal(&self, signal: i32) {
        if self.status.is_none() {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(self.child.id() as i32, signal) };
        }
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok()?;
        }
        self.status
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let status = within(timeout, || self.exited());
        status.unwrap_or_else(|| {
            panic!("still running after {timeout:?}:\nstdout:\n{}\nstderr:\n{}", self.stdout(), self.stderr())
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // SAFETY: the group is our child's own (process_group(0)); killing it reaches nothing else.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion with these arguments; returns its status, stdout and stderr.
pub fn run_binary(args: &[&str]) -> (ExitStatus, String, String) {
    let output = Command::new(BINARY).args(args).output().expect("run idetcd");
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (output.status, text(output.stdout), text(output.stderr))
}

// ---------------------------------------------------------------------------------------------
// A DNS client

#[derive(Clone, Debug)]
pub struct Query {
    pub name: String,
    pub rtype: Rtype,
    pub class: Class,
    pub opcode: Opcode,
    pub edns: Option<u16>,
    pub questions: usize,
}

impl Query {
    pub fn new(name: &str, rtype: Rtype) -> Query {
        Query { name: name.to_string(), rtype, class: Class::IN, opcode: Opcode::QUERY, edns: None, questions: 1 }
    }

    pub fn class(self, class: Class) -> Query {
        Query { class, ..self }
    }

    pub fn opcode(self, opcode: Opcode) -> Query {
        Query { opcode, ..self }
    }

    pub fn edns(self, payload: u16) -> Query {
        Query { edns: Some(payload), ..self }
    }

    pub fn questions(self, questions: usize) -> Query {
        Query { questions, ..self }
    }

    pub fn packet(&self) -> Vec<u8> {
        let mut b = MessageBuilder::new_vec();
        static NEXT_ID: AtomicU32 = AtomicU32::new(0x5eed);
        b.header_mut().set_id(NEXT_ID.fetch_add(7919, Ordering::Relaxed) as u16);
        b.header_mut().set_rd(true);
        b.header_mut().set_opcode(self.opcode);
        let mut b = b.question();
        let name = Name::<Vec<u8>>::from_str(&self.name).unwrap();
        for _ in 0..self.questions {
            b.push(Question::new(name.clone(), self.rtype, self.class)).unwrap();
        }
        let mut b = b.additional();
        if let Some(payload) = self.edns {
            b.opt(|opt| {
                opt.set_udp_payload_size(payload);
                Ok(())
            })
            .unwrap();
        }
        b.finish()
    }
}

/// A response, its records in presentation form: `worker1.tf.local 5 IN A 127.1.0.1`.
#[derive(Clone, Debug)]
pub struct Answer {
    pub rcode: OptRcode,
    pub aa: bool,
    pub tc: bool,
    /// Recursion available.
    pub ra: bool,
    pub question: Option<String>,
    pub answers: Vec<String>,
    pub authority: Vec<String>,
    pub additional: Vec<String>,
    pub edns_payload: Option<u16>,
    pub size: usize,
}

impl Answer {
    pub fn from(m: &Message<Vec<u8>>) -> Answer {
        let records = |section: Result<domain::base::message::RecordSection<'_, Vec<u8>>, _>| -> Vec<String> {
            section
                .expect("section parses")
                .filter_map(|rr| {
                    let rr = rr.expect("record parses").into_record::<AllRecordData<_, ParsedName<_>>>().ok()??;
                    Some(format!("{} {} {} {} {}", rr.owner(), rr.ttl().as_secs(), rr.class(), rr.rtype(), rr.data()))
                })
                .collect()
        };
        Answer {
            rcode: m.opt_rcode(),
            aa: m.header().aa(),
            tc: m.header().tc(),
            ra: m.header().ra(),
            question: m.first_question().map(|q| q.qname().to_string()),
            answers: records(m.answer()),
            authority: records(m.authority()),
            additional: records(m.additional()).into_iter().filter(|r| !r.contains(" OPT ")).collect(),
            edns_payload: m.opt().map(|o| o.udp_payload_size()),
            size: m.as_slice().len(),
        }
    }

    /// The answer's data fields: `["127.1.0.1"]`.
    pub fn data(&self) -> Vec<String> {
        self.answers.iter().map(|r| r.splitn(5, ' ').nth(4).unwrap_or("").to_string()).collect()
    }
}

/// Sends a packet and reads the response with the same ID; UDP tries three times.
pub fn exchange(server: SocketAddr, transport: Transport, packet: &[u8]) -> Option<Message<Vec<u8>>> {
    let bytes = match transport {
        Transport::Udp => {
            // Loopback for the nodes on loopback; the lab's (tests/lab) are on a network.
            let local = if server.ip().is_loopback() { Ipv4Addr::LOCALHOST } else { Ipv4Addr::UNSPECIFIED };
            let socket = UdpSocket::bind((local, 0)).ok()?;
            socket.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
            let mut buf = vec![0u8; 65535];
            (0..3).find_map(|_| {
                socket.send_to(packet, server).ok()?;
                loop {
                    let (n, from) = socket.recv_from(&mut buf).ok()?;
                    if from == server && buf[..2] == packet[..2] {
                        return Some(buf[..n].to_vec());
                    }
                }
            })?
        }
        Transport::Tcp => {
            let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(2)).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(packet);
            stream.write_all(&framed).ok()?;
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).ok()?;
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            stream.read_exact(&mut buf).ok()?;
            buf
        }
    };
    Message::from_octets(bytes).ok()
}

// ---------------------------------------------------------------------------------------------
// Asking all the time

/// A thread that asks a node for names in a loop and notes every question that got no answer or
/// a wrong one, until `finish`.
pub struct Asker {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Rounds asked to the end: every name once.
    rounds: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: std::thread::JoinHandle<(u64, Vec<String>)>,
}

impl Asker {
    /// `expected` pairs a name with the only answer data allowed for its A record.
    pub fn start(server: SocketAddr, expected: Vec<(String, String)>) -> Asker {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let rounds = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stopping, counting) = (stop.clone(), rounds.clone());
        let thread = std::thread::spawn(move || {
            let (mut asked, mut problems) = (0, Vec::new());
            while !stopping.load(Ordering::Relaxed) {
                for (name, want) in &expected {
                    asked += 1;
                    match exchange(server, Transport::Udp, &Query::new(name, Rtype::A).packet()) {
                        None => problems.push(format!("no answer for {name}")),
                        Some(m) => {
                            let answer = Answer::from(&m);
                            if answer.data() != [want.clone()] {
                                problems.push(format!("{name}: {:?} {:?}", answer.rcode, answer.answers));
                            }
                        }
                    }
                }
                counting.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
            (asked, problems)
        });
        Asker { stop, rounds, thread }
    }

    /// Waits until every name has been asked at least once from now on: whatever holds now (an
    /// etcd member down) was there for those questions.
    pub fn wait_for_a_round(&self) {
        // The round under way may have begun before now: the one after it did not.
        let now = self.rounds.load(Ordering::Relaxed);
        eventually("a round of questions", WAIT, || (self.rounds.load(Ordering::Relaxed) >= now + 2).then_some(()));
    }

    /// Stops asking; returns how many questions were asked and what went wrong.
    pub fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the asking thread")
    }

    /// Stops asking; fails unless every question got its one right answer.
    pub fn finish_all_right(self) {
        let (asked, problems) = self.finish();
        assert!(
            problems.is_empty(),
            "{} of {asked} questions went wrong: {:?}",
            problems.len(),
            &problems[..problems.len().min(5)]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Load and churn, for the test that answers stay right and the benchmark of what is lost

/// dnsperf asking `node` for the A records of `names` at a steady `rate` a second for `seconds`,
/// in the background; the thread returns dnsperf's report.
pub fn dnsperf(node: &Node, names: &[&str], rate: u32, seconds: u32) -> std::thread::JoinHandle<String> {
    let dir = TempDir::new("dnsperf");
    let queries = dir.path().join("queries");
    fs::write(&queries, names.iter().map(|name| format!("{name} A\n")).collect::<String>()).unwrap();
    let mut command = Command::new("dnsperf");
    command
        .args(["-s", &node.ip.to_string(), "-p", &node.port.to_string()])
        .args(["-Q", &rate.to_string(), "-l", &seconds.to_string(), "-d"])
        .arg(&queries);
    std::thread::spawn(move || {
        let output = command.output().expect("dnsperf runs (scripts/test installs it)");
        drop(dir);
        String::from_utf8_lossy(&output.stdout).into_owned()
    })
}

/// What follows `label` on its line of a dnsperf report: `0 (0.00%)` for `Queries lost:`.
pub fn dnsperf_field<'a>(report: &'a str, label: &str) -> Option<&'a str> {
    report.lines().find_map(|line| line.trim_start().strip_prefix(label)).map(str::trim)
}

/// Changes for `observer` to answer through, on the cluster `members` that `setup` names: two
/// nodes join and leave, the first member (every node's first endpoint) is killed, and one more
/// node joins. `observer` answers each newcomer's name before the next change; the last
/// newcomer is returned, still running.
pub fn churn(setup: &Setup, members: &mut [Etcd], observer: &Node) -> Node {
    // On purpose: a second of whatever load was started just before, so that the changes land
    // inside it.
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..2 {
        let mut joiner = setup.start();
        let name = joiner.claimed();
        observer.wait_for_address(&name, &joiner.ip.to_string());
        joiner.signal(libc::SIGTERM);
        joiner.wait_exit(Duration::from_secs(5));
    }
    members[0].stop();
    let mut late = setup.start();
    let name = late.claimed();
    observer.wait_for_address(&name, &late.ip.to_string());
    late
}
