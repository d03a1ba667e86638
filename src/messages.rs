//! The messages threads send each other: the only way they share anything.

use std::sync::Arc;
use std::time::Instant;

use crate::etcd::WatchEvent;
use crate::zone::Snapshot;

/// From the etcd thread to each answering thread.
pub enum Update {
    /// The zone as last read from etcd; replaces the previous one whole.
    Snapshot(Arc<Snapshot>),
    /// This node holds its name until then unless the lease is renewed; `None` when it holds none.
    /// Answering threads stop naming themselves in `id.server.` once it passes, even if the etcd
    /// thread is late to notice (a process paused past its lease, say).
    HeldUntil(Option<Instant>),
}

/// From the main thread to the etcd thread.
pub enum Command {
    /// Release the name and stop.
    Shutdown,
}

/// From any thread to the main thread.
#[derive(Debug)]
pub enum Event {
    /// SIGTERM or SIGINT arrived.
    Signal(i32),
    /// The etcd thread cannot go on (every ID is taken, say); it has cleaned up after itself.
    Fatal(String),
    /// The etcd thread released the name and stopped.
    Released,
    /// A thread ended, normally or by a panic; the daemon cannot work without it.
    ThreadExited(String),
}

/// From the watch thread to the etcd thread.
pub enum Watched {
    /// Changes to the member range, in revision order.
    Changes(Vec<WatchEvent>),
    /// The watch missed changes (etcd compacted its history): read the members again.
    Resync,
}
