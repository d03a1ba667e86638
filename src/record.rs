//! A member's record: the JSON value stored under its name in etcd.
//!
//! The layout is the original Go plugin's `Record` struct as `encoding/json` writes it:
//! `{"ipv4":"10.0.0.3","ipv6":"fd00::3","port":"53"}`, fields in that order, empty ones omitted.
//! Writing byte-identical values matters: a restarted node recognises its own record by comparing
//! values, exactly as the original does.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Values larger than this are not records anyone wrote on purpose; they are ignored unread.
pub const MAX_VALUE_LEN: usize = 1024;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub port: Option<u16>,
}

/// So that code taking members works with records alone, as tests and subcommands have them.
impl AsRef<Record> for Record {
    fn as_ref(&self) -> &Record {
        self
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RecordError {
    TooLarge(usize),
    NotJson(String),
    NotAnObject,
    BadField { field: &'static str, value: String },
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::TooLarge(n) => write!(f, "value is {n} bytes, over the {MAX_VALUE_LEN}-byte limit"),
            RecordError::NotJson(e) => write!(f, "value is not JSON: {e}"),
            RecordError::NotAnObject => write!(f, "value is not a JSON object"),
            RecordError::BadField { field, value } => write!(f, "bad {field} {value}"),
        }
    }
}

impl Record {
    /// Its addresses, IPv4 first.
    pub fn ips(&self) -> impl Iterator<Item = std::net::IpAddr> {
        [self.ipv4.map(std::net::IpAddr::V4), self.ipv6.map(std::net::IpAddr::V6)].into_iter().flatten()
    }

    pub fn to_json(self) -> String {
        let mut fields = Vec::with_capacity(3);
        if let Some(ip) = self.ipv4 {
            fields.push(format!("\"ipv4\":\"{ip}\""));
        }
        if let Some(ip) = self.ipv6 {
            fields.push(format!("\"ipv6\":\"{ip}\""));
        }
        if let Some(port) = self.port {
            fields.push(format!("\"port\":\"{port}\""));
        }
        format!("{{{}}}", fields.join(","))
    }

    /// Reads a value written by this daemon or by the original plugin. Unknown fields are ignored so
    /// that a newer writer does not make older readers drop its members.
    pub fn parse(value: &[u8]) -> Result<Record, RecordError> {
        if value.len() > MAX_VALUE_LEN {
            return Err(RecordError::TooLarge(value.len()));
        }
        let json: serde_json::Value = serde_json::from_slice(value).map_err(|e| RecordError::NotJson(e.to_string()))?;
        let object = json.as_object().ok_or(RecordError::NotAnObject)?;
        let mut record = Record::default();
        for (field, value) in object {
            match field.as_str() {
                "ipv4" => record.ipv4 = parse_field("ipv4", value)?,
                "ipv6" => record.ipv6 = parse_field("ipv6", value)?,
                "port" => record.port = parse_field("port", value)?,
                _ => {}
            }
        }
        Ok(record)
    }
}

/// A field is a string (possibly empty, meaning absent) holding the value's text form; Go wrote
/// ports as strings, but a number is accepted too.
fn parse_field<T: std::str::FromStr>(field: &'static str, value: &serde_json::Value) -> Result<Option<T>, RecordError> {
    let bad = || RecordError::BadField { field, value: value.to_string() };
    let text = match value {
        serde_json::Value::String(s) if s.is_empty() => return Ok(None),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Null => return Ok(None),
        _ => return Err(bad()),
    };
    text.parse().map(Some).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ipv4: Option<&str>, ipv6: Option<&str>, port: Option<u16>) -> Record {
        Record { ipv4: ipv4.map(|s| s.parse().unwrap()), ipv6: ipv6.map(|s| s.parse().unwrap()), port }
    }

    #[test]
    fn writes_the_original_layout() {
        let cases = [
            (
                record(Some("10.0.0.3"), Some("fd00::3"), Some(53)),
                r#"{"ipv4":"10.0.0.3","ipv6":"fd00::3","port":"53"}"#,
            ),
            (record(Some("10.0.0.3"), None, Some(53)), r#"{"ipv4":"10.0.0.3","port":"53"}"#),
            (record(None, Some("2001:db8::1"), None), r#"{"ipv6":"2001:db8::1"}"#),
            (record(None, None, None), "{}"),
        ];
        for (r, want) in cases {
            assert_eq!(r.to_json(), want);
            assert_eq!(Record::parse(want.as_bytes()), Ok(r));
        }
    }

    #[test]
    fn reads_values_from_other_writers() {
        let cases = [
            (r#"{"ipv4":"10.0.0.3","ipv6":"","port":"53"}"#, record(Some("10.0.0.3"), None, Some(53))),
            (r#"{"port":1053,"ipv4":"10.0.0.3"}"#, record(Some("10.0.0.3"), None, Some(1053))),
            (r#"{ "ipv4" : "10.0.0.3", "extra": [1,2] }"#, record(Some("10.0.0.3"), None, None)),
            (r#"{"ipv6":"FD00:0:0::3"}"#, record(None, Some("fd00::3"), None)),
        ];
        for (value, want) in cases {
            assert_eq!(Record::parse(value.as_bytes()), Ok(want), "{value}");
        }
    }

    #[test]
    fn rejects_bad_values() {
        for value in [
            "10.0.0.3",
            "not json",
            r#"["10.0.0.3"]"#,
            r#"{"ipv4":"10.0.0.300"}"#,
            r#"{"ipv4":"fd00::3"}"#,
            r#"{"ipv6":"10.0.0.3"}"#,
            r#"{"ipv4":7}"#,
            r#"{"port":"http"}"#,
            r#"{"port":"70000"}"#,
            r#"{"ipv4":{"a":1}}"#,
        ] {
            assert!(Record::parse(value.as_bytes()).is_err(), "{value}");
        }
        let huge = format!(r#"{{"ipv4":"10.0.0.3","pad":"{}"}}"#, "x".repeat(MAX_VALUE_LEN));
        assert!(matches!(Record::parse(huge.as_bytes()), Err(RecordError::TooLarge(_))));
    }
}
