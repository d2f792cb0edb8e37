//! Small tensor helpers: per-sample coefficients broadcast over any rank, per-sample means.

use burn::tensor::{backend::Backend, Tensor, TensorData};

/// `buf[idx[b]]` for each sample b, as an f32 tensor shaped `[B, 1, …, 1]` (rank of `like`) on
/// `like`'s device, so it broadcasts over `[B, D]` embeddings and `[B, C, H, W]` images alike.
///
/// Panics when an index is out of range or `idx.len()` differs from `like`'s batch size: both are
/// programming errors of the caller, not user input.
pub fn coefficient<B: Backend, const D: usize>(
    buf: &[f64],
    idx: &[usize],
    like: &Tensor<B, D>,
) -> Tensor<B, D> {
    let batch = like.dims()[0];
    assert_eq!(
        idx.len(),
        batch,
        "got {} timesteps for a batch of {batch}",
        idx.len()
    );
    let values: Vec<f32> = idx
        .iter()
        .map(|&i| {
            assert!(
                i < buf.len(),
                "schedule position {i} out of range (schedule has {} steps)",
                buf.len()
            );
            buf[i] as f32
        })
        .collect();
    let mut shape = [1usize; D];
    shape[0] = batch;
    Tensor::from_data(TensorData::new(values, shape), &like.device())
}

/// Mean over every dimension but the batch: `[B, …] -> [B]`.
pub fn mean_per_sample<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, 1> {
    let batch = x.dims()[0];
    x.reshape([batch as i32, -1]).mean_dim(1).reshape([batch])
}

/// Split a learned-variance output `[B, 2C, …]` into `(mean part, variance part)` along dim 1.
pub fn split_channels<B: Backend, const D: usize>(
    output: Tensor<B, D>,
    channels: usize,
) -> (Tensor<B, D>, Tensor<B, D>) {
    let got = output.dims()[1];
    assert_eq!(
        got,
        2 * channels,
        "a learned-variance output needs 2 × {channels} channels on dim 1, got {got}"
    );
    (
        output.clone().narrow(1, 0, channels),
        output.narrow(1, channels, channels),
    )
}
