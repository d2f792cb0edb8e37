//! Classifier-free guidance: out = u + s·(c − u) on the prediction channels, with the
//! learned-variance channels (if any) taken from the conditional branch unguided.
//!
//! Guiding ε or guiding x0 give the same result: for a shared x_t every parameterization is an
//! affine function of the network output with the same coefficients in both branches, so the
//! combination commutes with the conversion. The guidance is therefore applied to the raw
//! prediction channels, whatever the model predicts (ε for the decoder, x0 for the prior).

use burn::tensor::{backend::Backend, Tensor};

use crate::gaussian::VarianceType;
use crate::tensor::split_channels;

/// Combine a conditional and an unconditional output (`[B, C′, …]` each) with `scale`.
/// For `learned_range` the outputs have 2·`channels` channels and the second half (the variance)
/// comes from `cond`. `channels` is the sample's channel count (dim 1 of x_t).
pub fn classifier_free_guidance<B: Backend, const D: usize>(
    cond: Tensor<B, D>,
    uncond: Tensor<B, D>,
    scale: f64,
    variance: VarianceType,
    channels: usize,
) -> Tensor<B, D> {
    let guide = |c: Tensor<B, D>, u: Tensor<B, D>| u.clone() + (c - u) * scale;
    match variance {
        VarianceType::LearnedRange => {
            let (c_mean, c_var) = split_channels(cond, channels);
            let (u_mean, _) = split_channels(uncond, channels);
            Tensor::cat(vec![guide(c_mean, u_mean), c_var], 1)
        }
        _ => guide(cond, uncond),
    }
}

/// Wrap a model evaluated on a doubled batch into a guided model for [`crate::Sampler::sample`].
///
/// The wrapped `model` receives `cat([x_t, x_t])` and the timesteps twice; it must put the
/// conditional inputs in the first half of the batch and the unconditional ones in the second
/// (e.g. the empty-caption encodings), and return outputs in the same order.
pub fn guided_model<B, const D: usize, M>(
    mut model: M,
    scale: f64,
    variance: VarianceType,
) -> impl FnMut(Tensor<B, D>, &[usize]) -> Tensor<B, D>
where
    B: Backend,
    M: FnMut(Tensor<B, D>, &[usize]) -> Tensor<B, D>,
{
    move |x_t: Tensor<B, D>, t: &[usize]| {
        let batch = x_t.dims()[0];
        let channels = x_t.dims()[1];
        let doubled_t: Vec<usize> = t.iter().chain(t.iter()).copied().collect();
        let out = model(Tensor::cat(vec![x_t.clone(), x_t], 0), &doubled_t);
        let cond = out.clone().narrow(0, 0, batch);
        let uncond = out.narrow(0, batch, batch);
        classifier_free_guidance(cond, uncond, scale, variance, channels)
    }
}
