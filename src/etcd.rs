//! A small synchronous client for etcd v3's JSON gateway (`POST /v3/...`).
//!
//! Only this module knows HTTP, the gateway's JSON and base64. Everything else sees typed requests
//! and answers. Calls go to one endpoint at a time; when it cannot be reached the next one is tried,
//! in the order the Corefile lists them, and the one that answered is used from then on.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::{json, Value};

/// Per request; a keep-alive must get through well within the shortest lease etcd grants.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A range over every member of a 10 000-node cluster is about 2 MB of JSON.
const MAX_RESPONSE_BYTES: u64 = 64 << 20;

pub struct Client {
    agent: ureq::Agent,
    endpoints: Vec<String>,
    current: usize,
}

#[derive(Debug)]
pub enum Error {
    /// No endpoint answered; each with what went wrong there.
    Unreachable(Vec<(String, String)>),
    /// An endpoint answered with an error; `code` is the gRPC status code etcd reports.
    Rejected { endpoint: String, status: u16, code: i64, message: String },
    /// An endpoint answered something that is not the gateway's JSON.
    Malformed { endpoint: String, detail: String },
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
        }
    }
}

impl std::error::Error for Error {}

/// gRPC status codes etcd puts in `code`.
pub const CODE_INVALID_ARGUMENT: i64 = 3;
pub const CODE_NOT_FOUND: i64 = 5;
const CODE_UNAVAILABLE: i64 = 14;

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
    /// Only the count, no keys.
    pub count_only: bool,
    /// Keys without values.
    pub keys_only: bool,
    /// Only keys created at or before this revision (0: any). etcd still counts every key in
    /// `count`, so count the returned keys instead.
    pub max_create_revision: i64,
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
    /// `endpoints` are base URLs such as `http://10.0.0.5:2379`, already validated by the Corefile.
    pub fn new(endpoints: &[String]) -> Client {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .user_agent(concat!("idetcd/", env!("CARGO_PKG_VERSION")))
            .build();
        Client {
            agent: config.into(),
            endpoints: endpoints.iter().map(|e| e.trim_end_matches('/').to_string()).collect(),
            current: 0,
        }
    }

    /// The endpoint requests go to now.
    pub fn endpoint(&self) -> &str {
        &self.endpoints[self.current]
    }

    pub fn range(&mut self, start: &[u8], end: &[u8]) -> Result<Range, Error> {
        let body = range_json(&RangeRequest::new(start, end));
        let (endpoint, answer) = self.post("/v3/kv/range", &body, Retry::Safe)?;
        parse_range(&answer).map_err(|detail| Error::Malformed { endpoint, detail })
    }

    /// The key with the highest modification revision in `[start, end)`, and the range's count. The
    /// pair changes exactly when something in the range changed, so it is a cheap change detector:
    /// any put raises the highest revision, and a delete alone lowers the count.
    pub fn range_newest(&mut self, start: &[u8], end: &[u8]) -> Result<Range, Error> {
        let body = json!({
            "key": BASE64.encode(start),
            "range_end": BASE64.encode(end),
            "limit": 1,
            "sort_order": "DESCEND",
            "sort_target": "MOD",
            "keys_only": true,
        });
        let (endpoint, answer) = self.post("/v3/kv/range", &body, Retry::Safe)?;
        parse_range(&answer).map_err(|detail| Error::Malformed { endpoint, detail })
    }

    /// Runs a transaction. It is not resent to another endpoint once it may have arrived at one,
    /// because it may have been applied there; the caller re-reads and decides.
    pub fn txn(&mut self, txn: &Txn) -> Result<TxnResponse, Error> {
        let (endpoint, answer) = self.post("/v3/kv/txn", &txn_json(txn), Retry::OnlyIfUnsent)?;
        parse_txn(&answer).map_err(|detail| Error::Malformed { endpoint, detail })
    }

    pub fn lease_grant(&mut self, ttl: u32) -> Result<Lease, Error> {
        let (endpoint, answer) = self.post("/v3/lease/grant", &json!({ "TTL": ttl }), Retry::Safe)?;
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
        let (_, answer) = self.post("/v3/lease/keepalive", &body, Retry::Safe)?;
        // The gateway streams keep-alive answers, so the single answer comes wrapped in "result".
        let ttl = int(&answer["result"]["TTL"]);
        Ok((ttl > 0).then_some(ttl))
    }

    /// Revokes a lease, deleting every key attached to it. A lease etcd no longer knows is gone
    /// already, which is what the caller wanted.
    pub fn lease_revoke(&mut self, id: i64) -> Result<(), Error> {
        match self.post("/v3/lease/revoke", &json!({ "ID": id.to_string() }), Retry::Safe) {
            Ok(_) => Ok(()),
            Err(Error::Rejected { code: CODE_NOT_FOUND, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sends one request, failing over to the next endpoints when one cannot be reached. Returns the
    /// endpoint that answered with the decoded answer.
    fn post(&mut self, path: &str, body: &Value, retry: Retry) -> Result<(String, Value), Error> {
        let mut tries = Vec::new();
        for _ in 0..self.endpoints.len() {
            let endpoint = self.endpoints[self.current].clone();
            match self.post_once(&endpoint, path, body) {
                Ok(answer) => return Ok((endpoint, answer)),
                Err(Attempt::Failed(e)) => return Err(e),
                Err(Attempt::Unreachable { why, sent }) => {
                    log::debug!("etcd {endpoint}{path}: {why}");
                    tries.push((endpoint, why));
                    self.current = (self.current + 1) % self.endpoints.len();
                    if sent && retry == Retry::OnlyIfUnsent {
                        break;
                    }
                }
            }
        }
        Err(Error::Unreachable(tries))
    }

    fn post_once(&self, endpoint: &str, path: &str, body: &Value) -> Result<Value, Attempt> {
        let url = format!("{endpoint}{path}");
        let mut response = self.agent.post(&url).send_json(body).map_err(|e| Attempt::Unreachable {
            sent: !matches!(e, ureq::Error::ConnectionFailed | ureq::Error::HostNotFound),
            why: describe(&e),
        })?;
        let status = response.status().as_u16();
        let answer: Result<Value, _> = response.body_mut().with_config().limit(MAX_RESPONSE_BYTES).read_json();
        let answer = match answer {
            Ok(answer) => answer,
            Err(ureq::Error::Json(e)) => {
                let detail =
                    format!("HTTP {status} with a body that is not JSON ({e}); is this an etcd 3.4+ client URL?");
                return Err(Attempt::Failed(Error::Malformed { endpoint: endpoint.to_string(), detail }));
            }
            Err(e) => return Err(Attempt::Unreachable { why: describe(&e), sent: true }),
        };
        if (200..300).contains(&status) {
            return Ok(answer);
        }
        let code = int(&answer["code"]);
        let message = answer["error"].as_str().or(answer["message"].as_str()).unwrap_or("no message");
        // An endpoint that has lost its cluster says "unavailable": another one may do better.
        if code == CODE_UNAVAILABLE || status == 503 {
            return Err(Attempt::Unreachable { why: message.to_string(), sent: true });
        }
        let rejected = Error::Rejected { endpoint: endpoint.to_string(), status, code, message: message.to_string() };
        Err(Attempt::Failed(rejected))
    }
}

enum Attempt {
    Unreachable { why: String, sent: bool },
    Failed(Error),
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

fn bytes(v: &Value, what: &str) -> Result<Vec<u8>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => BASE64.decode(s).map_err(|e| format!("{what} is not base64: {e}")),
        other => Err(format!("{what} is not a string: {other}")),
    }
}

fn parse_range(answer: &Value) -> Result<Range, String> {
    let kvs = match &answer["kvs"] {
        Value::Null => Vec::new(),
        Value::Array(kvs) => kvs.iter().map(parse_kv).collect::<Result<_, _>>()?,
        other => return Err(format!("kvs is not a list: {other}")),
    };
    Ok(Range { revision: int(&answer["header"]["revision"]), kvs, count: int(&answer["count"]) })
}

fn parse_kv(kv: &Value) -> Result<KeyValue, String> {
    Ok(KeyValue {
        key: bytes(&kv["key"], "key")?,
        value: bytes(&kv["value"], "value")?,
        create_revision: int(&kv["create_revision"]),
        mod_revision: int(&kv["mod_revision"]),
        lease: int(&kv["lease"]),
    })
}

fn parse_txn(answer: &Value) -> Result<TxnResponse, String> {
    let responses = match &answer["responses"] {
        Value::Null => Vec::new(),
        Value::Array(list) => list.iter().map(parse_op_response).collect::<Result<_, _>>()?,
        other => return Err(format!("responses is not a list: {other}")),
    };
    Ok(TxnResponse { succeeded: answer["succeeded"].as_bool().unwrap_or(false), responses })
}

fn parse_op_response(response: &Value) -> Result<OpResponse, String> {
    if !response["response_put"].is_null() {
        return Ok(OpResponse::Put { revision: int(&response["response_put"]["header"]["revision"]) });
    }
    if !response["response_delete_range"].is_null() {
        return Ok(OpResponse::Delete);
    }
    if !response["response_range"].is_null() {
        return parse_range(&response["response_range"]).map(OpResponse::Range);
    }
    if !response["response_txn"].is_null() {
        return parse_txn(&response["response_txn"]).map(OpResponse::Txn);
    }
    Err(format!("unknown transaction response: {response}"))
}

fn range_json(r: &RangeRequest) -> Value {
    let mut body = json!({ "key": BASE64.encode(&r.start), "range_end": BASE64.encode(&r.end) });
    if r.count_only {
        body["count_only"] = json!(true);
    }
    if r.keys_only {
        body["keys_only"] = json!(true);
    }
    if r.max_create_revision > 0 {
        body["max_create_revision"] = json!(r.max_create_revision.to_string());
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
    }

    #[test]
    fn parses_a_nested_transaction_answer() {
        // As etcd 3.4.23 answered a two-level claim whose both keys were taken.
        let answer: Value = serde_json::from_str(
            r#"{"header":{"revision":"3"},"responses":[{"response_txn":{"header":{},"responses":[
            {"response_range":{"header":{"revision":"3"},"kvs":[{"key":"d29ya2VyMS50Zi5sb2NhbC4=",
            "create_revision":"2","mod_revision":"2","version":"1","value":"e30="}],"count":"1"}}]}}]}"#,
        )
        .unwrap();
        let txn = parse_txn(&answer).unwrap();
        assert!(!txn.succeeded);
        let OpResponse::Txn(inner) = &txn.responses[0] else { panic!("not a txn: {txn:?}") };
        let OpResponse::Range(range) = &inner.responses[0] else { panic!("not a range: {inner:?}") };
        assert_eq!(range.kvs[0].key, b"worker1.tf.local.");
        assert_eq!(range.kvs[0].value, b"{}");
        assert_eq!((range.revision, range.count, range.kvs[0].create_revision), (3, 1, 2));
    }

    #[test]
    fn rejects_malformed_answers() {
        assert!(parse_range(&json!({ "kvs": "nope" })).is_err());
        assert!(parse_range(&json!({ "kvs": [{ "key": "***" }] })).is_err());
        assert!(parse_txn(&json!({ "responses": [{ "response_compact": {} }] })).is_err());
        assert_eq!(parse_range(&json!({ "header": {} })).unwrap(), Range::default());
    }

    #[test]
    fn writes_transactions_as_the_gateway_expects() {
        let txn = Txn {
            compare: vec![Compare::Absent(b"k".to_vec())],
            success: vec![Op::Put { key: b"k".to_vec(), value: b"v".to_vec(), lease: 42 }],
            failure: vec![
                Op::Range(RangeRequest::new(b"a", b"b")),
                Op::Range(RangeRequest { keys_only: true, max_create_revision: 9, ..RangeRequest::new(b"a", b"b") }),
                Op::Delete { key: b"k".to_vec() },
            ],
        };
        let want = json!({
            "compare": [{ "target": "CREATE", "key": "aw==", "createRevision": "0" }],
            "success": [{ "requestPut": { "key": "aw==", "value": "dg==", "lease": "42" } }],
            "failure": [
                { "requestRange": { "key": "YQ==", "range_end": "Yg==" } },
                { "requestRange": { "key": "YQ==", "range_end": "Yg==", "keys_only": true, "max_create_revision": "9" } },
                { "requestDeleteRange": { "key": "aw==" } },
            ],
        });
        assert_eq!(txn_json(&txn), want);
    }
}
