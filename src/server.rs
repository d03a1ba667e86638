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
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use domain::base::iana::{OptRcode, Rtype};

use crate::dns::{self, Action, Context, Transport, MAX_UDP_PAYLOAD};
use crate::forward::{self, Delivery, Forwarder, Job};
use crate::messages::{Update, Wake};
use crate::metrics::QueryCounters;
use crate::querylog;
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
        let fd = socket(address, libc::SOCK_DGRAM, udp_per_address > 1, wildcard).map_err(|error| BindError {
            address,
            protocol: "UDP",
            error,
            directives: Vec::new(),
        })?;
        listeners.udp.push(UdpListener { socket: Arc::new(UdpSocket::from(fd)), wildcard });
    }
    let fd = socket(address, libc::SOCK_STREAM, false, false).map_err(|error| BindError {
        address,
        protocol: "TCP",
        error,
        directives: Vec::new(),
    })?;
    listeners.tcp.push(TcpListener::from(fd));
    Ok(())
}

fn socket(address: SocketAddr, kind: libc::c_int, reuse_port: bool, packet_info: bool) -> io::Result<OwnedFd> {
    let family = if address.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain system calls on a descriptor we own from here on.
    unsafe {
        let fd = libc::socket(family, kind | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let raw = fd.as_raw_fd();
        if family == libc::AF_INET6 {
            // IPv4 gets a socket of its own, so the IPv6 one must not claim IPv4 as well.
            set_option(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
        }
        if kind == libc::SOCK_STREAM {
            // A restarted daemon must not wait for its old connections' TIME_WAIT to end.
            set_option(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        }
        if reuse_port {
            set_option(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        }
        if packet_info {
            match family {
                libc::AF_INET => set_option(raw, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?,
                _ => set_option(raw, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?,
            }
        }
        if kind == libc::SOCK_DGRAM {
            // Best effort: the kernel caps it at net.core.rmem_max.
            let _ = set_option(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, UDP_RECEIVE_BUFFER);
        }
        let (storage, len) = sockaddr(address);
        if libc::bind(raw, &storage as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(io::Error::last_os_error());
        }
        if kind == libc::SOCK_STREAM && libc::listen(raw, 128) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

fn set_option(fd: libc::c_int, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its size is passed along.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn sockaddr(address: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage, and both variants fit in it.
    unsafe {
        let mut storage: libc::sockaddr_storage = zeroed();
        let len = match address {
            SocketAddr::V4(a) => {
                let sin = &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in);
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6);
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr.s6_addr = a.ip().octets();
                sin6.sin6_scope_id = a.scope_id();
                size_of::<libc::sockaddr_in6>()
            }
        };
        (storage, len as libc::socklen_t)
    }
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
    /// when the forwarding thread has too much to do.
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

/// The client's address, from the socket address the kernel filled in.
fn peer_address(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: the family says which of the two the storage holds.
    unsafe {
        match i32::from(storage.ss_family) {
            libc::AF_INET => {
                let sin = &*(storage as *const _ as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
            }
            libc::AF_INET6 => {
                let sin6 = &*(storage as *const _ as *const libc::sockaddr_in6);
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                    ip,
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// UDP

/// A control-message buffer, aligned as `cmsghdr` requires.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; 64]);

/// Everything one `recvmmsg`/`sendmmsg` round needs, allocated once per thread. The message
/// headers point into the other vectors, which are never resized.
struct Batch {
    queries: Vec<[u8; MAX_QUERY]>,
    answers: Vec<[u8; MAX_UDP_PAYLOAD as usize]>,
    peers: Vec<libc::sockaddr_storage>,
    recv_control: Vec<Control>,
    send_control: Vec<Control>,
    recv_iov: Vec<libc::iovec>,
    send_iov: Vec<libc::iovec>,
    recv: Vec<libc::mmsghdr>,
    send: Vec<libc::mmsghdr>,
    /// For each answer, the query it answers (for the `log` lines).
    answering: [usize; BATCH],
}

impl Batch {
    fn new() -> Box<Batch> {
        // SAFETY: all-zero is a valid value for these plain C structures.
        let (iov, msg, storage) =
            unsafe { (zeroed::<libc::iovec>(), zeroed::<libc::mmsghdr>(), zeroed::<libc::sockaddr_storage>()) };
        let mut b = Box::new(Batch {
            queries: vec![[0; MAX_QUERY]; BATCH],
            answers: vec![[0; MAX_UDP_PAYLOAD as usize]; BATCH],
            peers: vec![storage; BATCH],
            recv_control: vec![Control([0; 64]); BATCH],
            send_control: vec![Control([0; 64]); BATCH],
            recv_iov: vec![iov; BATCH],
            send_iov: vec![iov; BATCH],
            recv: vec![msg; BATCH],
            send: vec![msg; BATCH],
            answering: [0; BATCH],
        });
        for i in 0..BATCH {
            b.recv_iov[i] = libc::iovec { iov_base: b.queries[i].as_mut_ptr().cast(), iov_len: MAX_QUERY };
            let hdr = &mut b.recv[i].msg_hdr;
            hdr.msg_name = (&mut b.peers[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_iov = &mut b.recv_iov[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = b.recv_control[i].0.as_mut_ptr().cast();
        }
        b
    }
}

/// Where a datagram was sent to, read from its packet-info control message.
#[derive(Clone, Copy)]
enum Destination {
    V4(libc::in_addr),
    V6(libc::in6_addr, u32),
}

pub fn serve_udp(listener: UdpListener, mut view: View) {
    let fd = listener.socket.as_raw_fd();
    let mut b = Batch::new();
    loop {
        for msg in b.recv.iter_mut() {
            msg.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msg.msg_hdr.msg_controllen = if listener.wildcard { size_of::<Control>() } else { 0 } as _;
            msg.msg_hdr.msg_flags = 0;
        }
        // SAFETY: every header points into `b`, which outlives the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                b.recv.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE as _,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            after_failed_wait("receiving DNS queries");
            continue;
        }
        view.refresh();
        // The batch's queries were all read by that one call, and their answers all leave by one.
        let received = Instant::now();
        let context = view.context(Transport::Udp);
        let mut count = 0;
        for i in 0..n as usize {
            let msg = b.recv[i];
            if msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                continue;
            }
            let query = &b.queries[i][..msg.msg_len as usize];
            let destination = if listener.wildcard { destination(&msg.msg_hdr) } else { None };
            let len = match view.count(dns::respond(query, &view.snapshot, context, &mut b.answers[count])) {
                Action::Reply { len, .. } => len,
                Action::Drop => continue,
                Action::Forward { qtype } => {
                    let peer = Peer { address: b.peers[i], len: msg.msg_hdr.msg_namelen, destination };
                    let client = peer_address(&peer.address);
                    let socket = Arc::clone(&listener.socket);
                    let deliver: Delivery = Box::new(move |answer| peer.send(&socket, answer));
                    let origin = Origin { client, transport: Transport::Udp, received };
                    match view.forward(query, qtype, origin, deliver, &mut b.answers[count]) {
                        Some(len) => len,
                        None => continue,
                    }
                }
            };
            b.send_iov[count] = libc::iovec { iov_base: b.answers[count].as_mut_ptr().cast(), iov_len: len };
            let hdr = &mut b.send[count].msg_hdr;
            // The peer's address, where the kernel put it for the query.
            hdr.msg_name = msg.msg_hdr.msg_name;
            hdr.msg_namelen = msg.msg_hdr.msg_namelen;
            hdr.msg_iov = &mut b.send_iov[count];
            hdr.msg_iovlen = 1;
            hdr.msg_control = b.send_control[count].0.as_mut_ptr().cast();
            // SAFETY: the control buffer is ours and large enough for one packet-info message.
            unsafe { set_source(hdr, destination) };
            b.answering[count] = i;
            count += 1;
        }
        send_all(fd, &mut b.send[..count]);
        let took = received.elapsed();
        view.counters.sent(took, count as u64);
        if view.log {
            log_batch(&b, count, took);
        }
    }
}

/// The `log` lines for the first `count` answers of a batch, once they are sent.
fn log_batch(b: &Batch, count: usize, took: Duration) {
    for (k, &i) in b.answering[..count].iter().enumerate() {
        let query = &b.queries[i][..b.recv[i].msg_len as usize];
        let answer = &b.answers[k][..b.send_iov[k].iov_len];
        querylog::log(peer_address(&b.peers[i]), Transport::Udp, query, answer, took);
    }
}

/// After a blocking call failed: an interruption is retried at once; anything else is logged and
/// retried after a pause, so that a persistent error cannot spin the thread.
fn after_failed_wait(what: &str) {
    let e = io::Error::last_os_error();
    if e.kind() != io::ErrorKind::Interrupted {
        log::warn!("{what}: {e}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A UDP client, remembered so that an answer can follow later from another thread.
struct Peer {
    address: libc::sockaddr_storage,
    len: libc::socklen_t,
    destination: Option<Destination>,
}

impl Peer {
    /// Sends one datagram to the peer, from the address its question reached.
    fn send(mut self, socket: &UdpSocket, answer: &[u8]) {
        let mut control = Control([0; 64]);
        let mut iov = libc::iovec { iov_base: answer.as_ptr() as *mut libc::c_void, iov_len: answer.len() };
        // SAFETY: all-zero is a valid msghdr; every pointer set below outlives the call.
        let mut hdr: libc::msghdr = unsafe { zeroed() };
        hdr.msg_name = (&mut self.address as *mut libc::sockaddr_storage).cast();
        hdr.msg_namelen = self.len;
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = control.0.as_mut_ptr().cast();
        // SAFETY: the control buffer is ours and large enough for one packet-info message.
        unsafe { set_source(&mut hdr, self.destination) };
        // SAFETY: the header and what it points to are valid for the call.
        if unsafe { libc::sendmsg(socket.as_raw_fd(), &hdr, 0) } < 0 {
            log::trace!("sending a forwarded answer: {}", io::Error::last_os_error());
        }
    }
}

/// Sends every message; one that fails (a peer that cannot be reached, say) is skipped.
fn send_all(fd: libc::c_int, msgs: &mut [libc::mmsghdr]) {
    let mut sent = 0;
    while sent < msgs.len() {
        let rest = &mut msgs[sent..];
        // SAFETY: the headers point into the caller's batch, alive for the call.
        let r = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as libc::c_uint, 0) };
        if r > 0 {
            sent += r as usize;
            continue;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            log::trace!("sending a DNS answer: {e}");
            sent += 1;
        }
    }
}

fn destination(hdr: &libc::msghdr) -> Option<Destination> {
    // SAFETY: the kernel filled the control buffer; the CMSG macros stay within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while let Some(c) = cmsg.as_ref() {
            match (c.cmsg_level, c.cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::in_pktinfo);
                    // The local address the query reached, which for broadcasts differs from the
                    // packet's destination and is the one an answer can leave from.
                    return Some(Destination::V4(info.ipi_spec_dst));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::in6_pktinfo);
                    return Some(Destination::V6(info.ipi6_addr, info.ipi6_ifindex));
                }
                _ => cmsg = libc::CMSG_NXTHDR(hdr, c),
            }
        }
    }
    None
}

/// Writes a packet-info control message that makes the answer leave from `destination`, or no
/// control message at all.
///
/// SAFETY: `hdr.msg_control` must point to a `Control` buffer.
unsafe fn set_source(hdr: &mut libc::msghdr, destination: Option<Destination>) {
    let Some(destination) = destination else {
        hdr.msg_control = std::ptr::null_mut();
        hdr.msg_controllen = 0;
        return;
    };
    let (level, kind, size) = match destination {
        Destination::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO, size_of::<libc::in_pktinfo>()),
        Destination::V6(..) => (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, size_of::<libc::in6_pktinfo>()),
    };
    hdr.msg_controllen = libc::CMSG_SPACE(size as u32) as _;
    let Some(c) = libc::CMSG_FIRSTHDR(hdr).as_mut() else { return };
    c.cmsg_level = level;
    c.cmsg_type = kind;
    c.cmsg_len = libc::CMSG_LEN(size as u32) as _;
    let data = libc::CMSG_DATA(c);
    match destination {
        Destination::V4(addr) => {
            let info = libc::in_pktinfo { ipi_ifindex: 0, ipi_spec_dst: addr, ipi_addr: libc::in_addr { s_addr: 0 } };
            std::ptr::write_unaligned(data as *mut libc::in_pktinfo, info);
        }
        Destination::V6(addr, ifindex) => {
            let info = libc::in6_pktinfo { ipi6_addr: addr, ipi6_ifindex: ifindex };
            std::ptr::write_unaligned(data as *mut libc::in6_pktinfo, info);
        }
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
/// holds this and one more answer (64 KiB at most), not an answer for every query it sent.
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

    /// What to wait for: room to write, or more to read; nothing while it only waits for
    /// forwarded answers (a closed socket would wake `poll` at once, forever).
    fn events(&self) -> libc::c_short {
        match (self.pending(), self.done) {
            (true, _) => libc::POLLOUT,
            (false, false) => libc::POLLIN,
            (false, true) => 0,
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
        fds.extend(connections.iter().map(|c| pollfd(c.stream.as_raw_fd(), c.events())));
        // Forwarded answers come by channel; the forwarding thread rings this when one does.
        fds.push(pollfd(forwarded.wake.fd(), libc::POLLIN));
        let next = connections.iter().map(|c| c.deadline).chain([accept_again]).filter(|&d| d > now).min();
        let timeout = next.map_or(Duration::from_secs(1), |d| d - now).min(Duration::from_secs(1));
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let r =
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout.as_millis() as libc::c_int + 1) };
        if r < 0 {
            after_failed_wait("waiting for TCP connections");
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
        let inputs = Inputs { roles: &roles, ttl: 5, revision: 1, own_name: None, members: &[members] };
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
        set_option(client.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 128 * 1024).unwrap();
        set_option(server.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, 128 * 1024).unwrap();
        server.set_nonblocking(true).unwrap();
        (client, Connection::new(1, server))
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
        eprintln!(
            "done {} out {} written {} input {} received {}",
            c.done,
            c.output.len(),
            c.written,
            c.input.len(),
            received.len()
        );
        // All of them, in order.
        assert_eq!(ids, (0..200).collect::<Vec<u16>>());
    }
}
