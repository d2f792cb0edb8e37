//! Dropout whose masks come from our counter-based RNG instead of the backend's global stream.
//!
//! burn's `Dropout` draws from the backend's process-global generator, which cannot be saved,
//! so a resumed run would drop different units. Here the mask of sample `i` at a call site is
//! drawn from `KeyedRng(seed, "dropout:<site>", step, index_i)`: the same at any worker count,
//! batch split or resume point.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;
use unclip_rng::KeyedRng;

/// Where a forward pass sits in the run: the key of every random number it draws.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoiseKey {
    pub seed: u64,
    /// The training micro-step (unique per forward pass of a run).
    pub step: u64,
    /// Global sample index of each row of the batch.
    pub indices: Vec<u64>,
}

impl NoiseKey {
    /// The random stream of `purpose` for row `row` of the batch.
    pub fn rng(&self, purpose: &str, row: usize) -> KeyedRng {
        KeyedRng::new(self.seed, purpose, self.step, self.indices[row])
    }
}

/// Inverted dropout (kept units scaled by 1/(1−p)) with keyed masks; the identity when no
/// key is given (evaluation) or `prob` is 0.
#[derive(Module, Clone, Debug)]
pub struct KeyedDropout {
    pub prob: f64,
}

impl KeyedDropout {
    pub fn new(prob: f64) -> Self {
        Self { prob }
    }

    /// Drops elements of `x` (batch first). `site` names the call site, so two dropout layers
    /// of one model draw different masks.
    ///
    /// # Panics
    /// When `key` has fewer indices than `x` has rows (a caller bug, not a user input).
    pub fn forward<B: Backend, const D: usize>(
        &self,
        x: Tensor<B, D>,
        key: Option<&NoiseKey>,
        site: &str,
    ) -> Tensor<B, D> {
        match self.mask(x.dims(), key, site, &x.device()) {
            Some(mask) => x * mask,
            None => x,
        }
    }

    /// The multiplicative mask [`KeyedDropout::forward`] applies to a tensor of shape `dims`:
    /// 0 for dropped units, `1/(1−p)` for kept ones; `None` when nothing is dropped (no key, or
    /// `prob` 0). For layers that fuse the multiplication into another operation.
    ///
    /// # Panics
    /// When `key` has fewer indices than `dims[0]`.
    pub fn mask<B: Backend, const D: usize>(
        &self,
        dims: [usize; D],
        key: Option<&NoiseKey>,
        site: &str,
        device: &B::Device,
    ) -> Option<Tensor<B, D>> {
        let key = key?;
        if self.prob <= 0.0 {
            return None;
        }
        let rows = dims[0];
        assert!(
            key.indices.len() >= rows,
            "noise key shorter than the batch"
        );
        let per_row: usize = dims[1..].iter().product();
        let purpose = format!("dropout:{site}");
        let scale = (1.0 / (1.0 - self.prob)) as f32;
        let mut mask = vec![0.0f32; rows * per_row];
        // Each row has its own stream, so rows can be drawn on any thread in any order.
        mask.par_chunks_mut(per_row.max(1))
            .enumerate()
            .for_each(|(row, out)| {
                let mut rng = key.rng(&purpose, row);
                for m in out {
                    *m = if rng.uniform_f64() < self.prob {
                        0.0
                    } else {
                        scale
                    };
                }
            });
        Some(Tensor::<B, D>::from_data(
            TensorData::new(mask, dims),
            device,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn key(step: u64) -> NoiseKey {
        NoiseKey {
            seed: 1,
            step,
            indices: vec![10, 11],
        }
    }

    #[test]
    fn masks_are_keyed_scaled_and_off_in_eval() {
        let d = Default::default();
        let x = Tensor::<Flex, 2>::ones([2, 4000], &d);
        let drop = KeyedDropout::new(0.25);
        let a = drop.forward(x.clone(), Some(&key(3)), "a").into_data();
        let b = drop.forward(x.clone(), Some(&key(3)), "a").into_data();
        let c = drop.forward(x.clone(), Some(&key(4)), "a").into_data();
        let s = drop.forward(x.clone(), Some(&key(3)), "b").into_data();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, s);
        let v: Vec<f32> = a.to_vec().unwrap();
        let zeros = v.iter().filter(|&&e| e == 0.0).count() as f64 / v.len() as f64;
        assert!((zeros - 0.25).abs() < 0.02, "drop fraction {zeros}");
        assert!(v.iter().all(|&e| e == 0.0 || (e - 1.0 / 0.75).abs() < 1e-6));
        // Row i's mask depends on its sample index only, not on its position in the batch.
        let single = NoiseKey {
            seed: 1,
            step: 3,
            indices: vec![11],
        };
        let row1 = drop.forward(Tensor::<Flex, 2>::ones([1, 4000], &d), Some(&single), "a");
        assert_eq!(
            row1.into_data().to_vec::<f32>().unwrap(),
            v[4000..].to_vec()
        );
        assert_eq!(
            drop.forward(x.clone(), None, "a").into_data(),
            x.into_data()
        );
    }
}
