//! What the CLIP-conditioned stages (prior, decoder) share in training: the embedding stores
//! of their shards, the empty caption read from the store (or computed by the frozen CLIP),
//! and a batch's caption inputs as tensors — from the store, or computed per batch by the
//! frozen CLIP text tower (`text_encodings: on_the_fly`) — with dropped rows replaced by the
//! empty caption (`unclip_stages::text`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::TensorData;
use unclip_clip::{Clip, ClipTokenizer};
use unclip_data::store::{read_embeddings, EmbeddingStore};
use unclip_data::transform::{DecodedSample, Example, Field, SampleContext, TransformError};
use unclip_data::{Batch, SampleTransform, WithEmbeddings};
use unclip_stages::text::{ClipDims, EmptyCaption, TextCond, TextEncodingsSource, TextInputs};

use crate::config::DataConfig;
use crate::{Split, TrainError};

/// The conditioning side of a stage, shared by its train and validation streams.
#[derive(Clone)]
pub struct Conditioning {
    /// The encodings' source, the CLIP sizes and the empty caption.
    pub text: TextCond,
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
        let e = read_embeddings(&Path::new(dir).join(empty_file))
            .map_err(|e| store_error("data.embeddings", e))?;
        let (encodings, mask) = match (&e.text_encodings, source) {
            (Some(t), TextEncodingsSource::Store) => (
                Some(t.values.clone()),
                Some(t.mask.iter().map(|&m| m != 0).collect()),
            ),
            _ => (None, None),
        };
        let mut me = Self {
            text: TextCond {
                source,
                dims,
                empty: Arc::new(EmptyCaption {
                    text_embed: e.text_row(0).to_vec(),
                    encodings,
                    mask,
                }),
            },
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
        let mut me = Self {
            text: TextCond::zeros(dims, source),
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
        .with_context_length(self.text.dims.text_len);
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
        self.text.empty = Arc::new(EmptyCaption {
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
        let dims = self.text.dims;
        if c.projection_dim != dims.embed_dim || c.text_config.hidden_size != dims.text_width {
            return Err(TrainError::invalid(
                "model.clip",
                format!(
                    "{} has embedding/text widths {}/{}, the store {}/{}",
                    dir.display(),
                    c.projection_dim,
                    c.text_config.hidden_size,
                    dims.embed_dim,
                    dims.text_width
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
            self.text.source == TextEncodingsSource::Store,
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

    /// The caption inputs of `batch`, with the rows flagged in `drop` replaced by the empty
    /// caption. `clip` is the frozen CLIP for `on_the_fly`.
    pub fn text<B: Backend>(
        &self,
        batch: &Batch,
        drop: &[bool],
        clip: Option<&Clip<B>>,
        device: &B::Device,
    ) -> Result<TextInputs<B>, TrainError> {
        let (embed, encodings) = match (self.text.source, clip) {
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
        Ok(self
            .text
            .with_dropped(TextInputs { embed, encodings }, drop, device)?)
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
