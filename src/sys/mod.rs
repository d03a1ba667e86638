//! Every call into the C library that std does not wrap, behind safe functions: the only module
//! allowed `unsafe` (lib.rs denies it everywhere else), with what makes each block sound next to
//! it. Sockets are `socket`'s.

use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

pub mod socket;

/// Time since boot, suspended time included (CLOCK_BOOTTIME).
pub fn boottime() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec we pass; CLOCK_BOOTTIME exists since Linux 2.6.39.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Clock ticks per second and the page size, to read /proc's figures (a C `long`: 32 bits on armv7).
pub fn ticks_and_page_size() -> (libc::c_long, libc::c_long) {
    // SAFETY: sysconf only reads a system constant.
    unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) }
}

/// Gives freed heap pages back to the system: glibc keeps them for reuse unless asked.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Has every thread allocate from one heap. glibc gives each thread that allocates a heap of its
/// own, for speed under contention; but here only the etcd thread allocates much (answering
/// allocates nothing), and an extra heap holds about a megabyte of fragments of its own.
pub fn one_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; called at start, before other threads run.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// A counter a thread polls along with its sockets (eventfd), to be woken when a message waits.
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd returns a new descriptor, owned from here on, or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn notify(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer; a full counter (EAGAIN) still wakes the reader.
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// Clears the counter.
    pub fn clear(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer; EAGAIN when nothing was pending.
        unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
    }

    pub fn fd(&self) -> libc::c_int {
        self.0.as_raw_fd()
    }
}

/// Waits until one of `fds` is ready or `timeout_ms` passes (`poll(2)`; -1 waits for ever); how
/// many are ready.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Eight random bytes from the kernel, without waiting for its pool at early boot.
pub fn random_seed() -> Option<u64> {
    let mut seed = [0u8; 8];
    // SAFETY: writes at most `seed.len()` bytes into a live buffer we own; GRND_NONBLOCK makes it
    // fail (EAGAIN) rather than wait while the pool is not initialised.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), libc::GRND_NONBLOCK) };
    (n == seed.len() as isize).then(|| u64::from_ne_bytes(seed))
}

/// A network interface's address, as `getifaddrs` lists it.
#[derive(Clone, Debug)]
pub struct Interface {
    pub name: String,
    pub up: bool,
    pub loopback: bool,
    pub address: IpAddr,
}

/// Every address of every interface; empty when they cannot be listed.
pub fn interfaces() -> Vec<Interface> {
    let mut list = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we only read and then free exactly once; each
    // entry's address is null or a sockaddr of the size its family says.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return list;
        }
        let mut cursor = head;
        while let Some(ifa) = cursor.as_ref() {
            cursor = ifa.ifa_next;
            let Some(address) = ifa.ifa_addr.as_ref().and_then(|a| socket_address(a)) else { continue };
            list.push(Interface {
                name: CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned(),
                up: ifa.ifa_flags & libc::IFF_UP as u32 != 0,
                loopback: ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0,
                address: address.ip(),
            });
        }
        libc::freeifaddrs(head);
    }
    list
}

/// An IPv4 or IPv6 socket address from the C structure.
///
/// # Safety
/// `addr` must be as large as its family says (a `sockaddr_in` or `sockaddr_in6`), as every
/// sockaddr the kernel fills is.
pub unsafe fn socket_address(addr: &libc::sockaddr) -> Option<SocketAddr> {
    let at = addr as *const libc::sockaddr;
    match i32::from(addr.sa_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage is a sockaddr_in; the caller vouches for its size.
            let sin = unsafe { &*at.cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for a sockaddr_in6.
            let sin6 = unsafe { &*at.cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, port, sin6.sin6_flowinfo, sin6.sin6_scope_id)))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Processes, for `exec`

/// Lets this process learn of its children's ends, whatever disposition of SIGCHLD it inherited.
pub fn default_sigchld() {
    // SAFETY: resets one signal's disposition for this process; no handler of ours is involved.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
}

/// Has the command killed when this process dies, however it dies.
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and changes only the child.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Has the command take the terminal (its process group becomes the foreground one) before it
/// runs, as a shell's foreground job does.
pub fn take_terminal(command: &mut Command) {
    // SAFETY: only async-signal-safe calls, in the child before exec; SIGTTOU would stop a
    // background group that asks for the terminal, so it is ignored meanwhile.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGTTOU, libc::SIG_IGN);
            libc::tcsetpgrp(libc::STDIN_FILENO, libc::getpid());
            libc::signal(libc::SIGTTOU, libc::SIG_DFL);
            Ok(())
        });
    }
}

/// Stops this process until it is continued (SIGSTOP stops every thread).
pub fn stop_self() {
    // SAFETY: raise only sends a signal to this process.
    unsafe { libc::raise(libc::SIGSTOP) };
}

/// Sends `signal` to every process of `group`.
pub fn signal_group(group: libc::pid_t, signal: i32) {
    // SAFETY: kill only sends a signal; the caller keeps the group's leader unreaped, so that the
    // ID names this group and no other.
    unsafe { libc::kill(-group, signal) };
}

/// The foreground process group of the terminal on standard input (-1 without one).
pub fn terminal_group() -> libc::pid_t {
    // SAFETY: a plain query of standard input.
    unsafe { libc::tcgetpgrp(libc::STDIN_FILENO) }
}

/// This process's group.
pub fn own_group() -> libc::pid_t {
    // SAFETY: a plain query that cannot fail.
    unsafe { libc::getpgrp() }
}

/// Whether this process leads its group and standard input is a terminal: a shell's job.
pub fn leads_a_terminal_job() -> bool {
    // SAFETY: plain queries of this process and its standard input.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 && libc::getpgrp() == libc::getpid() }
}

/// Makes `group` the terminal's foreground process group.
pub fn give_terminal(group: libc::pid_t) {
    // SAFETY: as a shell does for its jobs; SIGTTOU would stop a background process group that
    // asks, so it is ignored meanwhile.
    unsafe {
        let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        libc::tcsetpgrp(libc::STDIN_FILENO, group);
        libc::signal(libc::SIGTTOU, old);
    }
}

/// What became of a child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildState {
    Stopped,
    /// It ended (or cannot be waited for); it is left unreaped.
    Ended,
}

/// Waits for the child `pid` to stop or end. A stop's report is taken (or the next wait would
/// find it again); an end is left for `Child::wait` to reap.
pub fn wait_child(pid: libc::pid_t) -> ChildState {
    loop {
        // SAFETY: all-zero is a valid siginfo_t; waitid writes only into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WSTOPPED | libc::WNOWAIT;
        // SAFETY: as above.
        if unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) } != 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return ChildState::Ended;
        }
        if info.si_code != libc::CLD_STOPPED && info.si_code != libc::CLD_TRAPPED {
            return ChildState::Ended;
        }
        // SAFETY: as above.
        let mut taken: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut taken, libc::WSTOPPED | libc::WNOHANG) };
        return ChildState::Stopped;
    }
}
