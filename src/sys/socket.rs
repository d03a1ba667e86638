//! Sockets as the answering threads need them: options std does not offer, and UDP in batches
//! (`recvmmsg`/`sendmmsg`) with each answer leaving from the address its query reached
//! (`IP_PKTINFO`, `IPV6_PKTINFO`).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// What a socket is for, and the options that go with it.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// A TCP listener (with `SO_REUSEADDR`, so a restart need not wait for TIME_WAIT).
    Listener,
    /// A UDP socket: `shared` by several threads on one address (`SO_REUSEPORT`); on a wildcard
    /// address it reports where each datagram arrived (packet info).
    Datagram { shared: bool, wildcard: bool, receive_buffer: libc::c_int },
}

/// A socket bound to `address`, listening if it is a TCP listener.
pub fn bound(address: SocketAddr, kind: Kind) -> io::Result<OwnedFd> {
    let family = if address.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let type_ = match kind {
        Kind::Listener => libc::SOCK_STREAM,
        Kind::Datagram { .. } => libc::SOCK_DGRAM,
    };
    // SAFETY: socket returns a new descriptor, owned from here on, or -1.
    let fd = unsafe { libc::socket(family, type_ | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = fd.as_raw_fd();
    if family == libc::AF_INET6 {
        // IPv4 gets a socket of its own, so the IPv6 one must not claim IPv4 as well.
        set_option(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    match kind {
        Kind::Listener => set_option(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?,
        Kind::Datagram { shared, wildcard, receive_buffer } => {
            if shared {
                set_option(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
            }
            if wildcard {
                match family {
                    libc::AF_INET => set_option(raw, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?,
                    _ => set_option(raw, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?,
                }
            }
            // Best effort: the kernel caps it at net.core.rmem_max.
            let _ = set_option(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, receive_buffer);
        }
    }
    let (storage, len) = sockaddr(address);
    // SAFETY: `storage` holds a sockaddr of `len` bytes, alive for the call.
    if unsafe { libc::bind(raw, (&storage as *const libc::sockaddr_storage).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a plain call on a descriptor we own.
    if matches!(kind, Kind::Listener) && unsafe { libc::listen(raw, 128) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

pub fn set_option(fd: libc::c_int, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    let size = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` outlives the call and its size is passed along.
    let r = unsafe { libc::setsockopt(fd, level, name, (&value as *const libc::c_int).cast(), size) };
    match r {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

fn sockaddr(address: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let at = &mut storage as *mut libc::sockaddr_storage;
    let len = match address {
        SocketAddr::V4(a) => {
            // SAFETY: a sockaddr_storage is large enough and aligned for every family.
            let sin = unsafe { &mut *at.cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *at.cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The address a `sockaddr_storage` holds.
fn storage_address(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: a sockaddr_storage is large enough for every family, and begins like a sockaddr.
    unsafe { super::socket_address(&*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr>()) }
}

/// A control-message buffer, aligned as `cmsghdr` requires.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; 64]);

/// Where a datagram was sent to, read from its packet-info control message.
#[derive(Clone, Copy)]
enum Destination {
    V4(libc::in_addr),
    V6(libc::in6_addr, u32),
}

/// A UDP client, kept so that an answer can follow later, from another thread.
pub struct Peer {
    address: libc::sockaddr_storage,
    len: libc::socklen_t,
    destination: Option<Destination>,
}

impl Peer {
    pub fn address(&self) -> Option<SocketAddr> {
        storage_address(&self.address)
    }

    /// Sends one datagram to the peer, from the address its question reached.
    pub fn send(mut self, socket: &UdpSocket, answer: &[u8]) -> io::Result<()> {
        let mut control = Control([0; 64]);
        let mut iov = libc::iovec { iov_base: answer.as_ptr() as *mut libc::c_void, iov_len: answer.len() };
        // SAFETY: all-zero is a valid msghdr; every pointer set below outlives the call.
        let mut hdr: libc::msghdr = unsafe { zeroed() };
        hdr.msg_name = (&mut self.address as *mut libc::sockaddr_storage).cast();
        hdr.msg_namelen = self.len;
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        set_source(&mut hdr, &mut control, self.destination);
        // SAFETY: the header and what it points to are valid for the call; the kernel only reads
        // the answer.
        match unsafe { libc::sendmsg(socket.as_raw_fd(), &hdr, 0) } {
            n if n < 0 => Err(io::Error::last_os_error()),
            _ => Ok(()),
        }
    }
}

/// A datagram received, and where its answer goes.
pub struct Datagram<'a, const A: usize> {
    pub query: &'a [u8],
    /// The buffer for its answer, to `queue` it by.
    pub answer: &'a mut [u8; A],
    header: &'a libc::msghdr,
    address: &'a libc::sockaddr_storage,
}

impl<const A: usize> Datagram<'_, A> {
    /// Who sent it, to answer it later.
    pub fn peer(&self) -> Peer {
        Peer { address: *self.address, len: self.header.msg_namelen, destination: destination(self.header) }
    }
}

/// Everything one `recvmmsg`/`sendmmsg` round needs, allocated once per thread: `N` datagrams of
/// up to `Q` bytes in, `N` answers of up to `A` bytes out. The message headers point into the
/// other vectors' heap buffers, which are never resized, so the pointers stay valid wherever the
/// batch itself goes. Boxed: it is a few hundred kilobytes.
pub struct Batch<const N: usize, const Q: usize, const A: usize> {
    queries: Vec<[u8; Q]>,
    answers: Vec<[u8; A]>,
    peers: Vec<libc::sockaddr_storage>,
    recv_control: Vec<Control>,
    send_control: Vec<Control>,
    recv_iov: Vec<libc::iovec>,
    send_iov: Vec<libc::iovec>,
    recv: Vec<libc::mmsghdr>,
    send: Vec<libc::mmsghdr>,
    /// How many datagrams the last receive read, and how many answers are queued.
    received: usize,
    queued: usize,
    /// For each queued answer, the datagram it answers.
    answering: [usize; N],
}

impl<const N: usize, const Q: usize, const A: usize> Batch<N, Q, A> {
    pub fn new() -> Box<Self> {
        // SAFETY: all-zero is a valid value for these plain C structures.
        let (iov, msg, storage) =
            unsafe { (zeroed::<libc::iovec>(), zeroed::<libc::mmsghdr>(), zeroed::<libc::sockaddr_storage>()) };
        let mut b = Box::new(Batch {
            queries: vec![[0; Q]; N],
            answers: vec![[0; A]; N],
            peers: vec![storage; N],
            recv_control: vec![Control([0; 64]); N],
            send_control: vec![Control([0; 64]); N],
            recv_iov: vec![iov; N],
            send_iov: vec![iov; N],
            recv: vec![msg; N],
            send: vec![msg; N],
            received: 0,
            queued: 0,
            answering: [0; N],
        });
        for i in 0..N {
            b.recv_iov[i] = libc::iovec { iov_base: b.queries[i].as_mut_ptr().cast(), iov_len: Q };
            let hdr = &mut b.recv[i].msg_hdr;
            hdr.msg_name = (&mut b.peers[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_iov = &mut b.recv_iov[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = b.recv_control[i].0.as_mut_ptr().cast();
        }
        b
    }

    /// Waits for datagrams and reads as many as are there, up to `N`; with `packet_info`, where
    /// each arrived too. The count read.
    pub fn receive(&mut self, socket: &UdpSocket, packet_info: bool) -> io::Result<usize> {
        self.received = 0;
        self.queued = 0;
        for msg in self.recv.iter_mut() {
            msg.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msg.msg_hdr.msg_controllen = if packet_info { size_of::<Control>() } else { 0 } as _;
            msg.msg_hdr.msg_flags = 0;
        }
        let flags = libc::MSG_WAITFORONE as _;
        // SAFETY: every header points into this batch, which outlives the call.
        let n =
            unsafe { libc::recvmmsg(socket.as_raw_fd(), self.recv.as_mut_ptr(), N as _, flags, std::ptr::null_mut()) };
        self.received = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        Ok(self.received)
    }

    /// Datagram `i` of those received, unless the kernel cut it short, with the buffer for the
    /// next answer.
    pub fn datagram(&mut self, i: usize) -> Option<Datagram<'_, A>> {
        let msg = self.recv.get(i).filter(|_| i < self.received)?;
        if msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        Some(Datagram {
            query: &self.queries[i][..msg.msg_len as usize],
            answer: self.answers.get_mut(self.queued)?,
            header: &msg.msg_hdr,
            address: &self.peers[i],
        })
    }

    /// Queues the first `len` bytes of the answer buffer `datagram(i)` gave as the answer to it, to go back to its sender from where it arrived.
    pub fn queue(&mut self, i: usize, len: usize) {
        let k = self.queued;
        if k >= N || i >= self.received {
            return;
        }
        self.send_iov[k] = libc::iovec { iov_base: self.answers[k].as_mut_ptr().cast(), iov_len: len.min(A) };
        let from = &self.recv[i].msg_hdr;
        let (name, namelen, destination) = (from.msg_name, from.msg_namelen, destination(from));
        let hdr = &mut self.send[k].msg_hdr;
        // The peer's address, where the kernel put it for the query.
        hdr.msg_name = name;
        hdr.msg_namelen = namelen;
        hdr.msg_iov = &mut self.send_iov[k];
        hdr.msg_iovlen = 1;
        set_source(hdr, &mut self.send_control[k], destination);
        self.answering[k] = i;
        self.queued += 1;
    }

    /// Sends every queued answer; one that fails (a peer that cannot be reached, say) is skipped.
    /// The count queued.
    pub fn send(&mut self, socket: &UdpSocket) -> usize {
        let mut sent = 0;
        while sent < self.queued {
            let rest = &mut self.send[sent..self.queued];
            // SAFETY: the headers point into this batch, alive for the call.
            let r = unsafe { libc::sendmmsg(socket.as_raw_fd(), rest.as_mut_ptr(), rest.len() as libc::c_uint, 0) };
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
        self.queued
    }

    /// The queued answers: each one's query, answer and client.
    pub fn exchanges(&self) -> impl Iterator<Item = (&[u8], &[u8], Option<SocketAddr>)> + '_ {
        self.answering[..self.queued].iter().enumerate().map(|(k, &i)| {
            let query = &self.queries[i][..self.recv[i].msg_len as usize];
            (query, &self.answers[k][..self.send_iov[k].iov_len], storage_address(&self.peers[i]))
        })
    }
}

/// Where a received datagram was sent to. `hdr` must be one `recvmmsg` filled (its control
/// buffer and length are the kernel's), as every caller here passes: a header of the last receive.
fn destination(hdr: &libc::msghdr) -> Option<Destination> {
    if hdr.msg_controllen == 0 {
        return None;
    }
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

/// Points `hdr` at a packet-info control message in `control` that makes the answer leave from
/// `destination`, or at no control message at all.
fn set_source(hdr: &mut libc::msghdr, control: &mut Control, destination: Option<Destination>) {
    let Some(destination) = destination else {
        hdr.msg_control = std::ptr::null_mut();
        hdr.msg_controllen = 0;
        return;
    };
    let (level, kind, size) = match destination {
        Destination::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO, size_of::<libc::in_pktinfo>()),
        Destination::V6(..) => (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, size_of::<libc::in6_pktinfo>()),
    };
    hdr.msg_control = control.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size; one packet-info message fits in a `Control`, and
    // the CMSG macros stay within the msg_controllen just set, in a buffer aligned for cmsghdr.
    unsafe {
        hdr.msg_controllen = libc::CMSG_SPACE(size as u32) as _;
        let Some(c) = libc::CMSG_FIRSTHDR(hdr).as_mut() else { return };
        c.cmsg_level = level;
        c.cmsg_type = kind;
        c.cmsg_len = libc::CMSG_LEN(size as u32) as _;
        let data = libc::CMSG_DATA(c);
        match destination {
            Destination::V4(addr) => {
                let info =
                    libc::in_pktinfo { ipi_ifindex: 0, ipi_spec_dst: addr, ipi_addr: libc::in_addr { s_addr: 0 } };
                std::ptr::write_unaligned(data as *mut libc::in_pktinfo, info);
            }
            Destination::V6(addr, ifindex) => {
                let info = libc::in6_pktinfo { ipi6_addr: addr, ipi6_ifindex: ifindex };
                std::ptr::write_unaligned(data as *mut libc::in6_pktinfo, info);
            }
        }
    }
}
