//! A small synchronous client for etcd v3's JSON gateway (`POST /v3/...`).
//!
//! Only this module knows HTTP, the gateway's JSON and base64. Everything else sees typed requests
//! and answers. Calls go to one endpoint at a time; when it cannot be reached the next one is tried,
//! in the order the Corefile lists them, and the one that answered is used from then on.

use std::fmt;
use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::{json, Value};

use crate::config::{Config, Credentials};
use crate::metrics::Metrics;

/// Per request at most; a keep-alive must get through well within the lease, so short leases get
/// shorter timeouts (see `Client::new`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A range over every member of a 10 000-node cluster is about 2 MB of JSON.
const MAX_RESPONSE_BYTES: u64 = 64 << 20;
/// A watch that says nothing for this long is reopened: the connection may be dead without
/// anyone having closed it, and reopening a quiet watch costs one request.
const WATCH_SILENCE: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    /// For watches: no overall deadline, but a silent stream is given up after `WATCH_SILENCE`.
    stream_agent: ureq::Agent,
    endpoints: Vec<String>,
    current: usize,
    credentials: Option<Credentials>,
    /// The token `credentials` got, sent with every request; renewed when etcd no longer takes it.
    token: Option<String>,
    /// Where request durations and failures are counted.
    metrics: Option<Arc<Metrics>>,
    /// Per endpoint, requests in a row that it cut off right after the TLS handshake.
    cut_off: Vec<u32>,
}

#[derive(Debug)]
pub enum Error {
    /// No endpoint answered; each with what went wrong there.
    Unreachable(Vec<(String, String)>),
    /// An endpoint answered with an error; `code` is the gRPC status code etcd reports.
    Rejected { endpoint: String, status: u16, code: i64, message: String },
    /// An endpoint answered something that is not the gateway's JSON.
    Malformed { endpoint: String, detail: String },
    /// etcd refused the user name or password: retrying will not help.
    Auth { endpoint: String, message: String },
    /// Something on this side is wrong: a certificate file, a missing feature.
    Setup(String),
    /// etcd answered, and the answer says the Corefile does not fit this etcd (credentials it
    /// does not take, or a URL that is not its client URL): retrying will not help, `directive`
    /// must change.
    Misconfigured { endpoint: String, directive: &'static str, message: String },
}

impl Error {
    /// Whether the Corefile must change before this can work: a refused password, a TLS setup
    /// that cannot work, an endpoint that is not etcd's client URL. Everything else may pass.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::Auth { .. } | Error::Setup(_) | Error::Misconfigured { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unreachable(tries) => {
                write!(f, "no etcd endpoint reachable (")?;
                for (i, (endpoint, why)) in tries.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "; " };
                    write!(f, "{sep}{endpoint}: {why}")?;
                }
                write!(f, ")")
            }
            Error::Rejected { endpoint, status, message, .. } => {
                write!(f, "etcd at {endpoint} refused the request (HTTP {status}): {message}")
            }
            Error::Malformed { endpoint, detail } => {
                write!(f, "etcd at {endpoint} sent an unexpected answer: {detail}")
            }
            Error::Auth { endpoint, message } => write!(f, "etcd at {endpoint} refused the credentials: {message}"),
            Error::Setup(why) => f.write_str(why),
            Error::Misconfigured { endpoint, directive, message } => {
                write!(f, "etcd at {endpoint}: {message} (see `{directive}` in the Corefile)")
            }
        }
    }
}

impl std::error::Error for Error {}

/// gRPC status codes etcd puts in `code`.
pub const CODE_INVALID_ARGUMENT: i64 = 3;
pub const CODE_NOT_FOUND: i64 = 5;
const CODE_PERMISSION_DENIED: i64 = 7;
const CODE_FAILED_PRECONDITION: i64 = 9;
const CODE_UNAVAILABLE: i64 = 14;
const CODE_UNAUTHENTICATED: i64 = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Range {
    /// The store's revision when the range was read.
    pub revision: i64,
    pub kvs: Vec<KeyValue>,
    /// How many keys the range holds, also when `kvs` was limited.
    pub count: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: i64,
}

/// A lease's time to live, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeToLive {
    pub remaining: i64,
    /// The TTL it was granted with, to which each renewal resets it.
    pub granted: i64,
}

/// A transaction: if every comparison holds, `success` runs, else `failure`.
#[derive(Clone, Debug, Default)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

#[derive(Clone, Debug)]
pub enum Compare {
    /// The key does not exist.
    Absent(Vec<u8>),
    /// The key exists and holds this value.
    ValueIs(Vec<u8>, Vec<u8>),
    /// The key exists and is attached to this lease.
    LeaseIs(Vec<u8>, i64),
}

#[derive(Clone, Debug)]
pub enum Op {
    Put { key: Vec<u8>, value: Vec<u8>, lease: i64 },
    Delete { key: Vec<u8> },
    Range(RangeRequest),
    Txn(Box<Txn>),
}

/// The keys in `[start, end)`.
#[derive(Clone, Debug, Default)]
pub struct RangeRequest {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    /// Only keys created at or before this revision (0: any). etcd still counts every key in
    /// `count`, so count the returned keys instead.
    pub max_create_revision: i64,
    /// Only the key modified last, without its value; `count` still counts the whole range. The
    /// pair changes exactly when something in the range changed, so it is a cheap change
    /// detector: any put raises the newest revision, and a delete alone lowers the count.
    pub newest: bool,
}

impl RangeRequest {
    pub fn new(start: &[u8], end: &[u8]) -> RangeRequest {
        RangeRequest { start: start.to_vec(), end: end.to_vec(), ..RangeRequest::default() }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResponse {
    /// The revision the put created.
    Put {
        revision: i64,
    },
    Delete,
    Range(Range),
    Txn(TxnResponse),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    pub succeeded: bool,
    pub responses: Vec<OpResponse>,
}

/// Whether a request may be sent again to another endpoint after it may already have been applied.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    Safe,
    OnlyIfUnsent,
}

impl Client {
    /// A client for the Corefile's endpoints, TLS and credentials. Requests may take a quarter of
    /// the lease TTL at most: a keep-alive must get through well within the lease.
    pub fn new(config: &Config) -> Result<Client, Error> {
        let lease = Duration::from_secs(u64::from(config.lease));
        let timeout = (lease / 4).clamp(Duration::from_millis(500), REQUEST_TIMEOUT);
        let tls = tls_config(config)?;
        let builder = || {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_connect(Some(CONNECT_TIMEOUT))
                .user_agent(concat!("idetcd/", env!("CARGO_PKG_VERSION")))
                .tls_config(tls.clone())
        };
        log::debug!(
            "etcd endpoints {}: requests go to the first, and to the next only when one cannot be reached; each may take {timeout:?}",
            config.endpoints.join(" ")
        );
        Ok(Client {
            agent: builder().timeout_global(Some(timeout)).build().into(),
            stream_agent: builder().timeout_per_read(Some(WATCH_SILENCE)).build().into(),
            endpoints: config.endpoints.iter().map(|e| e.trim_end_matches('/').to_string()).collect(),
            current: 0,
            credentials: config.credentials.clone(),
            token: None,
            metrics: None,
            cut_off: vec![0; config.endpoints.len()],
        })
    }

    /// Counts every request from now on in `metrics`.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Client {
        Client { metrics: Some(metrics), ..self }
    }

    /// The endpoint requests go to now.
    pub fn endpoint(&self) -> &str {
        &self.endpoints[self.current]
    }

    pub fn range(&mut self, start: &[u8], end: &[u8]) -> Result<Range, Error> {
        let body = range_json(&RangeRequest::new(start, end));
        // Read straight into typed fields: a JSON tree of 10 000 members would take several times
        // the memory of the answer itself.
        let (endpoint, answer) = self.post::<RangeJson>("/v3/kv/range", &body, Retry::Safe)?;
        answer.decode().map_err(|detail| Error::Malformed { endpoint, detail })
    }

    /// Reads several ranges at one revision, in one request (a transaction that only reads).
    pub fn read(&mut self, ranges: &[RangeRequest]) -> Result<Vec<Range>, Error> {
        let txn = Txn { success: ranges.iter().cloned().map(Op::Range).collect(), ..Txn::default() };
        // Reading twice does no harm: unlike other transactions, it may go to another endpoint.
        let (endpoint, answer) = self.post::<TxnJson>("/v3/kv/txn", &txn_json(&txn), Retry::Safe)?;
        let malformed = |detail: String| Error::Malformed { endpoint: endpoint.clone(), detail };
        let answer = answer.decode().map_err(malformed)?;
        if answer.responses.len() != ranges.len() {
            return Err(malformed(format!("{} answers to {} reads", answer.responses.len(), ranges.len())));
        }
        answer
            .responses
            .into_iter()
            .map(|r| match r {
                OpResponse::Range(range) => Ok(range),
                other => Err(malformed(format!("a read answered with {other:?}"))),
            })
            .collect()
    }

    /// Runs a transaction. It is not resent to another endpoint once it may have arrived at one,
    /// because it may have been applied there; the caller re-reads and decides.
    pub fn txn(&mut self, txn: &Txn) -> Result<TxnResponse, Error> {
        let (endpoint, answer) = self.post::<TxnJson>("/v3/kv/txn", &txn_json(txn), Retry::OnlyIfUnsent)?;
        answer.decode().map_err(|detail| Error::Malformed { endpoint, detail })
    }

    pub fn lease_grant(&mut self, ttl: u32) -> Result<Lease, Error> {
        let (endpoint, answer) = self.post::<Value>("/v3/lease/grant", &json!({ "TTL": ttl }), Retry::Safe)?;
        let lease = Lease { id: int(&answer["ID"]), ttl: int(&answer["TTL"]) };
        if lease.id == 0 || lease.ttl <= 0 {
            let detail = format!("lease grant without an ID or TTL: {answer}");
            return Err(Error::Malformed { endpoint, detail });
        }
        Ok(lease)
    }

    /// Renews a lease once. `None` means etcd no longer knows it: it expired or was revoked.
    pub fn lease_keepalive(&mut self, id: i64) -> Result<Option<i64>, Error> {
        let body = json!({ "ID": id.to_string() });
        let (endpoint, answer) = self.post::<Value>("/v3/lease/keepalive", &body, Retry::Safe)?;
        // The gateway streams keep-alive answers, so the single answer comes wrapped in "result".
        // A lease etcd does not know comes back with its ID and no TTL; an answer without our ID
        // is not etcd's to trust (a proxy's, say) and must not make us drop a live lease.
        if int(&answer["result"]["ID"]) != id {
            return Err(Error::Malformed {
                endpoint,
                detail: format!("keep-alive answer for another lease: {answer}"),
            });
        }
        let ttl = int(&answer["result"]["TTL"]);
        Ok((ttl > 0).then_some(ttl))
    }

    /// What a lease has left, or `None` when etcd no longer knows it. Asking does not renew it.
    pub fn lease_ttl(&mut self, id: i64) -> Result<Option<TimeToLive>, Error> {
        let (_, answer) = self.post::<Value>("/v3/lease/timetolive", &json!({ "ID": id.to_string() }), Retry::Safe)?;
        // The gateway leaves out a TTL of 0: a live lease in its last second. One etcd no longer
        // knows has -1.
        let remaining = int(&answer["TTL"]);
        Ok((remaining >= 0).then_some(TimeToLive { remaining, granted: int(&answer["grantedTTL"]) }))
    }

    /// Revokes a lease, deleting every key attached to it. A lease etcd no longer knows is gone
    /// already, which is what the caller wanted.
    pub fn lease_revoke(&mut self, id: i64) -> Result<(), Error> {
        match self.post::<Value>("/v3/lease/revoke", &json!({ "ID": id.to_string() }), Retry::Safe) {
            Ok(_) => Ok(()),
            Err(Error::Rejected { code: CODE_NOT_FOUND, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Starts watching each range `[start, end)` for changes from its revision on, all on one
    /// stream: the gateway takes one create request after another in the body.
    pub fn watch(&mut self, ranges: &[WatchRange]) -> Result<Watch, Error> {
        let mut body = Vec::new();
        for range in ranges {
            let create = json!({ "create_request": {
                "key": BASE64.encode(&range.start),
                "range_end": BASE64.encode(&range.end),
                "start_revision": range.from.to_string(),
                "progress_notify": true,
            }});
            body.extend_from_slice(create.to_string().as_bytes());
            body.push(b'\n');
        }
        self.failover("/v3/watch", Retry::Safe, |client, endpoint| {
            let url = format!("{endpoint}/v3/watch");
            let mut response = client
                .request(&client.stream_agent, &url)
                .header("Content-Type", "application/json")
                .send(&body[..])
                .map_err(|e| unreachable(endpoint, e))?;
            let status = response.status().as_u16();
            if status != 200 {
                let answer = response.body_mut().with_config().limit(1 << 16).read_to_vec().unwrap_or_default();
                return Err(rejection(endpoint, status, &answer));
            }
            let lines = BufReader::new(response.into_body().into_reader());
            Ok(Watch { endpoint: endpoint.to_string(), lines })
        })
    }

    /// Sends one request, failing over to the next endpoints when one cannot be reached. Returns the
    /// endpoint that answered with its answer, decoded as `T`.
    fn post<T: serde::de::DeserializeOwned>(
        &mut self,
        path: &str,
        body: &Value,
        retry: Retry,
    ) -> Result<(String, T), Error> {
        let started = Instant::now();
        let answer = self.failover(path, retry, |client, endpoint| {
            client.post_once(endpoint, path, body).map(|answer| (endpoint.to_string(), answer))
        });
        if let Some(metrics) = &self.metrics {
            // Refusals are answers: etcd is reachable.
            metrics.etcd_request(started.elapsed(), !matches!(answer, Err(Error::Unreachable(_))));
        }
        let (endpoint, answer) = answer?;
        match serde_json::from_slice(&answer) {
            Ok(answer) => Ok((endpoint, answer)),
            Err(e) => Err(Error::Malformed { endpoint, detail: format!("{path} answer: {e}") }),
        }
    }

    /// Runs `attempt` on the current endpoint, then on the next ones while they cannot be reached.
    /// With credentials, first gets a token, and gets a new one when etcd no longer takes it.
    fn failover<T>(
        &mut self,
        path: &str,
        retry: Retry,
        attempt: impl Fn(&Client, &str) -> Result<T, Attempt>,
    ) -> Result<T, Error> {
        if self.credentials.is_some() && self.token.is_none() {
            self.authenticate()?;
        }
        let answer = match self.each_endpoint(path, retry, &attempt) {
            // Simple tokens expire when idle, and a restarted etcd forgets them.
            Err(Error::Rejected { code, ref message, .. })
                if self.credentials.is_some()
                    && (code == CODE_UNAUTHENTICATED || message.contains("user name is empty")) =>
            {
                self.token = None;
                self.authenticate()?;
                self.each_endpoint(path, retry, &attempt)
            }
            other => other,
        };
        answer.map_err(|e| self.misconfigured(e))
    }

    /// Refusals that say the Corefile's credentials do not fit this etcd.
    fn misconfigured(&self, e: Error) -> Error {
        let Error::Rejected { endpoint, code, message, .. } = &e else { return e };
        let message = match (&self.credentials, *code) {
            (None, _) if message.contains("user name is empty") => {
                "authentication is enabled in etcd, and the Corefile gives no user: add `credentials USER PASSWORD`"
                    .to_string()
            }
            (Some(c), CODE_PERMISSION_DENIED) => format!(
                "etcd user {:?} may not read or write these keys; grant its role read-write on the pattern's keys",
                c.user
            ),
            _ => return e,
        };
        Error::Misconfigured { endpoint: endpoint.clone(), directive: "credentials", message }
    }

    fn each_endpoint<T>(
        &mut self,
        path: &str,
        retry: Retry,
        attempt: &impl Fn(&Client, &str) -> Result<T, Attempt>,
    ) -> Result<T, Error> {
        let mut tries = Vec::new();
        let mut misfits = Vec::new();
        for _ in 0..self.endpoints.len() {
            let (index, endpoint) = (self.current, self.endpoints[self.current].clone());
            let outcome = attempt(self, &endpoint);
            let cut_offs = match &outcome {
                Err(Attempt::CutOff { .. }) => self.cut_off[index] + 1,
                _ => 0,
            };
            self.cut_off[index] = cut_offs;
            let (why, sent) = match outcome {
                Ok(answer) => return Ok(answer),
                Err(Attempt::Failed(e)) => return Err(e),
                Err(Attempt::Unreachable { why, sent }) => (why, sent),
                // Once could be a restart; again and again, etcd turns this client away.
                Err(Attempt::CutOff { why }) if cut_offs >= CUT_OFFS_TO_GIVE_UP => {
                    self.cut_off[index] = 0;
                    let message = format!(
                        "it speaks TLS, but closed the connection right after the handshake {CUT_OFFS_TO_GIVE_UP} times in a row ({why}): it wants a client certificate it trusts (`tls CERT KEY CACERT`)"
                    );
                    let misfit = Error::Misconfigured { endpoint: endpoint.clone(), directive: "tls", message };
                    (self.misfit(misfit, &mut misfits), false)
                }
                Err(Attempt::CutOff { why }) => (why, true),
                // This endpoint will not do, whatever happens; the others may.
                Err(Attempt::Misfit(e)) => (self.misfit(e, &mut misfits), false),
            };
            self.current = (self.current + 1) % self.endpoints.len();
            match self.endpoints.len() {
                1 => log::debug!("etcd {endpoint}{path}: {why}"),
                _ => log::debug!("etcd {endpoint}{path}: {why}; {} is next", self.endpoints[self.current]),
            }
            tries.push((endpoint, why));
            if sent && retry == Retry::OnlyIfUnsent {
                break;
            }
        }
        // When no endpoint fits the Corefile, the Corefile is what must change.
        match misfits.len() == tries.len() {
            true => Err(misfits.swap_remove(0)),
            false => Err(Error::Unreachable(tries)),
        }
    }

    /// Notes an endpoint that does not fit the Corefile; says so when there are others to use.
    fn misfit(&self, e: Error, misfits: &mut Vec<Error>) -> String {
        let why = e.to_string();
        if self.endpoints.len() > 1 {
            log::warn!("{why}; trying the other endpoints");
        }
        misfits.push(e);
        why
    }

    /// Trades the credentials for a token. A refused password is an `Error::Auth`.
    fn authenticate(&mut self) -> Result<(), Error> {
        let Some(credentials) = self.credentials.clone() else { return Ok(()) };
        let body = json!({ "name": credentials.user, "password": credentials.password.expose() });
        let path = "/v3/auth/authenticate";
        let answer = self.each_endpoint(path, Retry::Safe, &|client, endpoint| {
            client.post_once(endpoint, path, &body).map(|answer| (endpoint.to_string(), answer))
        });
        let (endpoint, answer) = match answer {
            Ok(answer) => answer,
            Err(Error::Rejected { endpoint, message, .. }) if message.contains("authentication failed") => {
                return Err(Error::Auth { endpoint, message });
            }
            Err(Error::Rejected { endpoint, code: CODE_FAILED_PRECONDITION, .. }) => {
                let message = "authentication is not enabled in etcd, so it takes no user and password: leave out `credentials`, or enable authentication in etcd".to_string();
                return Err(Error::Misconfigured { endpoint, directive: "credentials", message });
            }
            Err(e) => return Err(e),
        };
        let token = serde_json::from_slice::<Value>(&answer).ok().and_then(|v| v["token"].as_str().map(str::to_string));
        match token {
            Some(token) => {
                log::debug!("authenticated to etcd at {endpoint} as {}", credentials.user);
                self.token = Some(token);
                Ok(())
            }
            None => Err(Error::Malformed { endpoint, detail: "authentication answer without a token".into() }),
        }
    }

    fn request(&self, agent: &ureq::Agent, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        let request = agent.post(url);
        match &self.token {
            Some(token) => request.header("Authorization", token),
            None => request,
        }
    }

    fn post_once(&self, endpoint: &str, path: &str, body: &Value) -> Result<Vec<u8>, Attempt> {
        let url = format!("{endpoint}{path}");
        let mut response = self.request(&self.agent, &url).send_json(body).map_err(|e| unreachable(endpoint, e))?;
        let status = response.status().as_u16();
        let answer = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()
            .map_err(|e| Attempt::Unreachable { why: describe(&e), sent: true })?;
        if (200..300).contains(&status) {
            return Ok(answer);
        }
        Err(rejection(endpoint, status, &answer))
    }
}

/// What an error answer means: another endpoint may do better, or the request was refused.
fn rejection(endpoint: &str, status: u16, answer: &[u8]) -> Attempt {
    let Ok(error) = serde_json::from_slice::<Value>(answer) else {
        return not_etcd(endpoint, status, answer);
    };
    // The watch stream wraps errors one level deeper.
    let error = if error["error"].is_object() { &error["error"] } else { &error };
    let code = int(&error["code"]).max(int(&error["grpc_code"]));
    let message = error["error"].as_str().or(error["message"].as_str()).unwrap_or("no message");
    // An endpoint that has lost its cluster says "unavailable": another one may do better.
    if code == CODE_UNAVAILABLE || status == 503 {
        return Attempt::Unreachable { why: message.to_string(), sent: true };
    }
    Attempt::Failed(Error::Rejected { endpoint: endpoint.to_string(), status, code, message: message.to_string() })
}

/// An error answer that is not etcd's JSON. From a proxy (5xx) it may pass, and another endpoint may
/// do better; a 4xx says the URL is wrong: a peer port, a path after the port, or plain HTTP to an
/// etcd that speaks only TLS.
fn not_etcd(endpoint: &str, status: u16, answer: &[u8]) -> Attempt {
    let first_line = String::from_utf8_lossy(answer);
    let first_line: String =
        first_line.lines().next().unwrap_or_default().chars().filter(|c| !c.is_control()).take(100).collect();
    let said = match first_line.trim() {
        "" => String::new(),
        text => format!(" ({text:?})"),
    };
    // 408, 429 and the like from a proxy pass; a wrong URL is 404 (or 400, 405).
    if ![400, 404, 405].contains(&status) {
        return Attempt::Unreachable { why: format!("HTTP {status} with a body that is not JSON{said}"), sent: true };
    }
    let hint = if first_line.contains("HTTPS") {
        "it speaks TLS: write the endpoint with https://".to_string()
    } else {
        "this is not an etcd 3.4+ client URL (a peer port, or a path after the port?); use the URL that `etcdctl --endpoints` takes".to_string()
    };
    Attempt::Misfit(Error::Misconfigured {
        endpoint: endpoint.to_string(),
        directive: "endpoint",
        message: format!("HTTP {status}{said}: {hint}"),
    })
}

/// TLS as the Corefile asks: its CA instead of the public ones, and a client certificate.
#[cfg(feature = "tls")]
fn tls_config(config: &Config) -> Result<ureq::tls::TlsConfig, Error> {
    use ureq::tls::{ClientCert, PemItem, RootCerts, TlsConfig};
    let mut builder = TlsConfig::builder();
    let Some(files) = &config.tls else { return Ok(builder.build()) };
    let pem = |path: &std::path::Path| -> Result<Vec<PemItem<'static>>, Error> {
        let bytes =
            std::fs::read(path).map_err(|e| Error::Setup(format!("tls: cannot read {}: {e}", path.display())))?;
        ureq::tls::parse_pem(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Setup(format!("tls: {} is not PEM: {e}", path.display())))
    };
    let certificates = |path: &std::path::Path| -> Result<Vec<_>, Error> {
        let certs: Vec<_> = pem(path)?
            .into_iter()
            .filter_map(|item| match item {
                PemItem::Certificate(c) => Some(c),
                _ => None,
            })
            .collect();
        match certs.is_empty() {
            true => Err(Error::Setup(format!("tls: no certificate in {}", path.display()))),
            false => Ok(certs),
        }
    };
    if let Some(ca) = &files.ca {
        builder = builder.root_certs(RootCerts::new_with_certs(&certificates(ca)?));
    }
    if let (Some(cert), Some(key)) = (&files.cert, &files.key) {
        let key = pem(key)?.into_iter().find_map(|item| match item {
            PemItem::PrivateKey(k) => Some(k),
            _ => None,
        });
        let key = key
            .ok_or_else(|| Error::Setup(format!("tls: no private key in {}", files.key.as_ref().unwrap().display())))?;
        builder = builder.client_cert(Some(ClientCert::new_with_certs(&certificates(cert)?, key)));
    }
    Ok(builder.build())
}

#[cfg(not(feature = "tls"))]
fn tls_config(config: &Config) -> Result<ureq::tls::TlsConfig, Error> {
    if config.tls.is_some() || config.endpoints.iter().any(|e| e.starts_with("https://")) {
        return Err(Error::Setup("this idetcd was built without TLS (cargo feature \"tls\")".into()));
    }
    Ok(ureq::tls::TlsConfig::default())
}

enum Attempt {
    Unreachable {
        why: String,
        sent: bool,
    },
    /// A TLS endpoint closed the connection during or right after the handshake: with TLS 1.3, an
    /// etcd that wants a client certificate may do so before its alert can be read.
    CutOff {
        why: String,
    },
    /// This endpoint does not fit the Corefile (`Error::Misconfigured`); another may.
    Misfit(Error),
    Failed(Error),
}

/// How many cut-offs in a row make a TLS setup etcd turns away, not a passing restart.
const CUT_OFFS_TO_GIVE_UP: u32 = 3;

/// A request that got no answer: mostly the network's or etcd's trouble, which passes. But TLS to
/// a plain HTTP port, plain HTTP to a TLS port and a TLS handshake that fails are the Corefile's to
/// fix: a probe of the port tells which it is.
fn unreachable(endpoint: &str, e: ureq::Error) -> Attempt {
    // ureq reports a refused connection as the I/O error it is.
    let network = match &e {
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound | ureq::Error::Timeout(_) => true,
        ureq::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::HostUnreachable
                | ErrorKind::NetworkUnreachable
                | ErrorKind::AddrNotAvailable
                | ErrorKind::TimedOut
        ),
        _ => false,
    };
    let misconfigured = |directive, message: &str| {
        Attempt::Misfit(Error::Misconfigured {
            endpoint: endpoint.to_string(),
            directive,
            message: message.to_string(),
        })
    };
    if !network {
        if let Some(authority) = endpoint.strip_prefix("https://") {
            // A TLS proxy may answer plain HTTP too: only a port that does not speak TLS is wrong.
            let speaks_tls = speaks(authority, Protocol::Tls);
            if !speaks_tls && speaks(authority, Protocol::PlainHttp) {
                return misconfigured("endpoint", "it speaks plain HTTP, not TLS: write the endpoint with http://");
            }
            // rustls reports a failed handshake as invalid data: a certificate it does not trust,
            // or an alert from etcd, which wanted a client certificate.
            let tls_failed = match &e {
                ureq::Error::Io(io) => io.kind() == ErrorKind::InvalidData,
                ureq::Error::Tls(_) => true,
                _ => false,
            };
            if tls_failed {
                let message = format!("TLS failed ({}): check the CA and certificate files", describe(&e));
                return misconfigured("tls", &message);
            }
            if speaks_tls {
                return Attempt::CutOff { why: describe(&e) };
            }
        } else if let Some(authority) = endpoint.strip_prefix("http://") {
            if speaks(authority, Protocol::Tls) {
                return misconfigured("endpoint", "it speaks TLS: write the endpoint with https://");
            }
        }
    }
    Attempt::Unreachable { sent: !network, why: describe(&e) }
}

enum Protocol {
    PlainHttp,
    Tls,
}

/// Whether `authority` (`host:port`, perhaps with a path after it) answers `protocol`: a plain
/// HTTP request gets `HTTP/`, a TLS hello gets a TLS record (a hello back, or an alert).
fn speaks(authority: &str, protocol: Protocol) -> bool {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    // A TLS 1.2 ClientHello with one cipher suite and no extensions: enough for any TLS server to
    // answer with a record of its own, if only an alert.
    const HELLO: [u8; 52] = [
        0x16, 0x03, 0x01, 0x00, 0x2f, // record: handshake, 47 bytes
        0x01, 0x00, 0x00, 0x2b, 0x03, 0x03, // ClientHello, 43 bytes, TLS 1.2
        7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,    // random
        0x00, // no session ID
        0x00, 0x02, 0xc0, 0x2f, // TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        0x01, 0x00, // no compression
        0x00, 0x00, // no extensions
    ];
    let host_port = authority.split('/').next().unwrap_or(authority);
    let Some(address) = host_port.to_socket_addrs().ok().and_then(|mut a| a.next()) else { return false };
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) else { return false };
    let _ = stream.set_read_timeout(Some(CONNECT_TIMEOUT));
    let request: &[u8] = match protocol {
        Protocol::PlainHttp => b"GET /version HTTP/1.0\r\n\r\n",
        Protocol::Tls => &HELLO,
    };
    let mut answer = [0u8; 5];
    if stream.write_all(request).is_err() || stream.read_exact(&mut answer).is_err() {
        return false;
    }
    match protocol {
        Protocol::PlainHttp => &answer == b"HTTP/",
        Protocol::Tls => matches!(answer, [0x15 | 0x16, 0x03, ..]),
    }
}

/// One range of a watch, and the revision to follow it from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchRange {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    pub from: i64,
}

/// An open watch: etcd's never-ending answer, one JSON message per line.
pub struct Watch {
    endpoint: String,
    lines: BufReader<ureq::BodyReader<'static>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMessage {
    /// Changes in revision order.
    Changes(Vec<WatchEvent>),
    /// Nothing changed; the watch is alive (its creation, a progress notification).
    Progress,
    /// The revision the watch was to start from is compacted away: read everything again. The
    /// oldest revision etcd still has is given.
    Compacted { revision: i64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub deleted: bool,
    /// For a deletion, only the key and the revision it was deleted at.
    pub kv: KeyValue,
}

impl Watch {
    /// Waits for the next message. An error means the watch is over: etcd went away, the stream
    /// broke or stayed silent too long, or etcd cancelled it.
    pub fn receive(&mut self) -> Result<WatchMessage, Error> {
        let broken = |why: String| Error::Unreachable(vec![(self.endpoint.clone(), why)]);
        let mut line = Vec::new();
        match (&mut self.lines).take(MAX_RESPONSE_BYTES).read_until(b'\n', &mut line) {
            Ok(0) => return Err(broken("the watch stream ended".into())),
            Ok(_) if !line.ends_with(b"\n") => return Err(broken("the watch stream broke off".into())),
            Ok(_) => {}
            Err(e) => return Err(broken(e.to_string())),
        }
        let malformed = |detail: String| Error::Malformed { endpoint: self.endpoint.clone(), detail };
        let message: WatchJson = serde_json::from_slice(&line).map_err(|e| malformed(format!("watch message: {e}")))?;
        let reason = message.result.cancel_reason.clone();
        message
            .decode()
            .map_err(malformed)?
            .ok_or_else(|| broken(if reason.is_empty() { "etcd cancelled the watch".to_string() } else { reason }))
    }
}

/// One message of a watch stream.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct WatchJson {
    result: WatchResultJson,
    error: Option<Value>,
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct WatchResultJson {
    events: Option<Vec<EventJson>>,
    canceled: bool,
    cancel_reason: String,
    compact_revision: Int,
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct EventJson {
    /// "DELETE", or left out for a put.
    #[serde(rename = "type")]
    kind: String,
    kv: KeyValueJson,
}

impl WatchJson {
    /// `None` when etcd cancelled the watch for a reason other than compaction.
    fn decode(self) -> Result<Option<WatchMessage>, String> {
        if let Some(error) = self.error {
            return Err(format!("watch error: {error}"));
        }
        let result = self.result;
        if result.compact_revision.0 > 0 {
            return Ok(Some(WatchMessage::Compacted { revision: result.compact_revision.0 }));
        }
        if result.canceled {
            return Ok(None);
        }
        let Some(events) = result.events else { return Ok(Some(WatchMessage::Progress)) };
        let events = events
            .into_iter()
            .map(|e| Ok(WatchEvent { deleted: e.kind == "DELETE", kv: e.kv.decode()? }))
            .collect::<Result<_, String>>()?;
        Ok(Some(WatchMessage::Changes(events)))
    }
}

fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::Timeout(_) => "timed out".to_string(),
        ureq::Error::ConnectionFailed => "connection failed".to_string(),
        ureq::Error::HostNotFound => "host not found".to_string(),
        other => other.to_string(),
    }
}

/// The gateway writes 64-bit integers as strings and leaves out fields that are zero.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// A range answer as the gateway writes it: 64-bit integers as strings, keys and values in base64,
/// zero fields left out.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct RangeJson {
    header: HeaderJson,
    kvs: Vec<KeyValueJson>,
    count: Int,
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct HeaderJson {
    revision: Int,
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct KeyValueJson {
    key: String,
    value: String,
    create_revision: Int,
    mod_revision: Int,
    lease: Int,
}

impl RangeJson {
    fn decode(self) -> Result<Range, String> {
        let kvs = self.kvs.into_iter().map(KeyValueJson::decode).collect::<Result<_, _>>()?;
        Ok(Range { revision: self.header.revision.0, kvs, count: self.count.0 })
    }
}

impl KeyValueJson {
    fn decode(self) -> Result<KeyValue, String> {
        let decode = |text: &str, what: &str| BASE64.decode(text).map_err(|e| format!("{what} is not base64: {e}"));
        Ok(KeyValue {
            key: decode(&self.key, "key")?,
            value: decode(&self.value, "value")?,
            create_revision: self.create_revision.0,
            mod_revision: self.mod_revision.0,
            lease: self.lease.0,
        })
    }
}

/// A 64-bit integer the gateway wrote as a string (or, leniently, as a number).
#[derive(Clone, Copy, Default)]
struct Int(i64);

impl<'de> serde::Deserialize<'de> for Int {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Int, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Int;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer, possibly in a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Int, E> {
                v.parse().map(Int).map_err(|_| E::custom(format!("{v:?} is not an integer")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Int, E> {
                i64::try_from(v).map(Int).map_err(|_| E::custom("integer out of range"))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A transaction answer; each response holds exactly one of the fields.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct TxnJson {
    succeeded: bool,
    responses: Vec<OpResponseJson>,
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct OpResponseJson {
    response_put: Option<PutJson>,
    response_delete_range: Option<serde::de::IgnoredAny>,
    response_range: Option<RangeJson>,
    response_txn: Option<TxnJson>,
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct PutJson {
    header: HeaderJson,
}

impl TxnJson {
    fn decode(self) -> Result<TxnResponse, String> {
        let responses = self.responses.into_iter().map(OpResponseJson::decode).collect::<Result<_, _>>()?;
        Ok(TxnResponse { succeeded: self.succeeded, responses })
    }
}

impl OpResponseJson {
    fn decode(self) -> Result<OpResponse, String> {
        match self {
            OpResponseJson { response_put: Some(put), .. } => Ok(OpResponse::Put { revision: put.header.revision.0 }),
            OpResponseJson { response_delete_range: Some(_), .. } => Ok(OpResponse::Delete),
            OpResponseJson { response_range: Some(range), .. } => range.decode().map(OpResponse::Range),
            OpResponseJson { response_txn: Some(txn), .. } => txn.decode().map(OpResponse::Txn),
            _ => Err("a transaction response of an unknown kind".to_string()),
        }
    }
}

fn range_json(r: &RangeRequest) -> Value {
    let mut body = json!({ "key": BASE64.encode(&r.start), "range_end": BASE64.encode(&r.end) });
    if r.max_create_revision > 0 {
        body["max_create_revision"] = json!(r.max_create_revision.to_string());
    }
    if r.newest {
        body["limit"] = json!(1);
        body["sort_order"] = json!("DESCEND");
        body["sort_target"] = json!("MOD");
        body["keys_only"] = json!(true);
    }
    body
}

fn txn_json(txn: &Txn) -> Value {
    let compare: Vec<Value> = txn
        .compare
        .iter()
        .map(|c| match c {
            Compare::Absent(key) => {
                json!({ "target": "CREATE", "key": BASE64.encode(key), "createRevision": "0" })
            }
            Compare::ValueIs(key, value) => {
                json!({ "target": "VALUE", "key": BASE64.encode(key), "value": BASE64.encode(value) })
            }
            Compare::LeaseIs(key, lease) => {
                json!({ "target": "LEASE", "key": BASE64.encode(key), "lease": lease.to_string() })
            }
        })
        .collect();
    let ops = |ops: &[Op]| -> Vec<Value> {
        ops.iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => json!({ "requestPut": {
                    "key": BASE64.encode(key), "value": BASE64.encode(value), "lease": lease.to_string(),
                }}),
                Op::Delete { key } => json!({ "requestDeleteRange": { "key": BASE64.encode(key) } }),
                Op::Range(range) => json!({ "requestRange": range_json(range) }),
                Op::Txn(inner) => json!({ "requestTxn": txn_json(inner) }),
            })
            .collect()
    };
    json!({ "compare": compare, "success": ops(&txn.success), "failure": ops(&txn.failure) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_gateway_integers() {
        assert_eq!(int(&json!("7587")), 7587);
        assert_eq!(int(&json!(12)), 12);
        assert_eq!(int(&Value::Null), 0);
        assert_eq!(int(&json!("x")), 0);
        let typed = |text: &str| serde_json::from_str::<Int>(text).map(|i| i.0).ok();
        assert_eq!((typed(r#""7587""#), typed("12"), typed(r#""x""#), typed("[]")), (Some(7587), Some(12), None, None));
    }

    #[test]
    fn parses_a_nested_transaction_answer() {
        // As etcd 3.4.23 answered a two-level claim whose both keys were taken.
        let answer: TxnJson = serde_json::from_str(
            r#"{"header":{"revision":"3"},"responses":[{"response_txn":{"header":{},"responses":[
            {"response_range":{"header":{"revision":"3"},"kvs":[{"key":"d29ya2VyMS50Zi5sb2NhbC4=",
            "create_revision":"2","mod_revision":"2","version":"1","value":"e30="}],"count":"1"}}]}}]}"#,
        )
        .unwrap();
        let txn = answer.decode().unwrap();
        assert!(!txn.succeeded);
        let OpResponse::Txn(inner) = &txn.responses[0] else { panic!("not a txn: {txn:?}") };
        let OpResponse::Range(range) = &inner.responses[0] else { panic!("not a range: {inner:?}") };
        assert_eq!(range.kvs[0].key, b"worker1.tf.local.");
        assert_eq!(range.kvs[0].value, b"{}");
        assert_eq!((range.revision, range.count, range.kvs[0].create_revision), (3, 1, 2));
    }

    #[test]
    fn rejects_malformed_answers() {
        let range = |text: &str| serde_json::from_str::<RangeJson>(text).map_err(|e| e.to_string())?.decode();
        assert!(range(r#"{"kvs":"nope"}"#).is_err());
        assert!(range(r#"{"kvs":[{"key":"***"}]}"#).is_err());
        assert!(range(r#"{"count":"twelve"}"#).is_err());
        assert_eq!(range(r#"{"header":{}}"#), Ok(Range::default()));
        assert_eq!(range(r#"{"header":{"revision":7},"count":"2"}"#).map(|r| (r.revision, r.count)), Ok((7, 2)));
        let txn = serde_json::from_str::<TxnJson>(r#"{"responses":[{"response_compact":{}}]}"#).unwrap();
        assert!(txn.decode().is_err());
    }

    #[test]
    fn parses_watch_messages() {
        // As etcd 3.4.23 streamed them.
        let message = |text: &str| serde_json::from_str::<WatchJson>(text).unwrap().decode();
        let created = r#"{"result":{"header":{"revision":"1"},"created":true}}"#;
        assert_eq!(message(created), Ok(Some(WatchMessage::Progress)));
        let changes = r#"{"result":{"header":{"revision":"3"},"events":[
            {"kv":{"key":"dzEueC4=","create_revision":"2","mod_revision":"2","version":"1","value":"aGVsbG8="}},
            {"type":"DELETE","kv":{"key":"dzEueC4=","mod_revision":"3"}}]}}"#;
        let Ok(Some(WatchMessage::Changes(events))) = message(changes) else { panic!("{:?}", message(changes)) };
        assert_eq!(events.len(), 2);
        assert!(!events[0].deleted && events[1].deleted);
        assert_eq!((events[0].kv.key.as_slice(), events[0].kv.value.as_slice()), (&b"w1.x."[..], &b"hello"[..]));
        assert_eq!(events[1].kv.mod_revision, 3);
        let compacted = r#"{"result":{"header":{},"canceled":true,"compact_revision":"3"}}"#;
        assert_eq!(message(compacted), Ok(Some(WatchMessage::Compacted { revision: 3 })));
        assert_eq!(message(r#"{"result":{"canceled":true,"cancel_reason":"x"}}"#), Ok(None));
        assert!(message(r#"{"error":{"grpc_code":14}}"#).is_err());
    }

    #[test]
    fn writes_transactions_as_the_gateway_expects() {
        let txn = Txn {
            compare: vec![Compare::Absent(b"k".to_vec())],
            success: vec![Op::Put { key: b"k".to_vec(), value: b"v".to_vec(), lease: 42 }],
            failure: vec![
                Op::Range(RangeRequest::new(b"a", b"b")),
                Op::Range(RangeRequest { max_create_revision: 9, ..RangeRequest::new(b"a", b"b") }),
                Op::Range(RangeRequest { newest: true, ..RangeRequest::new(b"a", b"b") }),
                Op::Delete { key: b"k".to_vec() },
            ],
        };
        let want = json!({
            "compare": [{ "target": "CREATE", "key": "aw==", "createRevision": "0" }],
            "success": [{ "requestPut": { "key": "aw==", "value": "dg==", "lease": "42" } }],
            "failure": [
                { "requestRange": { "key": "YQ==", "range_end": "Yg==" } },
                { "requestRange": { "key": "YQ==", "range_end": "Yg==", "max_create_revision": "9" } },
                { "requestRange": {
                    "key": "YQ==", "range_end": "Yg==",
                    "limit": 1, "sort_order": "DESCEND", "sort_target": "MOD", "keys_only": true,
                } },
                { "requestDeleteRange": { "key": "aw==" } },
            ],
        });
        assert_eq!(txn_json(&txn), want);
    }
}
