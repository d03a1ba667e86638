//! The v3 calls: ranges, transactions and leases.

use serde::de::IgnoredAny;

use super::json::{
    self, KeepAliveJson, LeaseGrantJson, LeaseIdJson, LeaseJson, RangeJson, RangeRequestJson, TimeToLiveJson, TxnJson,
    TxnRequestJson,
};
use super::transport::Retry;
use super::{
    Client, Error, KeyValue, Lease, Op, OpResponse, Range, RangeRequest, Refusal, TimeToLive, Txn, TxnResponse,
};

impl Client {
    pub fn range(&mut self, start: &[u8], end: &[u8]) -> Result<Range, Error> {
        let body = RangeRequestJson::from(&RangeRequest::new(start, end));
        // Read straight into typed fields: a JSON tree of 10 000 members would take several times
        // the memory of the answer itself.
        let (endpoint, answer) = self.post::<RangeJson>("/v3/kv/range", &body, Retry::Safe)?;
        answer.decode().map_err(|detail| Error::Malformed { endpoint, detail })
    }

    /// How many keys `range` holds; etcd does not read them.
    pub fn range_count(&mut self, range: &RangeRequest) -> Result<i64, Error> {
        let body = RangeRequestJson::from(&RangeRequest { count_only: true, ..range.clone() });
        let (endpoint, answer) = self.post::<RangeJson>("/v3/kv/range", &body, Retry::Safe)?;
        answer.decode().map(|range| range.count).map_err(|detail| Error::Malformed { endpoint, detail })
    }

    /// Reads several ranges at one revision, in one request (a transaction that only reads).
    pub fn read(&mut self, ranges: &[RangeRequest]) -> Result<Vec<Range>, Error> {
        let txn = Txn { success: ranges.iter().cloned().map(Op::Range).collect(), ..Txn::default() };
        // Reading twice does no harm: unlike other transactions, it may go to another endpoint.
        let (endpoint, answer) = self.post::<TxnJson>("/v3/kv/txn", &TxnRequestJson::from(&txn), Retry::Safe)?;
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

    /// Reads several ranges at one revision, in one request, as `read` does, but hands each key
    /// to `each` with the index of its range as it is read, never holding the answer or every
    /// key at once; returns the revision. On an error, what `each` was given is incomplete.
    pub fn read_each(&mut self, ranges: &[RangeRequest], mut each: impl FnMut(usize, KeyValue)) -> Result<i64, Error> {
        let txn = Txn { success: ranges.iter().cloned().map(Op::Range).collect(), ..Txn::default() };
        let body = TxnRequestJson::from(&txn);
        self.post_reading("/v3/kv/txn", &body, Retry::Safe, |endpoint, answer| {
            json::read_each(answer, ranges.len(), &mut each).map_err(|e| match e.is_io() || e.is_eof() {
                // The connection broke, or the answer was cut off: etcd's trouble, or the network's.
                true => Error::Unreachable(vec![(endpoint.to_string(), format!("reading the answer: {e}"))]),
                false => Error::Malformed { endpoint: endpoint.to_string(), detail: format!("/v3/kv/txn answer: {e}") },
            })
        })
    }

    /// Runs a transaction. It is not resent to another endpoint once it may have arrived at one,
    /// because it may have been applied there; the caller re-reads and decides.
    pub fn txn(&mut self, txn: &Txn) -> Result<TxnResponse, Error> {
        let (endpoint, answer) = self.post::<TxnJson>("/v3/kv/txn", &TxnRequestJson::from(txn), Retry::OnlyIfUnsent)?;
        answer.decode().map_err(|detail| Error::Malformed { endpoint, detail })
    }

    pub fn lease_grant(&mut self, ttl: u32) -> Result<Lease, Error> {
        let (endpoint, answer) = self.post::<LeaseJson>("/v3/lease/grant", &LeaseGrantJson { ttl }, Retry::Safe)?;
        answer.decode_grant().map_err(|detail| Error::Malformed { endpoint, detail })
    }

    /// Renews a lease once. `None` means etcd no longer knows it: it expired or was revoked.
    pub fn lease_keepalive(&mut self, id: i64) -> Result<Option<i64>, Error> {
        let (endpoint, answer) =
            self.post::<KeepAliveJson>("/v3/lease/keepalive", &LeaseIdJson::new(id), Retry::Safe)?;
        answer.decode(id).map_err(|detail| Error::Malformed { endpoint, detail })
    }

    /// What a lease has left, or `None` when etcd no longer knows it. Asking does not renew it.
    pub fn lease_ttl(&mut self, id: i64) -> Result<Option<TimeToLive>, Error> {
        let (_, answer) = self.post::<TimeToLiveJson>("/v3/lease/timetolive", &LeaseIdJson::new(id), Retry::Safe)?;
        Ok(answer.decode())
    }

    /// Revokes a lease, deleting every key attached to it. A lease etcd no longer knows is gone
    /// already, which is what the caller wanted.
    pub fn lease_revoke(&mut self, id: i64) -> Result<(), Error> {
        match self.post::<IgnoredAny>("/v3/lease/revoke", &LeaseIdJson::new(id), Retry::Safe) {
            Ok(_) => Ok(()),
            Err(Error::Rejected { refusal: Refusal::NotFound, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
