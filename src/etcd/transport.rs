//! The `Client`: one endpoint at a time, failing over to the next when it cannot be reached;
//! HTTP and TLS, with probes that tell an endpoint that does not fit the Corefile from one that
//! is down; the user's token; and what an error answer means.

use std::io::ErrorKind;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ureq::Timeout;

use super::endpoints::{Endpoints, Snapshot};
use super::json::{gateway_error, AuthenticateJson, TokenJson};
use super::{Error, Refusal};
use crate::config::{Config, Credentials};
use crate::metrics::Metrics;

/// Per request at most; a keep-alive must get through well within the lease, so short leases get
/// shorter timeouts (see `Client::new`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Per request at most while claiming (see `Client::patiently`).
const CLAIM_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A range over every member of a 10 000-node cluster is about 2 MB of JSON.
pub(super) const MAX_RESPONSE_BYTES: u64 = 64 << 20;
/// A watch that says nothing for this long is reopened: the connection may be dead without
/// anyone having closed it (a middlebox that forgot it, say), and reopening a quiet watch costs
/// one request, from where it left off: etcd finds the changes since by revision, whatever the
/// cluster's size. With the default lease's renewals every 6.7 s, a quiet node stays under 0.2
/// requests a second. etcd's own progress notifications come only every 10 minutes by default.
const WATCH_SILENCE: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    /// For watches: no overall deadline, but a silent stream is given up after `WATCH_SILENCE`.
    stream_agent: ureq::Agent,
    /// Shared with the clones: where one fails over, the others go next.
    pub(super) endpoints: Arc<Endpoints>,
    credentials: Option<Credentials>,
    /// The token `credentials` got, sent with every request; renewed when etcd no longer takes it.
    token: Option<String>,
    /// Where request durations and failures are counted.
    metrics: Option<Arc<Metrics>>,
    /// How long a request may take now: `timeouts.usual`, or `timeouts.claiming` in `patiently`.
    timeout: Duration,
    timeouts: Timeouts,
}

#[derive(Clone, Copy)]
struct Timeouts {
    usual: Duration,
    claiming: Duration,
}

/// Whether a request may be sent again to another endpoint after it may already have been applied.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    Safe,
    OnlyIfUnsent,
}

impl Client {
    /// A client for the Corefile's endpoints, TLS and credentials. Requests may take a quarter of
    /// the lease TTL at most: a keep-alive must get through well within the lease. Claims may
    /// take half of it (see `patiently`).
    pub fn new(config: &Config) -> Result<Client, Error> {
        let lease = Duration::from_secs(u64::from(config.lease));
        let timeout = (lease / 4).clamp(Duration::from_millis(500), REQUEST_TIMEOUT);
        let claiming = (lease / 2).clamp(timeout, CLAIM_TIMEOUT);
        #[cfg_attr(not(feature = "tls"), allow(unused_variables, clippy::let_unit_value))]
        let tls = tls_config(config)?;
        let builder = || {
            let builder = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_connect(Some(CONNECT_TIMEOUT))
                .user_agent(concat!("idetcd/", env!("CARGO_PKG_VERSION")))
                // Answers stream through these, whatever their size. ureq's 128 KB each, for every
                // connection (requests, the watch, a claim's second read), were half a megabyte of
                // a node's memory.
                .input_buffer_size(16 << 10)
                .output_buffer_size(16 << 10);
            // Without TLS, ureq has no TLS settings at all.
            #[cfg(feature = "tls")]
            let builder = builder.tls_config(tls.clone());
            builder
        };
        log::debug!(
            "etcd endpoints {}, and the members' client URLs once their list is read: requests go to one, and to the next only when it cannot be reached; each may take {timeout:?}, {claiming:?} while claiming",
            config.endpoints.join(" ")
        );
        Ok(Client {
            agent: builder().timeout_global(Some(timeout)).build().into(),
            stream_agent: builder().timeout_per_read(Some(WATCH_SILENCE)).build().into(),
            endpoints: Arc::new(Endpoints::new(&config.endpoints)),
            credentials: config.credentials.clone(),
            token: None,
            metrics: None,
            timeout,
            timeouts: Timeouts { usual: timeout, claiming },
        })
    }

    /// Runs the requests of a claim, each of which may take longer than usual. A node that holds
    /// no name has no lease to keep alive in time, and a busy etcd, many nodes starting together,
    /// answers late rather than not at all: given up on, a claim costs a new lease, a place at
    /// the end of the queue and every request again, the more load the more often.
    pub fn patiently<T>(&mut self, requests: impl FnOnce(&mut Client) -> T) -> T {
        self.timeout = self.timeouts.claiming;
        let answer = requests(self);
        self.timeout = self.timeouts.usual;
        answer
    }

    /// Counts every request from now on in `metrics`.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Client {
        Client { metrics: Some(metrics), ..self }
    }

    /// The endpoint requests go to now.
    pub fn endpoint(&self) -> String {
        self.endpoints.current()
    }

    /// Sends one request, failing over to the next endpoints when one cannot be reached. Returns the
    /// endpoint that answered with its answer, decoded as `T`.
    pub(super) fn post<T: serde::de::DeserializeOwned>(
        &mut self,
        path: &str,
        body: &impl serde::Serialize,
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

    /// As `post`, but hands the answer to `read` as it arrives, at most `MAX_RESPONSE_BYTES` of
    /// it, instead of holding it whole: for answers that grow with the cluster. Only sending the
    /// request fails over to another endpoint; an answer that breaks off while it is read is an
    /// error (`read` says which, from the endpoint and what went wrong).
    pub(super) fn post_reading<T>(
        &mut self,
        path: &str,
        body: &impl serde::Serialize,
        retry: Retry,
        read: impl FnOnce(&str, ureq::BodyReader<'static>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let started = Instant::now();
        let answer = self
            .failover(path, retry, |client, endpoint| {
                let url = format!("{endpoint}{path}");
                let mut response =
                    client.request(&client.agent, &url).send_json(body).map_err(|e| unreachable(endpoint, e))?;
                let status = response.status().as_u16();
                if !(200..300).contains(&status) {
                    let answer = response.body_mut().with_config().limit(1 << 16).read_to_vec().unwrap_or_default();
                    return Err(rejection(endpoint, status, &answer));
                }
                let reader = response.into_body().into_with_config().limit(MAX_RESPONSE_BYTES).reader();
                Ok((endpoint.to_string(), reader))
            })
            .and_then(|(endpoint, reader)| read(&endpoint, reader));
        if let Some(metrics) = &self.metrics {
            metrics.etcd_request(started.elapsed(), !matches!(answer, Err(Error::Unreachable(_))));
        }
        answer
    }

    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    /// Drops the token, so that the next request gets a new one: for a watch etcd accepted with a
    /// token it no longer takes, and then cancelled.
    pub fn forget_token(&mut self) {
        self.token = None;
    }

    /// Runs `attempt` on the current endpoint, then on the next ones while they cannot be reached.
    /// With credentials, first gets a token, and gets a new one when etcd no longer takes it.
    pub(super) fn failover<T>(
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
            Err(Error::Rejected { refusal: Refusal::InvalidToken | Refusal::NoUser, .. })
                if self.credentials.is_some() =>
            {
                self.token = None;
                self.authenticate()?;
                self.each_endpoint(path, retry, &attempt)
            }
            other => other,
        };
        answer.map_err(|e| self.misconfigured(e))
    }

    /// Refusals that say the Corefile's credentials do not fit this etcd: for a watch, whose
    /// refusals come inside its stream.
    pub fn misconfigured(&self, e: Error) -> Error {
        let Error::Rejected { endpoint, refusal, .. } = &e else { return e };
        let message = match (&self.credentials, refusal) {
            (None, Refusal::NoUser) => {
                "authentication is enabled in etcd, and the Corefile gives no user: add `credentials USER PASSWORD`"
                    .to_string()
            }
            (Some(c), Refusal::PermissionDenied) => format!(
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
        let Snapshot { urls, order } = self.endpoints.snapshot();
        for (turn, &index) in order.iter().enumerate() {
            let endpoint = &urls[index];
            let outcome = attempt(self, endpoint);
            if let Some(metrics) = &self.metrics {
                metrics.etcd_endpoint(
                    endpoint,
                    !matches!(outcome, Err(Attempt::Unreachable { .. } | Attempt::CutOff { .. })),
                );
            }
            let cut_offs = self.endpoints.cut_off(&urls, index, matches!(outcome, Err(Attempt::CutOff { .. })));
            let (why, sent) = match outcome {
                Ok(answer) => {
                    self.answered(&urls, index, order[0]);
                    return Ok(answer);
                }
                Err(Attempt::Failed(e)) => {
                    self.answered(&urls, index, order[0]);
                    return Err(e);
                }
                Err(Attempt::Unreachable { why, sent }) => (why, sent),
                // Once could be a restart; again and again, etcd turns this client away.
                Err(Attempt::CutOff { why }) if cut_offs >= CUT_OFFS_TO_GIVE_UP => {
                    self.endpoints.cut_off(&urls, index, false);
                    let message = format!(
                        "it speaks TLS, but closed the connection right after the handshake {CUT_OFFS_TO_GIVE_UP} times in a row ({why}): it wants a client certificate it trusts (`tls CERT KEY CACERT`)"
                    );
                    let misfit = Error::Misconfigured { endpoint: endpoint.clone(), directive: "tls", message };
                    (misfit_noted(misfit, urls.len(), &mut misfits), false)
                }
                Err(Attempt::CutOff { why }) => (why, true),
                // This endpoint will not do, whatever happens; the others may.
                Err(Attempt::Misfit(e)) => (misfit_noted(e, urls.len(), &mut misfits), false),
            };
            let next = order[(turn + 1) % order.len()];
            self.endpoints.failed(&urls, index, next);
            match urls.len() {
                1 => log::debug!("etcd {endpoint}{path}: {why}"),
                _ => log::debug!("etcd {endpoint}{path}: {why}; {} is next", urls[next]),
            }
            tries.push((endpoint.clone(), why));
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

    /// `urls[index]` answered a request that started at `urls[first]`: requests go there now.
    fn answered(&self, urls: &Arc<[String]>, index: usize, first: usize) {
        if index != first {
            log::debug!("etcd requests go to {} now", urls[index]);
        }
        self.endpoints.answered(urls, index);
    }

    /// Trades the credentials for a token. A refused password is an `Error::Auth`.
    fn authenticate(&mut self) -> Result<(), Error> {
        let Some(credentials) = self.credentials.clone() else { return Ok(()) };
        let body = AuthenticateJson { name: &credentials.user, password: credentials.password.expose() };
        let path = "/v3/auth/authenticate";
        let answer = self.each_endpoint(path, Retry::Safe, &|client, endpoint| {
            client.post_once(endpoint, path, &body).map(|answer| (endpoint.to_string(), answer))
        });
        let (endpoint, answer) = match answer {
            Ok(answer) => answer,
            Err(Error::Rejected { endpoint, refusal: Refusal::AuthenticationFailed, message, .. }) => {
                return Err(Error::Auth { endpoint, message });
            }
            Err(Error::Rejected { endpoint, refusal: Refusal::AuthenticationNotEnabled, .. }) => {
                let message = "authentication is not enabled in etcd, so it takes no user and password: leave out `credentials`, or enable authentication in etcd".to_string();
                return Err(Error::Misconfigured { endpoint, directive: "credentials", message });
            }
            Err(e) => return Err(e),
        };
        let token = serde_json::from_slice::<TokenJson>(&answer).ok().and_then(|answer| answer.token);
        match token {
            Some(token) => {
                log::debug!("authenticated to etcd at {endpoint} as {}", credentials.user);
                self.token = Some(token);
                Ok(())
            }
            None => Err(Error::Malformed { endpoint, detail: "authentication answer without a token".into() }),
        }
    }

    /// `GET url`, in the time a usual request has (a quarter of the lease, at most 3 s): whether
    /// a member's URL answers at all. The etcd thread waits for it, renewals too.
    pub(super) fn probe(&self, url: &str) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        self.agent.get(url).config().timeout_global(Some(self.timeouts.usual)).build().call()
    }

    /// A request for a stream, which has no overall deadline: a watch.
    pub(super) fn stream_request(&self, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        self.request(&self.stream_agent, url)
    }

    fn request(&self, agent: &ureq::Agent, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        let request = agent.post(url);
        match &self.token {
            Some(token) => request.header("Authorization", token),
            None => request,
        }
    }

    fn post_once(&self, endpoint: &str, path: &str, body: &impl serde::Serialize) -> Result<Vec<u8>, Attempt> {
        let url = format!("{endpoint}{path}");
        let request = self.request(&self.agent, &url).config().timeout_global(Some(self.timeout)).build();
        let mut response = request.send_json(body).map_err(|e| unreachable(endpoint, e))?;
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

/// Notes an endpoint that does not fit the Corefile; says so when there are others to use.
fn misfit_noted(e: Error, endpoints: usize, misfits: &mut Vec<Error>) -> String {
    let why = e.to_string();
    if endpoints > 1 {
        log::warn!("{why}; trying the other endpoints");
    }
    misfits.push(e);
    why
}

/// What an error answer means: another endpoint may do better, or the request was refused.
pub(super) fn rejection(endpoint: &str, status: u16, answer: &[u8]) -> Attempt {
    let Some(error) = gateway_error(answer) else { return not_etcd(endpoint, status, answer) };
    // An endpoint that has lost its cluster says "unavailable": another one may do better.
    if error.code == CODE_UNAVAILABLE || status == 503 {
        return Attempt::Unreachable { why: error.message, sent: true };
    }
    let refusal = refusal(error.code, &error.message);
    Attempt::Failed(Error::Rejected { endpoint: endpoint.to_string(), status, refusal, message: error.message })
}

/// Why etcd cancelled a watch it had accepted, when that is a refusal: a watch opened with a
/// token etcd no longer takes is accepted (HTTP 200) and then cancelled, its reason a gRPC error
/// in text, "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token".
pub(super) fn cancelled_for(reason: &str) -> Option<Refusal> {
    let code = match reason.split("code = ").nth(1)?.split_whitespace().next()? {
        "InvalidArgument" => CODE_INVALID_ARGUMENT,
        "PermissionDenied" => CODE_PERMISSION_DENIED,
        "Unauthenticated" => CODE_UNAUTHENTICATED,
        _ => return None,
    };
    Some(refusal(code, reason))
}

/// gRPC status codes, as etcd reports them.
const CODE_INVALID_ARGUMENT: i64 = 3;
const CODE_NOT_FOUND: i64 = 5;
const CODE_PERMISSION_DENIED: i64 = 7;
const CODE_FAILED_PRECONDITION: i64 = 9;
const CODE_UNAVAILABLE: i64 = 14;
const CODE_UNAUTHENTICATED: i64 = 16;

/// What etcd's refusal means. One code covers several refusals (invalid argument: too many
/// operations, no user, a wrong password, and more), told apart by etcd's fixed messages
/// (`rpctypes` in etcd's source, the same from 3.4 on).
fn refusal(code: i64, message: &str) -> Refusal {
    let says = |text: &str| message.contains(text);
    match code {
        CODE_INVALID_ARGUMENT if says("too many operations") => Refusal::TooManyOperations,
        CODE_INVALID_ARGUMENT if says("user name is empty") => Refusal::NoUser,
        CODE_INVALID_ARGUMENT if says("authentication failed") => Refusal::AuthenticationFailed,
        // A JWT issued before users or roles changed: the holder must log in again.
        CODE_INVALID_ARGUMENT if says("revision of auth store is old") => Refusal::InvalidToken,
        CODE_FAILED_PRECONDITION if says("authentication is not enabled") => Refusal::AuthenticationNotEnabled,
        CODE_UNAUTHENTICATED => Refusal::InvalidToken,
        CODE_PERMISSION_DENIED => Refusal::PermissionDenied,
        CODE_NOT_FOUND => Refusal::NotFound,
        _ => Refusal::Other,
    }
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
fn tls_config(config: &Config) -> Result<(), Error> {
    if config.tls.is_some() || config.endpoints.iter().any(|e| e.starts_with("https://")) {
        return Err(Error::Setup("this idetcd was built without TLS (cargo feature \"tls\")".into()));
    }
    Ok(())
}

pub(super) enum Attempt {
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
pub(super) fn unreachable(endpoint: &str, e: ureq::Error) -> Attempt {
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
    // A request that timed out once connected may have arrived, and its transaction may be
    // applied yet, however late: only one that never got a connection surely was not sent.
    let sent = match &e {
        ureq::Error::Timeout(Timeout::Resolve | Timeout::Connect) => false,
        ureq::Error::Timeout(_) => true,
        _ => !network,
    };
    Attempt::Unreachable { sent, why: describe(&e) }
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

fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::Timeout(_) => "timed out".to_string(),
        ureq::Error::ConnectionFailed => "connection failed".to_string(),
        ureq::Error::HostNotFound => "host not found".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_cancelled_for_its_token_is_a_refusal() {
        for (reason, refusal) in [
            ("rpc error: code = Unauthenticated desc = etcdserver: invalid auth token", Some(Refusal::InvalidToken)),
            ("rpc error: code = InvalidArgument desc = etcdserver: user name is empty", Some(Refusal::NoUser)),
            (
                "rpc error: code = PermissionDenied desc = etcdserver: permission denied",
                Some(Refusal::PermissionDenied),
            ),
            ("rpc error: code = Unavailable desc = etcdserver: no leader", None),
            ("mvcc: required revision has been compacted", None),
            ("", None),
        ] {
            assert_eq!(cancelled_for(reason), refusal, "{reason}");
        }
    }

    #[test]
    fn a_transaction_goes_to_the_next_endpoint_only_if_it_cannot_have_arrived() {
        use std::io::Read;
        use std::net::TcpListener;
        // The first endpoint refuses the connection, or takes the request and never answers.
        let refusing = || {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let silent = || {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap();
            std::thread::spawn(move || {
                let (mut held, _) = listener.accept().unwrap();
                let mut buf = [0u8; 4096];
                while held.read(&mut buf).is_ok_and(|n| n > 0) {}
            });
            address
        };
        for (first, resent) in [(refusing(), true), (silent(), false)] {
            let next = TcpListener::bind("127.0.0.1:0").unwrap();
            let text = format!(
                ". {{\n idetcd {{\n  endpoint http://{first} http://{}\n  lease 2\n  pattern w{{{{.ID}}}}.t.\n }}\n}}",
                next.local_addr().unwrap()
            );
            let config = crate::corefile::parse(&text, std::path::Path::new("Corefile"), &|_| None).unwrap();
            let mut client = Client::new(&config).unwrap();
            let answer = client.txn(&super::super::Txn::default());
            assert!(matches!(answer, Err(Error::Unreachable(_))), "{answer:?}");
            next.set_nonblocking(true).unwrap();
            // The kernel takes the next endpoint's connection whether or not it is accepted.
            assert_eq!(next.accept().is_ok(), resent, "first endpoint {first}: {answer:?}");
        }
    }

    #[test]
    fn classifies_refusals_once() {
        let outcome = |status: u16, answer: &str| match rejection("http://etcd", status, answer.as_bytes()) {
            Attempt::Failed(Error::Rejected { refusal, .. }) => Ok(refusal),
            Attempt::Unreachable { .. } => Err("unreachable"),
            Attempt::Misfit(_) => Err("misfit"),
            Attempt::CutOff { .. } | Attempt::Failed(_) => Err("other"),
        };
        let error =
            |code: i64, message: &str| format!(r#"{{"error":"{message}","message":"{message}","code":{code}}}"#);
        // As etcd 3.4.23 answered, but for the ones marked.
        let cases = [
            (400, error(3, "etcdserver: too many operations in txn request"), Ok(Refusal::TooManyOperations)),
            (400, error(3, "etcdserver: user name is empty"), Ok(Refusal::NoUser)),
            (
                400,
                error(3, "etcdserver: authentication failed, invalid user ID or password"),
                Ok(Refusal::AuthenticationFailed),
            ),
            (412, error(9, "etcdserver: authentication is not enabled"), Ok(Refusal::AuthenticationNotEnabled)),
            (401, error(16, "etcdserver: invalid auth token"), Ok(Refusal::InvalidToken)),
            // Marked: a JWT older than the last change of users or roles (etcd's ErrAuthOldRevision).
            (400, error(3, "etcdserver: revision of auth store is old"), Ok(Refusal::InvalidToken)),
            (403, error(7, "etcdserver: permission denied"), Ok(Refusal::PermissionDenied)),
            (404, error(5, "etcdserver: requested lease not found"), Ok(Refusal::NotFound)),
            // Made up, from etcd's source: other refusals, and a known message under another code.
            (400, error(3, "etcdserver: key is not provided"), Ok(Refusal::Other)),
            (412, error(9, "etcdserver: user name not found"), Ok(Refusal::Other)),
            (500, error(2, "too many operations"), Ok(Refusal::Other)),
            (400, r#"{"code":3}"#.to_string(), Ok(Refusal::Other)),
            // A watch stream's error, one level deeper.
            (
                401,
                r#"{"error":{"grpc_code":16,"http_code":401,"message":"etcdserver: invalid auth token"}}"#.to_string(),
                Ok(Refusal::InvalidToken),
            ),
            // Not refusals: another endpoint may do better, or this one is not etcd's client URL.
            (503, error(14, "etcdserver: no leader"), Err("unreachable")),
            (503, error(0, "overloaded"), Err("unreachable")),
            (502, "<html>bad gateway</html>".to_string(), Err("unreachable")),
            (404, "404 page not found".to_string(), Err("misfit")),
        ];
        for (status, answer, want) in cases {
            assert_eq!(outcome(status, &answer), want, "HTTP {status} {answer}");
        }
    }
}
