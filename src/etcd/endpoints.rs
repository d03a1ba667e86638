//! Which etcd endpoints a client uses: the Corefile's, and the members' client URLs read from etcd
//! itself (`/v3/cluster/member/list`, as the Go client's auto-sync does), so that a member added
//! or replaced later is used without touching any Corefile; which one requests go to now; and how
//! a cluster's nodes spread over the members.
//!
//! A client's clones (the etcd thread's, the watch thread's, the main thread's) share one list: a
//! failover or a member-list read by one is where the others go next.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::Deserialize;

use super::json::MemberListJson;
use super::transport::Retry;
use super::{Client, Error, Member};

/// The list and the endpoint in use, behind the lock that the clones share.
pub(super) struct Endpoints(Mutex<List>);

/// A list as one request saw it: the URLs, and the order to try them in.
pub(super) struct Snapshot {
    pub urls: Arc<[String]>,
    /// The one in use first, then the others.
    pub order: Vec<usize>,
}

struct List {
    /// One client URL per member, in the order of the members' IDs, so that every node sees them
    /// in the same order; then the Corefile's endpoints that are none of them. Requests spread
    /// over the first `members`, and fail over through all.
    urls: Arc<[String]>,
    members: usize,
    current: usize,
    /// What this node spreads by (see `Client::spread`), once it was told.
    key: Option<u64>,
    corefile: Vec<String>,
    /// Per URL, requests in a row that it cut off right after the TLS handshake.
    cut_off: Vec<u32>,
    /// Members' URLs that could not be reached when last tried, warned about once.
    skipped: Vec<String>,
}

impl Endpoints {
    pub(super) fn new(corefile: &[String]) -> Endpoints {
        let corefile: Vec<String> = corefile.iter().map(|e| normal(e).to_string()).collect();
        Endpoints(Mutex::new(List {
            urls: corefile.clone().into(),
            members: 0,
            current: 0,
            key: None,
            cut_off: vec![0; corefile.len()],
            corefile,
            skipped: Vec::new(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, List> {
        // Every change leaves the list whole: one that panicked left nothing half done.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        let list = self.lock();
        Snapshot { urls: Arc::clone(&list.urls), order: list.order() }
    }

    pub(super) fn current(&self) -> String {
        let list = self.lock();
        list.urls[list.current].clone()
    }

    pub(super) fn all(&self) -> Vec<String> {
        self.lock().urls.to_vec()
    }

    /// `urls[index]` answered: requests go there from now on, unless the list changed meanwhile.
    pub(super) fn answered(&self, urls: &Arc<[String]>, index: usize) {
        let mut list = self.lock();
        if Arc::ptr_eq(&list.urls, urls) {
            list.current = index;
        }
    }

    /// `urls[index]` could not be reached: the next request starts at `next`, unless another
    /// request moved on meanwhile.
    pub(super) fn failed(&self, urls: &Arc<[String]>, index: usize, next: usize) {
        let mut list = self.lock();
        if Arc::ptr_eq(&list.urls, urls) && list.current == index {
            list.current = next;
        }
    }

    /// Counts a cut-off at `urls[index]` (or clears the count when `cut` is false); returns the
    /// cut-offs in a row there.
    pub(super) fn cut_off(&self, urls: &Arc<[String]>, index: usize, cut: bool) -> u32 {
        let mut list = self.lock();
        if !Arc::ptr_eq(&list.urls, urls) {
            return u32::from(cut);
        }
        list.cut_off[index] = if cut { list.cut_off[index] + 1 } else { 0 };
        list.cut_off[index]
    }

    /// Spreads by `key`: requests go to member `key` modulo the members (or to the Corefile's
    /// endpoint, when no member list was read).
    pub(super) fn spread(&self, key: u64) {
        let mut list = self.lock();
        list.key = Some(key);
        let index = list.preferred();
        if index != list.current {
            log::debug!("etcd requests go to {} now, this node's share of the members", list.urls[index]);
            list.current = index;
        }
    }

    /// Which URL a node spreading by `key` prefers.
    pub(super) fn preferred_for(&self, key: u64) -> String {
        let list = self.lock();
        list.urls[list.share(key)].clone()
    }

    /// Takes the members' URLs (one each, in member order); returns whether the list changed.
    /// A node that spreads goes to its share of the new list at once; one that does not stays
    /// where it is, if it can.
    fn take(&self, members: Vec<String>) -> bool {
        let mut list = self.lock();
        let mut urls = members.clone();
        urls.extend(list.corefile.iter().filter(|e| !members.contains(e)).cloned());
        if *list.urls == *urls {
            return false;
        }
        let was = list.urls[list.current].clone();
        list.cut_off = vec![0; urls.len()];
        list.current = urls.iter().position(|u| *u == was).unwrap_or(0);
        list.urls = urls.into();
        list.members = members.len();
        if list.key.is_some() {
            list.current = list.preferred();
        }
        true
    }

    /// This node's share, when requests went elsewhere since (a failover).
    fn away_from(&self) -> Option<String> {
        let list = self.lock();
        let preferred = list.preferred();
        (list.key.is_some() && list.current != preferred).then(|| list.urls[preferred].clone())
    }

    /// Requests go to this node's share again.
    fn back(&self) {
        let key = self.lock().key;
        if let Some(key) = key {
            self.spread(key);
        }
    }

    /// Notes a member URL that cannot be reached: true the first time, to warn once.
    fn skip(&self, url: &str) -> bool {
        let mut list = self.lock();
        match list.skipped.iter().any(|s| s == url) {
            true => false,
            false => {
                list.skipped.push(url.to_string());
                true
            }
        }
    }

    fn reached(&self, url: &str) {
        self.lock().skipped.retain(|s| s != url);
    }

    fn known(&self, url: &str) -> bool {
        self.lock().urls.iter().any(|u| u == url)
    }
}

impl List {
    fn preferred(&self) -> usize {
        self.share(self.key.unwrap_or(0))
    }

    /// Where a node with `key` goes: nodes with keys 0, 1, 2, … land on the members in turn;
    /// without members, on the Corefile's endpoints.
    fn share(&self, key: u64) -> usize {
        let over = if self.members > 0 { self.members } else { self.urls.len() };
        (key % over as u64) as usize
    }

    /// The order to try the endpoints in: the one in use, then the others in turn. A node on its
    /// share of the members tries the other members from a place its key decides, so that the
    /// nodes of a member that dies spread over the others instead of all moving to the next.
    fn order(&self) -> Vec<usize> {
        let (all, start) = (self.urls.len(), self.current);
        let mut order: Vec<usize> = (start..all).chain(0..start).collect();
        if let Some(key) = self.key {
            if self.members > 2 && start == self.preferred() && start < self.members {
                let mut others: Vec<usize> = (1..self.members).map(|d| (start + d) % self.members).collect();
                others.rotate_left((key / self.members as u64 % (self.members as u64 - 1)) as usize);
                order = [start].into_iter().chain(others).chain(self.members..all).collect();
            }
        }
        order
    }
}

fn normal(url: &str) -> &str {
    url.trim_end_matches('/')
}

impl Client {
    /// The etcd cluster's members, in the order of their IDs.
    pub fn member_list(&mut self) -> Result<Vec<Member>, Error> {
        let (endpoint, answer) =
            self.post::<MemberListJson>("/v3/cluster/member/list", &serde_json::json!({}), Retry::Safe)?;
        answer.decode().map_err(|detail| Error::Malformed { endpoint, detail })
    }

    /// Reads the member list and uses one client URL of each member from now on, then the
    /// Corefile's endpoints that are none of them. A member is used at a URL this client uses
    /// already, or else at the first of its URLs that answers; one with none that answers is
    /// skipped, with a warning the first time. Returns whether the endpoints changed.
    pub fn sync_members(&mut self) -> Result<bool, Error> {
        let members = self.member_list()?;
        let mut urls = Vec::new();
        for member in members.iter().filter(|m| !m.learner && !m.client_urls.is_empty()) {
            let mut tried = Vec::new();
            let known = member.client_urls.iter().map(|u| normal(u)).find(|u| self.endpoints.known(u));
            let url = known.or_else(|| {
                member.client_urls.iter().map(|u| normal(u)).find(|u| match self.reachable(u) {
                    Ok(()) => true,
                    Err(why) => {
                        tried.push(format!("{u}: {why}"));
                        false
                    }
                })
            });
            let who = match member.name.as_str() {
                "" => format!("{:x}", member.id),
                name => format!("{name} ({:x})", member.id),
            };
            match url {
                Some(url) => {
                    self.endpoints.reached(url);
                    urls.push(url.to_string());
                }
                None if self.endpoints.skip(&member.client_urls.join(" ")) => {
                    log::warn!("etcd member {who} cannot be reached from here ({}): not used", tried.join("; "))
                }
                None => log::debug!("etcd member {who} still cannot be reached ({})", tried.join("; ")),
            }
        }
        let changed = self.endpoints.take(urls);
        // After a failover, back to the member this node left once it is healthy again: else
        // the nodes of a member that restarted would stay on the others for good. Healthy, not
        // only reachable: a member cut off from the others answers, but serves nothing.
        if let Some(share) = self.endpoints.away_from() {
            if self.healthy(&share) {
                self.endpoints.back();
            }
        }
        if changed {
            log::info!(
                "etcd endpoints: {} (from the member list); this node's etcd requests go to {}",
                self.endpoints.all().join(" "),
                self.endpoints.current()
            );
        }
        Ok(changed)
    }

    /// Whether `url` answers as an etcd client URL: `GET /version`.
    fn reachable(&self, url: &str) -> Result<(), String> {
        #[derive(Deserialize)]
        struct Version {
            etcdserver: String,
        }
        match self.probe_json::<Version>(url, "/version")? {
            Some(version) if !version.etcdserver.is_empty() => Ok(()),
            _ => Err("not an etcd client URL".to_string()),
        }
    }

    /// Whether the member at `url` says it is healthy (`GET /health`: it has a leader and serves
    /// reads).
    fn healthy(&self, url: &str) -> bool {
        #[derive(Deserialize)]
        struct Health {
            health: String,
        }
        matches!(self.probe_json::<Health>(url, "/health"), Ok(Some(h)) if h.health == "true")
    }

    /// `GET url path`, which etcd answers without credentials: why it got no answer, or the
    /// answer read as `T` (`None` when it is not).
    fn probe_json<T: serde::de::DeserializeOwned>(&self, url: &str, path: &str) -> Result<Option<T>, String> {
        let mut response = self.probe(&format!("{url}{path}")).map_err(|e| e.to_string())?;
        Ok(response.body_mut().read_json::<T>().ok())
    }

    /// The endpoint a node that spreads by `key` prefers: for `idetcd members`.
    pub fn preferred_for(&self, key: u64) -> String {
        self.endpoints.preferred_for(key)
    }

    /// Spreads this node's requests over the members by `key`: nodes with keys 0, 1, 2, … use
    /// the members in turn. A node that holds a name spreads by its place among every role's IDs
    /// (see `view::Slot::rank`), so that a cluster's nodes share the members evenly; before
    /// that, by a hash of its address.
    pub fn spread(&self, key: u64) {
        self.endpoints.spread(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &Endpoints) -> Vec<String> {
        list.all()
    }

    #[test]
    fn members_come_first_and_the_corefiles_others_after() {
        let list = Endpoints::new(&["http://a:2379/".into(), "http://lb:2379".into()]);
        assert_eq!(urls(&list), ["http://a:2379", "http://lb:2379"]);
        assert!(list.take(vec!["http://a:2379".into(), "http://b:2379".into(), "http://c:2379".into()]));
        assert_eq!(urls(&list), ["http://a:2379", "http://b:2379", "http://c:2379", "http://lb:2379"]);
        // The same list again changes nothing.
        assert!(!list.take(vec!["http://a:2379".into(), "http://b:2379".into(), "http://c:2379".into()]));
        // A member replaced: the Corefile's endpoint stays, at the end.
        assert!(list.take(vec!["http://b:2379".into(), "http://c:2379".into(), "http://d:2379".into()]));
        assert_eq!(urls(&list), ["http://b:2379", "http://c:2379", "http://d:2379", "http://a:2379", "http://lb:2379"]);
    }

    #[test]
    fn nodes_spread_over_the_members_in_turn_and_come_back_after_a_failover() {
        let list = Endpoints::new(&["http://a:2379".into()]);
        list.spread(4);
        // Only the Corefile's endpoint is known.
        assert_eq!(list.current(), "http://a:2379");
        list.take(vec!["http://a:2379".into(), "http://b:2379".into(), "http://c:2379".into()]);
        assert_eq!(list.current(), "http://b:2379");
        let shares: Vec<String> = (0..6).map(|key| list.preferred_for(key)).collect();
        assert_eq!(shares, ["a", "b", "c", "a", "b", "c"].map(|m| format!("http://{m}:2379")));
        // A failover to c, and back once b answers again (`Client::sync_members` asks it).
        let seen = list.snapshot();
        assert_eq!(seen.order, [1, 0, 2], "4 = 3 + 1: b's nodes try the other members from the second");
        list.answered(&seen.urls, 2);
        assert_eq!(list.current(), "http://c:2379");
        assert!(!list.take(vec!["http://a:2379".into(), "http://b:2379".into(), "http://c:2379".into()]));
        assert_eq!(list.away_from().as_deref(), Some("http://b:2379"));
        list.back();
        assert_eq!(list.current(), "http://b:2379");
        assert_eq!(list.away_from(), None);
        // A new list: this node's share of it (4 modulo 2). An answer from the list before
        // (where index 0 was a) moves nothing.
        list.take(vec!["http://c:2379".into(), "http://b:2379".into()]);
        assert_eq!(list.current(), "http://c:2379");
        list.answered(&seen.urls, 0);
        assert_eq!(list.current(), "http://c:2379");
    }

    #[test]
    fn the_nodes_of_a_member_that_dies_spread_over_the_others() {
        let list = Endpoints::new(&["http://lb:2379".into()]);
        let members: Vec<String> = (0..4).map(|m| format!("http://m{m}:2379")).collect();
        list.take(members);
        // The nodes of m1 (keys 1, 5, 9) go on to m2, m3 and m0 in turn; the Corefile's last.
        let next: Vec<Vec<usize>> = [1, 5, 9, 13]
            .iter()
            .map(|&key| {
                list.spread(key);
                list.snapshot().order
            })
            .collect();
        assert_eq!(next, [vec![1, 2, 3, 0, 4], vec![1, 3, 0, 2, 4], vec![1, 0, 2, 3, 4], vec![1, 2, 3, 0, 4]]);
        // Away from its share, a node tries the endpoints in turn.
        let seen = list.snapshot();
        list.failed(&seen.urls, 1, 2);
        assert_eq!(list.snapshot().order, [2, 3, 4, 0, 1]);
    }

    #[test]
    fn without_a_key_the_endpoint_in_use_stays_in_use() {
        let list = Endpoints::new(&["http://a:2379".into(), "http://b:2379".into()]);
        let seen = list.snapshot();
        list.answered(&seen.urls, 1);
        list.take(vec!["http://c:2379".into(), "http://b:2379".into(), "http://a:2379".into()]);
        assert_eq!(list.current(), "http://b:2379");
    }

    #[test]
    fn a_member_that_cannot_be_reached_is_warned_about_once() {
        let list = Endpoints::new(&["http://a:2379".into()]);
        assert!(list.skip("http://10.1.1.1:2379"));
        assert!(!list.skip("http://10.1.1.1:2379"));
        list.reached("http://10.1.1.1:2379");
        assert!(list.skip("http://10.1.1.1:2379"));
    }
}
