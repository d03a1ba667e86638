//! Forwarding: with `forward . UPSTREAM…`, questions outside the zone go to upstream DNS servers
//! instead of being refused, so that a node can use idetcd as its only resolver.
//!
//! Answering threads must never wait, so they hand such questions to a few forwarding threads
//! through a bounded queue (when it is full the question gets SERVFAIL at once), and the forwarding
//! thread sends the answer back itself, through the delivery the answering thread gave it. The
//! question goes upstream as the client asked it (its EDNS size included) under a fresh random ID
//! from a fresh random port, over UDP; an answer truncated upstream is fetched again over TCP for a
//! TCP client, and passed on truncated to a UDP client, which then asks again over TCP itself.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use domain::base::iana::OptRcode;

use crate::dns::{self, Action, Context, Transport};

/// Questions waiting for a forwarding thread; more get SERVFAIL rather than pile up.
const QUEUE: usize = 1024;
/// Threads asking upstream at once: each waits for one answer at a time.
const WORKERS: usize = 4;
/// How long one upstream server gets before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Hands the answer to the client: a UDP datagram from the right address, or a TCP connection's
/// output.
pub type Delivery = Box<dyn FnOnce(&[u8]) + Send>;

pub struct Job {
    pub query: Vec<u8>,
    /// How the client asked, which decides what to do with a truncated upstream answer.
    pub transport: Transport,
    pub deliver: Delivery,
}

#[derive(Clone)]
pub struct Forwarder {
    jobs: Sender<Job>,
}

impl Forwarder {
    pub fn start(upstreams: Vec<SocketAddr>) -> io::Result<Forwarder> {
        let (jobs, queue) = crossbeam_channel::bounded(QUEUE);
        for i in 0..WORKERS {
            let (upstreams, queue) = (upstreams.clone(), queue.clone());
            std::thread::Builder::new().name(format!("forward-{i}")).spawn(move || work(upstreams, queue))?;
        }
        Ok(Forwarder { jobs })
    }

    /// Queues a question; gives it back when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        self.jobs.try_send(job).map_err(|e| e.into_inner())
    }
}

/// Answers `query` with SERVFAIL in `out` (a full queue, or no upstream answered).
pub fn servfail(query: &[u8], transport: Transport, out: &mut [u8]) -> Option<usize> {
    let context = Context { transport, identity_held: false, forward: Some(b"\0") };
    match dns::error_answer(query, OptRcode::SERVFAIL, context, out) {
        Action::Reply { len, .. } => Some(len),
        _ => None,
    }
}

fn work(upstreams: Vec<SocketAddr>, queue: Receiver<Job>) {
    let mut random = Random::new();
    let mut preferred = 0;
    let mut out = vec![0u8; u16::MAX as usize];
    for job in queue {
        match ask(&upstreams, &mut preferred, &job, &mut random) {
            Some(answer) => (job.deliver)(&answer),
            None => {
                if let Some(len) = servfail(&job.query, job.transport, &mut out) {
                    (job.deliver)(&out[..len]);
                }
            }
        }
    }
}

/// Asks the upstream servers in turn, starting with the one that answered last.
fn ask(upstreams: &[SocketAddr], preferred: &mut usize, job: &Job, random: &mut Random) -> Option<Vec<u8>> {
    for i in 0..upstreams.len() {
        let index = (*preferred + i) % upstreams.len();
        let upstream = upstreams[index];
        let mut query = job.query.clone();
        dns::set_id(&mut query, random.next() as u16);
        let mut answer = match exchange_udp(upstream, &query) {
            Ok(answer) if dns::truncated(&answer) && job.transport == Transport::Tcp => exchange_tcp(upstream, &query),
            other => other,
        };
        match &mut answer {
            Ok(answer) => {
                dns::set_id(answer, dns::id(&job.query));
                *preferred = index;
                return Some(std::mem::take(answer));
            }
            Err(e) => log::debug!("forwarding to {upstream}: {e}"),
        }
    }
    log::warn!("no upstream server answered ({} tried)", upstreams.len());
    None
}

fn exchange_udp(upstream: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(upstream)?;
    socket.send(query)?;
    let deadline = Instant::now() + UPSTREAM_TIMEOUT;
    let mut buf = vec![0u8; u16::MAX as usize];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"));
        }
        socket.set_read_timeout(Some(left))?;
        let n = socket.recv(&mut buf)?;
        // Anything but the answer to this very question (a late answer to another, a forgery
        // without our random ID) is ignored.
        if dns::answers(query, &buf[..n]) {
            buf.truncate(n);
            return Ok(buf);
        }
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

/// xorshift64, seeded from the clock and the thread: IDs an off-path attacker cannot guess
/// cheaply, together with the random source port.
struct Random(u64);

impl Random {
    fn new() -> Random {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        let stack = &nanos as *const u64 as u64;
        Random(nanos ^ stack.rotate_left(32) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
