//! Two-way parity of `PriorTransformer` with diffusers' `PriorTransformer`.
//!
//! Fixtures: tests/reference/fixtures/prior/, written by tests/reference/make_prior_fixtures.py
//! (tiny random diffusers models saved with `save_pretrained`, plus inputs and diffusers'
//! eval-mode output): `diffusers/` + `io.safetensors` with the default timestep MLP
//! (`time_embed_dim` null), `diffusers_time_embed/` + `io_time_embed.safetensors` with
//! `time_embed_dim` 64 = 4 × the inner width.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::backend::Flex;
use burn::tensor::{Bool, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use unclip_models::{prior_from_diffusers, prior_to_diffusers, PriorTransformer};

/// (model folder, io file, expected `time_embed_dim`) of each fixture.
const FIXTURES: [(&str, &str, Option<usize>); 2] = [
    ("diffusers", "io.safetensors", None),
    (
        "diffusers_time_embed",
        "io_time_embed.safetensors",
        Some(64),
    ),
];

type B = Flex;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/fixtures/prior")
}

/// Every tensor of a safetensors file (f32 or u8) as TensorData.
fn read_safetensors(path: &PathBuf) -> BTreeMap<String, TensorData> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let shape = view.shape().to_vec();
            let data = match view.dtype() {
                Dtype::F32 => TensorData::new(
                    view.data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect::<Vec<f32>>(),
                    shape,
                ),
                Dtype::U8 => TensorData::new(view.data().to_vec(), shape),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, data)
        })
        .collect()
}

fn diffusers_files(folder: &str) -> (Value, BTreeMap<String, TensorData>) {
    let dir = fixtures().join(folder);
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let tensors = read_safetensors(&dir.join("diffusion_pytorch_model.safetensors"));
    (config, tensors)
}

fn f32s(d: &TensorData) -> Vec<f32> {
    d.clone().convert::<f32>().to_vec().unwrap()
}

fn import(folder: &str) -> PriorTransformer<B> {
    let (config, tensors) = diffusers_files(folder);
    prior_from_diffusers::<B>(&config, &tensors, &Default::default()).unwrap()
}

#[test]
fn forward_matches_diffusers() {
    for (folder, io, time_embed_dim) in FIXTURES {
        let err = forward_error(folder, io, time_embed_dim);
        println!("{folder}: max abs error vs diffusers: {err:e}");
        assert!(err < 1e-4, "{folder}: max abs error vs diffusers {err}");
    }
}

/// Max abs difference between our forward and diffusers' on one fixture.
fn forward_error(folder: &str, io: &str, time_embed_dim: Option<usize>) -> f32 {
    let d = Default::default();
    let model = import(folder);
    assert_eq!(model.config.time_embed_dim, time_embed_dim, "{folder}");
    let io = read_safetensors(&fixtures().join(io));
    let t2 = |k: &str| Tensor::<B, 2>::from_data(io[k].clone(), &d);
    let t: Vec<f64> = f32s(&io["timesteps"]).iter().map(|&v| v as f64).collect();
    let mask_u8: Vec<u8> = io["text_mask"].to_vec().unwrap();
    let mask = Tensor::<B, 2, Bool>::from_data(
        TensorData::new(
            mask_u8.iter().map(|&v| v != 0).collect::<Vec<bool>>(),
            io["text_mask"].shape.clone(),
        ),
        &d,
    );
    let enc = Tensor::<B, 3>::from_data(io["text_encodings"].clone(), &d);
    let out = model.forward(t2("x_t"), &t, t2("text_embed"), Some(enc), Some(mask), None);
    let want = f32s(&io["predicted_image_embedding"]);
    let got = f32s(&out.into_data());
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

#[test]
fn export_reproduces_the_diffusers_files() {
    for (folder, _, _) in FIXTURES {
        let (config, tensors) = diffusers_files(folder);
        let model = import(folder);
        assert_eq!(
            model.config.num_params(),
            tensors.values().map(|t| t.num_elements()).sum::<usize>(),
            "{folder}: num_params"
        );
        let (cfg, out) = prior_to_diffusers(&model).unwrap();
        assert_eq!(cfg, config, "{folder}: config.json differs");
        let out: BTreeMap<String, TensorData> = out.into_iter().collect();
        assert_eq!(
            out.keys().collect::<Vec<_>>(),
            tensors.keys().collect::<Vec<_>>(),
            "{folder}: key sets differ"
        );
        for (k, want) in &tensors {
            let got = &out[k];
            assert_eq!(got.shape, want.shape, "{folder}: {k}: shape");
            assert_eq!(f32s(got), f32s(want), "{folder}: {k}: values");
        }
    }
}

#[test]
fn bad_files_are_errors_not_panics() {
    let d = Default::default();
    let (config, tensors) = diffusers_files("diffusers");

    let mut missing = tensors.clone();
    missing.remove("transformer_blocks.1.attn1.to_k.weight");
    let e = prior_from_diffusers::<B>(&config, &missing, &d).unwrap_err();
    assert!(
        e.contains("missing tensor transformer_blocks.1.attn1.to_k.weight"),
        "{e}"
    );

    let mut wrong = tensors.clone();
    wrong.insert(
        "proj_in.weight".into(),
        TensorData::new(vec![0f32; 12 * 16], [12, 16]),
    );
    let e = prior_from_diffusers::<B>(&config, &wrong, &d).unwrap_err();
    assert!(
        e.contains("proj_in.weight") && e.contains("[16, 12]"),
        "{e}"
    );

    let mut extra = tensors.clone();
    extra.insert(
        "norm_in.weight".into(),
        TensorData::new(vec![1f32; 16], [16]),
    );
    let e = prior_from_diffusers::<B>(&config, &extra, &d).unwrap_err();
    assert!(
        e.contains("unexpected tensors") && e.contains("norm_in.weight"),
        "{e}"
    );

    // A checkpoint that carries the causal-mask buffer is still fine.
    let mut buffer = tensors.clone();
    buffer.insert(
        "causal_attention_mask".into(),
        TensorData::new(vec![0f32; 121], [1, 11, 11]),
    );
    assert!(prior_from_diffusers::<B>(&config, &buffer, &d).is_ok());

    let mut cfg = config.clone();
    cfg["num_layers"] = Value::from(3);
    let e = prior_from_diffusers::<B>(&cfg, &tensors, &d).unwrap_err();
    assert!(
        e.contains("missing tensor transformer_blocks.2.norm1.weight"),
        "{e}"
    );

    let mut cfg = config.clone();
    cfg["embedding_proj_norm_type"] = Value::from("layer");
    let e = prior_from_diffusers::<B>(&cfg, &tensors, &d).unwrap_err();
    assert!(e.contains("embedding_proj_norm_type"), "{e}");

    let mut cfg = config.clone();
    cfg["some_new_option"] = Value::from(true);
    let e = prior_from_diffusers::<B>(&cfg, &tensors, &d).unwrap_err();
    assert!(e.contains("some_new_option"), "{e}");

    let e = prior_from_diffusers::<B>(&Value::from(3), &tensors, &d).unwrap_err();
    assert!(e.contains("not a JSON object"), "{e}");

    // The wide timestep MLP's tensors under the default-width config (and the reverse) are
    // shape errors naming the tensor.
    let (wide_config, wide) = diffusers_files("diffusers_time_embed");
    let e = prior_from_diffusers::<B>(&config, &wide, &d).unwrap_err();
    assert!(
        e.contains("time_embedding.linear_1.weight") && e.contains("[64, 16]"),
        "{e}"
    );
    let e = prior_from_diffusers::<B>(&wide_config, &tensors, &d).unwrap_err();
    assert!(
        e.contains("time_embedding.linear_2.weight") && e.contains("[16, 16]"),
        "{e}"
    );
    let mut cfg = wide_config.clone();
    cfg["time_embed_dim"] = Value::from("wide");
    let e = prior_from_diffusers::<B>(&cfg, &wide, &d).unwrap_err();
    assert!(e.contains("time_embed_dim"), "{e}");
}
