//! `unclip pipeline assemble --layout diffusers` on tiny random-init exports (no training, no
//! Python): the folder holds what diffusers' `UnCLIPPipeline.from_pretrained` reads, each
//! component's config says what our stage is, and every pipeline diffusers could not compute
//! the same way is refused before anything is written. (Loading it in diffusers and comparing
//! numbers: tests/reference/check_diffusers_pipeline.py, see docs/inference.md.)

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use serde_json::{json, Value};
use unclip_diffusion::DiffusionConfig;
use unclip_infer::{assemble_as, AssembleOptions};
use unclip_stages::decoder::{DecoderModelConfig, DecoderStage};
use unclip_stages::export::{ExportDtype, ExportLayout, ExportMeta, EXPORT_FORMAT};
use unclip_stages::prior::{PriorModelConfig, PriorStage};
use unclip_stages::text::{ClipDims, TextCond};
use unclip_stages::upsampler::{UpsamplerModelConfig, UpsamplerStage};
use unclip_stages::Stage;

type B = Flex;

/// The CLIP sizes of the tiny CLIP (configs/clip/tiny.json: 64-d, 64 wide).
const DIMS: ClipDims = ClipDims {
    embed_dim: 64,
    text_width: 64,
    text_len: 77,
};

/// A native export of a random-init stage built from `model` and `diffusion` (what
/// `unclip export` writes for a checkpoint of that config), written through the stage layer.
fn export(dir: &Path, stage: Stage, model: Value, diffusion: Value, image_size: u64) {
    let diffusion: DiffusionConfig = serde_json::from_value(diffusion).expect("diffusion");
    let device = Default::default();
    let meta = |model: Value| ExportMeta {
        format: EXPORT_FORMAT,
        stage,
        model,
        diffusion: diffusion.clone(),
        image_size,
        step: 0,
        config_hash: "test".into(),
        source: "test".into(),
        weights: "model",
        dtype: ExportDtype::F32,
    };
    std::fs::create_dir_all(dir).expect("export folder");
    let native = ExportLayout::Native;
    let size = image_size as usize;
    match stage {
        Stage::Prior => {
            let m: PriorModelConfig = serde_json::from_value(model).expect("prior section");
            let text = TextCond::zeros(DIMS, m.text_encodings);
            let unit = (vec![0.0; DIMS.embed_dim], vec![1.0; DIMS.embed_dim]);
            let st = PriorStage::new(&m, text, unit, &diffusion).expect("prior stage");
            let section = serde_json::to_value(&m).expect("section");
            st.export(&st.init::<B>(0, &device), &meta(section), dir, native)
        }
        Stage::Decoder => {
            let m: DecoderModelConfig = serde_json::from_value(model).expect("decoder section");
            let st = DecoderStage::new(&m, DIMS, size, &diffusion).expect("decoder stage");
            let section = serde_json::to_value(&m).expect("section");
            st.export(&st.init::<B>(&device), &meta(section), dir, native)
        }
        Stage::Upsampler => {
            let m: UpsamplerModelConfig = serde_json::from_value(model).expect("section");
            let st = UpsamplerStage::new(&m, size, &diffusion).expect("upsampler stage");
            let section = serde_json::to_value(&m).expect("section");
            st.export(&st.init::<B>(&device), &meta(section), dir, native)
        }
        other => panic!("no export of {other:?}"),
    }
    .expect("native export");
}

/// The CLIP sizes the stages are built for (configs/clip/tiny.json: 64-d, 64 wide).
fn dims() -> Value {
    json!({"embed_dim": 64, "text_width": 64, "text_len": 77})
}

fn merge(mut a: Value, b: Value) -> Value {
    for (k, v) in b.as_object().expect("object") {
        a[k] = v.clone();
    }
    a
}

/// A tiny CLIP, prior, decoder (16 px) and upsampler (16 → 32 px) under `root`.
fn tiny_exports(root: &Path) -> AssembleOptions {
    let clip = root.join("clip");
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/clip/tiny.json");
    let config = unclip_clip::ClipConfig::from_file(&tiny).expect("tiny CLIP config");
    unclip_clip::init_random::<Flex>(&config, 0, &Default::default())
        .save_hf(
            &clip,
            unclip_clip::StoreDtype::F32,
            Some(unclip_clip::BUNDLED_TOKENIZER_JSON),
        )
        .expect("CLIP folder");
    let prior = root.join("prior");
    export(
        &prior,
        Stage::Prior,
        merge(
            json!({"width": 16, "depth": 1, "heads": 2, "text_encodings": "store",
                   "n_candidates": 2}),
            dims(),
        ),
        json!({"timesteps": 50, "parameterization": "x0",
               "sampling": {"respacing": "5", "guidance_scale": 2.0, "clip_x0": {"static": 10.0}}}),
        64,
    );
    let decoder = root.join("decoder");
    export(
        &decoder,
        Stage::Decoder,
        merge(
            json!({"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1,
                   "attention_resolutions": [8], "head_channels": 32, "context_dim": 16,
                   "extra_tokens": 2, "text_encodings": "store"}),
            dims(),
        ),
        json!({"timesteps": 50, "sampling": {"respacing": "4", "guidance_scale": 3.0}}),
        16,
    );
    let upsampler = root.join("upsampler");
    export(
        &upsampler,
        Stage::Upsampler,
        json!({"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1,
               "low_res_size": 16}),
        json!({"timesteps": 50, "sampling": {"respacing": "3"}}),
        32,
    );
    AssembleOptions {
        clip,
        prior,
        decoder,
        upsamplers: vec![upsampler],
        out: root.join("pipeline"),
        overwrite: false,
    }
}

fn read(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("JSON")
}

fn tensor_names(path: PathBuf) -> Vec<String> {
    let bytes = std::fs::read(&path).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
    names.sort();
    names
}

#[test]
fn writes_what_unclip_pipeline_loads_and_refuses_what_it_cannot_compute() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = tiny_exports(tmp.path());

    // --- Refusals: each before anything is written. ---
    let refused = |o: &AssembleOptions, edit: &dyn Fn(&AssembleOptions), want: &str| {
        let scratch = tempfile::tempdir().expect("tempdir");
        let copy = |from: &Path, name: &str| {
            let to = scratch.path().join(name);
            std::fs::create_dir_all(&to).expect("copy");
            for e in std::fs::read_dir(from).expect("export").flatten() {
                std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
            }
            to
        };
        let o = AssembleOptions {
            clip: o.clip.clone(),
            prior: copy(&o.prior, "prior"),
            decoder: copy(&o.decoder, "decoder"),
            upsamplers: o
                .upsamplers
                .iter()
                .enumerate()
                .map(|(i, u)| copy(u, &format!("upsampler-{i}")))
                .collect(),
            out: scratch.path().join("pipeline"),
            overwrite: false,
        };
        edit(&o);
        let e = assemble_as(&o, ExportLayout::Diffusers)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("--layout diffusers") && e.contains(want), "{e}");
        assert!(!o.out.exists(), "nothing is written when refused");
    };
    let patch = |dir: &Path, edit: &dyn Fn(&mut Value)| {
        let path = dir.join("config.json");
        let mut meta = read(path.clone());
        edit(&mut meta);
        std::fs::write(&path, meta.to_string()).expect("patch");
    };
    refused(
        &opts,
        &|o| patch(&o.prior, &|m| m["model"]["text_encodings"] = json!("none")),
        "text_encodings: none",
    );
    refused(
        &opts,
        &|o| patch(&o.decoder, &|m| m["model"]["embed_scale"] = json!(8.0)),
        "embed_scale is 8",
    );
    refused(
        &opts,
        &|o| {
            patch(&o.upsamplers[0], &|m| {
                m["model"]["noise_aug"]["enabled"] = json!(true)
            })
        },
        "noise augmentation",
    );
    refused(
        &opts,
        &|o| patch(&o.upsamplers[0], &|m| m["model"]["residual"] = json!(true)),
        "model.residual",
    );
    refused(
        &opts,
        &|o| {
            patch(&o.decoder, &|m| {
                m["diffusion"]["sampling"]["sampler"] = json!("ddim")
            })
        },
        "DDPM only",
    );
    refused(
        &opts,
        &|o| {
            patch(&o.upsamplers[0], &|m| {
                m["diffusion"]["sampling"]["respacing"] = json!("ddim10")
            })
        },
        "respacing `ddim10`",
    );
    refused(
        &opts,
        &|o| patch(&o.prior, &|m| m["diffusion"]["schedule"] = json!("linear")),
        "only has the cosine schedule",
    );
    refused(
        &opts,
        &|o| {
            patch(&o.prior, &|m| {
                m["diffusion"]["sampling"]["clip_x0"] =
                    json!({"dynamic": {"percentile": 0.99, "max_value": 2.0}})
            })
        },
        "clip_x0 is dynamic",
    );
    refused(
        &opts,
        &|o| {
            patch(&o.prior, &|m| {
                m["diffusion"]["sampling"]["guidance_scale"] = json!(0.5)
            })
        },
        "guidance_scale is 0.5",
    );
    let none = AssembleOptions {
        upsamplers: vec![],
        ..opts.clone()
    };
    refused(&none, &|_| {}, "exactly one --upsampler");
    let two = AssembleOptions {
        upsamplers: vec![opts.upsamplers[0].clone(); 2],
        ..opts.clone()
    };
    refused(&two, &|_| {}, "give only the first");

    // --- The folder. ---
    let report = assemble_as(&opts, ExportLayout::Diffusers).expect("assembled");
    assert_eq!(report.sides, vec![16, 32]);
    let d = opts.out.join("diffusers");
    let r = report.diffusers.expect("diffusers report");
    assert_eq!(r.dir, d);
    assert_eq!(
        r.call,
        json!({"prior_num_inference_steps": 5, "decoder_num_inference_steps": 4,
               "super_res_num_inference_steps": 3, "prior_guidance_scale": 2.0,
               "decoder_guidance_scale": 3.0})
    );
    assert!(
        r.notes.iter().any(|n| n.contains("2 prior samples")),
        "{:?}",
        r.notes
    );
    assert_eq!(read(d.join("unclip_pipeline.json"))["call"], r.call);

    let index = read(d.join("model_index.json"));
    let expected = json!({
        "_class_name": "UnCLIPPipeline",
        "_diffusers_version": "0.42.1",
        "decoder": ["diffusers", "UNet2DConditionModel"],
        "decoder_scheduler": ["diffusers", "UnCLIPScheduler"],
        "prior": ["diffusers", "PriorTransformer"],
        "prior_scheduler": ["diffusers", "UnCLIPScheduler"],
        "super_res_first": ["diffusers", "UNet2DModel"],
        "super_res_last": ["diffusers", "UNet2DModel"],
        "super_res_scheduler": ["diffusers", "UnCLIPScheduler"],
        "text_encoder": ["unclip_text_encoder", "UnclipCLIPTextModelWithProjection"],
        "text_proj": ["unclip_text_proj", "UnCLIPTextProjModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
    });
    assert_eq!(index, expected);
    // Custom-code components name a module file in their folder.
    for (folder, module) in [
        ("text_encoder", "unclip_text_encoder"),
        ("text_proj", "unclip_text_proj"),
    ] {
        let py =
            std::fs::read_to_string(d.join(folder).join(format!("{module}.py"))).expect("module");
        assert!(
            py.contains(&format!("class {}", index[folder][1].as_str().unwrap()))
                || py.contains(&format!("import {}", index[folder][1].as_str().unwrap()))
        );
    }

    // The stages: our own diffusers exports, with the sides the pipeline generates at.
    let prior = read(d.join("prior/config.json"));
    assert_eq!(prior["_class_name"], "PriorTransformer");
    assert_eq!(prior["embedding_dim"], 64);
    assert_eq!(prior["num_embeddings"], 77);
    assert!(
        tensor_names(d.join("prior/diffusion_pytorch_model.safetensors"))
            .contains(&"encoder_hidden_states_proj.weight".to_owned())
    );
    let decoder = read(d.join("decoder/config.json"));
    assert_eq!(decoder["_class_name"], "UNet2DConditionModel");
    assert_eq!(decoder["sample_size"], 16);
    // A fixed-variance decoder gets constant variance channels (v = −1: the fixed variance).
    assert_eq!(
        decoder["out_channels"], 6,
        "ε and the variance UnCLIPPipeline reads"
    );
    let bytes = std::fs::read(d.join("decoder/diffusion_pytorch_model.safetensors")).expect("unet");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let f32s = |name: &str| -> Vec<f32> {
        let v = st.tensor(name).expect(name);
        v.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let bias = f32s("conv_out.bias");
    assert_eq!(&bias[3..], &[-1.0; 3]);
    let w = f32s("conv_out.weight");
    assert_eq!(st.tensor("conv_out.weight").expect("w").shape()[0], 6);
    assert!(w[w.len() / 2..].iter().all(|&x| x == 0.0));
    let text_proj = read(d.join("text_proj/config.json"));
    assert_eq!(text_proj["_class_name"], "UnCLIPTextProjModel");
    assert_eq!(text_proj["clip_extra_context_tokens"], 2);
    let first = std::fs::read(d.join("super_res_first/diffusion_pytorch_model.safetensors"));
    let last = std::fs::read(d.join("super_res_last/diffusion_pytorch_model.safetensors"));
    assert_eq!(
        first.expect("first"),
        last.expect("last"),
        "one upsampler, both roles"
    );
    for sr in ["super_res_first", "super_res_last"] {
        let c = read(d.join(sr).join("config.json"));
        assert_eq!(c["_class_name"], "UNet2DModel");
        assert_eq!(c["sample_size"], 32);
        assert_eq!(c["in_channels"], 6, "noisy image + upsampled low-res image");
        assert!(c.get("class_embed_type").is_none_or(Value::is_null), "{c}");
    }

    // One UnCLIPScheduler per stage, from each export's diffusion section.
    let sched = |name: &str| read(d.join(name).join("scheduler_config.json"));
    assert_eq!(
        sched("prior_scheduler"),
        json!({"_class_name": "UnCLIPScheduler", "_diffusers_version": "0.42.1",
               "beta_schedule": "squaredcos_cap_v2", "clip_sample": true,
               "clip_sample_range": 10.0, "num_train_timesteps": 50,
               "prediction_type": "sample", "variance_type": "fixed_small_log"})
    );
    let dec = sched("decoder_scheduler");
    assert_eq!(dec["prediction_type"], "epsilon");
    assert_eq!(dec["variance_type"], "learned_range");
    assert_eq!(dec["clip_sample_range"], 1.0);
    assert_eq!(
        sched("super_res_scheduler")["variance_type"],
        "fixed_small_log"
    );

    // The CLIP text tower alone, with the normalising subclass.
    let te = read(d.join("text_encoder/config.json"));
    assert_eq!(te["model_type"], "clip_text_model");
    assert_eq!(te["hidden_size"], 64);
    assert_eq!(te["projection_dim"], 64);
    assert_eq!(te["eos_token_id"], 49407);
    let names = tensor_names(d.join("text_encoder/model.safetensors"));
    assert!(names.contains(&"text_projection.weight".to_owned()));
    assert!(names
        .iter()
        .all(|n| n.starts_with("text_model.") || n == "text_projection.weight"));
    let all = tensor_names(opts.clip.join("model.safetensors"));
    assert_eq!(
        names.len(),
        all.iter().filter(|n| n.starts_with("text_")).count()
    );

    // The tokenizer in both forms transformers reads.
    let tok = d.join("tokenizer");
    let vocab = read(tok.join("vocab.json"));
    assert_eq!(vocab["<|endoftext|>"], 49407);
    assert_eq!(vocab["<|startoftext|>"], 49406);
    let merges = std::fs::read_to_string(tok.join("merges.txt")).expect("merges");
    assert!(merges.starts_with("#version: 0.2\n"));
    assert_eq!(merges.lines().count(), 48894 + 1, "CLIP's 48894 merges");
    let tc = read(tok.join("tokenizer_config.json"));
    assert_eq!(tc["tokenizer_class"], "CLIPTokenizer");
    assert_eq!(tc["model_max_length"], 77);
    assert!(tok.join("tokenizer.json").is_file() && tok.join("special_tokens_map.json").is_file());
    assert!(!d.join(".staging").exists());

    // The native pipeline beside it is untouched by the layout, and a second run needs
    // --overwrite.
    assert!(opts.out.join("pipeline.json").is_file());
    let e = assemble_as(&opts, ExportLayout::Diffusers)
        .expect_err("exists")
        .to_string();
    assert!(e.contains("--overwrite"), "{e}");
    let again = AssembleOptions {
        overwrite: true,
        ..opts.clone()
    };
    assemble_as(&again, ExportLayout::Diffusers).expect("overwritten");
    assert_eq!(read(d.join("model_index.json")), expected);
}

/// Not a CI test: writes our stages' one-step outputs on fixed inputs for
/// tests/reference/check_diffusers_pipeline.py `--rust-dump` to compare with the diffusers
/// folder's components. `UNCLIP_DUMP_PIPELINE` (a native pipeline folder with one upsampler)
/// and `UNCLIP_DUMP_OUT` (the safetensors file to write) must be set:
///
///     UNCLIP_DUMP_PIPELINE=P UNCLIP_DUMP_OUT=dump.safetensors \
///         cargo nextest run -p unclip-infer --run-ignored only dump_one_step_outputs
#[test]
#[ignore = "writes reference values for the Python check; needs UNCLIP_DUMP_PIPELINE"]
fn dump_one_step_outputs() {
    use burn::tensor::{Tensor, TensorData};
    use unclip_stages::reload;
    type I = Flex;
    let dir = PathBuf::from(std::env::var("UNCLIP_DUMP_PIPELINE").expect("UNCLIP_DUMP_PIPELINE"));
    let out = PathBuf::from(std::env::var("UNCLIP_DUMP_OUT").expect("UNCLIP_DUMP_OUT"));
    let device = Default::default();
    let pipe = unclip_infer::Pipeline::<B>::load(&dir, &device).expect("pipeline");
    let config = unclip_infer::read_config(&dir).expect("pipeline.json");
    let captions = vec!["a red square".to_owned(), "a blue circle".to_owned()];
    let n = captions.len();
    let text = pipe.encode_text(&captions).expect("text");
    let empty = pipe.encode_text(&vec![String::new(); n]).expect("empty");
    let t = 500usize;
    // Deterministic inputs, the same for every run.
    let wave = |len: usize, phase: f32| -> Vec<f32> {
        (0..len).map(|i| (0.37 * i as f32 + phase).sin()).collect()
    };
    let d = pipe.dims.embed_dim;
    let mut out_tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let values = |x: Tensor<I, 2>| x.into_data().convert::<f32>().to_vec::<f32>().expect("f32");
    let values3 = |x: Tensor<I, 3>| x.into_data().convert::<f32>().to_vec::<f32>().expect("f32");
    let values4 = |x: Tensor<I, 4>| x.into_data().convert::<f32>().to_vec::<f32>().expect("f32");
    let (enc, mask) = text.encodings.clone().expect("encodings");
    let (e_enc, e_mask) = empty.encodings.clone().expect("encodings");
    let bools = |m: Tensor<I, 2, burn::tensor::Bool>| -> Vec<f32> {
        m.into_data()
            .to_vec::<bool>()
            .expect("mask")
            .into_iter()
            .map(|b| if b { 1.0 } else { 0.0 })
            .collect()
    };
    let l = enc.dims()[1];
    let w = enc.dims()[2];
    out_tensors.push(("text_embed".into(), vec![n, d], values(text.embed.clone())));
    out_tensors.push(("text_encodings".into(), vec![n, l, w], values3(enc.clone())));
    out_tensors.push(("text_mask".into(), vec![n, l], bools(mask.clone())));
    out_tensors.push((
        "empty_embed".into(),
        vec![n, d],
        values(empty.embed.clone()),
    ));
    out_tensors.push((
        "empty_encodings".into(),
        vec![n, l, w],
        values3(e_enc.clone()),
    ));
    out_tensors.push(("empty_mask".into(), vec![n, l], bools(e_mask.clone())));

    // Prior: x0 prediction (standardised space) for x_t at t.
    let prior =
        reload::prior::<B>(&dir.join(&config.prior.path), pipe.dims, &device).expect("prior");
    let x = wave(n * d, 0.1);
    let x_t = Tensor::<I, 2>::from_data(TensorData::new(x.clone(), [n, d]), &device);
    let p = prior.model.forward(
        x_t,
        &vec![t as f64; n],
        text.embed.clone(),
        Some(enc.clone()),
        Some(mask.clone()),
        None,
    );
    out_tensors.push(("prior_x_t".into(), vec![n, d], x));
    out_tensors.push(("prior_out".into(), vec![n, d], values(p)));

    // Decoder: conditional (image embedding + caption) and unconditional (null embedding +
    // empty caption) outputs.
    let decoder =
        reload::decoder::<B>(&dir.join(&config.decoder.path), pipe.dims, &device).expect("decoder");
    let image: Vec<f32> = {
        let v = wave(n * d, 0.7);
        v.chunks_exact(d)
            .flat_map(|r| {
                let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt();
                r.iter().map(move |x| x / norm).collect::<Vec<_>>()
            })
            .collect()
    };
    let image_t = Tensor::<I, 2>::from_data(TensorData::new(image.clone(), [n, d]), &device);
    let copy = |x: &unclip_stages::text::TextInputs<I>| unclip_stages::text::TextInputs {
        embed: x.embed.clone(),
        encodings: x.encodings.clone(),
    };
    let s = decoder.stage.image_size;
    let xd = wave(n * 3 * s * s, 0.3);
    let xd_t = Tensor::<I, 4>::from_data(TensorData::new(xd.clone(), [n, 3, s, s]), &device);
    let cond = decoder
        .stage
        .inputs(
            &decoder.model,
            image_t.clone(),
            vec![false; n],
            vec![false; n],
            copy(&text),
        )
        .expect("cond");
    let uncond = decoder
        .stage
        .inputs(
            &decoder.model,
            image_t,
            vec![true; n],
            vec![true; n],
            copy(&empty),
        )
        .expect("uncond");
    let c = decoder
        .model
        .forward(xd_t.clone(), &vec![t; n], &cond, None);
    let u = decoder.model.forward(xd_t, &vec![t; n], &uncond, None);
    let ch = c.dims()[1];
    out_tensors.push(("image_embed".into(), vec![n, d], image));
    out_tensors.push(("decoder_x_t".into(), vec![n, 3, s, s], xd));
    out_tensors.push(("decoder_cond".into(), vec![n, ch, s, s], values4(c)));
    out_tensors.push(("decoder_uncond".into(), vec![n, ch, s, s], values4(u)));

    // Upsampler: ε for x_t given an (already upsampled) low-res image.
    let up_entry = config.upsamplers.first().expect("one upsampler");
    let up = reload::upsampler::<B>(&dir.join(&up_entry.path), &device).expect("upsampler");
    let s = up.stage.image_size;
    let xu = wave(n * 3 * s * s, 0.5);
    let low = wave(n * 3 * s * s, 1.1);
    let tensor4 =
        |v: &[f32]| Tensor::<I, 4>::from_data(TensorData::new(v.to_vec(), [n, 3, s, s]), &device);
    let o = up
        .model
        .forward(tensor4(&xu), tensor4(&low), &vec![t; n], None, None);
    let ch = o.dims()[1];
    out_tensors.push(("upsampler_x_t".into(), vec![n, 3, s, s], xu));
    out_tensors.push(("upsampler_low_res".into(), vec![n, 3, s, s], low));
    out_tensors.push(("upsampler_out".into(), vec![n, ch, s, s], values4(o)));

    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = out_tensors
        .into_iter()
        .map(|(k, shape, v)| (k, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = bytes.iter().map(|(k, shape, b)| {
        (
            k.clone(),
            safetensors::tensor::TensorView::new(safetensors::tensor::Dtype::F32, shape.clone(), b)
                .expect("view"),
        )
    });
    let metadata = std::collections::HashMap::from([("timestep".to_owned(), t.to_string())]);
    let data = safetensors::serialize(views, Some(metadata)).expect("serialize");
    std::fs::write(&out, data).expect("write dump");
}
