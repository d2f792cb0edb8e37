//! `stage: decoder`: exact resume with dropout and both CFG drops on, the drop rates counted
//! at the model's input, the diffusers export re-imported, random-source training and the
//! benchmark config, and every decoder config loading.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use common::{assert_same_checkpoint, B};
use unclip_clip::{ClipConfig, StoreDtype, BUNDLED_TOKENIZER_JSON};
use unclip_embed::{embed, ClipEmbedder, EmbedJob};
use unclip_models::{
    text_proj_from_diffusers, text_proj_to_diffusers, unet_from_diffusers, unet_to_diffusers,
    NoiseKey,
};
use unclip_stages::decoder::DecoderModelConfig;
use unclip_train::export::{ExportDtype, ExportLayout};
use unclip_train::launch::Loaded;
use unclip_train::tasks::decoder::{DecoderSpec, DecoderTask};
use unclip_train::TaskFactory;
use unclip_train::{Resume, TrainTask, Trainer};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// A tiny shapes world with its embedding stores (text encodings included), made by a
/// random-init tiny CLIP: (train, val, train store, val store).
fn world(dir: &Path) -> [PathBuf; 4] {
    let (train, val) = common::shards(dir);
    let cfg = ClipConfig::from_file(repo("configs/clip/tiny.json")).expect("tiny CLIP config");
    let clip = unclip_clip::init_random::<Flex>(&cfg, 3, &Default::default());
    let clip_dir = dir.join("clip");
    clip.save_hf(&clip_dir, StoreDtype::F32, Some(BUNDLED_TOKENIZER_JSON))
        .expect("save CLIP");
    let embedder = ClipEmbedder::load(&clip_dir).expect("load CLIP");
    let mut stores = Vec::new();
    for (shards, name) in [(&train, "train"), (&val, "val")] {
        let out = dir.join("emb").join(name);
        embed(
            &EmbedJob {
                shards: shards.display().to_string(),
                out: out.clone(),
                batch_size: 16,
                workers: 1,
                text_encodings: true,
                caption_json_field: None,
                max_pixels: unclip_data::decode::DEFAULT_MAX_PIXELS,
            },
            &embedder,
        )
        .expect("embed");
        stores.push(out);
    }
    [train, val, stores[0].clone(), stores[1].clone()]
}

/// configs/test/decoder.yaml with the world's paths, written to `dir/decoder.yaml`.
fn config_file(dir: &Path, w: &[PathBuf; 4]) -> PathBuf {
    let text = std::fs::read_to_string(repo("configs/test/decoder.yaml"))
        .expect("configs/test/decoder.yaml")
        .replace("data/shapes-tiny-emb/train", &w[2].display().to_string())
        .replace("data/shapes-tiny-emb/val", &w[3].display().to_string())
        .replace("data/shapes-tiny/train", &w[0].display().to_string())
        .replace("data/shapes-tiny/val", &w[1].display().to_string());
    let p = dir.join("decoder.yaml");
    std::fs::write(&p, text).expect("write config");
    p
}

fn load(path: &Path, overrides: &[&str]) -> Loaded<DecoderModelConfig> {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    unclip_train::launch::load(path, &o, None).expect("config loads")
}

type DecoderTrainer = Trainer<B, DecoderTask<B>, DecoderModelConfig>;

fn trainer(
    loaded: Loaded<DecoderModelConfig>,
    run: Option<&Path>,
    resume: Resume,
) -> DecoderTrainer {
    let task = DecoderSpec::new(&loaded.config)
        .expect("spec")
        .build::<B>(&Default::default())
        .expect("task");
    Trainer::new(
        task,
        loaded.config,
        loaded.resolved,
        Default::default(),
        run.map(Path::to_path_buf),
        resume,
    )
    .expect("trainer")
}

/// Everything on: dropout, both drops (raised so a short run surely has both), workers,
/// shuffle, crops and flips, EMA, accumulation, clipping, validation and previews.
const RUN: &[&str] = &[
    "optim.max_steps=6",
    "optim.lr_schedule.decay=constant",
    "model.image_cond_drop_prob=0.3",
    "model.text_cond_drop_prob=0.5",
    "checkpoint.every_steps=3",
    "checkpoint.every_minutes=~",
    "validation.every_steps=3",
    "preview.every_steps=3",
    "preview.count=2",
    "logging.every_steps=1",
    "logging.progress=false",
];

#[test]
fn resume_is_exact_and_the_diffusers_export_reimports() {
    let tmp = tempfile::tempdir().expect("tmp");
    let w = world(tmp.path());
    let cfg = config_file(tmp.path(), &w);
    let stop = Arc::new(AtomicBool::new(false));

    let straight = tmp.path().join("straight");
    let s = trainer(load(&cfg, RUN), Some(&straight), Resume::No)
        .run(&stop)
        .expect("straight run");
    assert_eq!(s.step, 6);
    assert!(
        straight.join("samples/step-3.png").exists(),
        "preview written"
    );

    // 3 steps, then a new trainer (a new process in real life) resumes from step-3.
    let first = tmp.path().join("first");
    let mut o = RUN.to_vec();
    o.push("optim.max_steps=3");
    trainer(load(&cfg, &o), Some(&first), Resume::No)
        .run(&stop)
        .expect("first half");
    let second = tmp.path().join("second");
    let r = trainer(
        load(&cfg, RUN),
        Some(&second),
        Resume::Path(first.join("step-3")),
    )
    .run(&stop)
    .expect("second half");
    assert_eq!(r.step, 6);
    assert_same_checkpoint(&straight.join("step-6"), &second.join("step-6"));

    // Export both layouts; the diffusers folders re-import to the same network.
    let ckpt = straight.join("step-6");
    let native = tmp.path().join("native");
    let diff = tmp.path().join("diffusers");
    unclip_train::export::export(&ckpt, &native, true, ExportDtype::F32, ExportLayout::Native)
        .expect("native export");
    let rep = unclip_train::export::export(
        &ckpt,
        &diff,
        true,
        ExportDtype::F32,
        ExportLayout::Diffusers,
    )
    .expect("diffusers export");
    assert_eq!(rep.config, diff.join("unet/config.json"));

    let loaded = load(&ckpt.join("config.resolved.yaml"), &[]);
    let spec = DecoderSpec::new(&loaded.config).expect("spec");
    let task = spec.build::<B>(&Default::default()).expect("task");
    let dev = Default::default();
    let fresh = task.init_model(&dev);
    let bytes = std::fs::read(native.join("model.safetensors")).expect("native weights");
    let ours = unclip_stages::export::load_safetensors(fresh, &bytes).expect("native loads");

    let read = |sub: &str| {
        let d = diff.join(sub);
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
        let bytes = std::fs::read(d.join("diffusion_pytorch_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t: BTreeMap<String, TensorData> = st
            .tensors()
            .into_iter()
            .map(|(k, v)| {
                let vals: Vec<f32> = v
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                (k, TensorData::new(vals, v.shape().to_vec()))
            })
            .collect();
        (cfg, t)
    };
    let (ucfg, ut) = read("unet");
    let (unet, unet_cfg) = unet_from_diffusers::<B>(&ucfg, &ut, &dev).expect("unet imports");
    assert_eq!(unet_cfg, spec.stage.net.unet);
    let (pcfg, pt) = read("text_proj");
    let (cond, cond_cfg) = text_proj_from_diffusers::<B>(&pcfg, &pt, &dev).expect("proj imports");
    assert_eq!(cond_cfg, spec.stage.net.cond);
    // The re-imported weights are the exported ones, bit for bit.
    let same = |a: &BTreeMap<String, TensorData>, b: &BTreeMap<String, TensorData>| {
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (k, x) in a {
            let y = &b[k];
            assert_eq!(x.shape, y.shape, "{k}");
            let (x, y): (Vec<f32>, Vec<f32>) = (
                x.clone().convert::<f32>().to_vec().unwrap(),
                y.clone().convert::<f32>().to_vec().unwrap(),
            );
            assert!(x == y, "{k} values");
        }
    };
    same(
        &unet_to_diffusers(&unet, &unet_cfg).expect("re-export").1,
        &ut,
    );
    same(
        &text_proj_to_diffusers(&cond, &cond_cfg)
            .expect("re-export")
            .1,
        &pt,
    );
    same(
        &unet_to_diffusers(&ours.unet, &spec.stage.net.unet)
            .expect("export")
            .1,
        &ut,
    );
    let theirs = unclip_models::Decoder { unet, cond };

    // Same output on a real validation batch with guidance-style drops on some rows.
    let key = NoiseKey {
        seed: 1,
        step: 2,
        indices: (0..4).collect(),
    };
    let mut b = task.random_batch(4, &key);
    // Real embeddings/encodings of the world's shape: take them from the store-backed loader.
    let mut loader = unclip_data::Loader::new(
        {
            let mut c = unclip_data::LoaderConfig::new(w[1].display().to_string(), 4);
            c.shuffle = false;
            c.epochs = Some(1);
            c.drop_last = false;
            c.workers = 1;
            c
        },
        unclip_data::Partition::SINGLE,
        task.transform(unclip_train::Split::Val).expect("transform"),
        None,
    )
    .expect("loader");
    if let Some(real) = loader.next_batch().expect("batch") {
        b = real;
    }
    let n = b.len();
    let key = NoiseKey {
        seed: 1,
        step: 2,
        indices: b.indices.clone(),
    };
    let x = Tensor::<B, 4>::from_data(
        TensorData::new(
            (0..n * 3 * 16 * 16)
                .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
                .collect::<Vec<_>>(),
            [n, 3, 16, 16],
        ),
        &dev,
    );
    let t: Vec<usize> = (0..n).map(|i| 7 + 11 * i).collect();
    let a_in = task
        .model_inputs(&ours, &b, Some(&key), &dev)
        .expect("inputs");
    let b_in = task
        .model_inputs(&theirs, &b, Some(&key), &dev)
        .expect("inputs");
    let a: Vec<f32> = ours
        .forward(x.clone(), &t, &a_in, None)
        .into_data()
        .to_vec()
        .unwrap();
    let bb: Vec<f32> = theirs
        .forward(x, &t, &b_in, None)
        .into_data()
        .to_vec()
        .unwrap();
    assert!(a.iter().any(|v| *v != 0.0), "a trained network, not zeros");
    let diff = a
        .iter()
        .zip(&bb)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    // Same weights, but the import's transposed layouts may take another matmul path: the
    // outputs agree to rounding.
    assert!(
        diff < 1e-5,
        "re-imported diffusers export differs by up to {diff}"
    );
}

/// A `data.source: random` decoder with tiny dims.
fn random_config(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        "stage: decoder
seed: 3
model:
  model_channels: 32
  channel_mult: [1, 2]
  num_res_blocks: 1
  attention_resolutions: [4]
  head_channels: 32
  context_dim: 32
  embed_dim: 8
  text_width: 8
  text_len: 6
diffusion:
  timesteps: 20
data:
  source: random
  batch_size: 16
  image_size: 8
logging:
  progress: false
{extra}"
    );
    let p = dir.join("random.yaml");
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn drop_rates_are_honoured_and_independent_at_the_model_input() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = random_config(tmp.path(), "");
    let loaded = load(&cfg, &[]);
    let spec = DecoderSpec::new(&loaded.config).expect("spec");
    let (p_img, p_txt) = (
        loaded.config.model.image_cond_drop_prob.0,
        loaded.config.model.text_cond_drop_prob.0,
    );
    assert_eq!((p_img, p_txt), (0.1, 0.5), "the defaults");
    let task = spec.build::<B>(&Default::default()).expect("task");
    let dev = Default::default();
    let model = unclip_models::keyed_init(task.init_model(&dev), 3).expect("init");
    // A distinctive null embedding, so that "equals the null embedding" means dropped.
    let mut model = model;
    model.cond.null_image_embed = model.cond.null_image_embed.map(|p| p.ones_like() * 0.25);
    let null: Vec<f32> = model
        .cond
        .null_image_embed
        .val()
        .into_data()
        .to_vec()
        .unwrap();
    let empty = &spec.cond.text.empty;
    let empty_enc = empty.encodings.clone().expect("empty encodings");
    let empty_mask: Vec<bool> = empty.mask.clone().expect("empty mask");

    let (bs, batches) = (16usize, 200u64);
    let (mut img, mut txt, mut both, mut total) = (0usize, 0usize, 0usize, 0usize);
    for step in 0..batches {
        let key = NoiseKey {
            seed: 11,
            step,
            indices: (step * bs as u64..(step + 1) * bs as u64).collect(),
        };
        let batch = task.random_batch(bs, &key);
        let inp = task
            .model_inputs(&model, &batch, Some(&key), &dev)
            .expect("inputs");
        let d = null.len();
        let l = empty_mask.len();
        let ie: Vec<f32> = inp.image_embed.into_data().to_vec().unwrap();
        let te: Vec<f32> = inp.text_embed.into_data().to_vec().unwrap();
        let enc: Vec<f32> = inp.text_encodings.into_data().to_vec().unwrap();
        let mask: Vec<bool> = inp.text_mask.into_data().to_vec().unwrap();
        let enc_w = empty_enc.len();
        for r in 0..bs {
            let is_null = ie[r * d..(r + 1) * d] == null[..];
            let is_empty = te[r * d..(r + 1) * d] == empty.text_embed[..]
                && enc[r * enc_w..(r + 1) * enc_w] == empty_enc[..]
                && mask[r * l..(r + 1) * l] == empty_mask[..];
            assert_eq!(
                is_null, inp.drop_image[r],
                "image flag = what the model sees"
            );
            assert_eq!(
                is_empty, inp.drop_text[r],
                "caption flag = what the model sees"
            );
            img += is_null as usize;
            txt += is_empty as usize;
            both += (is_null && is_empty) as usize;
            total += 1;
        }
    }
    let rate = |k: usize| k as f64 / total as f64;
    let sigma = |p: f64| (p * (1.0 - p) / total as f64).sqrt();
    let within = |k: usize, p: f64, what: &str| {
        let z = (rate(k) - p).abs() / sigma(p);
        assert!(z < 4.0, "{what}: rate {} vs {p} ({z:.1} σ)", rate(k));
    };
    within(img, p_img, "image drop");
    within(txt, p_txt, "caption drop");
    within(both, p_img * p_txt, "both dropped (independence)");

    // No drops without a key (validation, previews).
    let key = NoiseKey {
        seed: 11,
        step: 0,
        indices: (0..bs as u64).collect(),
    };
    let batch = task.random_batch(bs, &key);
    let inp = task
        .model_inputs(&model, &batch, None, &dev)
        .expect("inputs");
    assert!(!inp.drop_image.iter().any(|&d| d) && !inp.drop_text.iter().any(|&d| d));
}

/// `model.embed_scale` multiplies exactly the CLIP image and pooled text embeddings the
/// network receives (the per-token encodings are left alone).
#[test]
fn embed_scale_scales_the_embeddings_at_the_model_input() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = random_config(tmp.path(), "");
    let dev = Default::default();
    let inputs = |o: &[&str]| {
        let loaded = load(&cfg, o);
        let task = DecoderSpec::new(&loaded.config)
            .expect("spec")
            .build::<B>(&dev)
            .expect("task");
        let model = unclip_models::keyed_init(task.init_model(&dev), 3).expect("init");
        let key = NoiseKey {
            seed: 11,
            step: 0,
            indices: (0..8).collect(),
        };
        let batch = task.random_batch(8, &key);
        let inp = task
            .model_inputs(&model, &batch, None, &dev)
            .expect("inputs");
        let v = |t: burn::tensor::Tensor<B, 2>| -> Vec<f32> { t.into_data().to_vec().unwrap() };
        let enc: Vec<f32> = inp.text_encodings.into_data().to_vec().unwrap();
        (v(inp.image_embed), v(inp.text_embed), enc)
    };
    let (i1, t1, e1) = inputs(&[]);
    let (i3, t3, e3) = inputs(&["model.embed_scale=3.0"]);
    for (a, b) in i1.iter().chain(&t1).zip(i3.iter().chain(&t3)) {
        assert!((3.0 * a - b).abs() < 1e-6, "{a} × 3 ≠ {b}");
    }
    assert!(
        i1.iter().any(|v| v.abs() > 1e-3),
        "random embeddings are not all zero"
    );
    assert_eq!(e1, e3, "the encodings are not scaled");
}

#[test]
fn random_source_trains_finitely_and_the_bench_config_runs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = random_config(tmp.path(), "");
    let mut t = trainer(load(&cfg, &[]), None, Resume::No);
    for _ in 0..2 {
        let r = t.train_step().expect("step");
        assert!(r.loss.is_finite() && !r.skipped, "loss {}", r.loss);
    }
    // The benchmark config as shipped (one small batch to keep CI fast).
    let bench = repo("configs/bench/decoder.yaml");
    let report =
        unclip_train::launch::bench(&bench, &["data.batch_size=1".into()], 1, 0).expect("bench");
    assert_eq!(report.stage, unclip_train::Stage::Decoder);
    assert!(report.s_per_step.is_finite() && report.s_per_step > 0.0);
    let peer = 16_316_867f64; // DALLE2-pytorch Unet + Decoder at the bench shape
    let ratio = report.params as f64 / peer;
    assert!(
        (0.9..=1.1).contains(&ratio),
        "{} parameters, {ratio:.3}× the peer's",
        report.params
    );
}

#[test]
fn learned_variance_must_match_the_diffusion_config_and_bad_sizes_are_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cases: &[(&[&str], &str)] = &[
        (&["model.learned_variance=true"], "model.learned_variance"),
        (
            &["diffusion.variance=learned_range", "diffusion.loss=hybrid"],
            "model.learned_variance",
        ),
        (
            &["model.attention_resolutions=[3]"],
            "model.attention_resolutions",
        ),
        (&["model.channel_mult=[1,2,2,2,2]"], "model.channel_mult"),
        (&["model.text_encodings=none"], "model.text_encodings"),
        (&["model.model_channels=24"], "model"),
        (&["model.embed_scale=0"], "model.embed_scale"),
    ];
    let cfg = random_config(tmp.path(), "");
    for (o, key) in cases {
        let loaded = load(&cfg, o);
        let err = DecoderSpec::new(&loaded.config)
            .err()
            .unwrap_or_else(|| panic!("{o:?} accepted"));
        assert!(err.to_string().starts_with(key), "{o:?}: {err}");
    }
    // Learned variance set on both sides trains (6 output channels, hybrid loss).
    let loaded = load(
        &cfg,
        &[
            "model.learned_variance=true",
            "diffusion.variance=learned_range",
            "diffusion.loss=hybrid",
        ],
    );
    let mut t = trainer(loaded, None, Resume::No);
    assert!(t.train_step().expect("step").loss.is_finite());
}

#[test]
fn every_decoder_config_loads() {
    let mut n = 0;
    for group in std::fs::read_dir(repo("configs")).expect("configs/") {
        let group = group.expect("entry").path();
        let Ok(files) = std::fs::read_dir(&group) else {
            continue;
        };
        for f in files {
            let f = f.expect("entry").path();
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("decoder") && name.ends_with(".yaml") {
                let l: Loaded<DecoderModelConfig> = unclip_train::launch::load(&f, &[], None)
                    .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                assert_eq!(
                    l.config.stage,
                    unclip_train::Stage::Decoder,
                    "{}",
                    f.display()
                );
                n += 1;
            }
        }
    }
    assert!(n >= 5, "found {n} decoder configs");
}
