//! Counter-based, keyed random numbers for everything unclip does at random.
//!
//! A stream is addressed by `(seed, purpose, step, index)`: the same key always yields the same
//! numbers, whatever thread, worker, rank or process asks for them. That is what makes data
//! loading independent of worker count and world size, and training exactly resumable: nothing
//! random carries hidden state that would have to be saved. burn's global RNG is never used.
//!
//! The key is hashed into a ChaCha8 seed; ChaCha is a counter-mode cipher, so streams for
//! different keys are independent for all practical purposes.
//!
//! Place in the pipeline (data → embed → models → train / infer → eval → cli): a leaf under
//! every step that draws a random number.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use rand;

/// A random stream addressed by its key. Implements [`rand::RngCore`], so `rand::Rng`'s methods
/// (`random_range`, `random_bool`, `shuffle` via `rand::seq`) work on it.
#[derive(Clone, Debug)]
pub struct KeyedRng(ChaCha8Rng);

/// Stable 64-bit FNV-1a hash of a purpose label (stable across platforms and releases, unlike
/// `std::hash`).
pub const fn purpose_id(purpose: &str) -> u64 {
    let bytes = purpose.as_bytes();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

impl KeyedRng {
    /// The stream for `(seed, purpose, step, index)`. `step` is whatever coarse counter the caller
    /// has (training step, epoch); `index` the fine one (global sample index, position).
    pub fn new(seed: u64, purpose: &str, step: u64, index: u64) -> Self {
        let mut key = [0u8; 32];
        key[0..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&purpose_id(purpose).to_le_bytes());
        key[16..24].copy_from_slice(&step.to_le_bytes());
        key[24..32].copy_from_slice(&index.to_le_bytes());
        Self(ChaCha8Rng::from_seed(key))
    }

    /// Uniform in `[0, 1)` with 24 random bits.
    pub fn uniform_f32(&mut self) -> f32 {
        (self.0.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform_f64(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// Uniform integer in `[0, n)`; `n` must be > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.random_range(0..n)
    }

    /// True with probability `p`.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        p > 0.0 && (p >= 1.0 || self.uniform_f64() < p)
    }

    /// One standard normal sample (Box–Muller on 53-bit uniforms; the pair's second value is
    /// dropped so each call consumes a fixed amount of the stream).
    pub fn normal_f64(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform_f64(); // (0, 1]
        let u2 = self.uniform_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Fill `out` with standard normal samples, using both Box–Muller outputs.
    pub fn fill_normal_f32(&mut self, out: &mut [f32]) {
        let mut chunks = out.chunks_exact_mut(2);
        for pair in &mut chunks {
            let u1 = 1.0 - self.uniform_f64();
            let u2 = self.uniform_f64();
            let r = (-2.0 * u1.ln()).sqrt();
            let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
            pair[0] = (r * c) as f32;
            pair[1] = (r * s) as f32;
        }
        if let [last] = chunks.into_remainder() {
            *last = self.normal_f64() as f32;
        }
    }

    /// A Fisher–Yates permutation of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            p.swap(i, j);
        }
        p
    }
}

impl RngCore for KeyedRng {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.0.fill_bytes(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_stream_other_key_other_stream() {
        let a: Vec<u32> = (0..8)
            .map(|_| 0)
            .scan(KeyedRng::new(1, "x", 2, 3), |r, _| Some(r.next_u32()))
            .collect();
        let b: Vec<u32> = (0..8)
            .map(|_| 0)
            .scan(KeyedRng::new(1, "x", 2, 3), |r, _| Some(r.next_u32()))
            .collect();
        assert_eq!(a, b);
        for other in [
            KeyedRng::new(2, "x", 2, 3),
            KeyedRng::new(1, "y", 2, 3),
            KeyedRng::new(1, "x", 3, 3),
            KeyedRng::new(1, "x", 2, 4),
        ] {
            let c: Vec<u32> = (0..8)
                .map(|_| 0)
                .scan(other, |r, _| Some(r.next_u32()))
                .collect();
            assert_ne!(a, c);
        }
    }

    #[test]
    fn purpose_hash_is_stable() {
        // FNV-1a test vectors.
        assert_eq!(purpose_id(""), 0xcbf29ce484222325);
        assert_eq!(purpose_id("a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn normal_moments_and_uniform_range() {
        let mut r = KeyedRng::new(7, "moments", 0, 0);
        let mut v = vec![0f32; 200_001];
        r.fill_normal_f32(&mut v);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
        for _ in 0..10_000 {
            let u = r.uniform_f32();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = KeyedRng::new(3, "perm", 0, 0).permutation(100);
        assert_ne!(p, (0..100).collect::<Vec<_>>());
        p.sort();
        assert_eq!(p, (0..100).collect::<Vec<_>>());
    }
}
