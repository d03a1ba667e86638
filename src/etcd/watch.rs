//! Watch streams: etcd's never-ending answer to `/v3/watch`, read one message at a time.

use std::io::{BufRead, BufReader, Read};

use super::json::{WatchCreateJson, WatchJson};
use super::transport::{cancelled_for, rejection, unreachable, Retry, MAX_RESPONSE_BYTES};
use super::{Client, Error, WatchMessage, WatchRange};

impl Client {
    /// Starts watching each range `[start, end)` for changes from its revision on, all on one
    /// stream: the gateway takes one create request after another in the body.
    pub fn watch(&mut self, ranges: &[WatchRange]) -> Result<Watch, Error> {
        let mut body = Vec::new();
        for range in ranges {
            // Serializing plain strings, numbers and bools into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut body, &WatchCreateJson::from(range));
            body.push(b'\n');
        }
        self.failover("/v3/watch", Retry::Safe, |client, endpoint| {
            let url = format!("{endpoint}/v3/watch");
            let mut response = client
                .stream_request(&url)
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
}

/// An open watch: etcd's never-ending answer, one JSON message per line.
pub struct Watch {
    endpoint: String,
    lines: BufReader<ureq::BodyReader<'static>>,
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
        let reason = message.cancel_reason().to_string();
        message.decode().map_err(malformed)?.ok_or_else(|| match cancelled_for(&reason) {
            Some(refusal) => Error::Rejected { endpoint: self.endpoint.clone(), status: 200, refusal, message: reason },
            None if reason.is_empty() => broken("etcd cancelled the watch".to_string()),
            None => broken(reason),
        })
    }
}
