//! The gateway's JSON: requests written and answers read through serde structs, with 64-bit
//! integers as strings, keys and values in base64, and zero fields left out.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::Value;

use super::{
    Compare, KeyValue, Lease, Member, Op, OpResponse, Range, RangeRequest, TimeToLive, Txn, TxnResponse, WatchEvent,
    WatchMessage, WatchRange,
};

/// The gateway writes 64-bit integers as strings and leaves out fields that are zero.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// An error answer: its gRPC code and message.
pub(super) struct GatewayError {
    pub(super) code: i64,
    pub(super) message: String,
}

/// Reads an error answer, `None` when it is not JSON. Leniently, as any JSON: the gateway writes
/// `{"error": MESSAGE, "code": CODE, "message": MESSAGE}`, a watch stream wraps `grpc_code` and
/// `message` in `"error"`, and a proxy may write anything.
pub(super) fn gateway_error(answer: &[u8]) -> Option<GatewayError> {
    let error = serde_json::from_slice::<Value>(answer).ok()?;
    let error = if error["error"].is_object() { &error["error"] } else { &error };
    let code = int(&error["code"]).max(int(&error["grpc_code"]));
    let message = error["error"].as_str().or(error["message"].as_str()).unwrap_or("no message");
    Some(GatewayError { code, message: message.to_string() })
}

/// A range answer as the gateway writes it: 64-bit integers as strings, keys and values in base64,
/// zero fields left out.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct RangeJson {
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
    pub(super) fn decode(self) -> Result<Range, String> {
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
pub(super) struct TxnJson {
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
    pub(super) fn decode(self) -> Result<TxnResponse, String> {
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

/// Reads the answer to a transaction of `ranges` reads as it streams in, handing each key-value
/// to `each` with the index of its read, and returns the revision it was read at. Neither the
/// answer nor the keys are ever held whole: at 100 000 members the answer is 15 MB of JSON.
/// Fields may come in any order. On an error, what `each` was given is incomplete.
pub(super) fn read_each(
    reader: impl std::io::Read,
    ranges: usize,
    each: &mut dyn FnMut(usize, KeyValue),
) -> Result<i64, serde_json::Error> {
    let mut json = serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(1 << 16, reader));
    let revision = serde::de::DeserializeSeed::deserialize(ReadAnswer { each, ranges }, &mut json)?;
    json.end()?;
    Ok(revision)
}

/// The fields `read_each` looks at, at any level; the others are skipped unread.
#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Header,
    Responses,
    ResponseRange,
    Kvs,
    #[serde(other)]
    Other,
}

/// The whole answer: `{"header":{…},"succeeded":true,"responses":[…]}`; its value is the
/// revision the reads were made at.
struct ReadAnswer<'a> {
    each: &'a mut dyn FnMut(usize, KeyValue),
    ranges: usize,
}

/// `responses`: one per read, in order; its value is how many there were and the newest
/// revision their headers gave.
struct Responses<'a> {
    each: &'a mut dyn FnMut(usize, KeyValue),
    ranges: usize,
}

/// One of `responses`: `{"response_range":{…}}`, the `index`-th read's answer.
struct Response<'a> {
    each: &'a mut dyn FnMut(usize, KeyValue),
    index: usize,
}

/// A read's answer: `{"header":{…},"kvs":[…],"count":"…"}`; its value is its header's revision.
struct RangeAnswer<'a> {
    each: &'a mut dyn FnMut(usize, KeyValue),
    index: usize,
}

/// `kvs`: each handed over as soon as it is read.
struct Kvs<'a> {
    each: &'a mut dyn FnMut(usize, KeyValue),
    index: usize,
}

/// Implements `DeserializeSeed` by handing the deserializer the seed itself as the visitor.
macro_rules! seed {
    ($seed:ident, $value:ty, $kind:ident) => {
        impl<'de> serde::de::DeserializeSeed<'de> for $seed<'_> {
            type Value = $value;
            fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<$value, D::Error> {
                d.$kind(self)
            }
        }
    };
}

seed!(ReadAnswer, i64, deserialize_map);
seed!(Responses, (usize, i64), deserialize_seq);
seed!(Response, i64, deserialize_map);
seed!(RangeAnswer, i64, deserialize_map);
seed!(Kvs, (), deserialize_seq);

impl<'de> serde::de::Visitor<'de> for ReadAnswer<'_> {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a transaction answer")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<i64, A::Error> {
        let (mut revision, mut answered) = (0, None);
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Header => revision = revision.max(map.next_value::<HeaderJson>()?.revision.0),
                Field::Responses => {
                    let (count, newest) = map.next_value_seed(Responses { each: self.each, ranges: self.ranges })?;
                    answered = Some(count);
                    revision = revision.max(newest);
                }
                _ => drop(map.next_value::<serde::de::IgnoredAny>()?),
            }
        }
        match answered.unwrap_or(0) {
            n if n == self.ranges => Ok(revision),
            n => Err(serde::de::Error::custom(format!("{n} answers to {} reads", self.ranges))),
        }
    }
}

impl<'de> serde::de::Visitor<'de> for Responses<'_> {
    type Value = (usize, i64);
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of responses")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(usize, i64), A::Error> {
        let (mut index, mut revision) = (0, 0);
        loop {
            if index == self.ranges {
                // More answers than reads: said by the caller, once it counted them all.
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    index += 1;
                }
                return Ok((index, revision));
            }
            match seq.next_element_seed(Response { each: &mut *self.each, index })? {
                Some(newest) => revision = revision.max(newest),
                None => return Ok((index, revision)),
            }
            index += 1;
        }
    }
}

impl<'de> serde::de::Visitor<'de> for Response<'_> {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a response")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<i64, A::Error> {
        let mut revision = None;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::ResponseRange if revision.is_none() => {
                    revision = Some(map.next_value_seed(RangeAnswer { each: &mut *self.each, index: self.index })?);
                }
                _ => drop(map.next_value::<serde::de::IgnoredAny>()?),
            }
        }
        revision.ok_or_else(|| serde::de::Error::custom(format!("read {} answered with no range", self.index)))
    }
}

impl<'de> serde::de::Visitor<'de> for RangeAnswer<'_> {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a range answer")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<i64, A::Error> {
        let mut revision = 0;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Header => revision = map.next_value::<HeaderJson>()?.revision.0,
                Field::Kvs => map.next_value_seed(Kvs { each: &mut *self.each, index: self.index })?,
                _ => drop(map.next_value::<serde::de::IgnoredAny>()?),
            }
        }
        Ok(revision)
    }
}

impl<'de> serde::de::Visitor<'de> for Kvs<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of keys")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(kv) = seq.next_element::<KeyValueJson>()? {
            (self.each)(self.index, kv.decode().map_err(serde::de::Error::custom)?);
        }
        Ok(())
    }
}

/// A range request. Asking for the newest key only takes four fields more.
#[derive(serde::Serialize)]
pub(super) struct RangeRequestJson {
    key: String,
    range_end: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_create_revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_mod_revision: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    count_only: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    newest: Option<NewestJson>,
}

/// The key modified last, without its value.
#[derive(serde::Serialize)]
struct NewestJson {
    limit: i64,
    sort_order: &'static str,
    sort_target: &'static str,
    keys_only: bool,
}

impl From<&RangeRequest> for RangeRequestJson {
    fn from(r: &RangeRequest) -> RangeRequestJson {
        RangeRequestJson {
            key: BASE64.encode(&r.start),
            range_end: BASE64.encode(&r.end),
            max_create_revision: (r.max_create_revision > 0).then(|| r.max_create_revision.to_string()),
            min_mod_revision: (r.min_mod_revision > 0).then(|| r.min_mod_revision.to_string()),
            count_only: r.count_only,
            newest: r.newest.then_some(NewestJson {
                limit: 1,
                sort_order: "DESCEND",
                sort_target: "MOD",
                keys_only: true,
            }),
        }
    }
}

#[derive(serde::Serialize)]
pub(super) struct TxnRequestJson {
    compare: Vec<CompareJson>,
    success: Vec<RequestOpJson>,
    failure: Vec<RequestOpJson>,
}

#[derive(serde::Serialize)]
#[serde(tag = "target")]
enum CompareJson {
    #[serde(rename = "CREATE")]
    Create {
        key: String,
        #[serde(rename = "createRevision")]
        create_revision: &'static str,
    },
    #[serde(rename = "VALUE")]
    Value { key: String, value: String },
    #[serde(rename = "LEASE")]
    Lease { key: String, lease: String },
}

#[derive(serde::Serialize)]
enum RequestOpJson {
    #[serde(rename = "requestPut")]
    Put { key: String, value: String, lease: String },
    #[serde(rename = "requestDeleteRange")]
    Delete { key: String },
    #[serde(rename = "requestRange")]
    Range(RangeRequestJson),
    #[serde(rename = "requestTxn")]
    Txn(TxnRequestJson),
}

impl From<&Txn> for TxnRequestJson {
    fn from(txn: &Txn) -> TxnRequestJson {
        let compare = txn
            .compare
            .iter()
            .map(|c| match c {
                Compare::Absent(key) => CompareJson::Create { key: BASE64.encode(key), create_revision: "0" },
                Compare::ValueIs(key, value) => {
                    CompareJson::Value { key: BASE64.encode(key), value: BASE64.encode(value) }
                }
                Compare::LeaseIs(key, lease) => {
                    CompareJson::Lease { key: BASE64.encode(key), lease: lease.to_string() }
                }
            })
            .collect();
        let ops = |ops: &[Op]| -> Vec<RequestOpJson> {
            ops.iter()
                .map(|op| match op {
                    Op::Put { key, value, lease } => RequestOpJson::Put {
                        key: BASE64.encode(key),
                        value: BASE64.encode(value),
                        lease: lease.to_string(),
                    },
                    Op::Delete { key } => RequestOpJson::Delete { key: BASE64.encode(key) },
                    Op::Range(range) => RequestOpJson::Range(range.into()),
                    Op::Txn(inner) => RequestOpJson::Txn(inner.as_ref().into()),
                })
                .collect()
        };
        TxnRequestJson { compare, success: ops(&txn.success), failure: ops(&txn.failure) }
    }
}

/// A lease grant: its TTL in seconds.
#[derive(serde::Serialize)]
pub(super) struct LeaseGrantJson {
    #[serde(rename = "TTL")]
    pub(super) ttl: u32,
}

/// `/v3/cluster/member/list`'s answer.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct MemberListJson {
    members: Vec<MemberJson>,
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct MemberJson {
    /// A 64-bit unsigned integer, which the gateway writes as a string.
    #[serde(rename = "ID")]
    id: Value,
    name: String,
    #[serde(rename = "clientURLs")]
    client_urls: Vec<String>,
    #[serde(rename = "isLearner")]
    is_learner: bool,
}

impl MemberListJson {
    /// The members in the order of their IDs, which every node sees alike.
    pub(super) fn decode(self) -> Result<Vec<Member>, String> {
        let mut members = Vec::with_capacity(self.members.len());
        for m in self.members {
            let id = match &m.id {
                Value::String(s) => s.parse().ok(),
                Value::Number(n) => n.as_u64(),
                _ => None,
            };
            let id = id.ok_or_else(|| format!("a member whose ID is {}", m.id))?;
            members.push(Member { id, name: m.name, client_urls: m.client_urls, learner: m.is_learner });
        }
        if members.is_empty() {
            return Err("a member list without members".into());
        }
        members.sort_by_key(|m| m.id);
        Ok(members)
    }
}

/// A keep-alive, time-to-live or revoke request: the lease's ID.
#[derive(serde::Serialize)]
pub(super) struct LeaseIdJson {
    #[serde(rename = "ID")]
    id: String,
}

impl LeaseIdJson {
    pub(super) fn new(id: i64) -> LeaseIdJson {
        LeaseIdJson { id: id.to_string() }
    }
}

/// A lease as a grant or a keep-alive answers it. A lease etcd no longer knows comes back from a
/// keep-alive with its ID and no TTL.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct LeaseJson {
    #[serde(rename = "ID")]
    id: Int,
    #[serde(rename = "TTL")]
    ttl: Int,
}

impl LeaseJson {
    pub(super) fn decode_grant(self) -> Result<Lease, String> {
        let lease = Lease { id: self.id.0, ttl: self.ttl.0 };
        if lease.id == 0 || lease.ttl <= 0 {
            return Err(format!("lease grant without an ID or TTL (ID {}, TTL {})", lease.id, lease.ttl));
        }
        Ok(lease)
    }
}

/// The gateway streams keep-alive answers, so the single answer comes wrapped in "result".
#[derive(Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct KeepAliveJson {
    result: LeaseJson,
}

impl KeepAliveJson {
    /// The TTL the renewal of lease `id` set, or `None` when etcd no longer knows the lease. An
    /// answer without our ID is not etcd's to trust (a proxy's, say) and must not make us drop a
    /// live lease.
    pub(super) fn decode(self, id: i64) -> Result<Option<i64>, String> {
        let LeaseJson { id: Int(answered), ttl: Int(ttl) } = self.result;
        if answered != id {
            return Err(format!("keep-alive answer for lease {answered:x} instead of {id:x}"));
        }
        Ok((ttl > 0).then_some(ttl))
    }
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct TimeToLiveJson {
    #[serde(rename = "TTL")]
    ttl: Int,
    #[serde(rename = "grantedTTL")]
    granted: Int,
}

impl TimeToLiveJson {
    /// `None` when etcd no longer knows the lease: it answers a TTL of -1. The gateway leaves out
    /// a TTL of 0: a live lease in its last second.
    pub(super) fn decode(self) -> Option<TimeToLive> {
        (self.ttl.0 >= 0).then_some(TimeToLive { remaining: self.ttl.0, granted: self.granted.0 })
    }
}

#[derive(serde::Serialize)]
pub(super) struct AuthenticateJson<'a> {
    pub(super) name: &'a str,
    pub(super) password: &'a str,
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct TokenJson {
    pub(super) token: Option<String>,
}

/// One request to create a watcher on a watch stream.
#[derive(serde::Serialize)]
pub(super) struct WatchCreateJson {
    create_request: WatchCreateRequestJson,
}

#[derive(serde::Serialize)]
struct WatchCreateRequestJson {
    key: String,
    range_end: String,
    start_revision: String,
    progress_notify: bool,
}

impl From<&WatchRange> for WatchCreateJson {
    fn from(range: &WatchRange) -> WatchCreateJson {
        WatchCreateJson {
            create_request: WatchCreateRequestJson {
                key: BASE64.encode(&range.start),
                range_end: BASE64.encode(&range.end),
                start_revision: range.from.to_string(),
                progress_notify: true,
            },
        }
    }
}

/// One message of a watch stream.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct WatchJson {
    result: WatchResultJson,
    error: Option<Value>,
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct WatchResultJson {
    header: HeaderJson,
    /// Which watcher of the stream the message is about; 0 is left out.
    watch_id: Int,
    created: bool,
    events: Option<Vec<EventJson>>,
    canceled: bool,
    cancel_reason: String,
    compact_revision: Int,
}

/// A watch message, with the watcher it is about as etcd numbers them on the stream.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum WatchAnswer {
    /// etcd created the watcher with this ID. It answers a stream's create requests in order.
    Created(i64),
    /// Nothing changed for a watcher up to `revision`.
    Progress { watch_id: i64, revision: i64 },
    /// Changes, or the start revision compacted away.
    Message(WatchMessage),
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
    /// Why etcd cancelled the watch, if it said.
    pub(super) fn cancel_reason(&self) -> &str {
        &self.result.cancel_reason
    }

    /// `None` when etcd cancelled the watch for a reason other than compaction.
    pub(super) fn decode(self) -> Result<Option<WatchAnswer>, String> {
        if let Some(error) = self.error {
            return Err(format!("watch error: {error}"));
        }
        let result = self.result;
        if result.compact_revision.0 > 0 {
            return Ok(Some(WatchAnswer::Message(WatchMessage::Compacted { revision: result.compact_revision.0 })));
        }
        if result.canceled {
            return Ok(None);
        }
        // A creation's revision is the store's, not how far the watcher got: one that starts in
        // the past is still catching up.
        if result.created {
            return Ok(Some(WatchAnswer::Created(result.watch_id.0)));
        }
        let events = match result.events {
            Some(events) if !events.is_empty() => events,
            _ => {
                let progress =
                    WatchAnswer::Progress { watch_id: result.watch_id.0, revision: result.header.revision.0 };
                return Ok(Some(progress));
            }
        };
        let events = events
            .into_iter()
            .map(|e| Ok(WatchEvent { deleted: e.kind == "DELETE", kv: e.kv.decode()? }))
            .collect::<Result<_, String>>()?;
        Ok(Some(WatchAnswer::Message(WatchMessage::Changes(events))))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

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

    /// Reads `answer` with `read_each` for `ranges` reads, a few bytes at a time as a slow
    /// network would hand it over: the revision, and each key with its read's index, as text.
    fn read_in_pieces(answer: &str, ranges: usize) -> Result<(i64, Vec<(usize, String)>), String> {
        /// At most 7 bytes per read.
        struct Trickle<'a>(&'a [u8]);
        impl std::io::Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(7).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut kvs = Vec::new();
        let mut each = |index: usize, kv: KeyValue| {
            let key = String::from_utf8_lossy(&kv.key);
            kvs.push((index, format!("{key}={} @{}", String::from_utf8_lossy(&kv.value), kv.mod_revision)))
        };
        let revision = read_each(Trickle(answer.as_bytes()), ranges, &mut each).map_err(|e| e.to_string())?;
        Ok((revision, kvs))
    }

    #[test]
    fn reads_a_read_answer_key_by_key_as_it_streams_in() {
        // As etcd 3.4.23 answered three reads (ps, worker, chief) in one transaction.
        const ANSWER: &str = r#"{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"3","raft_term":"2"},"succeeded":true,"responses":[{"response_range":{"header":{"revision":"3"},"kvs":[{"key":"cHMwLnRmLmxvY2FsLg==","create_revision":"2","mod_revision":"2","version":"1","value":"eyJpcHY0IjoiMTAuMC4wLjEifQ=="}],"count":"1"}},{"response_range":{"header":{"revision":"3"},"kvs":[{"key":"d29ya2VyMS50Zi5sb2NhbC4=","create_revision":"3","mod_revision":"3","version":"1","value":"eyJpcHY0IjoiMTAuMC4wLjIifQ=="}],"count":"1"}},{"response_range":{"header":{"revision":"3"}}}]}"#;
        let want = vec![
            (0, r#"ps0.tf.local.={"ipv4":"10.0.0.1"} @2"#.to_string()),
            (1, r#"worker1.tf.local.={"ipv4":"10.0.0.2"} @3"#.to_string()),
        ];
        assert_eq!(read_in_pieces(ANSWER, 3), Ok((3, want.clone())));
        // Made up from it: the header last, and fields of no interest anywhere.
        let (header, rest) = ANSWER.split_at(ANSWER.find(r#","succeeded""#).unwrap());
        let reordered = format!(r#"{{"more":[{{"kvs":[1]}}],{},{}}}"#, &rest[1..rest.len() - 1], &header[1..]);
        assert_eq!(read_in_pieces(&reordered, 3), Ok((3, want)));
        assert_eq!(
            read_in_pieces(r#"{"responses":[{"response_range":{"header":{"revision":"9"}}}]}"#, 1),
            Ok((9, vec![]))
        );

        let fails = |answer: &str, ranges: usize, why: &str| {
            let error = read_in_pieces(answer, ranges).expect_err(answer);
            assert!(error.contains(why), "{answer}: {error}");
        };
        fails(ANSWER, 2, "3 answers to 2 reads");
        fails(ANSWER, 4, "3 answers to 4 reads");
        fails(&ANSWER[..ANSWER.len() - 40], 3, "EOF");
        fails(r#"{"header":{"revision":"3"}}"#, 1, "0 answers to 1 reads");
        fails(r#"{"responses":[{"response_put":{"header":{}}}]}"#, 1, "read 0 answered with no range");
        fails(r#"{"responses":[{"response_range":{"kvs":[{"key":"***"}]}}]}"#, 1, "key is not base64");
        fails(r#"{"responses":[{"response_range":{"kvs":{"key":"a2V5"}}}]}"#, 1, "a list of keys");
        fails(r#"{"responses":[]} trailing"#, 0, "trailing characters");
        fails("[]", 0, "a transaction answer");
    }

    #[test]
    fn decodes_lease_answers() {
        // As etcd 3.4.23 answered them, but for the ones marked.
        const HEADER: &str =
            r#""header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"1"}"#;
        let id = 4111120346412777223;
        let json = |text: &str| text.replace("HEADER", HEADER);
        let grant =
            |text: &str| serde_json::from_str::<LeaseJson>(&json(text)).map_err(|e| e.to_string())?.decode_grant();
        let grants = [
            (r#"{HEADER,"ID":"4111120346412777223","TTL":"60"}"#, Some(Lease { id, ttl: 60 })),
            // Made up: numbers where etcd writes strings, leniently.
            (r#"{"ID":4111120346412777223,"TTL":60}"#, Some(Lease { id, ttl: 60 })),
            (r#"{HEADER,"TTL":"60"}"#, None),
            (r#"{HEADER,"ID":"4111120346412777223"}"#, None),
            (r#"{"ID":"4111120346412777223","TTL":"-1"}"#, None),
            (r#"{"ID":"lease","TTL":"60"}"#, None),
            ("[]", None),
        ];
        for (answer, want) in grants {
            assert_eq!(grant(answer).ok(), want, "{answer}");
        }

        let keepalive =
            |text: &str| serde_json::from_str::<KeepAliveJson>(&json(text)).map_err(|e| e.to_string())?.decode(id);
        let keepalives = [
            (r#"{"result":{HEADER,"ID":"4111120346412777223","TTL":"30"}}"#, Ok(Some(30))),
            // A lease etcd no longer knows.
            (r#"{"result":{HEADER,"ID":"4111120346412777223"}}"#, Ok(None)),
            // Made up: not etcd's answer, which must not make us drop a live lease.
            (r#"{"result":{HEADER,"ID":"5","TTL":"30"}}"#, Err(())),
            (r#"{"result":{HEADER}}"#, Err(())),
            (r#"{"ID":"4111120346412777223","TTL":"30"}"#, Err(())),
            (r#"{"result":{"ID":"4111120346412777223","TTL":"thirty"}}"#, Err(())),
        ];
        for (answer, want) in keepalives {
            assert_eq!(keepalive(answer).map_err(|_| ()), want, "{answer}");
        }

        let ttl = |text: &str| serde_json::from_str::<TimeToLiveJson>(&json(text)).map(TimeToLiveJson::decode).ok();
        let ttls = [
            (
                r#"{HEADER,"ID":"4111120346412777223","TTL":"29","grantedTTL":"30"}"#,
                Some(Some(TimeToLive { remaining: 29, granted: 30 })),
            ),
            // A lease etcd no longer knows.
            (r#"{HEADER,"ID":"4111120346412777223","TTL":"-1"}"#, Some(None)),
            // A live lease in its last second: the gateway leaves out the 0.
            (
                r#"{HEADER,"ID":"4111120346412777223","grantedTTL":"30"}"#,
                Some(Some(TimeToLive { remaining: 0, granted: 30 })),
            ),
            (r#"{"TTL":"soon"}"#, None),
        ];
        for (answer, want) in ttls {
            assert_eq!(ttl(answer), want, "{answer}");
        }
    }

    #[test]
    fn parses_watch_messages() {
        // As etcd 3.4.23 streamed them, two watchers on one stream (the second, ID 1, started at
        // a compacted revision), with --experimental-watch-progress-notify-interval 2s.
        let message = |text: &str| serde_json::from_str::<WatchJson>(text).unwrap().decode();
        const HEADER: &str = r#""header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"4","raft_term":"2"}"#;
        let json = |text: &str| text.replace("HEADER", HEADER);
        assert_eq!(message(&json(r#"{"result":{HEADER,"created":true}}"#)), Ok(Some(WatchAnswer::Created(0))));
        assert_eq!(
            message(&json(r#"{"result":{HEADER,"watch_id":"1","created":true}}"#)),
            Ok(Some(WatchAnswer::Created(1)))
        );
        let changes = r#"{"result":{"header":{"revision":"3"},"watch_id":"1","events":[
            {"kv":{"key":"dzEueC4=","create_revision":"2","mod_revision":"2","version":"1","value":"aGVsbG8="}},
            {"type":"DELETE","kv":{"key":"dzEueC4=","mod_revision":"3"}}]}}"#;
        let Ok(Some(WatchAnswer::Message(WatchMessage::Changes(events)))) = message(changes) else {
            panic!("{:?}", message(changes))
        };
        assert_eq!(events.len(), 2);
        assert!(!events[0].deleted && events[1].deleted);
        assert_eq!((events[0].kv.key.as_slice(), events[0].kv.value.as_slice()), (&b"w1.x."[..], &b"hello"[..]));
        assert_eq!(events[1].kv.mod_revision, 3);
        // Progress notifications: the watcher's ID, and the revision it got to.
        assert_eq!(
            message(&json(r#"{"result":{HEADER}}"#)),
            Ok(Some(WatchAnswer::Progress { watch_id: 0, revision: 4 }))
        );
        assert_eq!(
            message(&json(r#"{"result":{HEADER,"watch_id":"1"}}"#)),
            Ok(Some(WatchAnswer::Progress { watch_id: 1, revision: 4 }))
        );
        let compacted = r#"{"result":{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","raft_term":"2"},"watch_id":"1","canceled":true,"compact_revision":"4"}}"#;
        assert_eq!(message(compacted), Ok(Some(WatchAnswer::Message(WatchMessage::Compacted { revision: 4 }))));
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
                Op::Range(RangeRequest { min_mod_revision: 12, ..RangeRequest::new(b"a", b"b") }),
                Op::Range(RangeRequest { count_only: true, ..RangeRequest::new(b"a", b"b") }),
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
                { "requestRange": { "key": "YQ==", "range_end": "Yg==", "min_mod_revision": "12" } },
                { "requestRange": { "key": "YQ==", "range_end": "Yg==", "count_only": true } },
                { "requestRange": {
                    "key": "YQ==", "range_end": "Yg==",
                    "limit": 1, "sort_order": "DESCEND", "sort_target": "MOD", "keys_only": true,
                } },
                { "requestDeleteRange": { "key": "aw==" } },
            ],
        });
        assert_eq!(serde_json::to_value(TxnRequestJson::from(&txn)).unwrap(), want);
    }
}
