//! Which original timesteps a sampler visits, from a GLIDE/ADM section string.
//!
//! * `""` — every timestep (no respacing).
//! * `"N"` / `"a,b,c"` — split `0..T` into equal sections (the first `T % k` one longer) and take
//!   `count` evenly spaced, rounded steps from each (`round(k·(size−1)/(count−1))`, rounding half
//!   to even as Python does, with the index accumulated by repeated addition as ADM does).
//! * `"ddimN"` — the smallest integer stride `s` with `|range(0, T, s)| = N` (ADM; an error when
//!   no stride gives exactly N steps).
//! * `"fast27"` — GLIDE's `"10,10,3,2,2"` with `T−1` replaced by `T−3`.

use crate::error::DiffusionError;

/// The sorted original timesteps selected by `spec` for a `num_timesteps`-step process.
pub fn space_timesteps(num_timesteps: usize, spec: &str) -> Result<Vec<usize>, DiffusionError> {
    let spec = spec.trim();
    let bad = |why: &str| DiffusionError::Respacing {
        spec: spec.to_string(),
        why: why.to_string(),
    };
    if spec.is_empty() {
        return Ok((0..num_timesteps).collect());
    }
    if let Some(count) = spec.strip_prefix("ddim") {
        let count: usize = count
            .parse()
            .map_err(|_| bad("expected `ddimN` with an integer N"))?;
        for stride in 1..num_timesteps.max(1) {
            if num_timesteps.div_ceil(stride) == count {
                return Ok((0..num_timesteps).step_by(stride).collect());
            }
        }
        return Err(bad("no integer stride gives exactly that many steps"));
    }
    if spec == "fast27" {
        let mut steps = space_timesteps(num_timesteps, "10,10,3,2,2")?;
        steps.retain(|&t| t + 1 != num_timesteps);
        if num_timesteps >= 3 {
            steps.push(num_timesteps - 3);
        }
        steps.sort_unstable();
        steps.dedup();
        return Ok(steps);
    }
    let counts = spec
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad("expected `N`, `a,b,c`, `ddimN` or `fast27`"))?;
    let size_per = num_timesteps / counts.len();
    let extra = num_timesteps % counts.len();
    let mut start = 0usize;
    let mut steps = Vec::new();
    for (i, &count) in counts.iter().enumerate() {
        let size = size_per + usize::from(i < extra);
        if size < count {
            return Err(bad(&format!(
                "section {i} has {size} timesteps, fewer than the {count} requested"
            )));
        }
        let frac_stride = if count <= 1 {
            1.0
        } else {
            (size - 1) as f64 / (count - 1) as f64
        };
        let mut cur = 0.0f64;
        for _ in 0..count {
            steps.push(start + cur.round_ties_even() as usize);
            cur += frac_stride;
        }
        start += size;
    }
    steps.sort_unstable();
    steps.dedup();
    if steps.is_empty() {
        return Err(bad("selects no timesteps"));
    }
    Ok(steps)
}
