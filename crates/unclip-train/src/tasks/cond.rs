//! What the CLIP-conditioned stages (prior, decoder) share: the embedding stores of their
//! shards, the empty caption (the unconditional branch of classifier-free guidance), per-sample
//! condition drops from the keyed RNG, and a batch's caption inputs as tensors — from the
//! store, or computed per batch by the frozen CLIP text tower (`text_encodings: on_the_fly`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use unclip_clip::{Clip, ClipTokenizer};
use unclip_data::store::{read_shard, EmbeddingStore};
use unclip_data::transform::{DecodedSample, Example, Field, SampleContext, TransformError};
use unclip_data::{Batch, SampleTransform, WithEmbeddings};
use unclip_models::NoiseKey;

use crate::config::DataConfig;
use crate::{Split, TrainError};

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

/// The conditioning side of a stage, shared by its train and validation streams.
#[derive(Clone)]
pub struct Conditioning {
    pub source: TextEncodingsSource,
    pub dims: ClipDims,
    pub empty: Arc<EmptyCaption>,
    /// Per-dimension mean and std of the training store's image embeddings.
    pub image_mean: Vec<f32>,
    pub image_std: Vec<f32>,
    /// (shard spec, its store) of the training and validation streams.
    train: Option<(String, Arc<EmbeddingStore>)>,
    val: Option<(String, Arc<EmbeddingStore>)>,
    tokenizer: Option<Arc<ClipTokenizer>>,
    /// The frozen CLIP folder (`on_the_fly`).
    pub clip_dir: Option<PathBuf>,
}

fn store_error(key: &str, e: impl std::fmt::Display) -> TrainError {
    TrainError::invalid(key, e.to_string())
}

impl Conditioning {
    /// Opens `data.embeddings` (and `data.val_embeddings`) and reads their manifests and the
    /// empty caption (cheap: the shards are checked against the stores when a stream starts,
    /// in [`Conditioning::transform`]). `clip` is the frozen CLIP folder `on_the_fly` needs.
    pub fn open(
        data: &DataConfig,
        source: TextEncodingsSource,
        clip: Option<&Path>,
    ) -> Result<Self, TrainError> {
        let dir = data.embeddings.as_deref().ok_or_else(|| {
            TrainError::invalid(
                "data.embeddings",
                "required: the embedding store of data.shards (`unclip embed --out`)",
            )
        })?;
        let train = EmbeddingStore::open(dir).map_err(|e| store_error("data.embeddings", e))?;
        let val = match (&data.val_shards, &data.val_embeddings) {
            (Some(_), Some(v)) => {
                Some(EmbeddingStore::open(v).map_err(|e| store_error("data.val_embeddings", e))?)
            }
            (Some(_), None) => {
                return Err(TrainError::invalid(
                    "data.val_embeddings",
                    "required with data.val_shards: the embedding store of the held-out shards",
                ))
            }
            (None, _) => None,
        };
        let m = &train.manifest;
        if let Some(v) = &val {
            if v.manifest.clip != m.clip {
                return Err(TrainError::invalid(
                    "data.val_embeddings",
                    "made with another CLIP than data.embeddings",
                ));
            }
        }
        let dims = ClipDims {
            embed_dim: m.clip.embed_dim,
            text_width: m.clip.text_width,
            text_len: m.clip.context_length,
        };
        if source == TextEncodingsSource::Store && !m.text_encodings {
            return Err(TrainError::invalid(
                "model.text_encodings",
                format!(
                    "`store`, but the store {dir} has no text encodings: re-run `unclip embed \
                     --text-encodings`, or use `on_the_fly` (with a frozen CLIP) or `none`"
                ),
            ));
        }
        let empty_file = m.empty_caption.as_deref().ok_or_else(|| {
            TrainError::invalid(
                "data.embeddings",
                "the store has no empty-caption embedding (written by `unclip embed`)",
            )
        })?;
        let e = read_shard(&Path::new(dir).join(empty_file))
            .map_err(|e| store_error("data.embeddings", e))?;
        let (encodings, mask) = match (&e.text_encodings, source) {
            (Some(t), TextEncodingsSource::Store) => (
                Some(t.values.clone()),
                Some(t.mask.iter().map(|&m| m != 0).collect()),
            ),
            _ => (None, None),
        };
        let mut me = Self {
            source,
            dims,
            empty: Arc::new(EmptyCaption {
                text_embed: e.text_row(0).to_vec(),
                encodings,
                mask,
            }),
            image_mean: m.image_embed_mean.iter().map(|&v| v as f32).collect(),
            image_std: m.image_embed_std.iter().map(|&v| v as f32).collect(),
            train: data.shards.clone().map(|spec| (spec, Arc::new(train))),
            val: data.val_shards.clone().zip(val.map(Arc::new)),
            tokenizer: None,
            clip_dir: None,
        };
        if source == TextEncodingsSource::OnTheFly {
            me.enable_on_the_fly(clip)?;
        }
        Ok(me)
    }

    /// For `data.source: random`: given dimensions, a zero empty caption, unit statistics.
    pub fn random(
        dims: ClipDims,
        source: TextEncodingsSource,
        clip: Option<&Path>,
    ) -> Result<Self, TrainError> {
        let with = source != TextEncodingsSource::None;
        let mut me = Self {
            source,
            dims,
            empty: Arc::new(EmptyCaption {
                text_embed: vec![0.0; dims.embed_dim],
                encodings: with.then(|| vec![0.0; dims.text_len * dims.text_width]),
                mask: with.then(|| (0..dims.text_len).map(|i| i < 2).collect()),
            }),
            image_mean: vec![0.0; dims.embed_dim],
            image_std: vec![1.0; dims.embed_dim],
            train: None,
            val: None,
            tokenizer: None,
            clip_dir: None,
        };
        if source == TextEncodingsSource::OnTheFly {
            me.enable_on_the_fly(clip)?;
        }
        Ok(me)
    }

    /// Sets up `on_the_fly`: the tokenizer of the frozen CLIP in `clip`, and the empty
    /// caption's embedding, encodings and mask computed by that CLIP (so that dropped captions
    /// look exactly like the encodings computed per batch).
    fn enable_on_the_fly(&mut self, clip: Option<&Path>) -> Result<(), TrainError> {
        let dir = clip.ok_or_else(|| {
            TrainError::invalid(
                "model.clip",
                "`text_encodings: on_the_fly` needs the frozen CLIP folder the store was made with",
            )
        })?;
        let tok = dir.join("tokenizer.json");
        let tokenizer = if tok.exists() {
            ClipTokenizer::from_file(&tok)
        } else {
            ClipTokenizer::bundled()
        }
        .map_err(|e| store_error("model.clip", e))?
        .with_context_length(self.dims.text_len);
        self.clip_dir = Some(dir.to_path_buf());
        type Cpu = burn::backend::Flex;
        let device = Default::default();
        let model = self
            .load_clip::<Cpu>(&device)?
            .ok_or_else(|| TrainError::Task("no frozen CLIP".into()))?;
        let ids = tokenizer
            .encode("")
            .map_err(|e| store_error("model.clip", e))?
            .ids;
        let out = model.encode_text(&[ids]);
        let values = |t: TensorData| -> Result<Vec<f32>, TrainError> {
            t.convert::<f32>()
                .to_vec()
                .map_err(|e| TrainError::Task(format!("empty caption: {e:?}")))
        };
        let mask: Vec<bool> = out
            .text_mask
            .into_data()
            .to_vec()
            .map_err(|e| TrainError::Task(format!("empty caption: {e:?}")))?;
        self.empty = Arc::new(EmptyCaption {
            text_embed: values(out.text_embeds.into_data())?,
            encodings: Some(values(out.text_encodings.into_data())?),
            mask: Some(mask),
        });
        self.tokenizer = Some(Arc::new(tokenizer));
        Ok(())
    }

    /// The frozen CLIP of `on_the_fly`, loaded on `device`; `None` for the other sources.
    pub fn load_clip<B: Backend>(&self, device: &B::Device) -> Result<Option<Clip<B>>, TrainError> {
        let Some(dir) = &self.clip_dir else {
            return Ok(None);
        };
        let clip = Clip::load_hf_dir(dir, device).map_err(|e| store_error("model.clip", e))?;
        let c = &clip.config;
        if c.projection_dim != self.dims.embed_dim
            || c.text_config.hidden_size != self.dims.text_width
        {
            return Err(TrainError::invalid(
                "model.clip",
                format!(
                    "{} has embedding/text widths {}/{}, the store {}/{}",
                    dir.display(),
                    c.projection_dim,
                    c.text_config.hidden_size,
                    self.dims.embed_dim,
                    self.dims.text_width
                ),
            ));
        }
        Ok(Some(clip))
    }

    /// The loader transform of `split`: `inner`'s fields plus the stored `image_embed`,
    /// `text_embed` (and `text_encodings` + `text_mask` from the store, or caption `tokens`
    /// for `on_the_fly`). First checks that the store holds every shard of the split, with
    /// the shard's keys in order (tar and embedding headers only).
    pub fn transform(
        &self,
        inner: Arc<dyn SampleTransform>,
        split: Split,
    ) -> Result<Arc<dyn SampleTransform>, TrainError> {
        let (key, stream) = match split {
            Split::Train => ("data.embeddings", self.train.as_ref()),
            Split::Val => ("data.val_embeddings", self.val.as_ref()),
        };
        let (spec, store) =
            stream.ok_or_else(|| TrainError::invalid(key, "no embedding store for this stream"))?;
        let paths = unclip_data::spec::resolve(spec).map_err(|e| store_error(key, e))?;
        store
            .check_shards(&paths)
            .map_err(|e| store_error(key, e))?;
        let inner: Arc<dyn SampleTransform> = match &self.tokenizer {
            Some(t) => Arc::new(Tokenize {
                inner,
                tokenizer: Arc::clone(t),
            }),
            None => inner,
        };
        let with = WithEmbeddings::new(
            inner,
            (**store).clone(),
            self.source == TextEncodingsSource::Store,
        )
        .map_err(|e| TrainError::invalid("data.embeddings", e))?;
        Ok(Arc::new(with))
    }

    /// The stream previews read from: the validation shards when there are, else the
    /// training shards (`None` without shards).
    pub fn preview_stream(&self) -> Option<(String, Split)> {
        match (&self.val, &self.train) {
            (Some((spec, _)), _) => Some((spec.clone(), Split::Val)),
            (None, Some((spec, _))) => Some((spec.clone(), Split::Train)),
            (None, None) => None,
        }
    }

    /// Per-sample drop flags with probability `prob`, keyed by (purpose, step, sample).
    pub fn drops(key: &NoiseKey, purpose: &str, prob: f64, n: usize) -> Vec<bool> {
        (0..n)
            .map(|row| prob > 0.0 && key.rng(purpose, row).uniform_f64() < prob)
            .collect()
    }

    /// The caption inputs of `batch`, with the rows flagged in `drop` replaced by the empty
    /// caption. `clip` is the frozen CLIP for `on_the_fly`.
    pub fn text<B: Backend>(
        &self,
        batch: &Batch,
        drop: &[bool],
        clip: Option<&Clip<B>>,
        device: &B::Device,
    ) -> Result<TextInputs<B>, TrainError> {
        let n = batch.len();
        let d = self.dims;
        let (embed, encodings) = match (self.source, clip) {
            (TextEncodingsSource::OnTheFly, Some(clip)) => {
                let f = batch
                    .field("tokens")
                    .ok_or_else(|| TrainError::Task("the batch has no `tokens`".into()))?;
                let ids: Vec<Vec<u32>> = f
                    .data
                    .chunks(f.shape[1])
                    .map(|r| r.iter().map(|&v| v as u32).collect())
                    .collect();
                let out = clip.encode_text(&ids);
                let mask = out.text_mask;
                (out.text_embeds, Some((out.text_encodings, mask)))
            }
            (TextEncodingsSource::OnTheFly, None) => {
                return Err(TrainError::Task("on_the_fly without a frozen CLIP".into()))
            }
            (TextEncodingsSource::Store, _) => {
                let enc = batch.tensor::<B, 3>("text_encodings", device)?;
                let mask = batch.tensor::<B, 2>("text_mask", device)?.greater_elem(0.5);
                (
                    batch.tensor::<B, 2>("text_embed", device)?,
                    Some((enc, mask)),
                )
            }
            (TextEncodingsSource::None, _) => (batch.tensor::<B, 2>("text_embed", device)?, None),
        };
        if !drop.iter().any(|&x| x) {
            return Ok(TextInputs { embed, encodings });
        }
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
                        return Err(TrainError::Task(
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

/// Adds the caption's CLIP token ids (`tokens` [L], exact f32 integers) to `inner`'s example;
/// a sample without caption is skipped (`missing_caption`).
struct Tokenize {
    inner: Arc<dyn SampleTransform>,
    tokenizer: Arc<ClipTokenizer>,
}

impl SampleTransform for Tokenize {
    fn apply(&self, sample: DecodedSample, ctx: SampleContext) -> Result<Example, TransformError> {
        let caption = sample
            .caption
            .clone()
            .ok_or_else(|| TransformError::Other {
                reason: "missing_caption",
                detail: format!("`{}` has no caption", sample.key),
            })?;
        let tokens = self
            .tokenizer
            .encode(&caption)
            .map_err(|e| TransformError::Other {
                reason: "transform_error",
                detail: e.to_string(),
            })?;
        let mut ex = self.inner.apply(sample, ctx)?;
        ex.fields.push(Field {
            name: "tokens".into(),
            shape: vec![tokens.ids.len()],
            data: tokens.ids.iter().map(|&i| i as f32).collect(),
        });
        Ok(ex)
    }
}

/// A transform that decodes nothing: the sample's key and caption only (stages that train on
/// embeddings alone).
pub struct NoImage;

impl SampleTransform for NoImage {
    fn apply(&self, sample: DecodedSample, ctx: SampleContext) -> Result<Example, TransformError> {
        Ok(Example {
            key: sample.key,
            caption: sample.caption,
            index: ctx.index,
            fields: Vec::new(),
        })
    }
}
