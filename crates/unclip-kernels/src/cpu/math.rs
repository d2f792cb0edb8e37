//! Elementwise math in branch-free form, so that the loops calling it vectorise.
//!
//! `f32::exp` is a libm call per element (not vectorised); the softmax and SiLU of a UNet step
//! evaluate it tens of millions of times. [`exp`] is a Cody–Waite range reduction plus a
//! degree-6 Taylor polynomial: relative error below 3·10⁻⁷ over the clamped range, plain
//! multiplies and adds only (no fused multiply-add), so it gives the same bits on every x86-64.

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in a part with few mantissa bits and the rest (Cody–Waite).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 · 2²³: adding it rounds a float of magnitude < 2²² to an integer.
const ROUND: f32 = 12_582_912.0;

/// `eˣ` for `x` clamped to `[-87, 88]` (outside, the clamped value's exponential: ≈ 1.6·10⁻³⁸
/// and ≈ 1.65·10³⁸, never 0 or ∞).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2ⁿ from the integer n in [-126, 127].
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * two_n
}

/// The logistic function `1 / (1 + e⁻ˣ)`.
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_libm() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1e4) > 0.0 && exp(1e4).is_finite());
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
        assert!(sigmoid(-200.0) >= 0.0 && sigmoid(200.0) <= 1.0);
    }
}
