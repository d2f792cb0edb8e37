//! The CLIP stage: a trained CLIP exported in the HF layout loads back (through the same code
//! path `unclip embed` uses) and gives exactly the embeddings of the checkpoint's weights;
//! training lowers the contrastive loss.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use burn::backend::Flex;
use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use common::*;
use unclip_clip::Clip;
use unclip_models::NoiseKey;
use unclip_train::export::{export, ExportDtype, ExportLayout};
use unclip_train::tasks::clip::{ClipModelConfig, ClipTask};
use unclip_train::{Resume, TrainTask, Trainer};

fn clip_config(train: &std::path::Path, val: &std::path::Path) -> String {
    let repo =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/test/clip.yaml");
    std::fs::read_to_string(repo)
        .expect("configs/test/clip.yaml")
        .replace("data/shapes-tiny/train", &train.display().to_string())
        .replace("data/shapes-tiny/val", &val.display().to_string())
}

fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
    t.into_data().to_vec().expect("f32")
}

#[test]
fn export_then_load_gives_identical_embeddings() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (train, val) = shards(tmp.path());
    let path = tmp.path().join("clip.yaml");
    std::fs::write(&path, clip_config(&train, &val)).expect("write");
    let loaded = unclip_train::launch::load::<ClipModelConfig>(&path, &[], Some(4)).expect("load");
    let task = ClipTask::new(&loaded.config).expect("task");
    let run = tmp.path().join("run");
    let mut t = Trainer::<B, ClipTask, ClipModelConfig>::new(
        task.clone(),
        loaded.config,
        loaded.resolved,
        Default::default(),
        Some(run.clone()),
        Resume::No,
    )
    .expect("trainer");
    let summary = t.run(&Arc::new(AtomicBool::new(false))).expect("run");
    assert_eq!(summary.step, 4);
    let v = t.validate().expect("validate").expect("val shards");
    for m in [
        "i2t_top1",
        "i2t_top5",
        "t2i_top1",
        "t2i_top5",
        "chance_top1",
    ] {
        let x = v.metrics[m];
        assert!((0.0..=1.0).contains(&x), "{m} = {x}");
    }

    let out = tmp.path().join("export");
    let ckpt = summary.last_checkpoint.expect("checkpoint");
    export(&ckpt, &out, true, ExportDtype::F32, ExportLayout::Native).expect("export");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(out.join(f).exists(), "{f}");
    }
    // Refused: a CLIP has no diffusers layout of its own.
    assert!(export(
        &ckpt,
        &tmp.path().join("x"),
        true,
        ExportDtype::F32,
        ExportLayout::Diffusers
    )
    .is_err());

    let device = Default::default();
    let reloaded = Clip::<Flex>::load_hf_dir(&out, &device).expect("load the export");
    let ema = t.ema().expect("ema on").valid();
    let key = NoiseKey {
        seed: 1,
        step: 0,
        indices: (0..4).collect(),
    };
    let batch = TrainTask::<B>::random_batch(&task, 4, &key);
    let pixels = batch
        .tensor::<Flex, 4>("pixel_values", &device)
        .expect("pixels");
    let field = batch.field("tokens").expect("tokens");
    let ids: Vec<Vec<u32>> = field
        .data
        .chunks(field.shape[1])
        .map(|r| r.iter().map(|&v| v as u32).collect())
        .collect();
    assert_eq!(
        values(ema.encode_image(pixels.clone())),
        values(reloaded.encode_image(pixels))
    );
    let (a, b) = (ema.encode_text(&ids), reloaded.encode_text(&ids));
    assert_eq!(values(a.text_embeds), values(b.text_embeds));
    assert_eq!(values(a.text_encodings), values(b.text_encodings));
    // The tokenizer written beside the weights is the one the task trained with.
    assert_eq!(
        std::fs::read_to_string(out.join("tokenizer.json")).expect("tok"),
        unclip_clip::BUNDLED_TOKENIZER_JSON
    );
}

#[test]
fn training_lowers_the_contrastive_loss() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (train, val) = shards(tmp.path());
    let path = tmp.path().join("clip.yaml");
    std::fs::write(&path, clip_config(&train, &val)).expect("write");
    let loaded = unclip_train::launch::load::<ClipModelConfig>(&path, &[], Some(40)).expect("load");
    let task = ClipTask::new(&loaded.config).expect("task");
    let mut t = Trainer::<B, ClipTask, ClipModelConfig>::new(
        task,
        loaded.config,
        loaded.resolved,
        Default::default(),
        None,
        Resume::No,
    )
    .expect("trainer");
    let before = t.validate().expect("val").expect("val shards").loss;
    let mut losses = Vec::new();
    for _ in 0..40 {
        losses.push(t.train_step().expect("step").loss);
    }
    let after = t.validate().expect("val").expect("val shards").loss;
    assert!(after < before * 0.9, "validation loss {before} -> {after}");
    let first: f64 = losses[..5].iter().sum();
    let last: f64 = losses[35..].iter().sum();
    assert!(last < first, "training loss {losses:?}");
}
