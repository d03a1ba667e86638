//! Forwarding: with `forward . UPSTREAM…`, questions outside the zone go to upstream DNS servers
//! instead of being refused, so that a node can use idetcd as its only resolver.
//!
//! Answering threads must never wait, so they hand such questions to the forwarding thread
//! through a bounded queue (when it is full the question gets SERVFAIL at once). The forwarding
//! thread keeps any number of questions in flight at once, up to a cap, over a few UDP sockets it
//! polls: a slow or silent upstream delays only the questions sent to it. Each question goes
//! upstream under a fresh random ID from a randomly chosen socket, with its EDNS size held to 1232;
//! only an answer from that upstream, with that ID, to that question is taken. After a timeout the
//! next upstream is asked; when none answers the client gets SERVFAIL. An answer truncated upstream
//! is fetched again over TCP for a TCP client, and passed on truncated to a UDP client, which then
//! asks again over TCP itself. The thread sends each answer back through the delivery the
//! answering thread gave it.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use domain::base::iana::OptRcode;

use crate::dns::{self, Action, Context, Transport, MAX_UDP_PAYLOAD};
use crate::messages::Wake;
use crate::metrics::Metrics;
use crate::querylog;
use crate::random::Random;

/// Questions waiting to be sent; more get SERVFAIL rather than pile up.
const QUEUE: usize = 1024;
/// Questions in flight at once.
const MAX_IN_FLIGHT: usize = 4096;
/// Sockets per address family; each question leaves from one picked at random, so that its source
/// port is as hard to guess as its ID.
const SOCKETS: usize = 8;
/// How long one upstream server gets before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// While upstream servers keep failing, say so this often, not for every question.
const WARN_EVERY: Duration = Duration::from_secs(30);
/// A retired forwarding thread (a reload replaced it) serves this long more, and until its last
/// question is answered: answering threads take the new one at their next batch, and anything
/// queued before is answered, not dropped.
const RETIRE_GRACE: Duration = Duration::from_secs(1);

/// Hands the answer to the client: a UDP datagram from the right address, or a TCP connection's
/// output.
pub type Delivery = Box<dyn FnOnce(&[u8]) + Send>;

/// A question for upstream. It is answered once, whatever becomes of it: one that is dropped
/// unanswered (a thread that could not start, or that ended) answers SERVFAIL, so that no client
/// waits for nothing, and no TCP connection is held open for an answer that never comes.
pub struct Job {
    pub query: Vec<u8>,
    /// How the client asked, which decides what to do with a truncated upstream answer.
    pub transport: Transport,
    /// Where the answer goes; taken by it, so that there is one.
    pub deliver: Option<Delivery>,
    /// When the answering thread read the query: the answer time counts from there.
    pub received: Instant,
    /// Who asked, and whether to log the answer (`log`), as the answering thread saw it.
    pub client: Option<SocketAddr>,
    pub log: bool,
}

impl Job {
    /// Sends the answer and logs it, unless the job was answered already; returns how long the
    /// client waited.
    fn answer(&mut self, answer: &[u8]) -> Option<Duration> {
        let deliver = self.deliver.take()?;
        deliver(answer);
        let took = self.received.elapsed();
        if self.log {
            querylog::log(self.client, self.transport, &self.query, answer, took);
        }
        Some(took)
    }

    /// Drops the job without answering it: the caller answers it itself.
    fn withdraw(mut self) {
        self.deliver = None;
    }

    fn answer_servfail(&mut self) -> Option<Duration> {
        // Answered already: nothing to build.
        self.deliver.as_ref()?;
        // Header, the longest question and an OPT record.
        let mut out = [0u8; 512];
        match servfail(&self.query, self.transport, &mut out) {
            Action::Reply { len, .. } => self.answer(&out[..len]),
            _ => None,
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.answer_servfail();
    }
}

/// Why a question was not queued: the answering thread answers it itself, SERVFAIL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotQueued {
    /// The queue is full: the forwarding thread has too much to do.
    Full,
    /// A reload retired the forwarding thread (the answering thread has not taken the new one
    /// yet), or it ended.
    Stopped,
}

impl std::fmt::Display for NotQueued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NotQueued::Full => "forwarding queue full",
            NotQueued::Stopped => "forwarding thread stopped",
        })
    }
}

/// The answering threads' end: queues questions for the forwarding thread.
#[derive(Clone)]
pub struct Forwarder {
    jobs: Sender<Job>,
    wake: Arc<Wake>,
    retired: Arc<AtomicBool>,
}

impl Forwarder {
    /// The forwarding thread's state, to be run on a thread of its own, and the handle to it.
    pub fn new(upstreams: Vec<SocketAddr>, metrics: Arc<Metrics>) -> io::Result<(Forwarder, Forwarding)> {
        let (jobs, queue) = crossbeam_channel::bounded(QUEUE);
        let wake = Arc::new(Wake::new()?);
        let mut sockets = Vec::new();
        let mut families = [0..0, 0..0];
        for (family, local) in
            [SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), (Ipv6Addr::UNSPECIFIED, 0).into()].into_iter().enumerate()
        {
            if upstreams.iter().any(|u| u.is_ipv4() == local.is_ipv4()) {
                let first = sockets.len();
                for _ in 0..SOCKETS {
                    let socket = UdpSocket::bind(local)?;
                    socket.set_nonblocking(true)?;
                    sockets.push(socket);
                }
                families[family] = first..sockets.len();
            }
        }
        let forwarding = Forwarding {
            upstreams,
            queue,
            wake: Arc::clone(&wake),
            metrics,
            sockets,
            families,
            in_flight: Waiting::default(),
            preferred: 0,
            random: Random::new(),
            last_warning: None,
            retired: Arc::new(AtomicBool::new(false)),
        };
        let retired = Arc::clone(&forwarding.retired);
        Ok((Forwarder { jobs, wake, retired }, forwarding))
    }

    /// Ends the forwarding thread once what it was given is answered: a reload replaced it.
    pub fn retire(&self) {
        self.retired.store(true, Relaxed);
        self.wake.notify();
    }

    /// Queues a question. One that is not queued is not answered through its delivery either:
    /// the caller answers it itself, at once.
    pub fn submit(&self, job: Job) -> Result<(), NotQueued> {
        if self.retired.load(Relaxed) {
            job.withdraw();
            return Err(NotQueued::Stopped);
        }
        let (job, why) = match self.jobs.try_send(job) {
            Ok(()) => {
                self.wake.notify();
                return Ok(());
            }
            Err(crossbeam_channel::TrySendError::Full(job)) => (job, NotQueued::Full),
            Err(crossbeam_channel::TrySendError::Disconnected(job)) => (job, NotQueued::Stopped),
        };
        job.withdraw();
        Err(why)
    }
}

/// Whether a client may use this server as its resolver: loopback and private networks only
/// (RFC 1918, RFC 6598 shared space, link-local, unique-local), so that `forward` never makes an
/// open resolver others can bounce floods off.
pub fn may_use(client: IpAddr) -> bool {
    match client {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => may_use(IpAddr::V4(v4)),
            None => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00 || (v6.segments()[0] & 0xffc0) == 0xfe80,
        },
    }
}

/// Answers a question meant for upstream with SERVFAIL in `out`: too many waiting, or no
/// upstream answered.
pub fn servfail(query: &[u8], transport: Transport, out: &mut [u8]) -> Action {
    let context = Context { transport, identity_held: false, forward: Some(b"\0") };
    dns::error_answer(query, OptRcode::SERVFAIL, context, out)
}

/// A question in flight.
struct InFlight {
    job: Job,
    /// As sent: our ID, a held-down EDNS size.
    query: Vec<u8>,
    upstream: usize,
    /// Upstream servers asked so far.
    asked: usize,
}

/// Where a question waits for its answer: a socket (an index into `sockets`) and our ID.
type Key = (usize, u16);

/// Questions in flight by key, and when each gives up on its upstream. A key is free again as soon
/// as its question is answered, and may be taken by the next one while the old deadline is still
/// queued: each deadline names the sending it was set for, so that it never expires a later one.
struct Waiting<T> {
    /// With the sending each was sent by.
    by_key: HashMap<Key, (u64, T)>,
    /// Oldest first: all wait as long.
    deadlines: VecDeque<(Instant, Key, u64)>,
    /// Sendings so far.
    sent: u64,
}

impl<T> Default for Waiting<T> {
    fn default() -> Waiting<T> {
        Waiting { by_key: HashMap::new(), deadlines: VecDeque::new(), sent: 0 }
    }
}

impl<T> Waiting<T> {
    fn len(&self) -> usize {
        self.by_key.len()
    }

    fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    fn contains(&self, key: &Key) -> bool {
        self.by_key.contains_key(key)
    }

    fn get(&self, key: &Key) -> Option<&T> {
        self.by_key.get(key).map(|(_, value)| value)
    }

    fn insert(&mut self, key: Key, value: T, deadline: Instant) {
        self.sent += 1;
        self.deadlines.push_back((deadline, key, self.sent));
        self.by_key.insert(key, (self.sent, value));
    }

    /// Takes the question answered under `key`.
    fn remove(&mut self, key: &Key) -> Option<T> {
        self.by_key.remove(key).map(|(_, value)| value)
    }

    /// When `expired` may next have something to give, if ever.
    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|&(deadline, _, _)| deadline)
    }

    /// Takes a question whose deadline passed by `now`, if any.
    fn expired(&mut self, now: Instant) -> Option<T> {
        while let Some(&(deadline, key, sending)) = self.deadlines.front() {
            if deadline > now {
                return None;
            }
            self.deadlines.pop_front();
            // Answered meanwhile, or given up on, perhaps with its key taken again: nothing to do.
            if self.by_key.get(&key).is_some_and(|&(sent, _)| sent == sending) {
                return self.remove(&key);
            }
        }
        None
    }
}

/// The forwarding thread.
pub struct Forwarding {
    upstreams: Vec<SocketAddr>,
    queue: Receiver<Job>,
    wake: Arc<Wake>,
    metrics: Arc<Metrics>,
    sockets: Vec<UdpSocket>,
    /// The IPv4 sockets and the IPv6 sockets, as indexes into `sockets`.
    families: [std::ops::Range<usize>; 2],
    in_flight: Waiting<InFlight>,
    /// The upstream that answered last, asked first.
    preferred: usize,
    random: Random,
    last_warning: Option<Instant>,
    retired: Arc<AtomicBool>,
}

impl Forwarding {
    /// Forwards until retired.
    pub fn run(mut self) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut buf = vec![0u8; u16::MAX as usize];
        let mut retired_at: Option<Instant> = None;
        loop {
            if let Some(at) = retired_at {
                if at.elapsed() >= RETIRE_GRACE && self.in_flight.is_empty() && self.queue.is_empty() {
                    return;
                }
            }
            fds.clear();
            fds.push(libc::pollfd { fd: self.wake.fd(), events: libc::POLLIN, revents: 0 });
            fds.extend(self.sockets.iter().map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }));
            let timeout = match (self.in_flight.next_deadline(), retired_at) {
                (Some(deadline), _) => {
                    deadline.saturating_duration_since(Instant::now()).as_millis() as libc::c_int + 1
                }
                (None, Some(at)) => RETIRE_GRACE.saturating_sub(at.elapsed()).as_millis() as libc::c_int + 1,
                (None, None) => -1,
            };
            if crate::sys::poll(&mut fds, timeout).is_err() {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            if fds[0].revents != 0 {
                self.wake.clear();
                while let Ok(job) = self.queue.try_recv() {
                    self.start(job);
                }
                if retired_at.is_none() && self.retired.load(Relaxed) {
                    retired_at = Some(Instant::now());
                }
            }
            for i in 0..self.sockets.len() {
                if fds[i + 1].revents != 0 {
                    self.receive(i, &mut buf);
                }
            }
            self.expire();
        }
    }

    fn start(&mut self, job: Job) {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            self.metrics.forward_dropped.fetch_add(1, Relaxed);
            return fail(job, &self.metrics);
        }
        let mut query = job.query.clone();
        dns::limit_payload(&mut query, MAX_UDP_PAYLOAD);
        let upstream = self.preferred % self.upstreams.len();
        self.send(InFlight { job, query, upstream, asked: 0 });
    }

    /// Sends a question to its upstream, or to the next ones if sending fails; SERVFAIL when none
    /// is left.
    fn send(&mut self, mut q: InFlight) {
        while q.asked < self.upstreams.len() {
            let upstream = self.upstreams[q.upstream];
            let family = self.families[usize::from(!upstream.is_ipv4())].clone();
            let socket = family.start + self.random.below(family.len());
            let id = loop {
                let id = self.random.below(1 << 16) as u16;
                if !self.in_flight.contains(&(socket, id)) {
                    break id;
                }
            };
            dns::set_id(&mut q.query, id);
            q.asked += 1;
            match self.sockets[socket].send_to(&q.query, upstream) {
                Ok(_) => {
                    self.in_flight.insert((socket, id), q, Instant::now() + UPSTREAM_TIMEOUT);
                    return;
                }
                Err(e) => {
                    log::debug!("forwarding to {upstream}: {e}");
                    q.upstream = (q.upstream + 1) % self.upstreams.len();
                }
            }
        }
        self.give_up(q);
    }

    /// Takes every answer waiting on a socket; anything but the answer to a question in flight,
    /// from the server it was asked of, is dropped.
    fn receive(&mut self, socket: usize, buf: &mut [u8]) {
        loop {
            let (n, from) = match self.sockets[socket].recv_from(buf) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("receiving from upstream: {e}");
                    return;
                }
            };
            let answer = &buf[..n];
            let key = (socket, dns::id(answer));
            let genuine = self
                .in_flight
                .get(&key)
                .is_some_and(|q| self.upstreams[q.upstream] == from && dns::answers(&q.query, answer));
            if !genuine {
                continue;
            }
            let Some(q) = self.in_flight.remove(&key) else { continue };
            self.preferred = q.upstream;
            self.last_warning = None;
            if dns::truncated(answer) && q.job.transport == Transport::Tcp {
                // Rare, and a TCP exchange blocks: it gets a thread of its own.
                let upstream = self.upstreams[q.upstream];
                let metrics = Arc::clone(&self.metrics);
                let spawned =
                    std::thread::Builder::new().name("forward-tcp".into()).spawn(move || {
                        match exchange_tcp(upstream, &q.query) {
                            Ok(answer) => deliver(q.job, answer, &metrics),
                            Err(e) => {
                                log::debug!("forwarding over TCP to {upstream}: {e}");
                                metrics.forward_failures.fetch_add(1, Relaxed);
                                fail(q.job, &metrics);
                            }
                        }
                    });
                // The job went with the thread's closure, and answers SERVFAIL as it is dropped.
                if let Err(e) = spawned {
                    log::warn!("cannot start a thread for a TCP exchange: {e}; answering SERVFAIL");
                    self.metrics.forward_failures.fetch_add(1, Relaxed);
                }
                continue;
            }
            deliver(q.job, answer.to_vec(), &self.metrics);
        }
    }

    /// Questions whose upstream did not answer in time go to the next upstream.
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(mut q) = self.in_flight.expired(now) {
            log::debug!("{} did not answer in time", self.upstreams[q.upstream]);
            q.upstream = (q.upstream + 1) % self.upstreams.len();
            self.send(q);
        }
    }

    fn give_up(&mut self, q: InFlight) {
        self.metrics.forward_failures.fetch_add(1, Relaxed);
        let now = Instant::now();
        if self.last_warning.is_none_or(|t| now - t >= WARN_EVERY) {
            self.last_warning = Some(now);
            log::warn!("no upstream server answered ({} asked); answering SERVFAIL", self.upstreams.len());
        }
        fail(q.job, &self.metrics);
    }
}

/// Hands an upstream answer to the client, under the client's own ID, with RA: to the client,
/// this server is the one that recursed.
fn deliver(job: Job, mut answer: Vec<u8>, metrics: &Metrics) {
    dns::set_id(&mut answer, dns::id(&job.query));
    dns::set_recursion_available(&mut answer);
    finish(job, &answer, metrics);
}

fn fail(mut job: Job, metrics: &Metrics) {
    if let Some(took) = job.answer_servfail() {
        metrics.forwarded_durations.observe(took);
    }
}

/// Sends the answer, then counts and logs it as the answering threads do theirs.
fn finish(mut job: Job, answer: &[u8], metrics: &Metrics) {
    if let Some(took) = job.answer(answer) {
        metrics.forwarded_durations.observe(took);
    }
}

fn exchange_tcp(upstream: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&upstream, UPSTREAM_TIMEOUT)?;
    stream.set_read_timeout(Some(UPSTREAM_TIMEOUT))?;
    stream.set_write_timeout(Some(UPSTREAM_TIMEOUT))?;
    stream.write_all(&[&(query.len() as u16).to_be_bytes(), query].concat())?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut answer)?;
    match dns::answers(query, &answer) {
        true => Ok(answer),
        false => Err(io::Error::new(io::ErrorKind::InvalidData, "an answer to another question")),
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use domain::base::iana::Rtype;
    use domain::base::{Message, MessageBuilder, Name};

    use super::*;

    /// A question for upstream, and a job for it whose answers come out of the receiver.
    fn job() -> (Job, Receiver<Vec<u8>>) {
        let mut b = MessageBuilder::new_vec();
        b.header_mut().set_id(0x4242);
        b.header_mut().set_rd(true);
        let mut b = b.question();
        b.push((Name::<Vec<u8>>::from_str("example.com.").unwrap(), Rtype::A)).unwrap();
        let query = b.finish();
        let (tx, rx) = crossbeam_channel::unbounded();
        let deliver: Delivery = Box::new(move |answer| tx.send(answer.to_vec()).unwrap());
        let job = Job {
            query,
            transport: Transport::Udp,
            deliver: Some(deliver),
            received: Instant::now(),
            client: None,
            log: false,
        };
        (job, rx)
    }

    fn panic_with(_job: Job) {
        panic!("a forward-tcp thread's bug (a test)");
    }

    #[test]
    fn a_job_is_answered_once_however_it_ends() {
        let metrics = Metrics::default();
        let (retired, _) = Forwarder::new(vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 53))], Arc::default()).unwrap();
        retired.retire();
        // What upstream says: the question back, as an answer (QR).
        let answer = |job: Job, metrics: &Metrics, _: &Forwarder| {
            let mut answer = job.query.clone();
            answer[2] |= 0x80;
            deliver(job, answer, metrics);
        };
        // How the job ends, and the rcode of each answer delivered for it.
        type End = fn(Job, &Metrics, &Forwarder);
        let cases: [(&str, End, &[OptRcode]); 4] = [
            // A thread that could not start, or that ended, loses its job: SERVFAIL all the same.
            ("dropped", |job, _, _| drop(job), &[OptRcode::SERVFAIL]),
            (
                "its thread panicked",
                |job, _, _| assert!(std::thread::spawn(move || panic_with(job)).join().is_err()),
                &[OptRcode::SERVFAIL],
            ),
            ("answered", answer, &[OptRcode::NOERROR]),
            // Not taken: the answering thread answers it itself, at once.
            ("refused", |job, _, forwarder| assert!(forwarder.submit(job).is_err()), &[]),
        ];
        for (how, end, rcodes) in cases {
            let (job, answers) = job();
            end(job, &metrics, &retired);
            let got: Vec<OptRcode> = answers
                .try_iter()
                .map(|a| {
                    let m = Message::from_octets(a).unwrap();
                    assert_eq!((m.header().id(), m.header().qr()), (0x4242, true), "{how}");
                    m.opt_rcode()
                })
                .collect();
            assert_eq!(got, rcodes, "{how}");
        }
    }

    #[test]
    fn only_nearby_clients_may_resolve_through_us() {
        for (ip, want) in [
            ("127.0.0.1", true),
            ("10.1.2.3", true),
            ("172.16.0.1", true),
            ("172.32.0.1", false),
            ("192.168.1.1", true),
            ("100.64.0.1", true),
            ("100.128.0.1", false),
            ("169.254.1.1", true),
            ("8.8.8.8", false),
            ("::1", true),
            ("fd00::1", true),
            ("fe80::1", true),
            ("2001:db8::1", false),
            ("::ffff:10.0.0.1", true),
            ("::ffff:8.8.8.8", false),
        ] {
            assert_eq!(may_use(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn a_reused_key_waits_its_own_time() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let key = (3, 0xbeef);
        // Each step: answers taken (by key), questions sent (key, name, deadline), then what
        // expires by then.
        type Step = (u64, &'static [Key], &'static [(Key, &'static str, u64)], &'static [&'static str]);
        let steps: &[Step] = &[
            (0, &[], &[((3, 0xbeef), "first", 2000)], &[]),
            // The first is answered, and its key taken again at once by a second question.
            (1500, &[(3, 0xbeef)], &[((3, 0xbeef), "second", 3500)], &[]),
            // The first's deadline passes: the second has 1.5 s more.
            (2000, &[], &[], &[]),
            (2100, &[], &[((1, 7), "third", 4100)], &[]),
            (3500, &[], &[], &["second"]),
            (4100, &[], &[], &["third"]),
            (9000, &[], &[], &[]),
        ];
        let mut waiting = Waiting::default();
        for &(now, answered, sent, expiring) in steps {
            for k in answered {
                assert!(waiting.remove(k).is_some(), "{now} ms: {k:?} answered");
            }
            for &(k, name, deadline) in sent {
                assert!(!waiting.contains(&k));
                waiting.insert(k, name, at(deadline));
            }
            let mut expired = Vec::new();
            while let Some(name) = waiting.expired(at(now)) {
                expired.push(name);
            }
            assert_eq!(expired, expiring, "{now} ms");
        }
        assert!(waiting.is_empty() && !waiting.contains(&key));
    }
}
