//! The messages threads send each other: the only way they share anything.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::config::Follow;
use crate::etcd::WatchEvent;
use crate::zone::Snapshot;

/// From the etcd thread to each answering thread: the whole state they answer from, replaced at
/// once. Sent through a `Latest`, so a thread that is slow to look (an idle UDP socket) finds only
/// the newest one, never a backlog.
#[derive(Clone)]
pub struct Update {
    /// The zone as last read from etcd.
    pub snapshot: Arc<Snapshot>,
    /// This node holds its name until then (`clock::boottime`) unless the lease is renewed; `None`
    /// when it holds none. Answering threads stop naming themselves in `id.server.` once it passes,
    /// even if the etcd thread is late to notice (a process paused past its lease, say).
    pub held_until: Option<Duration>,
    /// Whether to log a line per answered query (the `log` directive). It travels with the
    /// snapshot so that each answering thread reads only what it owns; to change it at run time,
    /// the etcd thread sets it in its state and sends the state again.
    pub log: bool,
}

/// The sending end of a channel that holds at most one message, the newest: sending replaces
/// whatever the receiver has not taken yet.
pub struct Latest<T> {
    tx: Sender<T>,
    /// Our own handle on the queue, to take out what the receiver left there.
    stale: Receiver<T>,
}

impl<T> Latest<T> {
    pub fn channel() -> (Latest<T>, Receiver<T>) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        (Latest { tx, stale: rx.clone() }, rx)
    }

    pub fn send(&self, value: T) {
        while self.stale.try_recv().is_ok() {}
        // Only we send, so after the drain there is room; a receiver that is gone is no error here.
        let _ = self.tx.try_send(value);
    }
}

/// From the main thread to the etcd thread.
pub enum Command {
    /// Release the name and stop.
    Shutdown,
    /// A reload changed how members are followed or answered.
    Retune(Tuning),
}

/// The etcd thread's settings that a reload may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// TTL of DNS answers.
    pub ttl: u32,
    /// How many members the zone's NS set names.
    pub nameservers: u32,
    /// Watch, poll, or both.
    pub follow: Follow,
    /// How often etcd's member list is read (`autosync`).
    pub autosync: Option<Duration>,
    /// A line per answered query (`log`), which travels to the answering threads in `Update`.
    pub log: bool,
}

/// From any thread to the main thread.
#[derive(Debug)]
pub enum Event {
    /// A signal arrived: SIGTERM, SIGINT or SIGQUIT to stop, SIGHUP or SIGUSR1 to reload.
    Signal(i32),
    /// The etcd thread cannot go on (every ID is taken, say); it has cleaned up after itself.
    Fatal(String),
    /// The etcd thread released the name and stopped.
    Released,
    /// The lease the etcd thread holds now, so that the main thread can still revoke it if the
    /// etcd thread cannot (stuck on a slow etcd at shutdown, or gone).
    Lease(Option<i64>),
    /// A thread ended, normally or by a panic; the daemon cannot work without it.
    ThreadExited(String),
}

/// From a watch thread to its owner.
pub enum Watched {
    /// Changes to the watched ranges, each range's in revision order.
    Changes(Vec<WatchEvent>),
    /// etcd sent every change to the `range`-th range up to `revision`: a progress notification.
    Progress { range: usize, revision: i64 },
    /// The stream is open at this endpoint (again, after a break: it resumed where it left off).
    Opened(String),
    /// The watch missed changes (etcd compacted its history): read the members again.
    Resync,
    /// The watch thread ended, and why (it panicked, say): its last message.
    Ended(String),
}

/// Wakes a thread that sleeps in `poll(2)` when a message is queued for it: an eventfd it polls
/// along with its sockets; cleared before the queue is read.
pub type Wake = crate::sys::EventFd;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_keeps_only_the_newest() {
        let (latest, rx) = Latest::channel();
        for i in 0..5 {
            latest.send(i);
        }
        assert_eq!(rx.try_recv(), Ok(4));
        assert!(rx.try_recv().is_err());
        latest.send(5);
        assert_eq!(rx.try_recv(), Ok(5));
        drop(rx);
        latest.send(6);
    }
}
