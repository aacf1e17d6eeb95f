//! The one source of randomness of the chaos oracle: a seed, read from `FERRY_CHAOS_SEED` or
//! fixed by the test, and a small deterministic generator drawn from it.
//!
//! Invariants: the same seed gives the same sequence on every machine and Rust version (SplitMix64,
//! no dependency whose algorithm could change), so a printed seed replays a run's workload and
//! fault schedule exactly; timings (how fast processes answer) are the only thing a replay does
//! not reproduce. Independent streams ([`Rng::fork`]) keep the workload of one region from shifting
//! when another region's draws change.

/// The environment variable that overrides a scenario's fixed seed (decimal or `0x…` hex).
pub const SEED_ENV: &str = "FERRY_CHAOS_SEED";

/// The environment variable that overrides a scenario's workload duration, in seconds.
pub const DURATION_ENV: &str = "FERRY_CHAOS_DURATION_SECS";

/// `FERRY_CHAOS_SEED` when set (an error when it does not parse), else `fixed`.
pub fn seed_from_env(fixed: u64) -> anyhow::Result<u64> {
    match std::env::var(SEED_ENV) {
        Ok(text) => parse_seed(&text)
            .ok_or_else(|| anyhow::anyhow!("{SEED_ENV}={text:?} is not a u64 (decimal or 0x…)")),
        Err(_) => Ok(fixed),
    }
}

/// `FERRY_CHAOS_DURATION_SECS` when set (an error when it does not parse), else `fixed`.
pub fn duration_from_env(fixed: std::time::Duration) -> anyhow::Result<std::time::Duration> {
    match std::env::var(DURATION_ENV) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map(std::time::Duration::from_secs)
            .map_err(|_| anyhow::anyhow!("{DURATION_ENV}={text:?} is not a number of seconds")),
        Err(_) => Ok(fixed),
    }
}

fn parse_seed(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16).ok(),
        None => text.replace('_', "").parse().ok(),
    }
}

/// SplitMix64: tiny, fast, and fully specified by its constants.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// An independent stream named by `stream` (e.g. a region's index), not advancing `self`.
    pub fn fork(&self, stream: u64) -> Rng {
        let mut r = Rng::new(self.state ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant at these sizes).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// `true` with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// `items` in a seeded order (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_sequence_and_forks_are_independent_of_the_parent() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        // SplitMix64's published first output for seed 0.
        assert_eq!(Rng::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
        let parent = Rng::new(7);
        assert_eq!(parent.fork(1).next_u64(), parent.fork(1).next_u64());
        assert_ne!(parent.fork(1).next_u64(), parent.fork(2).next_u64());
    }

    #[test]
    fn seeds_parse_as_decimal_or_hex_with_underscores() {
        assert_eq!(parse_seed("12_345"), Some(12345));
        assert_eq!(parse_seed(" 0x5eed_0001 "), Some(0x5eed_0001));
        assert_eq!(parse_seed("seed"), None);
    }

    #[test]
    fn between_stays_in_its_bounds() {
        let mut r = Rng::new(3);
        for _ in 0..1000 {
            let v = r.between(5, 9);
            assert!((5..=9).contains(&v), "{v}");
        }
    }
}
