//! Boot time: a clock that keeps counting while the machine is suspended.
//!
//! `Instant` (CLOCK_MONOTONIC) stops during a suspend, and so a node resumed after its lease ran
//! out in etcd would go on believing it holds its name. Deadlines that decide whether this node
//! names itself are kept on CLOCK_BOOTTIME instead.

use std::time::Duration;

/// Time since boot, suspended time included.
pub fn boottime() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec we pass; CLOCK_BOOTTIME exists since Linux 2.6.39.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boottime_moves_forward() {
        let a = boottime();
        std::thread::sleep(Duration::from_millis(5));
        let b = boottime();
        assert!(b >= a + Duration::from_millis(5) && a > Duration::ZERO);
    }
}
