//! Writing the HF layout, seeded random init, and the key report on mismatched files.

mod common;

use common::{fixture, read_io, B};
use unclip_clip::{
    init_random, read_safetensors, Clip, ClipConfig, ClipError, StoreDtype, BUNDLED_TOKENIZER_JSON,
};

fn max_diff(a: burn::tensor::Tensor<B, 2>, b: burn::tensor::Tensor<B, 2>) -> f32 {
    (a - b).abs().max().into_scalar()
}

#[test]
fn hf_round_trip_is_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = fixture("hf_quickgelu_pad0_f32");
    let model = Clip::<B>::load_hf_dir(&src, &Default::default()).expect("fixture loads");
    model
        .save_hf(dir.path(), StoreDtype::F32, None)
        .expect("saves");
    let mut original = read_safetensors(src.join("model.safetensors")).expect("reads");
    original.retain(|k, _| !k.ends_with("position_ids"));
    assert_eq!(
        read_safetensors(dir.path().join("model.safetensors")).expect("reads"),
        original
    );
    let reloaded = ClipConfig::from_file(dir.path().join("config.json")).expect("config reads");
    assert_eq!(reloaded, model.config);
}

#[test]
fn half_precision_export_loads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model =
        Clip::<B>::load_hf_dir(fixture("hf_gelu_padeos_f16"), &Default::default()).expect("loads");
    // The fixture's weights are f16 values, so an f16 export is lossless.
    model
        .save_hf(dir.path(), StoreDtype::F16, None)
        .expect("saves");
    let again = Clip::<B>::load_hf_dir(dir.path(), &Default::default()).expect("export loads");
    let io = read_io("hf_gelu_padeos_f16/io.safetensors");
    let a = model.encode_image(io.tensor4("pixel_values"));
    let b = again.encode_image(io.tensor4("pixel_values"));
    assert_eq!(max_diff(a, b), 0.0);
}

#[test]
fn random_init_is_reproducible_and_loads_back() {
    let config =
        ClipConfig::from_file(fixture("hf_mixed_padeos_bf16/config.json")).expect("config");
    let device = Default::default();
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    for (dir, seed) in dirs.iter().zip([7, 7, 8]) {
        init_random::<B>(&config, seed, &device)
            .save_hf(dir.path(), StoreDtype::F32, Some(BUNDLED_TOKENIZER_JSON))
            .expect("saves");
    }
    let read =
        |i: usize, name: &str| std::fs::read(dirs[i].path().join(name)).expect("file written");
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert_eq!(
            read(0, name),
            read(1, name),
            "{name} differs for the same seed"
        );
    }
    assert_ne!(read(0, "model.safetensors"), read(2, "model.safetensors"));

    let model = init_random::<B>(&config, 7, &device);
    let loaded = Clip::<B>::load_hf_dir(dirs[0].path(), &device).expect("init folder loads");
    let io = read_io("hf_mixed_padeos_bf16/io.safetensors");
    let a = model.encode_text(&io.input_ids).text_embeds;
    let b = loaded.encode_text(&io.input_ids).text_embeds;
    assert_eq!(max_diff(a, b), 0.0);
    // transformers' init: unit LayerNorms, zero biases, the configured logit scale.
    let weights = model.to_hf_weights();
    assert!(weights["text_model.final_layer_norm.weight"]
        .data
        .iter()
        .all(|&v| v == 1.0));
    assert!(weights["vision_model.encoder.layers.0.mlp.fc1.bias"]
        .data
        .iter()
        .all(|&v| v == 0.0));
    assert!((weights["logit_scale"].data[0] - 2.6592).abs() < 1e-6);
    let std = |k: &str| {
        let d = &weights[k].data;
        (d.iter().map(|v| v * v).sum::<f32>() / d.len() as f32).sqrt()
    };
    assert!((std("text_model.embeddings.token_embedding.weight") - 0.02).abs() < 0.002);
}

#[test]
fn mismatched_files_name_every_bad_key() {
    let config =
        ClipConfig::from_file(fixture("hf_quickgelu_pad0_f32/config.json")).expect("config");
    let mut map =
        read_safetensors(fixture("hf_quickgelu_pad0_f32/model.safetensors")).expect("reads");
    map.remove("text_model.encoder.layers.1.mlp.fc2.bias");
    let extra = map["logit_scale"].clone();
    map.insert("text_model.pooler.weight".into(), extra);
    map.get_mut("visual_projection.weight")
        .expect("present")
        .shape = vec![32, 24];
    let err = Clip::<B>::from_hf_weights(&config, map, "model.safetensors", &Default::default())
        .expect_err("a bad map is rejected");
    let text = err.to_string();
    assert!(matches!(err, ClipError::Keys { .. }));
    for needle in [
        "model.safetensors",
        "missing (1): text_model.encoder.layers.1.mlp.fc2.bias",
        "unexpected (1): text_model.pooler.weight",
        "visual_projection.weight (file [32, 24], config [24, 32])",
    ] {
        assert!(text.contains(needle), "`{needle}` not in:\n{text}");
    }

    // An HF file read as open_clip: reported in open_clip's names.
    let err = Clip::<B>::load_open_clip(
        &config,
        fixture("hf_quickgelu_pad0_f32/model.safetensors"),
        &Default::default(),
    )
    .expect_err("wrong layout is rejected")
    .to_string();
    assert!(
        err.contains("open_clip")
            && err.contains("visual.conv1.weight")
            && err.contains("text_projection.weight")
    );
}
