//! A small synchronous client for etcd v3's JSON gateway (`POST /v3/...`).
//!
//! Only this module knows HTTP, the gateway's JSON and base64. Everything else sees typed requests
//! and answers. Calls go to one endpoint at a time; when it cannot be reached the next one is tried,
//! and the one that answered is used from then on.
//!
//! The parts, each owning one thing:
//! - `endpoints`: which endpoints a client uses, read from etcd's member list too, which one it
//!   uses now, and how a cluster's nodes spread over them;
//! - `transport`: the `Client`: failover, HTTP, TLS and the probes that tell a
//!   misfit endpoint from one that is down, the user's token, and what an error answer means;
//! - `api`: the v3 calls (ranges, transactions, leases) in the types defined here;
//! - `json`: the gateway's JSON, written and read through serde structs, and base64;
//! - `watch`: watch streams.
//!
//! Here: the requests and answers as callers see them, and the errors.

mod api;
mod endpoints;
mod json;
mod transport;
mod watch;

use std::fmt;

pub use transport::Client;

#[derive(Debug)]
pub enum Error {
    /// No endpoint answered; each with what went wrong there.
    Unreachable(Vec<(String, String)>),
    /// An endpoint answered with an error: etcd refused the request, for the reason `refusal`
    /// names and `message` says.
    Rejected { endpoint: String, status: u16, refusal: Refusal, message: String },
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

/// Why etcd refused a request, decided once, where its error answer is read (from the gRPC code
/// and, where one code covers several refusals, etcd's fixed message): callers match on this,
/// never on the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// More operations in one transaction than etcd's `--max-txn-ops` allows.
    TooManyOperations,
    /// Authentication is enabled, and the request named no user (it carried no token).
    NoUser,
    /// etcd no longer takes the token: simple tokens expire when idle, a restarted etcd forgets
    /// them, and a JWT is outdated once users or roles change.
    InvalidToken,
    /// The user name or password is wrong.
    AuthenticationFailed,
    /// Authentication is not enabled, so etcd takes no user and password.
    AuthenticationNotEnabled,
    /// The user may not read or write these keys.
    PermissionDenied,
    /// What the request names does not exist: a lease that expired or was revoked.
    NotFound,
    /// Any other refusal; the message says what.
    Other,
}

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
    /// Only keys modified at or after this revision (0: any); `count` still counts every key, so
    /// the two together tell whether keys were deleted since.
    pub min_mod_revision: i64,
    /// Only `count`, no keys: etcd does not read them, and ignores the revision limits above.
    pub count_only: bool,
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

/// One member of the etcd cluster, as its member list says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
    /// A learner serves no client requests.
    pub learner: bool,
}

/// One range of a watch, and the revision to follow it from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchRange {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    pub from: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMessage {
    /// Changes in revision order.
    Changes(Vec<WatchEvent>),
    /// Nothing changed; the watch is alive (a watcher's creation, say).
    Alive,
    /// etcd sent every change to the `range`-th range (in the order `watch` was given them) up to
    /// `revision`: a progress notification. A stream that breaks may resume after it.
    Progress { range: usize, revision: i64 },
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
