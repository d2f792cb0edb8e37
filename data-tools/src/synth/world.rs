//! One sample of the shapes world as a pure function of `(options, index)`.

use super::SynthOptions;
use crate::shapes::caption::caption;
use crate::shapes::render::render_scene;
use crate::shapes::scene::{sample_scene, MIN_SIZE};
use crate::shapes::{Color, Scene, Shape};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use unclip_rng::KeyedRng;

/// Which part of the dataset a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Holdout,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Holdout];

    /// The split's folder name under the output folder.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Holdout => "holdout",
        }
    }
}

/// A bad `--holdout` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoldoutError {
    #[error("holdout entry `{0}` is not \"<color> <shape>\" (e.g. \"purple triangle\")")]
    Malformed(String),
    #[error("unknown color `{0}` in --holdout; the colors are: {1}")]
    UnknownColor(String, String),
    #[error("unknown shape `{0}` in --holdout; the shapes are: {1}")]
    UnknownShape(String, String),
}

/// Parse `"purple triangle, red circle"` (case-insensitive; empty entries ignored).
pub fn parse_holdout(text: &str) -> Result<Vec<(Color, Shape)>, HoldoutError> {
    let mut combos = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let words: Vec<String> = entry.split_whitespace().map(str::to_lowercase).collect();
        let [color, shape] = &words[..] else {
            return Err(HoldoutError::Malformed(entry.to_string()));
        };
        let color = Color::from_name(color).ok_or_else(|| {
            let names: Vec<_> = Color::ALL.iter().map(|c| c.name()).collect();
            HoldoutError::UnknownColor(color.clone(), names.join(", "))
        })?;
        let shape = Shape::from_name(shape).ok_or_else(|| {
            let names: Vec<_> = Shape::ALL.iter().map(|s| s.name()).collect();
            HoldoutError::UnknownShape(shape.clone(), names.join(", "))
        })?;
        if !combos.contains(&(color, shape)) {
            combos.push((color, shape));
        }
    }
    Ok(combos)
}

/// Ground truth, caption and split of one sample (its pixels come from [`World::render`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSample {
    pub index: u64,
    pub scene: Scene,
    pub caption: String,
    pub split: Split,
}

/// A sample's `<key>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    pub key: String,
    /// Global index of the sample in the world (its RNG key).
    pub index: u64,
    pub split: Split,
    pub caption: String,
    #[serde(flatten)]
    pub scene: Scene,
}

impl SampleRecord {
    pub fn new(key: String, index: u64, sample: &SynthSample) -> Self {
        Self {
            key,
            index,
            split: sample.split,
            caption: sample.caption.clone(),
            scene: sample.scene.clone(),
        }
    }
}

/// The validated generation parameters.
#[derive(Debug, Clone)]
pub struct World {
    pub seed: u64,
    pub size: u32,
    pub two_object_fraction: f64,
    pub val_fraction: f64,
    pub holdout: Vec<(Color, Shape)>,
    pub texture: bool,
}

impl World {
    pub fn from_options(opts: &SynthOptions) -> anyhow::Result<Self> {
        if !(MIN_SIZE..=8192).contains(&opts.size) {
            anyhow::bail!(
                "--size must be between {MIN_SIZE} and 8192, got {}",
                opts.size
            );
        }
        for (name, v) in [
            ("--two-object-fraction", opts.two_object_fraction),
            ("--val-fraction", opts.val_fraction),
        ] {
            if !(0.0..=1.0).contains(&v) {
                anyhow::bail!("{name} must be between 0 and 1, got {v}");
            }
        }
        Ok(Self {
            seed: opts.seed,
            size: opts.size,
            two_object_fraction: opts.two_object_fraction,
            val_fraction: opts.val_fraction,
            holdout: parse_holdout(&opts.holdout)?,
            texture: opts.texture,
        })
    }

    fn rng(&self, purpose: &str, index: u64) -> KeyedRng {
        KeyedRng::new(self.seed, purpose, 0, index)
    }

    /// Sample `index`: scene, caption and split, each from its own stream.
    pub fn sample(&self, index: u64) -> SynthSample {
        let scene = sample_scene(
            &mut self.rng("synth/scene", index),
            self.size,
            self.two_object_fraction,
        );
        let caption = caption(&scene, &mut self.rng("synth/caption", index));
        let held_out = scene
            .objects
            .iter()
            .any(|o| self.holdout.contains(&(o.color, o.shape)));
        let split = if held_out {
            Split::Holdout
        } else if self.rng("synth/split", index).bernoulli(self.val_fraction) {
            Split::Val
        } else {
            Split::Train
        };
        SynthSample {
            index,
            scene,
            caption,
            split,
        }
    }

    /// The pixels of `sample`.
    pub fn render(&self, sample: &SynthSample) -> RgbImage {
        let mut texture = self.rng("synth/texture", sample.index);
        render_scene(&sample.scene, self.texture.then_some(&mut texture))
    }
}
