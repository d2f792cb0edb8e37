//! `stage: upsampler`: exact resume with crops, BSR corruption, noise augmentation and dropout
//! on; the diffusers export re-imported; the corruption pipeline keyed by sample and each
//! corruption observable; random-source training and the benchmark; every config loading.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};
use common::{assert_same_checkpoint, B};
use image::RgbImage;
use unclip_data::degrade::{
    blockiness, mean_abs_laplacian, BsrConfig, DegradationConfig, DegradationKind, LowRes,
    ResizeMode,
};
use unclip_data::superres::SuperResTransform;
use unclip_data::transform::{DecodedSample, SampleContext};
use unclip_data::{ImageTransform, SampleTransform};
use unclip_models::{upsampler_from_diffusers, upsampler_to_diffusers, Upsampler};
use unclip_rng::KeyedRng;
use unclip_stages::upsampler::UpsamplerModelConfig;
use unclip_train::export::{ExportDtype, ExportLayout};
use unclip_train::launch::Loaded;
use unclip_train::tasks::upsampler::{UpsamplerSpec, UpsamplerTask};
use unclip_train::TaskFactory;
use unclip_train::{Resume, TrainTask, Trainer};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn load(path: &Path, overrides: &[&str]) -> Loaded<UpsamplerModelConfig> {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    unclip_train::launch::load(path, &o, None).expect("config loads")
}

type UpsamplerTrainer = Trainer<B, UpsamplerTask, UpsamplerModelConfig>;

fn trainer(
    loaded: Loaded<UpsamplerModelConfig>,
    run: Option<&Path>,
    resume: Resume,
) -> UpsamplerTrainer {
    let task = UpsamplerSpec::new(&loaded.config)
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

const RUN: &[&str] = &[
    "optim.max_steps=6",
    "optim.lr_schedule.decay=constant",
    "checkpoint.every_steps=3",
    "checkpoint.every_minutes=~",
    "validation.every_steps=3",
    "preview.every_steps=3",
    "preview.count=2",
    "logging.every_steps=1",
    "logging.progress=false",
];

/// The safetensors of a diffusers folder as f32 tensors, with its config.
fn read_diffusers(dir: &Path) -> (serde_json::Value, BTreeMap<String, TensorData>) {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st
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
}

fn values(t: &TensorData) -> Vec<f32> {
    t.clone().convert::<f32>().to_vec().unwrap()
}

#[test]
fn resume_is_exact_and_the_diffusers_export_reimports() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (train, val) = common::shards(tmp.path());
    let text = std::fs::read_to_string(repo("configs/test/upsampler.yaml"))
        .expect("configs/test/upsampler.yaml")
        .replace("data/shapes-tiny/train", &train.display().to_string())
        .replace("data/shapes-tiny/val", &val.display().to_string());
    let cfg = tmp.path().join("upsampler.yaml");
    std::fs::write(&cfg, text).expect("write config");
    let stop = Arc::new(AtomicBool::new(false));

    let straight = tmp.path().join("straight");
    let s = trainer(load(&cfg, RUN), Some(&straight), Resume::No)
        .run(&stop)
        .expect("straight run");
    assert_eq!(s.step, 6);
    assert!(s.best_val_loss.is_some_and(f64::is_finite));
    let preview = image::open(straight.join("samples/step-3.png")).expect("preview written");
    // 2 rows × 4 columns of 16 px images with 2 px padding.
    assert_eq!(
        (preview.width(), preview.height()),
        (4 * 18 + 2, 2 * 18 + 2)
    );

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

    // Export both layouts; the diffusers UNet2DModel re-imports to the same network.
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
    let spec = UpsamplerSpec::new(&loaded.config).expect("spec");
    let task = spec.build::<B>(&Default::default()).expect("task");
    let dev = Default::default();
    let bytes = std::fs::read(native.join("model.safetensors")).expect("native weights");
    let ours: Upsampler<B> = unclip_stages::export::load_safetensors(task.init_model(&dev), &bytes)
        .expect("native loads");

    let (ucfg, ut) = read_diffusers(&diff.join("unet"));
    assert_eq!(ucfg["_class_name"], "UNet2DModel");
    assert_eq!(ucfg["in_channels"], 6);
    // Noise augmentation: diffusers' `class_embed_type: timestep`, whose MLP is ours.
    assert_eq!(ucfg["class_embed_type"], "timestep");
    let mlp = ours.noise_level_embed.as_ref().expect("noise-level MLP");
    let w1 = values(&mlp.linear_1.weight.val().transpose().into_data());
    assert!(values(&ut["class_embedding.linear_1.weight"]) == w1);
    let (theirs, unet_cfg) = upsampler_from_diffusers::<B>(&ucfg, &ut, &dev).expect("imports");
    assert_eq!(unet_cfg, spec.stage.net.unet);
    let (_, re) = upsampler_to_diffusers(&theirs, &unet_cfg).expect("re-export");
    assert_eq!(re.keys().collect::<Vec<_>>(), ut.keys().collect::<Vec<_>>());
    for (k, v) in &ut {
        assert!(values(&re[k]) == values(v), "{k} differs after re-export");
    }
    let n = 2;
    let x = |seed: usize| {
        Tensor::<B, 4>::from_data(
            TensorData::new(
                (0..n * 3 * 16 * 16)
                    .map(|i| (((i + seed) * 37 % 101) as f32 / 50.0) - 1.0)
                    .collect::<Vec<_>>(),
                [n, 3, 16, 16],
            ),
            &dev,
        )
    };
    let t = [7usize, 31];
    let aug = [3usize, 20];
    let a: Vec<f32> = ours
        .forward(x(0), x(5), &t, Some(&aug), None)
        .into_data()
        .to_vec()
        .unwrap();
    let b: Vec<f32> = theirs
        .forward(x(0), x(5), &t, Some(&aug), None)
        .into_data()
        .to_vec()
        .unwrap();
    assert!(a.iter().any(|v| *v != 0.0), "a trained network, not zeros");
    let d = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        d < 1e-5,
        "re-imported diffusers export differs by up to {d}"
    );
}

/// A smooth image with sharp-edged shapes on it, `side`².
fn picture(side: u32) -> RgbImage {
    RgbImage::from_fn(side, side, |x, y| {
        let (fx, fy) = (x as f64 / side as f64, y as f64 / side as f64);
        let inside = (fx - 0.4).powi(2) + (fy - 0.5).powi(2) < 0.06;
        let square = (0.65..0.9).contains(&fx) && (0.1..0.4).contains(&fy);
        let base = [
            (120.0 + 80.0 * (fx * 3.0).sin()) as u8,
            (100.0 + 90.0 * fy) as u8,
            (140.0 + 60.0 * ((fx + fy) * 2.0).cos()) as u8,
        ];
        image::Rgb(if inside {
            [230, 40, 40]
        } else if square {
            [30, 30, 200]
        } else {
            base
        })
    })
}

fn low_res(kind: DegradationKind, bsr: BsrConfig, blur_prob: f64) -> LowRes {
    let mut d = DegradationConfig {
        kind,
        bsr,
        ..Default::default()
    };
    d.blur.prob = blur_prob;
    let l = LowRes {
        downsample: ResizeMode::Bicubic,
        upsample: ResizeMode::Bicubic,
        degradation: d,
    };
    l.validate().expect("valid");
    l
}

/// BSR with every step off; tests switch one on.
fn bsr_off() -> BsrConfig {
    BsrConfig {
        blur_prob: 0.0,
        two_stage_prob: 0.0,
        noise_prob: 0.0,
        jpeg_prob: 0.0,
        resize_modes: vec![ResizeMode::Area],
        ..Default::default()
    }
}

#[test]
fn the_corruption_pipeline_is_keyed_by_sample_and_seed() {
    let mut png = Vec::new();
    picture(40)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let sample = DecodedSample {
        key: "k".into(),
        shard: Arc::from(Path::new("s.tar")),
        caption: None,
        json_bytes: None,
        image_bytes: png,
        image_ext: "png".into(),
        max_pixels: unclip_data::decode::DEFAULT_MAX_PIXELS,
    };
    let mut base = ImageTransform::new(32);
    base.resize_to = Some(36);
    base.crop = unclip_data::transform::Crop::Random;
    let t = SuperResTransform {
        base,
        low_res: low_res(DegradationKind::Bsr, BsrConfig::default(), 0.5),
        factor: 4,
        crop: 16,
    };
    let run = |seed: u64, index: u64| {
        let ctx = SampleContext {
            seed,
            epoch: 0,
            index,
        };
        let e = t.apply(sample.clone(), ctx).expect("transform");
        let shapes: Vec<Vec<usize>> = e.fields.iter().map(|f| f.shape.clone()).collect();
        assert_eq!(shapes, [vec![3, 16, 16], vec![3, 16, 16], vec![3, 4, 4]]);
        e.fields
            .iter()
            .flat_map(|f| f.data.iter().map(|v| v.to_bits()))
            .collect::<Vec<u32>>()
    };
    assert_eq!(run(1, 3), run(1, 3), "same sample and seed → same bytes");
    assert_ne!(run(1, 3), run(2, 3), "another seed → another corruption");
    assert_ne!(run(1, 3), run(1, 4), "another sample → another corruption");
    // The low-res and the target come from the same crop: the low-res upsampled is close to
    // the target (far closer than to another sample's target).
    let ctx = SampleContext {
        seed: 1,
        epoch: 0,
        index: 3,
    };
    let clean = SuperResTransform {
        low_res: low_res(DegradationKind::None, bsr_off(), 0.0),
        ..t.clone()
    };
    let (target, _, up) = clean.apply_rgb(&picture(40), &ctx).expect("clean");
    let mad = |a: &RgbImage, b: &RgbImage| {
        a.as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| (*x as f64 - *y as f64).abs())
            .sum::<f64>()
            / a.as_raw().len() as f64
    };
    let other = SampleContext { index: 9, ..ctx };
    let (target2, _, _) = clean.apply_rgb(&picture(40), &other).expect("clean");
    assert!(target != target2, "crops move between samples");
    assert!(mad(&target, &up) < 0.5 * mad(&target2, &up));
}

#[test]
fn each_corruption_is_observable() {
    let rng = |i| KeyedRng::new(5, "degrade", 0, i);
    // Blur (the 64→256 setting) lowers high-frequency energy.
    let hr = picture(128);
    let sharp = low_res(DegradationKind::Blur, bsr_off(), 0.0)
        .degrade(&hr, 64, &mut rng(0))
        .unwrap();
    let blurred = low_res(DegradationKind::Blur, bsr_off(), 1.0)
        .degrade(&hr, 64, &mut rng(0))
        .unwrap();
    let (ls, lb) = (mean_abs_laplacian(&sharp), mean_abs_laplacian(&blurred));
    assert!(lb < 0.8 * ls, "blur: |Laplacian| {lb} vs {ls}");
    // BSR blur too.
    let b = BsrConfig {
        blur_prob: 1.0,
        blur_sigma: [1.5, 1.5],
        ..bsr_off()
    };
    let bsr_blurred = low_res(DegradationKind::Bsr, b, 0.0)
        .degrade(&hr, 64, &mut rng(0))
        .unwrap();
    let clean = low_res(DegradationKind::Bsr, bsr_off(), 0.0)
        .degrade(&hr, 64, &mut rng(0))
        .unwrap();
    assert!(mean_abs_laplacian(&bsr_blurred) < 0.8 * mean_abs_laplacian(&clean));

    // JPEG adds 8×8 blocking.
    let j = BsrConfig {
        jpeg_prob: 1.0,
        jpeg_quality: [10, 10],
        ..bsr_off()
    };
    let jpeg = low_res(DegradationKind::Bsr, j, 0.0)
        .degrade(&hr, 64, &mut rng(0))
        .unwrap();
    let (bc, bj) = (blockiness(&clean), blockiness(&jpeg));
    assert!(bj > 1.3 * bc, "JPEG: blockiness {bj} vs {bc}");

    // Noise raises the variance of a flat image.
    let flat = RgbImage::from_pixel(64, 64, image::Rgb([128, 128, 128]));
    let n = BsrConfig {
        noise_prob: 1.0,
        noise_sigma: [10.0, 10.0],
        ..bsr_off()
    };
    let var = |img: &RgbImage| {
        let v: Vec<f64> = img.as_raw().iter().map(|x| *x as f64).collect();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64
    };
    let quiet = low_res(DegradationKind::Bsr, bsr_off(), 0.0)
        .degrade(&flat, 32, &mut rng(0))
        .unwrap();
    let noisy = low_res(DegradationKind::Bsr, n, 0.0)
        .degrade(&flat, 32, &mut rng(0))
        .unwrap();
    assert_eq!(var(&quiet), 0.0);
    let v = var(&noisy);
    assert!((60.0..140.0).contains(&v), "noise σ 10: variance {v}");

    // The full default BSR chain runs on odd sizes and keeps the requested size.
    let full = low_res(DegradationKind::Bsr, BsrConfig::default(), 0.0);
    for i in 0..8 {
        let out = full.degrade(&picture(36), 9, &mut rng(i)).unwrap();
        assert_eq!(out.dimensions(), (9, 9));
    }
}

/// A `data.source: random` upsampler with tiny dims.
fn random_config(dir: &Path) -> PathBuf {
    let text = "stage: upsampler
seed: 3
model:
  model_channels: 32
  channel_mult: [1, 2]
  num_res_blocks: 1
  low_res_size: 8
  crop_fraction: 0.5
diffusion:
  schedule: linear
  timesteps: 50
data:
  source: random
  batch_size: 4
  image_size: 32
logging:
  progress: false
";
    let p = dir.join("random.yaml");
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn random_source_trains_and_benches_and_bad_sizes_are_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = random_config(tmp.path());
    let mut t = trainer(load(&cfg, &[]), None, Resume::No);
    for _ in 0..2 {
        let r = t.train_step().expect("step");
        assert!(r.loss.is_finite() && !r.skipped, "loss {}", r.loss);
    }
    let report = unclip_train::launch::bench(&cfg, &["model.noise_aug.enabled=true".into()], 1, 0)
        .expect("bench");
    assert_eq!(report.stage, unclip_train::Stage::Upsampler);
    assert!(report.s_per_step.is_finite() && report.s_per_step > 0.0);

    let cases: &[(&[&str], &str)] = &[
        (&["model.low_res_size=12"], "model.low_res_size"),
        (&["model.low_res_size=32"], "model.low_res_size"),
        (&["model.crop_fraction=0"], "model.crop_fraction"),
        (&["model.crop_fraction=1.5"], "model.crop_fraction"),
        (&["model.crop_fraction=0.05"], "model.crop_fraction"),
        (
            &["model.channel_mult=[1,1,1,1,1,1,1]"],
            "model.channel_mult",
        ),
        (
            &["model.degradation.blur.kernel=4"],
            "model.degradation.blur.kernel",
        ),
        (
            &["model.degradation.bsr.jpeg_quality=[90, 20]"],
            "model.degradation.bsr.jpeg_quality",
        ),
        (
            &["model.degradation.bsr.resize_modes=[]"],
            "model.degradation.bsr.resize_modes",
        ),
        (
            &["model.noise_aug.max_level=2"],
            "model.noise_aug.max_level",
        ),
        (
            &["diffusion.variance=learned_range", "diffusion.loss=hybrid"],
            "diffusion.variance",
        ),
        (&["model.model_channels=24"], "model"),
    ];
    for (o, key) in cases {
        let loaded = load(&cfg, o);
        let err = UpsamplerSpec::new(&loaded.config)
            .err()
            .unwrap_or_else(|| panic!("{o:?} accepted"));
        assert!(err.to_string().starts_with(key), "{o:?}: {err}");
    }
    // The crop side: a quarter of 256 at factor 4 with 4 levels is 64.
    let loaded = load(
        &cfg,
        &[
            "data.image_size=256",
            "model.low_res_size=64",
            "model.crop_fraction=0.25",
            "model.channel_mult=[1,2,3,4]",
        ],
    );
    assert_eq!(
        UpsamplerSpec::new(&loaded.config).unwrap().stage.crop_size,
        64
    );
}

#[test]
fn every_upsampler_config_loads() {
    let mut n = 0;
    for group in std::fs::read_dir(repo("configs")).expect("configs/") {
        let group = group.expect("entry").path();
        let Ok(files) = std::fs::read_dir(&group) else {
            continue;
        };
        for f in files {
            let f = f.expect("entry").path();
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("upsampler") && name.ends_with(".yaml") {
                let l: Loaded<UpsamplerModelConfig> = unclip_train::launch::load(&f, &[], None)
                    .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                assert_eq!(l.config.stage, unclip_train::Stage::Upsampler);
                UpsamplerSpec::new(&l.config).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                n += 1;
            }
        }
    }
    assert!(n >= 4, "found {n} upsampler configs");
}

/// `model.residual` with x0 prediction: the untrained network (zero output layer) samples the
/// upsampled low-res image itself — exactly, at every respacing — while the same network on
/// the image (no residual) samples something else; a residual upsampler trains, resumes into
/// a checkpoint, and its diffusers export is refused (UNet2DModel pipelines would take the
/// residual for the image).
#[test]
fn residual_upsampler_starts_from_the_low_res_image() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = random_config(tmp.path());
    let dev = Default::default();
    let mut low = vec![0f32; 2 * 3 * 32 * 32];
    let mut rng = KeyedRng::new(9, "low", 0, 0);
    low.iter_mut()
        .for_each(|v| *v = rng.uniform_f32() * 2.0 - 1.0);
    let low = Tensor::<B, 4>::from_data(TensorData::new(low.clone(), [2, 3, 32, 32]), &dev);
    let key = unclip_models::NoiseKey {
        seed: 5,
        step: 0,
        indices: vec![0, 1],
    };
    let sample_gap = |residual: bool| {
        let loaded = load(
            &cfg,
            &[
                &format!("model.residual={residual}"),
                "diffusion.parameterization=x0",
                "diffusion.sampling.sampler=ddim",
                "diffusion.sampling.respacing=5",
                "diffusion.sampling.clip_x0={static: 2.0}",
            ],
        );
        let spec = UpsamplerSpec::new(&loaded.config).expect("spec");
        let sampler = loaded.config.diffusion.sampler().expect("sampler");
        let task = spec.build::<B>(&dev).expect("task");
        let model = unclip_models::keyed_init(task.init_model(&dev), 3).expect("init");
        let x = spec
            .stage
            .sample_images(&sampler, &model, low.clone(), &key);
        (x - low.clone()).abs().max().into_scalar()
    };
    let residual = sample_gap(true);
    assert!(
        residual < 1e-5,
        "untrained residual sample − low-res: {residual}"
    );
    let plain = sample_gap(false);
    assert!(
        plain > 0.1,
        "the plain x0 network samples the low-res image: {plain}"
    );

    let run = tmp.path().join("run");
    let mut o = RUN.to_vec();
    o.extend(["optim.max_steps=2", "model.residual=true"]);
    o.extend(["checkpoint.every_steps=2", "validation.every_steps=2"]);
    o.push("diffusion.parameterization=x0");
    let stop = Arc::new(AtomicBool::new(false));
    let r = trainer(load(&cfg, &o), Some(&run), Resume::No)
        .run(&stop)
        .expect("residual run");
    assert_eq!(r.step, 2);
    let err = unclip_train::export::export(
        &run.join("step-2"),
        &tmp.path().join("diffusers"),
        true,
        ExportDtype::F32,
        ExportLayout::Diffusers,
    )
    .expect_err("a residual upsampler's diffusers export is refused");
    assert!(err.to_string().contains("model.residual"), "{err}");
}

/// Two-way parity with diffusers for the noise-augmented upsampler: a `UNet2DModel` with
/// `class_embed_type: "timestep"` written by diffusers (tests/reference/make_unet_fixtures.py,
/// `super_res_aug/`) imports as our upsampler, whose output for the same x_t, low-res image,
/// timesteps and augmentation timesteps matches diffusers' to 1e-4, and exports back to the same
/// tensors and config fields.
#[test]
fn noise_augmented_upsampler_matches_diffusers_and_exports_back() {
    let fixtures = repo("tests/reference/fixtures/unet/super_res_aug");
    let (cfg, tensors) = read_diffusers(&fixtures.join("unet"));
    let bytes = std::fs::read(fixtures.join("io.safetensors")).expect("io fixture");
    let io = safetensors::SafeTensors::deserialize(&bytes).expect("io");
    let f32s = |name: &str| -> Vec<f32> {
        io.tensor(name)
            .expect(name)
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let steps = |name: &str| -> Vec<usize> {
        io.tensor(name)
            .expect(name)
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as usize)
            .collect()
    };
    let dev = Default::default();
    let (model, unet_cfg) = upsampler_from_diffusers::<B>(&cfg, &tensors, &dev).expect("imports");
    assert!(model.noise_level_embed.is_some() && unet_cfg.class_embed);
    let x = Tensor::<B, 4>::from_data(TensorData::new(f32s("x"), [2, 6, 16, 16]), &dev);
    let (x_t, low) = (x.clone().narrow(1, 0, 3), x.narrow(1, 3, 3));
    let (t, aug) = (steps("timesteps"), steps("class_labels"));
    let ours: Vec<f32> = model
        .forward(x_t, low, &t, Some(&aug), None)
        .into_data()
        .to_vec()
        .unwrap();
    let theirs = f32s("out");
    assert_eq!(ours.len(), theirs.len());
    let e = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("noise-augmented super-res max abs error: {e:e}");
    assert!(e < 1e-4, "output differs from diffusers' by {e}");
    // Without the augmentation timesteps' MLP the output changes: the class path is exercised.
    let plain = Upsampler {
        unet: model.unet.clone(),
        noise_level_embed: None,
    };
    let x = Tensor::<B, 4>::from_data(TensorData::new(f32s("x"), [2, 6, 16, 16]), &dev);
    let without: Vec<f32> = plain
        .forward(x.clone().narrow(1, 0, 3), x.narrow(1, 3, 3), &t, None, None)
        .into_data()
        .to_vec()
        .unwrap();
    assert!(without
        .iter()
        .zip(&theirs)
        .any(|(a, b)| (a - b).abs() > 1e-3));

    let (re_cfg, re) = upsampler_to_diffusers(&model, &unet_cfg).expect("exports");
    assert_eq!(
        re.keys().collect::<Vec<_>>(),
        tensors.keys().collect::<Vec<_>>()
    );
    for (k, v) in &tensors {
        assert_eq!(re[k].shape, v.shape, "{k}");
        assert!(values(&re[k]) == values(v), "{k} differs after re-export");
    }
    for (k, v) in re_cfg.as_object().expect("config object") {
        let t = &cfg[k];
        let same = match (v.as_f64(), t.as_f64()) {
            (Some(a), Some(b)) => a == b,
            _ => v == t,
        };
        assert!(same, "config {k}: ours {v}, diffusers {t}");
    }
    // A class embedding of another kind is refused, as is a stray class_embedding tensor.
    let mut other = cfg.clone();
    other["class_embed_type"] = serde_json::json!("identity");
    let err = upsampler_from_diffusers::<B>(&other, &tensors, &dev).expect_err("identity");
    assert!(err.contains("class_embed"), "{err}");
    let mut extra = tensors.clone();
    extra.insert(
        "class_embedding.cond_proj.weight".into(),
        TensorData::new(vec![0f32], [1]),
    );
    let err = upsampler_from_diffusers::<B>(&cfg, &extra, &dev).expect_err("extra");
    assert!(err.contains("unexpected tensor"), "{err}");
}
