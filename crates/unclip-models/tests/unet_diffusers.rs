//! Two-way parity of the UNet and the CLIP conditioning with diffusers.
//!
//! Fixtures: tests/reference/fixtures/unet/, written by tests/reference/make_unet_fixtures.py
//! (tiny decoder `UNet2DConditionModel` + `UnCLIPTextProjModel` in Karlo's block types, tiny
//! super-resolution `UNet2DModel`, with their inputs and eval-mode outputs).

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::backend::Flex;
use burn::tensor::{Bool, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use unclip_models::{
    text_proj_from_diffusers, text_proj_to_diffusers, unet_from_diffusers, unet_to_diffusers,
};

type B = Flex;
type Tensors = BTreeMap<String, TensorData>;

fn dir(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/reference/fixtures/unet")
        .join(rel)
}

fn read_tensors(path: PathBuf) -> Tensors {
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let shape = view.shape().to_vec();
            let raw = view.data();
            let data = match view.dtype() {
                Dtype::F32 => TensorData::new(
                    raw.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect::<Vec<_>>(),
                    shape,
                ),
                Dtype::I64 => TensorData::new(
                    raw.chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect::<Vec<_>>(),
                    shape,
                ),
                Dtype::U8 => TensorData::new(raw.to_vec(), shape),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, data)
        })
        .collect()
}

fn read_model(rel: &str) -> (Value, Tensors) {
    let d = dir(rel);
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    (
        serde_json::from_str(&cfg).unwrap(),
        read_tensors(d.join("diffusion_pytorch_model.safetensors")),
    )
}

fn tensor<const D: usize>(io: &Tensors, key: &str) -> Tensor<B, D> {
    Tensor::from_data(io[key].clone().convert::<f32>(), &Default::default())
}

fn f32s(d: &TensorData) -> Vec<f32> {
    d.clone().convert::<f32>().to_vec().unwrap()
}

fn timesteps(io: &Tensors) -> Vec<f64> {
    io["timesteps"]
        .clone()
        .to_vec::<i64>()
        .unwrap()
        .into_iter()
        .map(|t| t as f64)
        .collect()
}

fn max_abs<const D: usize>(got: Tensor<B, D>, want: &TensorData) -> f32 {
    assert_eq!(got.dims().as_slice(), want.shape.as_slice());
    let g: Vec<f32> = got.into_data().to_vec().unwrap();
    g.iter()
        .zip(f32s(want))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// Same key set, shapes and exact values; config: every diffusers field with an equal value.
fn assert_same_export(ours: &(Value, Tensors), theirs: &(Value, Tensors)) {
    let (oc, ot) = ours;
    let (tc, tt) = theirs;
    assert_eq!(
        ot.keys().collect::<Vec<_>>(),
        tt.keys().collect::<Vec<_>>(),
        "key sets differ"
    );
    for (k, t) in tt {
        let o = &ot[k];
        assert_eq!(o.shape, t.shape, "{k}");
        assert_eq!(f32s(o), f32s(t), "{k} values");
    }
    let (oc, tc) = (oc.as_object().unwrap(), tc.as_object().unwrap());
    assert_eq!(
        oc.keys().collect::<Vec<_>>(),
        tc.keys().collect::<Vec<_>>(),
        "config fields differ"
    );
    for (k, t) in tc {
        let o = &oc[k];
        let same = match (o.as_f64(), t.as_f64()) {
            (Some(a), Some(b)) => a == b,
            _ => o == t,
        };
        assert!(same, "config {k}: ours {o}, diffusers {t}");
    }
}

#[test]
fn decoder_matches_diffusers_and_exports_back() {
    let d = Default::default();
    let unet_files = read_model("decoder/unet");
    let proj_files = read_model("decoder/text_proj");
    let io = read_tensors(dir("decoder/io.safetensors"));
    let (proj, proj_cfg) = text_proj_from_diffusers::<B>(&proj_files.0, &proj_files.1, &d).unwrap();
    let (unet, unet_cfg) = unet_from_diffusers::<B>(&unet_files.0, &unet_files.1, &d).unwrap();
    assert_eq!(unet_cfg.context_dim, Some(proj_cfg.context_dim));
    assert_eq!(unet_cfg.time_embed_dim(), proj_cfg.time_embed_dim);
    assert!(unet_cfg.class_embed && unet_cfg.scale_shift && unet_cfg.mid_attention);
    assert_eq!(unet_cfg.attention_levels, vec![false, true]);

    let mask_u8 = &io["text_mask"];
    let mask: Vec<bool> = mask_u8
        .to_vec::<u8>()
        .unwrap()
        .iter()
        .map(|&m| m != 0)
        .collect();
    let text_mask =
        Tensor::<B, 2, Bool>::from_data(TensorData::new(mask, mask_u8.shape.clone()), &d);
    let (emb_add, context, context_mask) = proj.forward(
        tensor(&io, "image_embed"),
        &[],
        tensor(&io, "text_embed"),
        tensor(&io, "text_encodings"),
        text_mask.clone(),
    );
    let e_emb = max_abs(emb_add.clone(), &io["emb_add"]);
    let e_ctx = max_abs(context.clone(), &io["context"]);
    let out = unet.forward(
        tensor(&io, "x"),
        &timesteps(&io),
        Some(emb_add),
        Some(context),
        Some(context_mask),
        None,
    );
    let e_out = max_abs(out, &io["out"]);
    println!("decoder max abs error: emb_add {e_emb:e}, context {e_ctx:e}, out {e_out:e}");
    assert!(e_emb < 1e-5 && e_ctx < 1e-5, "{e_emb} {e_ctx}");
    assert!(e_out < 1e-4, "decoder output differs by {e_out}");

    // diffusers' classifier-free-guidance batch: the first N rows use the learned null
    // embedding, i.e. our drop_image rows.
    let img: Tensor<B, 2> = tensor(&io, "image_embed");
    let text: Tensor<B, 2> = tensor(&io, "text_embed");
    let enc: Tensor<B, 3> = tensor(&io, "text_encodings");
    let n = img.dims()[0];
    let mut drop = vec![true; n];
    drop.extend(vec![false; n]);
    let (cfg_emb, cfg_ctx, _) = proj.forward(
        Tensor::cat(vec![img.clone(), img], 0),
        &drop,
        Tensor::cat(vec![text.clone(), text], 0),
        Tensor::cat(vec![enc.clone(), enc], 0),
        Tensor::cat(vec![text_mask.clone(), text_mask], 0),
    );
    let e1 = max_abs(cfg_emb, &io["cfg_emb_add"]);
    let e2 = max_abs(cfg_ctx, &io["cfg_context"]);
    println!("null image embedding rows: emb_add {e1:e}, context {e2:e}");
    assert!(e1 < 1e-5 && e2 < 1e-5);

    assert_same_export(&unet_to_diffusers(&unet, &unet_cfg).unwrap(), &unet_files);
    assert_same_export(
        &text_proj_to_diffusers(&proj, &proj_cfg).unwrap(),
        &proj_files,
    );
}

#[test]
fn super_res_matches_diffusers_and_exports_back() {
    let d = Default::default();
    let files = read_model("super_res/unet");
    let io = read_tensors(dir("super_res/io.safetensors"));
    let (unet, cfg) = unet_from_diffusers::<B>(&files.0, &files.1, &d).unwrap();
    assert!(cfg.context_dim.is_none() && !cfg.mid_attention && !cfg.class_embed);
    assert!(
        !cfg.scale_shift,
        "Karlo's super-res keeps diffusers' default time-embedding norm"
    );
    let out = unet.forward(tensor(&io, "x"), &timesteps(&io), None, None, None, None);
    let e = max_abs(out, &io["out"]);
    println!("super-res max abs error: out {e:e}");
    assert!(e < 1e-4, "super-res output differs by {e}");
    assert_same_export(&unet_to_diffusers(&unet, &cfg).unwrap(), &files);
}

#[test]
fn bad_weights_and_configs_are_errors() {
    let d = Default::default();
    let (cfg, tensors) = read_model("decoder/unet");
    let load = |c: &Value, t: &Tensors| unet_from_diffusers::<B>(c, t, &d).map(|_| ());

    let mut missing = tensors.clone();
    missing.remove("mid_block.attentions.0.add_k_proj.weight");
    let e = load(&cfg, &missing).unwrap_err();
    assert!(
        e.contains("missing tensor mid_block.attentions.0.add_k_proj.weight"),
        "{e}"
    );

    let mut wrong = tensors.clone();
    wrong.insert(
        "conv_in.weight".into(),
        TensorData::new(vec![0f32; 8 * 3 * 3], [8, 3, 3, 1]),
    );
    let e = load(&cfg, &wrong).unwrap_err();
    assert!(e.contains("conv_in.weight") && e.contains("shape"), "{e}");

    let mut extra = tensors.clone();
    extra.insert("foo.bar".into(), TensorData::new(vec![0f32], [1]));
    let e = load(&cfg, &extra).unwrap_err();
    assert!(e.contains("unexpected tensor foo.bar"), "{e}");

    let with = |key: &str, v: Value| {
        let mut c = cfg.clone();
        c[key] = v;
        c
    };
    for (key, v, needle) in [
        ("_class_name", Value::from("VQModel"), "_class_name"),
        (
            "mid_block_type",
            Value::from("UNetMidBlock2DCrossAttn"),
            "mid_block_type",
        ),
        (
            "resnet_time_scale_shift",
            Value::from("spatial"),
            "resnet_time_scale_shift",
        ),
        ("norm_eps", Value::from(1e-6), "norm_eps"),
        (
            "block_out_channels",
            Value::from(vec![8, 12]),
            "block_out_channels",
        ),
        ("norm_num_groups", Value::from(3), "divisible"),
        ("encoder_hid_dim", Value::from(4), "encoder_hid_dim"),
        ("layers_per_block", Value::from("two"), "layers_per_block"),
    ] {
        let e = load(&with(key, v), &tensors).unwrap_err();
        assert!(e.contains(needle), "{key}: {e}");
    }
    let e = load(&Value::from(3), &tensors).unwrap_err();
    assert!(e.contains("JSON object"), "{e}");

    // a text_proj with a wrong-size null embedding
    let (pc, mut pt) = read_model("decoder/text_proj");
    pt.insert(
        "learned_classifier_free_guidance_embeddings".into(),
        TensorData::new(vec![0f32; 3], [3]),
    );
    let e = text_proj_from_diffusers::<B>(&pc, &pt, &d)
        .map(|_| ())
        .unwrap_err();
    assert!(
        e.contains("learned_classifier_free_guidance_embeddings"),
        "{e}"
    );
}
