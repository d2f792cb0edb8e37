//! Shared fixtures of the engine's tests: tiny shapes-world shards and a small denoise run.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use unclip_train::tasks::denoise::{DenoiseModelConfig, DenoiseTask};
use unclip_train::{Resume, RunConfig, Trainer};

pub type B = Autodiff<Flex>;
pub type DenoiseTrainer = Trainer<B, DenoiseTask, DenoiseModelConfig>;

/// Renders 96 shapes-world samples (20 px, 16 per shard) under `dir`; returns (train, val).
pub fn shards(dir: &Path) -> (PathBuf, PathBuf) {
    let mut o = unclip_data_tools::SynthOptions::new(dir.join("shapes"));
    o.count = 96;
    o.size = 20;
    o.samples_per_shard = 16;
    o.val_fraction = 0.2;
    o.threads = 1;
    unclip_data_tools::synth(&o).expect("synth");
    (dir.join("shapes/train"), dir.join("shapes/val"))
}

/// A small run with everything on: workers, shuffle buffer, random crops and flips, dropout,
/// EMA, accumulation, clipping, warm-up + cosine, validation. `extra` is appended YAML.
pub fn config_text(train: &Path, val: &Path, extra: &str) -> String {
    format!(
        "stage: denoise
seed: 7
model:
  channels: 8
  dropout: 0.1
diffusion:
  timesteps: 50
  sampling:
    respacing: \"5\"
data:
  shards: {}
  val_shards: {}
  batch_size: 4
  workers: 2
  shuffle_buffer: 16
  image_size: 16
  resize_to: 18
  random_crop: true
  hflip_prob: 0.5
optim:
  lr: 0.002
  accumulation_steps: 2
  max_steps: 6
  grad_clip_norm: 0.5
  lr_schedule:
    warmup_steps: 2
ema:
  decay: 0.9
  update_after_step: 1
checkpoint:
  every_steps: 3
  every_minutes: ~
  keep_last: 2
validation:
  every_steps: 3
  batches: 2
logging:
  every_steps: 1
  progress: false
{extra}",
        train.display(),
        val.display()
    )
}

/// Writes `text` to `dir/run.yaml` and loads it with `overrides`.
pub fn load(
    dir: &Path,
    text: &str,
    overrides: &[String],
) -> unclip_train::launch::Loaded<DenoiseModelConfig> {
    let p = dir.join("run.yaml");
    std::fs::write(&p, text).expect("write config");
    unclip_train::launch::load(&p, overrides, None).expect("config loads")
}

pub fn trainer(
    loaded: unclip_train::launch::Loaded<DenoiseModelConfig>,
    run_dir: &Path,
    resume: Resume,
) -> Result<DenoiseTrainer, unclip_train::TrainError> {
    let task = unclip_train::launch::denoise_task(&loaded.config)?;
    Trainer::new(
        task,
        loaded.config,
        loaded.resolved,
        Default::default(),
        Some(run_dir.to_path_buf()),
        resume,
    )
}

pub fn config_of(
    loaded: &unclip_train::launch::Loaded<DenoiseModelConfig>,
) -> &RunConfig<DenoiseModelConfig> {
    &loaded.config
}

/// The files of a checkpoint folder that must be identical between equivalent runs.
pub const CHECKPOINT_FILES: &[&str] = &["model.mpk", "ema.mpk", "optim.mpk", "state.json"];

/// Asserts two checkpoint folders hold the same bits. `.mpk` files are compared as decoded
/// MessagePack: the optimizer record is a hash map, serialized in a per-process order.
pub fn assert_same_checkpoint(a: &Path, b: &Path) {
    for f in CHECKPOINT_FILES {
        let x = std::fs::read(a.join(f)).expect("read a");
        let y = std::fs::read(b.join(f)).expect("read b");
        let same = if f.ends_with(".mpk") {
            let x: Value = rmp_serde::from_slice(&x).expect("decode a");
            let y: Value = rmp_serde::from_slice(&y).expect("decode b");
            x == y
        } else {
            x == y
        };
        assert!(
            same,
            "{f} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// Any MessagePack value, with maps as sorted entry lists (so that order does not matter).
#[derive(Debug, PartialEq, PartialOrd)]
pub enum Value {
    Unit,
    Bool(bool),
    Int(i128),
    /// f64 bits: equality is bit equality.
    Float(u64),
    Str(String),
    Bytes(Vec<u8>),
    Seq(Vec<Value>),
    Map(Vec<(Value, Value)>),
}

impl<'de> serde::Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Unit)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Unit)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Int(v as i128))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
                Ok(Value::Int(v as i128))
            }
            fn visit_f32<E>(self, v: f32) -> Result<Value, E> {
                Ok(Value::Float((v as f64).to_bits()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Float(v.to_bits()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Str(v.to_owned()))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
                Ok(Value::Bytes(v.to_vec()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = a.next_element()? {
                    out.push(v);
                }
                Ok(Value::Seq(out))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
                let mut out: Vec<(Value, Value)> = Vec::new();
                while let Some(kv) = a.next_entry()? {
                    out.push(kv);
                }
                out.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap_or(std::cmp::Ordering::Equal));
                Ok(Value::Map(out))
            }
        }
        d.deserialize_any(V)
    }
}
