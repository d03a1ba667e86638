//! Answering threads: the sockets, and the loops that read queries and send answers.
//!
//! Each thread owns the snapshot it answers from and swaps in a new one when the etcd thread sends
//! it: a non-blocking channel check per batch of packets, nothing per packet. UDP reads and writes
//! up to `BATCH` datagrams per system call (`recvmmsg`/`sendmmsg`); on a wildcard address each
//! answer leaves from the address its query arrived at (`IP_PKTINFO`), as clients expect. TCP is
//! one thread multiplexing every connection with `poll`, with a cap on connections, an idle
//! timeout, and a bound on the answers each holds unsent (past it, its queries wait unread), so
//! slow clients cannot tie it up or make it hold megabytes.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use domain::base::iana::{OptRcode, Rtype};

use crate::dns::{self, Action, Context, Transport, MAX_UDP_PAYLOAD};
use crate::forward::{self, Delivery, Forwarder, Job};
use crate::messages::{Update, Wake};
use crate::metrics::QueryCounters;
use crate::querylog;
use crate::sys::{
    self,
    socket::{self, Kind},
};
use crate::zone::Snapshot;

/// Datagrams read or written per system call.
const BATCH: usize = 32;
/// Larger queries are cut short by the kernel and dropped.
const MAX_QUERY: usize = 4096;
pub const MAX_TCP_CONNECTIONS: usize = 128;
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Questions one TCP connection may have waiting for upstream servers; more get SERVFAIL.
const MAX_FORWARDS_PER_CONNECTION: usize = 16;
/// Room for bursts: at 50 000 queries a second a 4 MiB buffer holds tens of milliseconds.
const UDP_RECEIVE_BUFFER: libc::c_int = 4 << 20;

pub struct UdpListener {
    /// Shared with the forwarding threads, which send forwarded answers from it.
    socket: Arc<UdpSocket>,
    /// Bound to a wildcard address, so answers must name their source address.
    wildcard: bool,
}

pub struct Listeners {
    pub udp: Vec<UdpListener>,
    pub tcp: Vec<TcpListener>,
}

#[derive(Debug)]
pub struct BindError {
    address: SocketAddr,
    protocol: &'static str,
    error: io::Error,
    /// The Corefile directives that asked for an HTTP listener there (`health`, `prometheus`,
    /// `ready`); none for DNS, which `bind` and the server block's port ask for.
    directives: Vec<&'static str>,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.directives.is_empty() {
            write!(f, "{}: ", self.directives.join(" and "))?;
        }
        write!(f, "cannot listen on {} ({}): {}", self.address, self.protocol, self.error)?;
        match self.error.raw_os_error() {
            Some(libc::EACCES) if self.address.port() < 1024 => {
                write!(f, "; ports below 1024 need root or the CAP_NET_BIND_SERVICE capability")
            }
            Some(libc::EADDRINUSE) if self.directives.is_empty() => write!(
                f,
                "; another DNS server (systemd-resolved, dnsmasq, another idetcd) may hold it: stop it, or use `bind` or another port in the Corefile"
            ),
            Some(libc::EADDRINUSE) => {
                let directives: Vec<String> = self.directives.iter().map(|d| format!("`{d} ADDR`")).collect();
                write!(f, "; another program holds it: pick another address with {} in the Corefile", directives.join(" or "))
            }
            Some(libc::EADDRNOTAVAIL) => write!(f, "; no interface of this machine has that address"),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for BindError {}

impl BindError {
    /// An HTTP listener of `directives` (`health`, `prometheus`, `ready`) could not be bound.
    pub fn monitor(address: SocketAddr, directives: Vec<&'static str>, error: io::Error) -> BindError {
        BindError { address, protocol: "HTTP", error, directives }
    }
}

/// Binds UDP and TCP on every listen address; no addresses means all of IPv4 and, where the
/// machine has it, all of IPv6. `udp_per_address` sockets share each UDP address (`SO_REUSEPORT`),
/// one per answering thread.
pub fn bind(listen: &[IpAddr], port: u16, udp_per_address: usize) -> Result<Listeners, BindError> {
    let mut listeners = Listeners { udp: Vec::new(), tcp: Vec::new() };
    let (addresses, optional_v6) = match listen {
        [] => (vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V6(Ipv6Addr::UNSPECIFIED)], true),
        list => (list.to_vec(), false),
    };
    for ip in addresses {
        let address = SocketAddr::new(ip, port);
        match bind_address(address, udp_per_address, &mut listeners) {
            Ok(()) => {}
            // A machine without IPv6 still answers on IPv4.
            Err(e)
                if optional_v6
                    && ip.is_ipv6()
                    && matches!(e.error.raw_os_error(), Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)) =>
            {
                log::debug!("not listening on IPv6: {e}");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(listeners)
}

fn bind_address(address: SocketAddr, udp_per_address: usize, listeners: &mut Listeners) -> Result<(), BindError> {
    let wildcard = address.ip().is_unspecified();
    for _ in 0..udp_per_address {
        let kind = Kind::Datagram { shared: udp_per_address > 1, wildcard, receive_buffer: UDP_RECEIVE_BUFFER };
        let fd = socket::bound(address, kind).map_err(|error| BindError {
            address,
            protocol: "UDP",
            error,
            directives: Vec::new(),
        })?;
        listeners.udp.push(UdpListener { socket: Arc::new(UdpSocket::from(fd)), wildcard });
    }
    let fd = socket::bound(address, Kind::Listener).map_err(|error| BindError {
        address,
        protocol: "TCP",
        error,
        directives: Vec::new(),
    })?;
    listeners.tcp.push(TcpListener::from(fd));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// What every answering thread keeps

/// A thread's own view: its snapshot, until when this node holds its name, and where questions
/// that are not ours go.
pub struct View {
    snapshot: Arc<Snapshot>,
    held_until: Option<Duration>,
    /// Whether to log each answered query (`log`).
    log: bool,
    updates: Receiver<Update>,
    forward: Option<Forwarding>,
    /// Where questions that are not ours go from now on, after a reload.
    routes: Receiver<Option<Forwarding>>,
    /// This thread's own counters.
    counters: Arc<QueryCounters>,
}

/// `forward FROM …`: names under `from` (lowercase wire form) that are not ours go to `forwarder`.
#[derive(Clone)]
pub struct Forwarding {
    pub from: Vec<u8>,
    pub forwarder: Forwarder,
}

impl View {
    /// A view that starts from `first`, and takes each newer update at its next batch.
    pub fn new(
        first: Update,
        updates: Receiver<Update>,
        forward: (Option<Forwarding>, Receiver<Option<Forwarding>>),
        counters: Arc<QueryCounters>,
    ) -> View {
        let Update { snapshot, held_until, log } = first;
        let (forward, routes) = forward;
        View { snapshot, held_until, log, updates, forward, routes, counters }
    }

    /// Counts what was done with a query.
    fn count(&self, action: Action) -> Action {
        if let Action::Reply { qtype, rcode, .. } = action {
            self.counters.answered(qtype, rcode);
        }
        action
    }

    /// Takes the newest state the etcd thread sent since the last call, without waiting.
    fn refresh(&mut self) {
        if let Ok(update) = self.updates.try_recv() {
            self.snapshot = update.snapshot;
            self.held_until = update.held_until;
            self.log = update.log;
        }
        if let Ok(forward) = self.routes.try_recv() {
            self.forward = forward;
        }
    }

    fn context(&self, transport: Transport) -> Context<'_> {
        let identity_held = self.held_until.is_some_and(|t| crate::clock::boottime() < t);
        Context { transport, identity_held, forward: self.forward.as_ref().map(|f| f.from.as_slice()) }
    }

    /// Hands a question to the forwarding thread. Returns the length of an answer written into
    /// `out` instead: REFUSED for a client that may not use this server as its resolver, SERVFAIL
    /// when the forwarding thread has too much to do or has stopped (a reload retired it, and this
    /// thread has not taken the new one yet).
    fn forward(&self, query: &[u8], qtype: Rtype, origin: Origin, deliver: Delivery, out: &mut [u8]) -> Option<usize> {
        let Origin { client, transport, received } = origin;
        let forwarding = self.forward.as_ref()?;
        if !client.is_some_and(|c| forward::may_use(c.ip())) {
            let context = Context { transport, identity_held: false, forward: None };
            return self.answered(dns::error_answer(query, OptRcode::REFUSED, context, out));
        }
        let job = Job { query: query.to_vec(), transport, deliver: Some(deliver), received, client, log: self.log };
        match forwarding.forwarder.submit(job) {
            Ok(()) => {
                self.counters.forwarded(qtype);
                None
            }
            Err(why) => {
                log::debug!("{why}; answering SERVFAIL");
                self.answered(forward::servfail(query, transport, out))
            }
        }
    }

    fn answered(&self, action: Action) -> Option<usize> {
        match self.count(action) {
            Action::Reply { len, .. } => Some(len),
            _ => None,
        }
    }
}

/// Who asked a question, how, and when this thread read it.
#[derive(Clone, Copy)]
struct Origin {
    client: Option<SocketAddr>,
    transport: Transport,
    received: Instant,
}

// ---------------------------------------------------------------------------------------------
// UDP

/// One thread's buffers for a round of UDP system calls.
type Batch = socket::Batch<BATCH, MAX_QUERY, { MAX_UDP_PAYLOAD as usize }>;

pub fn serve_udp(listener: UdpListener, mut view: View) {
    let mut b = Batch::new();
    loop {
        let n = match b.receive(&listener.socket, listener.wildcard) {
            Ok(n) => n,
            Err(e) => {
                after_failed_wait("receiving DNS queries", e);
                continue;
            }
        };
        view.refresh();
        // The batch's queries were all read by that one call, and their answers all leave by one.
        let received = Instant::now();
        let context = view.context(Transport::Udp);
        for i in 0..n {
            let Some(datagram) = b.datagram(i) else { continue };
            let len = match view.count(dns::respond(datagram.query, &view.snapshot, context, datagram.answer)) {
                Action::Reply { len, .. } => len,
                Action::Drop => continue,
                Action::Forward { qtype } => {
                    let peer = datagram.peer();
                    let client = peer.address();
                    let socket = Arc::clone(&listener.socket);
                    let deliver: Delivery = Box::new(move |answer| {
                        if let Err(e) = peer.send(&socket, answer) {
                            log::trace!("sending a forwarded answer: {e}");
                        }
                    });
                    let origin = Origin { client, transport: Transport::Udp, received };
                    match view.forward(datagram.query, qtype, origin, deliver, datagram.answer) {
                        Some(len) => len,
                        None => continue,
                    }
                }
            };
            b.queue(i, len);
        }
        let count = b.send(&listener.socket);
        let took = received.elapsed();
        view.counters.sent(took, count as u64);
        if view.log {
            for (query, answer, client) in b.exchanges() {
                querylog::log(client, Transport::Udp, query, answer, took);
            }
        }
    }
}

/// After a blocking call failed: an interruption is retried at once; anything else is logged and
/// retried after a pause, so that a persistent error cannot spin the thread.
fn after_failed_wait(what: &str, e: io::Error) {
    if e.kind() != io::ErrorKind::Interrupted {
        log::warn!("{what}: {e}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// TCP

struct Connection {
    /// Names the connection to the forwarding thread, whose answers come back by it.
    id: u64,
    client: Option<SocketAddr>,
    /// Questions forwarded and not answered yet: the connection waits for them.
    forwarding: usize,
    stream: TcpStream,
    /// Queries read and not answered yet (they wait while the output is full), then the start of
    /// one not read whole.
    input: Vec<u8>,
    /// When the input's last bytes were read: the answer time of its queries counts from there.
    received: Instant,
    output: Vec<u8>,
    written: usize,
    /// Closed when reached: set at accept, and pushed back by each answer and by write progress
    /// only, so a client trickling bytes, or sending frames that get no answer, cannot keep it.
    deadline: Instant,
    done: bool,
}

/// What one connection may read in one turn of the loop, so that a fast sender cannot starve the
/// others: a few full-size queries' worth.
const TCP_READ_PER_TURN: usize = 4 * (2 + u16::MAX as usize);
/// Answers waiting to be written to one connection, past which it answers no more of its queries,
/// and reads none, until they are written: a client that sends many queries and reads slowly
/// holds this and one more answer (64 KiB at most), not an answer for every query it sent. Answers
/// from upstream join the output whatever it holds (they exist already, and the client waits for
/// them), but only `MAX_FORWARDS_PER_CONNECTION` can be on their way at once, and none is asked
/// for while the output is full.
const TCP_OUTPUT_LIMIT: usize = 64 * 1024;

impl Connection {
    fn new(id: u64, stream: TcpStream) -> Connection {
        let deadline = Instant::now() + TCP_IDLE_TIMEOUT;
        let client = stream.peer_addr().ok();
        Connection {
            id,
            client,
            forwarding: 0,
            stream,
            input: Vec::new(),
            received: Instant::now(),
            output: Vec::new(),
            written: 0,
            deadline,
            done: false,
        }
    }

    /// Whether the connection must stay: it has something to send, or more to come. An answer
    /// from upstream always comes (SERVFAIL at the latest), so waiting for one keeps it open.
    fn alive(&self, now: Instant) -> bool {
        self.forwarding > 0 || ((self.pending() || !self.done) && self.deadline > now)
    }

    /// What `poll` waits for: room to write, or more to read. A connection that only waits for
    /// forwarded answers is left out (a negative descriptor): `poll` reports a hang-up or an error
    /// whatever it is asked for, and a reset socket would wake it at once, forever.
    fn pollfd(&self) -> libc::pollfd {
        match (self.pending(), self.done) {
            (true, _) => pollfd(self.stream.as_raw_fd(), libc::POLLOUT),
            (false, false) => pollfd(self.stream.as_raw_fd(), libc::POLLIN),
            (false, true) => pollfd(-1, 0),
        }
    }

    fn push_answer(&mut self, answer: &[u8]) {
        self.output.extend_from_slice(&(answer.len() as u16).to_be_bytes());
        self.output.extend_from_slice(answer);
        self.deadline = Instant::now() + TCP_IDLE_TIMEOUT;
    }

    fn pending(&self) -> bool {
        self.written < self.output.len()
    }

    fn full(&self) -> bool {
        self.output.len() - self.written >= TCP_OUTPUT_LIMIT
    }

    /// Whether the input holds a whole query.
    fn holds_query(&self) -> bool {
        let Some(prefix) = self.input.get(..2) else { return false };
        self.input.len() >= 2 + usize::from(u16::from_be_bytes([prefix[0], prefix[1]]))
    }

    /// One turn, when `poll` found the connection ready or a forwarded answer came: writes what
    /// it can, and once everything is written, answers the queries it holds and reads more, until
    /// the output is full again, the client has nothing more to send now, or the turn has read
    /// its share.
    fn turn(&mut self, view: &View, answer: &mut [u8], forwarded: &Returns) {
        self.flush();
        let mut read = 0;
        // When the first query answered this turn was read, and how many were answered.
        let mut answered: Option<(Instant, u64)> = None;
        while !self.pending() && !self.done {
            if self.holds_query() {
                let count = self.answer(view, answer, forwarded);
                if count > 0 {
                    answered.get_or_insert((self.received, 0)).1 += count;
                }
                self.flush();
                continue;
            }
            if read >= TCP_READ_PER_TURN {
                break;
            }
            match self.fill() {
                Some(n) => read += n,
                None => break,
            }
        }
        if let Some((first, count)) = answered {
            view.counters.sent(first.elapsed(), count);
        }
    }

    /// Reads what the client sent, up to 4 KiB; `None` when there is nothing more for now, or
    /// ever (the client is done, or the connection failed).
    fn fill(&mut self) -> Option<usize> {
        let start = self.input.len();
        self.input.resize(start + 4096, 0);
        let got = self.stream.read(&mut self.input[start..]);
        self.input.truncate(start + got.as_ref().map_or(0, |&n| n));
        match got {
            Ok(0) => {
                self.done = true;
                None
            }
            Ok(n) => {
                self.received = Instant::now();
                Some(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Some(0),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(_) => {
                self.close();
                None
            }
        }
    }

    /// Answers the complete queries in the input (RFC 7766 allows several in flight) until the
    /// output is full; returns how many got an answer here and now. A frame that gets no answer
    /// (too short for a header, or not a query) ends the connection: nothing good comes from a
    /// client that sends them.
    fn answer(&mut self, view: &View, answer: &mut [u8], forwarded: &Returns) -> u64 {
        let mut used = 0;
        let mut answered = 0;
        let received = self.received;
        let context = view.context(Transport::Tcp);
        while let Some(prefix) = self.input.get(used..used + 2).filter(|_| !self.full()) {
            let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
            let Some(query) = self.input.get(used + 2..used + 2 + len) else { break };
            used += 2 + len;
            let n = match view.count(dns::respond(query, &view.snapshot, context, answer)) {
                Action::Reply { len, .. } => len,
                Action::Drop => {
                    self.done = true;
                    break;
                }
                Action::Forward { .. } if self.forwarding >= MAX_FORWARDS_PER_CONNECTION => {
                    match view.answered(forward::servfail(query, Transport::Tcp, answer)) {
                        Some(len) => len,
                        None => continue,
                    }
                }
                Action::Forward { qtype } => {
                    let deliver = forwarded.delivery(self.id);
                    let origin = Origin { client: self.client, transport: Transport::Tcp, received };
                    match view.forward(query, qtype, origin, deliver, answer) {
                        Some(len) => len,
                        None => {
                            self.forwarding += 1;
                            continue;
                        }
                    }
                }
            };
            if view.log {
                querylog::log(self.client, Transport::Tcp, query, &answer[..n], received.elapsed());
            }
            self.push_answer(&answer[..n]);
            answered += 1;
        }
        self.input.drain(..used);
        answered
    }

    fn flush(&mut self) {
        while self.pending() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(n) => {
                    self.written += n;
                    self.deadline = Instant::now() + TCP_IDLE_TIMEOUT;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(),
            }
        }
        self.output.clear();
        self.written = 0;
    }

    fn close(&mut self) {
        self.done = true;
        self.output.clear();
        self.written = 0;
    }
}

pub fn serve_tcp(listeners: Vec<TcpListener>, mut view: View) {
    for l in &listeners {
        if let Err(e) = l.set_nonblocking(true) {
            log::error!("TCP listener: {e}");
            return;
        }
    }
    let mut connections: Vec<Connection> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut answer = vec![0u8; u16::MAX as usize];
    let (forwarded, answers_back) = match Returns::new() {
        Ok(returns) => returns,
        Err(e) => {
            log::error!("TCP: {e}");
            return;
        }
    };
    let mut next_id = 0u64;
    // After accept fails for want of descriptors, the listener stays readable: pause it a little
    // instead of spinning.
    let mut accept_again = Instant::now();
    loop {
        view.refresh();
        forwarded.wake.clear();
        for (id, forwarded_answer) in answers_back.try_iter() {
            if let Some(c) = connections.iter_mut().find(|c| c.id == id) {
                c.forwarding -= 1;
                c.push_answer(&forwarded_answer);
                c.turn(&view, &mut answer, &forwarded);
            }
        }
        let now = Instant::now();
        connections.retain(|c| c.alive(now));
        fds.clear();
        let listen = if now >= accept_again { libc::POLLIN } else { 0 };
        fds.extend(listeners.iter().map(|l| pollfd(l.as_raw_fd(), listen)));
        fds.extend(connections.iter().map(Connection::pollfd));
        // Forwarded answers come by channel; the forwarding thread rings this when one does.
        fds.push(pollfd(forwarded.wake.fd(), libc::POLLIN));
        // With nothing to time out, sleep until a client or a forwarded answer comes: an idle
        // node costs no wake-ups. A new snapshot waits in its channel meanwhile, and is taken
        // before anything is answered.
        let next = connections.iter().map(|c| c.deadline).chain([accept_again]).filter(|&d| d > now).min();
        let timeout = next.map_or(-1, |d| libc::c_int::try_from((d - now).as_millis() + 1).unwrap_or(libc::c_int::MAX));
        if let Err(e) = sys::poll(&mut fds, timeout) {
            after_failed_wait("waiting for TCP connections", e);
            continue;
        }
        view.refresh();
        let (listener_fds, rest) = fds.split_at(listeners.len());
        let connection_fds = &rest[..connections.len()];
        for (c, fd) in connections.iter_mut().zip(connection_fds) {
            if fd.revents != 0 {
                c.turn(&view, &mut answer, &forwarded);
            }
        }
        for (l, fd) in listeners.iter().zip(listener_fds) {
            if fd.revents & libc::POLLIN == 0 {
                continue;
            }
            loop {
                match l.accept() {
                    Ok((stream, _)) => {
                        if stream.set_nonblocking(true).is_err() {
                            continue;
                        }
                        let _ = stream.set_nodelay(true);
                        // At the cap, the connection idle the longest makes room, one waiting for
                        // nothing before one waiting for an answer: idle clients cannot lock new
                        // ones out.
                        if connections.len() >= MAX_TCP_CONNECTIONS {
                            let evict = (0..connections.len())
                                .min_by_key(|&i| (connections[i].forwarding > 0, connections[i].deadline));
                            if let Some(oldest) = evict {
                                connections.swap_remove(oldest);
                            }
                        }
                        next_id += 1;
                        connections.push(Connection::new(next_id, stream));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        log::warn!("accepting a TCP connection: {e}");
                        accept_again = Instant::now() + Duration::from_millis(100);
                        break;
                    }
                }
            }
        }
    }
}

/// How forwarded answers find their way back to the TCP thread: a channel, and a wake-up for its
/// `poll`.
struct Returns {
    tx: Sender<Returned>,
    wake: Arc<Wake>,
}

/// A forwarded answer for the TCP connection with this ID.
type Returned = (u64, Vec<u8>);

impl Returns {
    fn new() -> io::Result<(Returns, Receiver<Returned>)> {
        let (tx, rx) = crossbeam_channel::unbounded();
        Ok((Returns { tx, wake: Arc::new(Wake::new()?) }, rx))
    }

    /// Delivers an answer to connection `id`.
    fn delivery(&self, id: u64) -> Delivery {
        let (tx, wake) = (self.tx.clone(), Arc::clone(&self.wake));
        Box::new(move |answer| {
            if tx.send((id, answer.to_vec())).is_ok() {
                wake.notify();
            }
        })
    }
}

fn pollfd(fd: libc::c_int, events: libc::c_short) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::str::FromStr;

    use domain::base::iana::Rtype;
    use domain::base::{Message, MessageBuilder, Name};

    use super::*;
    use crate::config::Role;
    use crate::metrics::Metrics;
    use crate::pattern::Pattern;
    use crate::record::Record;
    use crate::zone::Inputs;

    /// A zone of 2000 members, whose service records make an answer of about 60 KB.
    fn big_view() -> View {
        let roles = [Role {
            name: "worker".into(),
            pattern: Pattern::parse("worker{{.ID}}.big.test.").unwrap(),
            ids: 1..=u32::MAX,
        }];
        let members: BTreeMap<u32, Record> = (1..=2000u32)
            .map(|i| (i, Record { ipv4: Some(Ipv4Addr::from(0x0a00_0000 + i)), ipv6: None, port: Some(53) }))
            .collect();
        let inputs = Inputs { roles: &roles, ttl: 5, serial: 1, nameservers: 3, own_name: None, members: &[members] };
        let first = Update { snapshot: Arc::new(Snapshot::build(&inputs)), held_until: None, log: false };
        let (_, updates) = crossbeam_channel::bounded(1);
        let (_, routes) = crossbeam_channel::bounded(1);
        View::new(first, updates, (None, routes), Metrics::default().register())
    }

    /// A connected pair, with socket buffers of a fixed size, so that what the kernel takes of the
    /// output does not grow with it.
    fn pair() -> (TcpStream, Connection) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        socket::set_option(client.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 128 * 1024).unwrap();
        socket::set_option(server.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, 128 * 1024).unwrap();
        server.set_nonblocking(true).unwrap();
        (client, Connection::new(1, server))
    }

    #[test]
    fn a_closed_connection_waiting_for_upstream_is_not_polled() {
        let (client, mut c) = pair();
        assert_eq!((c.pollfd().fd, c.pollfd().events), (c.stream.as_raw_fd(), libc::POLLIN));
        c.forwarding = 1;
        // The client resets the connection while a question is upstream.
        drop(client);
        c.close();
        assert!(c.alive(Instant::now()), "it waits for the forwarded answer");
        assert_eq!(c.pollfd().fd, -1, "a reset socket must not wake poll at once, forever");
        c.forwarding = 0;
        assert!(!c.alive(Instant::now()));
    }

    #[test]
    fn a_client_that_reads_slowly_holds_a_bounded_output() {
        let view = big_view();
        let (mut client, mut c) = pair();
        let (returns, _) = Returns::new().unwrap();
        let mut answer = vec![0u8; u16::MAX as usize];
        // 200 questions for the service records, sent at once (about 8 KB).
        let mut queries = Vec::new();
        for id in 0..200u16 {
            let mut b = MessageBuilder::new_vec();
            b.header_mut().set_id(id);
            let mut b = b.question();
            b.push((Name::<Vec<u8>>::from_str("_idetcd._tcp.big.test.").unwrap(), Rtype::SRV)).unwrap();
            let query = b.finish();
            queries.extend_from_slice(&(query.len() as u16).to_be_bytes());
            queries.extend_from_slice(&query);
        }
        client.write_all(&queries).unwrap();
        // Waits a little for what is on its way, then lets the connection take another turn.
        client.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        let mut received = Vec::new();
        let mut ids = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        // Each round the connection does what it can and the client takes what has arrived.
        for _ in 0..10_000 {
            c.turn(&view, &mut answer, &returns);
            let unwritten = c.output.len() - c.written;
            assert!(unwritten <= TCP_OUTPUT_LIMIT + 2 + u16::MAX as usize, "{unwritten} bytes waiting");
            match client.read(&mut chunk) {
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(e) => assert!(matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut), "{e}"),
            }
            while let Some(prefix) = received.get(..2) {
                let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
                let Some(frame) = received.get(2..2 + len) else { break };
                let m = Message::from_octets(frame.to_vec()).unwrap();
                assert!(m.header_counts().ancount() > 1000 && len > 50_000, "{len} bytes");
                ids.push(m.header().id());
                received.drain(..2 + len);
            }
            if ids.len() == 200 {
                break;
            }
        }
        // All of them, in order.
        assert_eq!(ids, (0..200).collect::<Vec<u16>>());
    }
}
