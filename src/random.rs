//! The one source of random numbers: forwarded questions' IDs and source sockets, which an
//! off-path attacker must not guess cheaply, and the jitter of etcd retries, which keeps a
//! cluster's nodes out of step.
//!
//! xorshift64* seeded by the kernel: a system call per generator, none per number. Not a
//! cryptographic generator (whoever saw many of its numbers could work out the next ones), but
//! the IDs and ports it picks are seen only by the upstream servers asked and whoever is on the
//! path to them, who need not guess.

/// xorshift64* (Vigna): its high bits are the good ones, which `below` uses.
pub struct Random(u64);

impl Random {
    /// Seeded from the kernel's random pool, or, if that cannot be read (not yet initialised at
    /// early boot: the call does not wait for it), from the clock and the process.
    pub fn new() -> Random {
        Random::from_seed(crate::sys::random_seed().unwrap_or_else(clock_seed))
    }

    /// Any seed will do: zero, the one state xorshift never leaves, is replaced. A fixed seed
    /// repeats its numbers: tests that want random inputs but the same ones each run use one.
    pub fn from_seed(seed: u64) -> Random {
        Random(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0), from the high bits.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

/// Different for every process and every call: nanoseconds, the process ID, and where this
/// call's stack lies (randomised by the kernel).
fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let stack = &nanos as *const u64 as u64;
    nanos ^ stack.rotate_left(32) ^ u64::from(std::process::id()).rotate_left(48)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_stay_below_their_bound() {
        let mut random = Random::new();
        for n in [0, 1, 2, 3, 8, 1000, 1 << 16, usize::MAX] {
            for _ in 0..1000 {
                let x = random.below(n);
                assert!(x < n.max(1), "{x} for {n}");
            }
        }
    }

    #[test]
    fn every_seed_gives_numbers_that_vary() {
        for seed in [0, 1, u64::MAX, crate::sys::random_seed().unwrap(), clock_seed()] {
            let mut random = Random::from_seed(seed);
            let ids: std::collections::HashSet<usize> = (0..100).map(|_| random.below(1 << 16)).collect();
            // 100 draws of 65536 values: a few may repeat, far from all.
            assert!(ids.len() > 90, "seed {seed:#x}: {} different", ids.len());
        }
    }

    #[test]
    fn generators_are_seeded_apart() {
        assert_ne!(Random::new().next(), Random::new().next());
    }
}
