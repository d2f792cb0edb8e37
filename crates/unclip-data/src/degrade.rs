//! The upsamplers' low-resolution conditioning: the target crop downsampled to the low
//! resolution, corrupted, and upsampled back to the target size. Every random choice comes
//! from the [`KeyedRng`] handed in (the loader passes `ctx.rng(...)` of the sample), so the
//! corruption of a sample is the same whatever the worker count, and a run resumes exactly.
//!
//! Corruptions ([`DegradationKind`]):
//! * `none` — the antialiased downsample only;
//! * `blur` — the unCLIP 64→256 setting: antialiased downsample, then with probability
//!   `prob` a Gaussian blur (kernel 3, σ 0.6 by default) of the low-resolution image;
//! * `bsr` — the unCLIP 256→1024 setting, a BSRGAN-style chain (our own simplified order,
//!   see [`BsrConfig`]): random isotropic/anisotropic Gaussian blurs, random resize modes
//!   without antialiasing (nearest, bilinear, bicubic, area), sometimes through a random
//!   intermediate size, Gaussian noise (per channel or grey), JPEG re-compression at a random
//!   quality (the `image` crate's encoder and decoder).

use std::f64::consts::PI;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use unclip_rng::KeyedRng;

/// An interpolation mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    Nearest,
    Bilinear,
    /// Catmull-Rom (Pillow's and PyTorch's bicubic, a = −0.5).
    Bicubic,
    /// Box average (OpenCV's `INTER_AREA` when shrinking).
    Area,
}

impl ResizeMode {
    const ALL: [ResizeMode; 4] = [
        ResizeMode::Nearest,
        ResizeMode::Bilinear,
        ResizeMode::Bicubic,
        ResizeMode::Area,
    ];
}

/// Resizes `img` to `w`×`h`. With `antialias` the bilinear and bicubic filters widen when
/// shrinking (Pillow); without, they sample a fixed footprint (OpenCV), which aliases.
pub fn resize(
    img: &RgbImage,
    w: u32,
    h: u32,
    mode: ResizeMode,
    antialias: bool,
) -> Result<RgbImage, String> {
    if w == 0 || h == 0 {
        return Err(format!("cannot resize to {w}×{h}"));
    }
    if img.dimensions() == (w, h) {
        return Ok(img.clone());
    }
    let (sw, sh) = img.dimensions();
    let src = ImageRef::new(sw, sh, img.as_raw(), PixelType::U8x3).map_err(|e| e.to_string())?;
    let filter = |f| {
        if antialias {
            ResizeAlg::Convolution(f)
        } else {
            ResizeAlg::Interpolation(f)
        }
    };
    let alg = match mode {
        ResizeMode::Nearest => ResizeAlg::Nearest,
        ResizeMode::Bilinear => filter(FilterType::Bilinear),
        ResizeMode::Bicubic => filter(FilterType::CatmullRom),
        ResizeMode::Area => ResizeAlg::Convolution(FilterType::Box),
    };
    let mut dst = Image::new(w, h, PixelType::U8x3);
    Resizer::new()
        .resize(&src, &mut dst, &ResizeOptions::new().resize_alg(alg))
        .map_err(|e| e.to_string())?;
    RgbImage::from_raw(w, h, dst.into_vec()).ok_or_else(|| "resize output size".into())
}

/// The normalised `size`×`size` Gaussian kernel with standard deviations `sx`, `sy` along
/// axes rotated by `theta` (row-major).
pub fn gaussian_kernel(size: usize, sx: f64, sy: f64, theta: f64) -> Vec<f64> {
    let (c, s) = (theta.cos(), theta.sin());
    // Inverse covariance of R·diag(sx², sy²)·Rᵀ.
    let (a, b) = (1.0 / (sx * sx), 1.0 / (sy * sy));
    let (ixx, ixy, iyy) = (
        a * c * c + b * s * s,
        (a - b) * c * s,
        a * s * s + b * c * c,
    );
    let r = (size / 2) as f64;
    let mut k: Vec<f64> = (0..size * size)
        .map(|i| {
            let (x, y) = ((i % size) as f64 - r, (i / size) as f64 - r);
            (-0.5 * (ixx * x * x + 2.0 * ixy * x * y + iyy * y * y)).exp()
        })
        .collect();
    let sum: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= sum);
    k
}

/// `img` convolved with the `size`×`size` kernel `k` (borders replicated), rounded to 8 bits.
pub fn convolve(img: &RgbImage, k: &[f64], size: usize) -> RgbImage {
    let (w, h) = img.dimensions();
    let (w, h) = (w as i64, h as i64);
    let r = (size / 2) as i64;
    let src = img.as_raw();
    let mut out = vec![0u8; src.len()];
    for y in 0..h {
        for x in 0..w {
            let mut acc = [0f64; 3];
            for ky in 0..size as i64 {
                let sy = (y + ky - r).clamp(0, h - 1);
                for kx in 0..size as i64 {
                    let sx = (x + kx - r).clamp(0, w - 1);
                    let wgt = k[(ky * size as i64 + kx) as usize];
                    let p = ((sy * w + sx) * 3) as usize;
                    for (c, a) in acc.iter_mut().enumerate() {
                        *a += wgt * src[p + c] as f64;
                    }
                }
            }
            let p = ((y * w + x) * 3) as usize;
            for (c, a) in acc.iter().enumerate() {
                out[p + c] = a.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    RgbImage::from_raw(w as u32, h as u32, out).expect("same size as the input")
}

/// `img` plus Gaussian noise of standard deviation `sigma` (in 8-bit levels), the same on
/// the three channels when `gray`.
pub fn add_noise(img: &RgbImage, sigma: f64, gray: bool, rng: &mut KeyedRng) -> RgbImage {
    let mut out = img.clone();
    for px in out.as_mut().chunks_exact_mut(3) {
        let n0 = rng.normal_f64() * sigma;
        for (c, v) in px.iter_mut().enumerate() {
            let n = if gray || c == 0 {
                n0
            } else {
                rng.normal_f64() * sigma
            };
            *v = (*v as f64 + n).round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// `img` encoded as a baseline JPEG at `quality` (1–100) and decoded again.
pub fn jpeg_roundtrip(img: &RgbImage, quality: u8) -> Result<RgbImage, String> {
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, quality.clamp(1, 100))
        .encode(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| format!("JPEG encode: {e}"))?;
    Ok(
        image::load_from_memory_with_format(&buf, image::ImageFormat::Jpeg)
            .map_err(|e| format!("JPEG decode: {e}"))?
            .to_rgb8(),
    )
}

/// `degradation.blur`: the unCLIP 64→256 corruption of the low-resolution image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlurConfig {
    /// Probability that a sample is blurred. Default 0.5.
    pub prob: f64,
    /// Standard deviation of the Gaussian, in low-resolution pixels. Default 0.6.
    pub sigma: f64,
    /// Odd kernel side. Default 3.
    pub kernel: u32,
}

impl Default for BlurConfig {
    fn default() -> Self {
        Self {
            prob: 0.5,
            sigma: 0.6,
            kernel: 3,
        }
    }
}

/// `degradation.bsr`: the BSR-style chain of the unCLIP 256→1024 upsampler. In order:
/// blur (at the target resolution) → with `two_stage_prob` a resize to a random size between
/// the low and the target resolution → blur → resize to the low resolution → noise → JPEG.
/// Each blur happens with `blur_prob`, each resize uses a mode drawn from `resize_modes`
/// (no antialiasing), so aliasing is part of the corruption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BsrConfig {
    /// Probability of each of the two blurs. Default 0.5.
    pub blur_prob: f64,
    /// Range of the Gaussian σ, in pixels of the image being blurred. Default [0.2, 2.0].
    pub blur_sigma: [f64; 2],
    /// Probability that a blur is anisotropic (two σ from the range, random angle).
    /// Default 0.5.
    pub anisotropic_prob: f64,
    /// Largest kernel side (odd); a kernel covers ±3σ up to this. Default 21.
    pub kernel_max: u32,
    /// Modes each resize draws from. Default all four.
    pub resize_modes: Vec<ResizeMode>,
    /// Probability of going through a random intermediate size. Default 0.5.
    pub two_stage_prob: f64,
    /// Probability of Gaussian noise. Default 0.9.
    pub noise_prob: f64,
    /// Range of the noise σ, in 8-bit levels. Default [1, 25].
    pub noise_sigma: [f64; 2],
    /// Probability that the noise is the same on the three channels. Default 0.4.
    pub gray_noise_prob: f64,
    /// Probability of JPEG re-compression. Default 0.9.
    pub jpeg_prob: f64,
    /// Range of the JPEG quality (1–100). Default [30, 95].
    pub jpeg_quality: [u32; 2],
}

impl Default for BsrConfig {
    fn default() -> Self {
        Self {
            blur_prob: 0.5,
            blur_sigma: [0.2, 2.0],
            anisotropic_prob: 0.5,
            kernel_max: 21,
            resize_modes: ResizeMode::ALL.to_vec(),
            two_stage_prob: 0.5,
            noise_prob: 0.9,
            noise_sigma: [1.0, 25.0],
            gray_noise_prob: 0.4,
            jpeg_prob: 0.9,
            jpeg_quality: [30, 95],
        }
    }
}

/// Which corruption the low-resolution image gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DegradationKind {
    None,
    #[default]
    Blur,
    Bsr,
}

/// `degradation:`: the kind and the parameters of each kind.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DegradationConfig {
    pub kind: DegradationKind,
    pub blur: BlurConfig,
    pub bsr: BsrConfig,
}

/// The whole low-resolution pipeline: downsample, corrupt, upsample.
#[derive(Debug, Clone, PartialEq)]
pub struct LowRes {
    /// The antialiased downsample of `none` and `blur`.
    pub downsample: ResizeMode,
    /// Back to the target size.
    pub upsample: ResizeMode,
    pub degradation: DegradationConfig,
}

fn prob(key: &str, p: f64) -> Result<(), (String, String)> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err((
            key.into(),
            format!("must be a probability in [0, 1], got {p}"),
        ))
    }
}

fn range(key: &str, r: [f64; 2], min: f64) -> Result<(), (String, String)> {
    if r.iter().all(|v| v.is_finite() && *v >= min) && r[0] <= r[1] {
        Ok(())
    } else {
        Err((
            key.into(),
            format!("must be [low, high] with {min} ≤ low ≤ high, got {r:?}"),
        ))
    }
}

impl LowRes {
    /// Checks every parameter; the error is (key below `degradation`, why).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let b = &self.degradation.blur;
        prob("blur.prob", b.prob)?;
        if !(b.sigma.is_finite() && b.sigma > 0.0) {
            return Err(("blur.sigma".into(), format!("must be > 0, got {}", b.sigma)));
        }
        if b.kernel.is_multiple_of(2) || b.kernel > 31 {
            return Err((
                "blur.kernel".into(),
                format!("must be odd and at most 31, got {}", b.kernel),
            ));
        }
        let s = &self.degradation.bsr;
        for (k, p) in [
            ("bsr.blur_prob", s.blur_prob),
            ("bsr.anisotropic_prob", s.anisotropic_prob),
            ("bsr.two_stage_prob", s.two_stage_prob),
            ("bsr.noise_prob", s.noise_prob),
            ("bsr.gray_noise_prob", s.gray_noise_prob),
            ("bsr.jpeg_prob", s.jpeg_prob),
        ] {
            prob(k, p)?;
        }
        range("bsr.blur_sigma", s.blur_sigma, 1e-3)?;
        range("bsr.noise_sigma", s.noise_sigma, 0.0)?;
        let q = s.jpeg_quality;
        if !(1..=100).contains(&q[0]) || !(1..=100).contains(&q[1]) || q[0] > q[1] {
            return Err((
                "bsr.jpeg_quality".into(),
                format!("must be [low, high] with 1 ≤ low ≤ high ≤ 100, got {q:?}"),
            ));
        }
        if s.kernel_max.is_multiple_of(2) || s.kernel_max > 51 {
            return Err((
                "bsr.kernel_max".into(),
                format!("must be odd and at most 51, got {}", s.kernel_max),
            ));
        }
        if s.resize_modes.is_empty() {
            return Err(("bsr.resize_modes".into(), "is empty".into()));
        }
        Ok(())
    }

    /// The corrupted `low`×`low` version of the square image `hr`.
    pub fn degrade(&self, hr: &RgbImage, low: u32, rng: &mut KeyedRng) -> Result<RgbImage, String> {
        let d = &self.degradation;
        match d.kind {
            DegradationKind::None => resize(hr, low, low, self.downsample, true),
            DegradationKind::Blur => {
                let img = resize(hr, low, low, self.downsample, true)?;
                let b = &d.blur;
                Ok(if rng.bernoulli(b.prob) {
                    let k = b.kernel as usize;
                    convolve(&img, &gaussian_kernel(k, b.sigma, b.sigma, 0.0), k)
                } else {
                    img
                })
            }
            DegradationKind::Bsr => self.bsr(hr, low, rng),
        }
    }

    fn bsr(&self, hr: &RgbImage, low: u32, rng: &mut KeyedRng) -> Result<RgbImage, String> {
        let c = &self.degradation.bsr;
        let uniform = |rng: &mut KeyedRng, r: [f64; 2]| r[0] + (r[1] - r[0]) * rng.uniform_f64();
        let blur = |img: RgbImage, rng: &mut KeyedRng| {
            if !rng.bernoulli(c.blur_prob) {
                return img;
            }
            let sx = uniform(rng, c.blur_sigma);
            let (sy, theta) = if rng.bernoulli(c.anisotropic_prob) {
                (uniform(rng, c.blur_sigma), rng.uniform_f64() * PI)
            } else {
                (sx, 0.0)
            };
            let half = (3.0 * sx.max(sy)).ceil() as usize;
            let size = (2 * half + 1).min(c.kernel_max as usize).max(3);
            convolve(&img, &gaussian_kernel(size, sx, sy, theta), size)
        };
        let mode =
            |rng: &mut KeyedRng| c.resize_modes[rng.below(c.resize_modes.len() as u64) as usize];
        let side = hr.width();
        let mut img = blur(hr.clone(), rng);
        if rng.bernoulli(c.two_stage_prob) && side > low + 1 {
            let mid = low + 1 + rng.below((side - low - 1) as u64) as u32;
            let m = mode(rng);
            img = resize(&img, mid, mid, m, false)?;
        }
        img = blur(img, rng);
        let m = mode(rng);
        img = resize(&img, low, low, m, false)?;
        if rng.bernoulli(c.noise_prob) {
            let sigma = uniform(rng, c.noise_sigma);
            let gray = rng.bernoulli(c.gray_noise_prob);
            img = add_noise(&img, sigma, gray, rng);
        }
        if rng.bernoulli(c.jpeg_prob) {
            let [q0, q1] = c.jpeg_quality;
            let q = q0 + rng.below((q1 - q0 + 1) as u64) as u32;
            img = jpeg_roundtrip(&img, q as u8)?;
        }
        Ok(img)
    }

    /// `low` upsampled to `size`×`size`.
    pub fn upsample(&self, low: &RgbImage, size: u32) -> Result<RgbImage, String> {
        resize(low, size, size, self.upsample, true)
    }
}

/// Mean absolute discrete Laplacian of the luma (interior pixels): high-frequency energy.
pub fn mean_abs_laplacian(img: &RgbImage) -> f64 {
    let (w, h) = img.dimensions();
    let luma = |x: u32, y: u32| {
        let p = img.get_pixel(x, y).0;
        0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64
    };
    let mut sum = 0.0;
    let mut n = 0usize;
    for y in 1..h.saturating_sub(1) {
        for x in 1..w.saturating_sub(1) {
            let l = luma(x - 1, y) + luma(x + 1, y) + luma(x, y - 1) + luma(x, y + 1)
                - 4.0 * luma(x, y);
            sum += l.abs();
            n += 1;
        }
    }
    sum / n.max(1) as f64
}

/// JPEG blockiness: mean absolute difference between horizontal and vertical neighbours that
/// straddle an 8×8 block boundary, over the same between neighbours inside a block (≈ 1 for
/// a natural image, > 1 with blocking).
pub fn blockiness(img: &RgbImage) -> f64 {
    let (w, h) = img.dimensions();
    let (mut across, mut na, mut inside, mut ni) = (0.0, 0usize, 0.0, 0usize);
    let mut add = |a: &image::Rgb<u8>, b: &image::Rgb<u8>, boundary: bool| {
        let d: f64 = (0..3).map(|c| (a.0[c] as f64 - b.0[c] as f64).abs()).sum();
        if boundary {
            across += d;
            na += 1;
        } else {
            inside += d;
            ni += 1;
        }
    };
    for y in 0..h {
        for x in 0..w {
            if x + 1 < w {
                add(img.get_pixel(x, y), img.get_pixel(x + 1, y), x % 8 == 7);
            }
            if y + 1 < h {
                add(img.get_pixel(x, y), img.get_pixel(x, y + 1), y % 8 == 7);
            }
        }
    }
    (across / na.max(1) as f64) / (inside / ni.max(1) as f64).max(1e-9)
}
