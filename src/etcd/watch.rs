//! Watch streams: etcd's never-ending answer to `/v3/watch`, read one message at a time.

use std::io::{BufRead, BufReader, Read};

use super::json::{WatchAnswer, WatchCreateJson, WatchJson};
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
            Ok(Watch { endpoint: endpoint.to_string(), lines, watchers: Watchers::default() })
        })
    }
}

/// An open watch: etcd's never-ending answer, one JSON message per line.
pub struct Watch {
    endpoint: String,
    lines: BufReader<ureq::BodyReader<'static>>,
    watchers: Watchers,
}

impl Watch {
    /// The endpoint the stream is open at.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

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
        let answer = message.decode().map_err(malformed)?.ok_or_else(|| match cancelled_for(&reason) {
            Some(refusal) => Error::Rejected { endpoint: self.endpoint.clone(), status: 200, refusal, message: reason },
            None if reason.is_empty() => broken("etcd cancelled the watch".to_string()),
            None => broken(reason),
        })?;
        Ok(self.watchers.place(answer))
    }
}

/// The watchers' IDs on one stream, in the order of the ranges: etcd creates them, and says so,
/// in the order they were asked for.
#[derive(Default)]
struct Watchers {
    ids: Vec<i64>,
}

impl Watchers {
    /// Tells which range a watcher's message is about.
    fn place(&mut self, answer: WatchAnswer) -> WatchMessage {
        match answer {
            WatchAnswer::Created(id) => {
                self.ids.push(id);
                WatchMessage::Alive
            }
            WatchAnswer::Progress { watch_id, revision } => match self.ids.iter().position(|&id| id == watch_id) {
                Some(range) => WatchMessage::Progress { range, revision },
                // Not one of ours, or for the whole stream: it proves the stream alive, no more.
                None => WatchMessage::Alive,
            },
            WatchAnswer::Message(message) => message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_told_per_range_in_the_order_the_watchers_were_created() {
        let mut watchers = Watchers::default();
        let progress = |watch_id, revision| WatchAnswer::Progress { watch_id, revision };
        let cases = [
            (WatchAnswer::Created(0), WatchMessage::Alive),
            (progress(0, 7), WatchMessage::Progress { range: 0, revision: 7 }),
            (progress(1, 7), WatchMessage::Alive),
            (WatchAnswer::Created(1), WatchMessage::Alive),
            (progress(1, 8), WatchMessage::Progress { range: 1, revision: 8 }),
            // etcd 3.5's answer to a progress request on the whole stream.
            (progress(-1, 9), WatchMessage::Alive),
            (WatchAnswer::Message(WatchMessage::Compacted { revision: 3 }), WatchMessage::Compacted { revision: 3 }),
        ];
        for (answer, want) in cases {
            let said = format!("{answer:?}");
            assert_eq!(watchers.place(answer), want, "{said}");
        }
    }
}
