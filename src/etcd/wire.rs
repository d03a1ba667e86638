//! The gateway's JSON: requests written and answers read through serde structs, with 64-bit
//! integers as strings, keys and values in base64, and zero fields left out.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::{json, Value};

use super::{Compare, KeyValue, Op, OpResponse, Range, RangeRequest, Txn, TxnResponse, WatchEvent, WatchMessage};

/// The gateway writes 64-bit integers as strings and leaves out fields that are zero.
pub(super) fn int(v: &Value) -> i64 {
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

pub(super) fn range_json(r: &RangeRequest) -> Value {
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

pub(super) fn txn_json(txn: &Txn) -> Value {
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

/// One message of a watch stream.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct WatchJson {
    pub(super) result: WatchResultJson,
    error: Option<Value>,
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct WatchResultJson {
    events: Option<Vec<EventJson>>,
    canceled: bool,
    pub(super) cancel_reason: String,
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
    pub(super) fn decode(self) -> Result<Option<WatchMessage>, String> {
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
