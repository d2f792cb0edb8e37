//! The caption side of the CLIP-conditioned stages (prior, decoder): the CLIP sizes a network
//! is built for, where per-token encodings come from, the empty caption (the unconditional
//! branch of classifier-free guidance), and a batch's caption inputs with dropped rows replaced
//! by the empty caption. Training fills [`TextInputs`] from the embedding store or the frozen
//! CLIP; inference from the CLIP of the pipeline folder.

use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use unclip_models::NoiseKey;

use crate::StageError;

/// Where a stage's per-token caption encodings come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextEncodingsSource {
    /// The embedding store (`unclip embed --text-encodings`).
    #[default]
    Store,
    /// The frozen CLIP text tower (`clip:` folder), per batch, from the shards' captions.
    OnTheFly,
    /// No per-token encodings: only the pooled text embedding conditions the model (what
    /// imported clip-retrieval embeddings allow).
    None,
}

/// The CLIP dimensions a conditioned model is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipDims {
    pub embed_dim: usize,
    pub text_width: usize,
    pub text_len: usize,
}

impl ClipDims {
    /// Writes these sizes into an export's `model:` section (`embed_dim`, `text_width`,
    /// `text_len`), so that inference rebuilds the network without the embedding store.
    pub fn record(&self, model: &mut serde_json::Value) {
        if let Some(m) = model.as_object_mut() {
            m.insert("embed_dim".into(), self.embed_dim.into());
            m.insert("text_width".into(), self.text_width.into());
            m.insert("text_len".into(), self.text_len.into());
        }
    }
}

/// The empty caption's embedding, encodings and mask: what a dropped caption becomes.
#[derive(Debug, Clone)]
pub struct EmptyCaption {
    pub text_embed: Vec<f32>,
    /// `[L·W]`, when the stage uses encodings.
    pub encodings: Option<Vec<f32>>,
    pub mask: Option<Vec<bool>>,
}

/// A batch's caption conditioning.
pub struct TextInputs<B: Backend> {
    /// Pooled, L2-normalised text embeddings [N, D].
    pub embed: Tensor<B, 2>,
    /// Per-token encodings [N, L, W] and mask [N, L] (true = real token).
    pub encodings: Option<(Tensor<B, 3>, Tensor<B, 2, Bool>)>,
}

/// What a stage's caption conditioning is: the encodings' source, the CLIP sizes, and the
/// empty caption that replaces dropped captions.
#[derive(Debug, Clone)]
pub struct TextCond {
    pub source: TextEncodingsSource,
    pub dims: ClipDims,
    pub empty: Arc<EmptyCaption>,
}

impl TextCond {
    /// A zero empty caption of sizes `dims` (random data, and exports rebuilt before their
    /// CLIP's empty caption is known).
    pub fn zeros(dims: ClipDims, source: TextEncodingsSource) -> Self {
        let with = source != TextEncodingsSource::None;
        Self {
            source,
            dims,
            empty: Arc::new(EmptyCaption {
                text_embed: vec![0.0; dims.embed_dim],
                encodings: with.then(|| vec![0.0; dims.text_len * dims.text_width]),
                mask: with.then(|| (0..dims.text_len).map(|i| i < 2).collect()),
            }),
        }
    }

    /// Per-sample drop flags with probability `prob`, keyed by (purpose, step, sample).
    pub fn drops(key: &NoiseKey, purpose: &str, prob: f64, n: usize) -> Vec<bool> {
        (0..n)
            .map(|row| prob > 0.0 && key.rng(purpose, row).uniform_f64() < prob)
            .collect()
    }

    /// The empty caption repeated `n` times, as the unconditional branch of guidance.
    pub fn empty_inputs<B: Backend>(&self, n: usize, device: &B::Device) -> TextInputs<B> {
        let d = self.dims;
        let rep = |v: &[f32]| -> Vec<f32> { (0..n).flat_map(|_| v.iter().copied()).collect() };
        let embed = Tensor::<B, 2>::from_data(
            TensorData::new(rep(&self.empty.text_embed), [n, d.embed_dim]),
            device,
        );
        let encodings = match (&self.empty.encodings, &self.empty.mask) {
            (Some(e), Some(m)) if self.source != TextEncodingsSource::None => {
                let m: Vec<f32> = m.iter().map(|&b| b as u8 as f32).collect();
                Some((
                    Tensor::<B, 3>::from_data(
                        TensorData::new(rep(e), [n, d.text_len, d.text_width]),
                        device,
                    ),
                    Tensor::<B, 2>::from_data(TensorData::new(rep(&m), [n, d.text_len]), device)
                        .greater_elem(0.5),
                ))
            }
            _ => None,
        };
        TextInputs { embed, encodings }
    }

    /// `text` with the rows flagged in `drop` replaced by the empty caption.
    pub fn with_dropped<B: Backend>(
        &self,
        text: TextInputs<B>,
        drop: &[bool],
        device: &B::Device,
    ) -> Result<TextInputs<B>, StageError> {
        let TextInputs { embed, encodings } = text;
        if !drop.iter().any(|&x| x) {
            return Ok(TextInputs { embed, encodings });
        }
        let n = drop.len();
        let d = self.dims;
        let keep = |dims: Vec<usize>| {
            let per: usize = dims[1..].iter().product();
            let v: Vec<f32> = drop
                .iter()
                .flat_map(|&dr| std::iter::repeat_n(if dr { 0.0 } else { 1.0 }, per))
                .collect();
            TensorData::new(v, dims)
        };
        let rows = |values: &[f32], dims: Vec<usize>| {
            let v: Vec<f32> = (0..n).flat_map(|_| values.iter().copied()).collect();
            TensorData::new(v, dims)
        };
        let k2 = Tensor::<B, 2>::from_data(keep(vec![n, d.embed_dim]), device);
        let e2 =
            Tensor::<B, 2>::from_data(rows(&self.empty.text_embed, vec![n, d.embed_dim]), device);
        let embed = embed * k2.clone() + e2 * (k2.neg() + 1.0);
        let encodings = match encodings {
            Some((enc, mask)) => {
                let (ee, em) = match (&self.empty.encodings, &self.empty.mask) {
                    (Some(ee), Some(em)) => (ee.clone(), em.clone()),
                    _ => {
                        return Err(StageError::Input(
                            "the empty caption has no encodings".into(),
                        ))
                    }
                };
                let dims = vec![n, d.text_len, d.text_width];
                let k3 = Tensor::<B, 3>::from_data(keep(dims.clone()), device);
                let e3 = Tensor::<B, 3>::from_data(rows(&ee, dims), device);
                let enc = enc * k3.clone() + e3 * (k3.neg() + 1.0);
                let em: Vec<f32> = em.iter().map(|&m| m as u8 as f32).collect();
                let km = Tensor::<B, 2>::from_data(keep(vec![n, d.text_len]), device);
                let m = mask.float() * km.clone()
                    + Tensor::<B, 2>::from_data(rows(&em, vec![n, d.text_len]), device)
                        * (km.neg() + 1.0);
                Some((enc, m.greater_elem(0.5)))
            }
            None => None,
        };
        Ok(TextInputs { embed, encodings })
    }
}
