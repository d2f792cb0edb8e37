//! Behaviour that has no external reference: gradients of the losses, the caller-driven
//! randomness, guidance plumbing and the config surface.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor, TensorData};
use common::{max_err, values, B};
use unclip_diffusion::{
    classifier_free_guidance, guided_model, sample_timesteps, BetaSchedule, ClipX0,
    DiffusionConfig, DiffusionError, GaussianDiffusion, LossOptions, LossType, Parameterization,
    SamplerKind, Schedule, VarianceType,
};
use unclip_rng::KeyedRng;

type AD = Autodiff<Flex>;

fn tensor<Bk: burn::tensor::backend::Backend, const D: usize>(
    seed: u64,
    shape: [usize; D],
) -> Tensor<Bk, D> {
    let mut rng = KeyedRng::new(seed, "test", 0, 0);
    let mut v = vec![0f32; shape.iter().product()];
    rng.fill_normal_f32(&mut v);
    Tensor::from_data(TensorData::new(v, shape), &Default::default())
}

fn learned() -> GaussianDiffusion {
    GaussianDiffusion::new(
        Schedule::new(BetaSchedule::Cosine, 1000).unwrap(),
        Parameterization::Eps,
        VarianceType::LearnedRange,
    )
}

#[test]
fn hybrid_loss_backpropagates_and_vb_only_trains_the_variance() {
    let d = learned();
    let idx = [0usize, 3, 400, 999];
    let x0 = tensor::<AD, 4>(1, [4, 2, 4, 4]).clamp(-1.0, 1.0);
    let noise = tensor::<AD, 4>(2, [4, 2, 4, 4]);
    let x_t = d.q_sample(x0.clone(), &idx, noise.clone());
    let output = tensor::<AD, 4>(3, [4, 4, 4, 4]).require_grad();

    // vb alone: no gradient reaches the mean channels (they are detached), some reaches the variance.
    let vb = d.vb_terms(output.clone(), x0.clone(), x_t.clone(), &idx);
    let grads = vb.sum().backward();
    let g = output.grad(&grads).expect("gradient");
    let mean_g = values(g.clone().narrow(1, 0, 2));
    let var_g = values(g.narrow(1, 2, 2));
    assert!(
        mean_g.iter().all(|&v| v == 0.0),
        "mean channels got vb gradient"
    );
    assert!(
        var_g.iter().any(|&v| v.abs() > 0.0),
        "variance channels got no vb gradient"
    );

    // The full hybrid loss trains both halves and is finite.
    let opts = LossOptions {
        loss: LossType::Hybrid,
        vlb_weight: 0.001,
        min_snr_gamma: Some(5.0),
    };
    let losses = d.training_losses(&opts, output.clone(), x0, x_t, noise, &idx);
    let grads = losses.loss.clone().mean().backward();
    let g = values(output.grad(&grads).unwrap());
    assert!(g.iter().all(|v| v.is_finite()));
    let mean_g = values(output.grad(&grads).unwrap().narrow(1, 0, 2));
    assert!(
        mean_g.iter().any(|&v| v != 0.0),
        "the mse term trains the mean channels"
    );
    assert!(values(losses.loss)
        .iter()
        .all(|v| v.is_finite() && *v > 0.0));
}

#[test]
fn vb_is_zero_when_the_model_matches_the_posterior() {
    // With the true x0 as the (x0-parameterised) prediction and v = −1 (log σ² = clipped log β̃),
    // the KL for t > 0 is 0 up to float error.
    let d = GaussianDiffusion::new(
        Schedule::new(BetaSchedule::Linear, 1000).unwrap(),
        Parameterization::X0,
        VarianceType::LearnedRange,
    );
    let idx = [10usize, 500];
    let x0 = tensor::<B, 2>(4, [2, 6]);
    let x_t = d.q_sample(x0.clone(), &idx, tensor::<B, 2>(5, [2, 6]));
    let output = Tensor::cat(
        vec![x0.clone(), Tensor::ones([2, 6], &Default::default()).neg()],
        1,
    );
    let vb = values(d.vb_terms(output, x0, x_t, &idx));
    assert!(vb.iter().all(|v| v.abs() < 1e-5), "{vb:?}");
}

#[test]
fn timesteps_come_from_the_callers_rng() {
    let draw = |seed| sample_timesteps(&mut KeyedRng::new(seed, "timesteps", 7, 0), 2000, 10);
    let a = draw(1);
    assert_eq!(a, draw(1), "same key, same timesteps");
    assert_ne!(a, draw(2));
    let mut counts = [0usize; 10];
    a.iter().for_each(|&t| counts[t] += 1);
    // Uniform: each of the 10 values about 200 times (5 sigma ≈ 67).
    assert!(
        counts.iter().all(|&c| (133..=267).contains(&c)),
        "{counts:?}"
    );
}

#[test]
fn sampler_asks_noise_only_where_it_is_used() {
    for (kind, eta, want) in [
        (SamplerKind::Ddpm, 0.0, 9usize),
        (SamplerKind::Ddim, 0.0, 0),
        (SamplerKind::Ddim, 1.0, 9),
    ] {
        let mut cfg = DiffusionConfig::default();
        cfg.sampling.sampler = kind;
        cfg.sampling.eta = eta;
        cfg.sampling.respacing = "10".into();
        let sampler = cfg.sampler().unwrap();
        let mut asked = Vec::new();
        let mut seen_t = Vec::new();
        let x = tensor::<B, 2>(6, [2, 4]);
        sampler.sample(
            x,
            |x: Tensor<B, 2>, t: &[usize]| {
                seen_t.push(t.to_vec());
                x * 0.1
            },
            |k| {
                asked.push(k);
                Tensor::random([2, 4], Distribution::Normal(0.0, 1.0), &Default::default())
            },
            |p| assert_eq!(p.num_steps, 10),
        );
        assert_eq!(asked, (0..want).collect::<Vec<_>>(), "{kind:?} η={eta}");
        // The network sees original timesteps, descending, one per sample.
        assert_eq!(seen_t.first().unwrap(), &vec![999, 999]);
        assert_eq!(seen_t.last().unwrap(), &vec![0, 0]);
        assert_eq!(seen_t.len(), 10);
    }
}

#[test]
fn guidance_uses_conditional_variance_and_equals_x0_guidance() {
    let d = learned();
    let (c, u) = (
        tensor::<B, 4>(7, [2, 6, 2, 2]),
        tensor::<B, 4>(8, [2, 6, 2, 2]),
    );
    let g = classifier_free_guidance(c.clone(), u.clone(), 3.0, VarianceType::LearnedRange, 3);
    assert_eq!(
        values(g.clone().narrow(1, 3, 3)),
        values(c.clone().narrow(1, 3, 3))
    );
    let want = values(
        u.clone().narrow(1, 0, 3) + (c.clone().narrow(1, 0, 3) - u.clone().narrow(1, 0, 3)) * 3.0,
    );
    assert!(max_err(&values(g.clone().narrow(1, 0, 3)), &want) < 1e-6);
    // Guiding x0 (converted from each branch's ε) gives the x0 of the guided ε.
    let x_t = tensor::<B, 4>(9, [2, 3, 2, 2]);
    let idx = [300usize, 700];
    let x0 = |e: Tensor<B, 4>| d.x0_from_eps(x_t.clone(), e.narrow(1, 0, 3), &idx);
    let guided_x0 = x0(u.clone()) + (x0(c.clone()) - x0(u.clone())) * 3.0;
    assert!(max_err(&values(x0(g.clone())), &values(guided_x0)) < 1e-5);
    // guided_model on a doubled batch = the pairwise helper; scale 1 = the conditional output.
    let mut m = guided_model(
        |x: Tensor<B, 4>, t: &[usize]| {
            assert_eq!(t, &[5, 5, 5, 5]);
            assert_eq!(x.dims(), [4, 3, 2, 2], "the model sees the doubled batch");
            Tensor::cat(vec![c.clone(), u.clone()], 0)
        },
        3.0,
        VarianceType::LearnedRange,
    );
    assert_eq!(values(m(x_t.clone(), &[5, 5])), values(g));
    let mut one = guided_model(
        |_x: Tensor<B, 4>, _t: &[usize]| Tensor::cat(vec![c.clone(), u.clone()], 0),
        1.0,
        VarianceType::LearnedRange,
    );
    assert!(max_err(&values(one(x_t, &[5, 5])), &values(c.clone())) < 1e-6);
}

#[test]
fn config_defaults_names_and_errors() {
    let cfg: DiffusionConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(cfg, DiffusionConfig::default());
    assert_eq!(
        (cfg.timesteps, cfg.vlb_weight, cfg.sampling.clip_x0),
        (1000, 0.001, ClipX0::Static(1.0))
    );
    let cfg: DiffusionConfig = serde_json::from_str(
        r#"{"schedule":"linear","timesteps":200,"parameterization":"v","variance":"learned_range","loss":"hybrid",
            "vlb_weight":0.002,"min_snr_gamma":5.0,"sampling":{"sampler":"ddim","respacing":"ddim20","eta":0.5,
            "guidance_scale":3.0,"clip_x0":{"dynamic":{"percentile":0.995,"max_value":2.0}}}}"#,
    )
    .unwrap();
    assert_eq!(cfg.parameterization, Parameterization::V);
    assert_eq!(
        cfg.sampling.clip_x0,
        ClipX0::Dynamic {
            percentile: 0.995,
            max_value: 2.0
        }
    );
    assert_eq!(cfg.sampler().unwrap().num_steps(), 20);
    let none: DiffusionConfig = serde_json::from_str(r#"{"sampling":{"clip_x0":"none"}}"#).unwrap();
    assert_eq!(none.sampling.clip_x0, ClipX0::None);
    let st: DiffusionConfig =
        serde_json::from_str(r#"{"sampling":{"clip_x0":{"static":10.0}}}"#).unwrap();
    assert_eq!(st.sampling.clip_x0, ClipX0::Static(10.0));
    assert!(
        serde_json::from_str::<DiffusionConfig>(r#"{"timestep":1000}"#).is_err(),
        "unknown keys are errors"
    );
    assert!(serde_json::from_str::<DiffusionConfig>(r#"{"sampling":{"etaa":1}}"#).is_err());
    assert!(serde_json::from_str::<DiffusionConfig>(r#"{"schedule":"squaredcos"}"#).is_err());

    let key = |cfg: DiffusionConfig| match cfg.validate() {
        Err(DiffusionError::Config { key, .. }) => key,
        other => panic!("expected a config error, got {other:?}"),
    };
    let base = DiffusionConfig::default;
    assert_eq!(
        key(DiffusionConfig {
            loss: LossType::Hybrid,
            ..base()
        }),
        "loss"
    );
    assert_eq!(
        key(DiffusionConfig {
            variance: VarianceType::LearnedRange,
            ..base()
        }),
        "variance"
    );
    assert_eq!(
        key(DiffusionConfig {
            min_snr_gamma: Some(0.0),
            ..base()
        }),
        "min_snr_gamma"
    );
    let mut c = base();
    c.sampling.eta = 0.5; // with ddpm
    assert_eq!(key(c), "sampling.eta");
    let mut c = base();
    c.sampling.clip_x0 = ClipX0::Dynamic {
        percentile: 1.5,
        max_value: 1.0,
    };
    assert_eq!(key(c), "sampling.clip_x0");
    let mut c = base();
    c.sampling.respacing = "ddim999".into();
    assert!(matches!(
        c.validate(),
        Err(DiffusionError::Respacing { .. })
    ));
}
