use std::collections::BTreeMap;

use super::*;
use burn::backend::Flex;
use serde_json::{json, Value};
use unclip_rng::KeyedRng;

type B = Flex;

fn small(dropout: f64) -> PriorConfig {
    PriorConfig {
        embed_dim: 6,
        width: 8,
        depth: 2,
        heads: 2,
        text_len: 5,
        text_width: 7,
        dropout,
        time_embed_dim: None,
        ff_mult: None,
    }
}

fn randn<const N: usize>(shape: [usize; N], stream: u64) -> Tensor<B, N> {
    let mut rng = KeyedRng::new(99, "prior-test", 0, stream);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.normal_f64() as f32).collect();
    Tensor::from_data(TensorData::new(v, shape), &Default::default())
}

/// A model whose every parameter is random (keyed Linear init; the constants are perturbed).
fn model(c: &PriorConfig) -> PriorTransformer<B> {
    let mut m = crate::keyed_init(c.init::<B>(&Default::default()), 5).unwrap();
    let l = c.text_len + TRAILING_TOKENS;
    m.positional_embedding = Param::from_tensor(randn([l, c.width], 1) * 0.5);
    m.prd_embedding = Param::from_tensor(randn([c.width], 2) * 0.5);
    m
}

fn inputs(n: usize, c: &PriorConfig) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 3>) {
    (
        randn([n, c.embed_dim], 10),
        randn([n, c.embed_dim], 11),
        randn([n, c.text_len, c.text_width], 12),
    )
}

fn mask(rows: &[usize], len: usize) -> Tensor<B, 2, Bool> {
    let v: Vec<bool> = rows
        .iter()
        .flat_map(|&real| (0..len).map(move |j| j < real))
        .collect();
    Tensor::from_data(TensorData::new(v, [rows.len(), len]), &Default::default())
}

fn max_diff<const N: usize>(a: Tensor<B, N>, b: Tensor<B, N>) -> f32 {
    (a - b).abs().max().into_scalar()
}

#[test]
fn padded_text_tokens_do_not_matter() {
    let c = small(0.0);
    let m = model(&c);
    let (x, te, enc) = inputs(2, &c);
    let t = [3.0, 500.0];
    let out = m.forward(
        x.clone(),
        &t,
        te.clone(),
        Some(enc.clone()),
        Some(mask(&[5, 2], 5)),
        None,
    );
    // Change text tokens 2.. of row 1 (padding there) and nothing of row 0.
    let noise = randn([1, 3, c.text_width], 20) * 3.0;
    let changed = enc.clone().slice_assign(
        [1..2, 2..5, 0..c.text_width],
        enc.clone().slice([1..2, 2..5, 0..c.text_width]) + noise,
    );
    let out2 = m.forward(
        x.clone(),
        &t,
        te.clone(),
        Some(changed.clone()),
        Some(mask(&[5, 2], 5)),
        None,
    );
    assert!(max_diff(out.clone(), out2) < 1e-6);
    // The same change with the tokens real does change row 1.
    let a = m.forward(x.clone(), &t, te.clone(), Some(enc), None, None);
    let b = m.forward(x, &t, te, Some(changed), None, None);
    let d = (a - b)
        .abs()
        .sum_dim(1)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    assert!(d[0] < 1e-6 && d[1] > 1e-3, "{d:?}");
}

#[test]
fn attention_is_causal() {
    let c = small(0.0);
    let m = model(&c);
    let (x, te, enc) = inputs(2, &c);
    let t = [3.0, 500.0];
    let h = m.hidden_states(x.clone(), &t, te.clone(), Some(enc.clone()), None, None);
    let h2 = m.hidden_states(x + 1.0, &t, te, Some(enc), None, None);
    let (l, w) = (c.text_len, c.width);
    // Tokens before x_t (text, pooled text, time: 0..L+2) do not see x_t …
    let before = |h: Tensor<B, 3>| h.slice([0..2, 0..l + 2, 0..w]);
    assert!(max_diff(before(h.clone()), before(h2.clone())) < 1e-6);
    // … x_t and prd do.
    let after = |h: Tensor<B, 3>| h.slice([0..2, l + 2..l + 4, 0..w]);
    assert!(max_diff(after(h), after(h2)) > 1e-3);
}

#[test]
fn no_text_encodings_equals_fully_masked_text() {
    let c = small(0.0);
    let m = model(&c);
    let (x, te, enc) = inputs(3, &c);
    let t = [0.0, 10.0, 999.0];
    let none = m.forward(x.clone(), &t, te.clone(), None, None, None);
    let masked = m.forward(x, &t, te, Some(enc), Some(mask(&[0, 0, 0], 5)), None);
    assert!(max_diff(none, masked) < 1e-5);
}

#[test]
fn dropout_only_with_a_key() {
    let c = small(0.3);
    let m = model(&c);
    let (x, te, enc) = inputs(2, &c);
    let key = |step| NoiseKey {
        seed: 1,
        step,
        indices: vec![4, 9],
    };
    let run =
        |k: Option<&NoiseKey>| m.forward(x.clone(), &[7.0], te.clone(), Some(enc.clone()), None, k);
    let eval = run(None);
    let a = run(Some(&key(1)));
    assert!(max_diff(eval.clone(), a.clone()) > 1e-3);
    assert_eq!(a.clone().into_data(), run(Some(&key(1))).into_data());
    assert!(max_diff(a, run(Some(&key(2)))) > 1e-3);
    // Without dropout, a key changes nothing.
    let m0 = model(&small(0.0));
    let f = |k: Option<&NoiseKey>| {
        m0.forward(x.clone(), &[7.0], te.clone(), Some(enc.clone()), None, k)
    };
    assert_eq!(f(None).into_data(), f(Some(&key(1))).into_data());
}

#[test]
fn num_params_matches_the_module() {
    let d = Default::default();
    let c = small(0.0);
    assert_eq!(c.num_params(), c.init::<B>(&d).num_params());
    let c = PriorConfig {
        time_embed_dim: Some(20),
        ff_mult: None,
        ..small(0.0)
    };
    assert_eq!(c.num_params(), c.init::<B>(&d).num_params());
    // Explicitly the width is the same model as the default.
    let same = PriorConfig {
        time_embed_dim: Some(8),
        ff_mult: None,
        ..small(0.0)
    };
    assert_eq!(same.num_params(), small(0.0).num_params());
    for time_embed_dim in [None, Some(2048)] {
        let big = PriorConfig {
            embed_dim: 512,
            width: 512,
            depth: 6,
            heads: 8,
            text_len: 77,
            text_width: 512,
            dropout: 0.0,
            time_embed_dim,
            ff_mult: None,
        };
        let n = big.init::<B>(&d).num_params();
        assert_eq!(big.num_params(), n);
        println!(
            "prior params at width 512, depth 6, D 512, W 512, 77 tokens, \
             time_embed_dim {time_embed_dim:?}: {n}"
        );
    }
}

#[test]
fn time_embed_dim_is_optional_in_serde() {
    let c = small(0.0);
    let v = serde_json::to_value(&c).unwrap();
    assert!(v.get("time_embed_dim").is_none(), "{v}");
    assert_eq!(serde_json::from_value::<PriorConfig>(v).unwrap(), c);
    let c = PriorConfig {
        time_embed_dim: Some(32),
        ff_mult: None,
        ..small(0.0)
    };
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["time_embed_dim"], json!(32));
    assert_eq!(serde_json::from_value::<PriorConfig>(v).unwrap(), c);
    let zero = PriorConfig {
        time_embed_dim: Some(0),
        ff_mult: None,
        ..small(0.0)
    };
    assert!(zero.check().unwrap_err().contains("time_embed_dim"));
}

#[test]
fn keyed_init_accepts_a_fresh_model_and_keeps_the_constants() {
    let c = small(0.0);
    let m = crate::keyed_init(c.init::<B>(&Default::default()), 3).unwrap();
    assert_eq!(m.positional_embedding.val().abs().max().into_scalar(), 0.0);
    assert_eq!(
        m.clip_std.val().into_data().to_vec::<f32>().unwrap(),
        vec![1.0; 6]
    );
    assert!(!m.clip_std.val().is_require_grad());
}

#[test]
fn standardize_round_trip() {
    let c = small(0.0);
    let mean = [0.5, -1.0, 2.0, 0.0, 3.0, -0.25];
    let std = [2.0, 0.5, 1.0, 4.0, 0.25, 1.5];
    let m = c.init::<B>(&Default::default()).with_stats(&mean, &std);
    let z = randn([3, 6], 30);
    let s = m.standardize(z.clone());
    let row: Vec<f32> = s.clone().slice([0..1, 0..6]).into_data().to_vec().unwrap();
    let raw: Vec<f32> = z.clone().slice([0..1, 0..6]).into_data().to_vec().unwrap();
    for k in 0..6 {
        assert!((row[k] - (raw[k] - mean[k]) / std[k]).abs() < 1e-6);
    }
    assert!(max_diff(m.unstandardize(s), z) < 1e-6);
}

#[test]
fn diffusers_round_trip_and_refusals() {
    let d = Default::default();
    let mut c = small(0.1);
    assert!(prior_to_diffusers(&c.init::<B>(&d))
        .unwrap_err()
        .contains("text_width"));
    c.text_width = c.embed_dim;
    let m = model(&c).with_stats(&[1.0; 6], &[2.0; 6]);
    let (cfg, tensors) = prior_to_diffusers(&m).unwrap();
    let map: BTreeMap<String, TensorData> = tensors.into_iter().collect();
    let back = prior_from_diffusers::<B>(&cfg, &map, &d).unwrap();
    assert_eq!(back.config, c);
    let (x, te, enc) = inputs(2, &c);
    let a = m.forward(x.clone(), &[5.0], te.clone(), Some(enc.clone()), None, None);
    let b = back.forward(x, &[5.0], te, Some(enc), None, None);
    assert_eq!(a.into_data(), b.into_data());
    assert_eq!(cfg["time_embed_dim"], Value::Null);

    // A wider timestep MLP travels both ways.
    let wide = PriorConfig {
        time_embed_dim: Some(32),
        ff_mult: None,
        ..c.clone()
    };
    let m = model(&wide);
    let (wcfg, tensors) = prior_to_diffusers(&m).unwrap();
    assert_eq!(wcfg["time_embed_dim"], json!(32));
    let wmap: BTreeMap<String, TensorData> = tensors.into_iter().collect();
    assert_eq!(
        wmap["time_embedding.linear_1.weight"].shape.as_slice(),
        &[32, 8]
    );
    assert_eq!(
        wmap["time_embedding.linear_2.weight"].shape.as_slice(),
        &[8, 32]
    );
    let back = prior_from_diffusers::<B>(&wcfg, &wmap, &d).unwrap();
    assert_eq!(back.config, wide);
    let (x, te, enc) = inputs(2, &wide);
    let a = m.forward(x.clone(), &[5.0], te.clone(), Some(enc.clone()), None, None);
    let b = back.forward(x, &[5.0], te, Some(enc), None, None);
    assert_eq!(a.into_data(), b.into_data());
    // The wide tensors under a default-width config are a shape error, not a panic.
    let mut narrow = wcfg.clone();
    narrow["time_embed_dim"] = Value::Null;
    assert!(prior_from_diffusers::<B>(&narrow, &wmap, &d)
        .unwrap_err()
        .contains("time_embedding.linear_1.weight"));
    // diffusers' `time_embed_dim or inner_dim`: 0 is the default width.
    let mut zero = cfg.clone();
    zero["time_embed_dim"] = json!(0);
    assert_eq!(config_from_diffusers(&zero).unwrap().time_embed_dim, None);

    let mut bad = cfg.clone();
    bad["norm_in_type"] = json!("layer");
    assert!(prior_from_diffusers::<B>(&bad, &map, &d)
        .unwrap_err()
        .contains("norm_in_type"));
    let mut bad = cfg.clone();
    bad["added_emb_type"] = Value::Null;
    assert!(prior_from_diffusers::<B>(&bad, &map, &d).is_err());
    // Karlo-style config: only the old fields, the rest from diffusers' defaults.
    let karlo = json!({"_class_name": "PriorTransformer", "num_attention_heads": 2,
        "attention_head_dim": 4, "num_layers": 2, "embedding_dim": 6, "num_embeddings": 5});
    let k = config_from_diffusers(&karlo).unwrap();
    assert_eq!((k.width, k.dropout, k.text_width), (8, 0.0, 6));
    assert_eq!(k.time_embed_dim, None);
}
