//! Boot time: a clock that keeps counting while the machine is suspended.
//!
//! `Instant` (CLOCK_MONOTONIC) stops during a suspend, and so a node resumed after its lease ran
//! out in etcd would go on believing it holds its name. Deadlines that decide whether this node
//! names itself are kept on CLOCK_BOOTTIME instead.

pub use crate::sys::boottime;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn boottime_moves_forward() {
        let a = boottime();
        std::thread::sleep(Duration::from_millis(5));
        let b = boottime();
        assert!(b >= a + Duration::from_millis(5) && a > Duration::ZERO);
    }
}
