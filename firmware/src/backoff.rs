//! Capped exponential backoff with jitter.
//!
//! Retry `n` (0-based) waits a random time in `[d/2, d]` where
//! `d = min(cap, base · 2ⁿ)` ("equal jitter"): a fleet that lost its network
//! at the same instant does not come back at the same instant, and every
//! board still retries at least every `cap / 2 … cap`.

/// First retry delay, in milliseconds.
pub const BASE_MS: u64 = 1_000;
/// Longest delay between two retries, in milliseconds.
pub const CAP_MS: u64 = 60_000;
/// Longest a rate limit may hold the board (GitHub resets hourly).
pub const RATE_LIMIT_CAP_MS: u64 = 3_600_000;

/// A deterministic random source seeded by the caller (xorshift64*): the core
/// owns no entropy, so the same seed gives the same jitter and the same trace.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is replaced, xorshift cannot leave 0).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..=max`.
    pub fn below_or_equal(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            self.next_u64()
        } else {
            self.next_u64() % (max + 1)
        }
    }
}

/// The delay before retry number `attempt` (0-based).
pub fn delay_ms(attempt: u32, rng: &mut Rng) -> u64 {
    let full = BASE_MS.saturating_mul(1u64 << attempt.min(20)).min(CAP_MS);
    full / 2 + rng.below_or_equal(full / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_up_to_the_cap_with_jitter() {
        let mut rng = Rng::new(7);
        for attempt in 0..40 {
            let full = (1000u64 << attempt.min(20)).min(CAP_MS);
            for _ in 0..50 {
                let d = delay_ms(attempt, &mut rng);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d}");
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_delays() {
        let a: std::vec::Vec<u64> = (0..10)
            .map({
                let mut r = Rng::new(42);
                move |n| delay_ms(n, &mut r)
            })
            .collect();
        let b: std::vec::Vec<u64> = (0..10)
            .map({
                let mut r = Rng::new(42);
                move |n| delay_ms(n, &mut r)
            })
            .collect();
        assert_eq!(a, b);
        let c: std::vec::Vec<u64> = (0..10)
            .map({
                let mut r = Rng::new(43);
                move |n| delay_ms(n, &mut r)
            })
            .collect();
        assert_ne!(a, c);
    }
}
