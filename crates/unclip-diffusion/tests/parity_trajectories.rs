//! Whole sampling chains against diffusers' DDPMScheduler, UnCLIPScheduler and DDIMScheduler,
//! driven by the fixture's noise and the fake model of make_diffusion_fixtures.py.

mod common;

use burn::tensor::Tensor;
use common::{load, max_err, values, Array, B};
use unclip_diffusion::{
    guided_model, BetaSchedule, ClipX0, DiffusionConfig, LossType, Parameterization, SamplerKind,
    SamplingConfig, VarianceType,
};

/// Prediction channels: 0.1·x + sin(t/100) (conditional) or 0.05·x − cos(t/100) (unconditional).
fn fake<const D: usize>(x: Tensor<B, D>, t: usize, cond: bool) -> Tensor<B, D> {
    let t = t as f64 / 100.0;
    if cond {
        x * 0.1 + t.sin()
    } else {
        x * 0.05 - t.cos()
    }
}

/// Learned-range channels: tanh(0.5·x + cos(t/100)).
fn fake_var<const D: usize>(x: Tensor<B, D>, t: usize) -> Tensor<B, D> {
    (x * 0.5 + (t as f64 / 100.0).cos()).tanh()
}

/// The doubled-batch model that `guided_model` expects: first half conditional.
fn doubled<const D: usize>(x: Tensor<B, D>, t: &[usize], learned: bool) -> Tensor<B, D> {
    let half = x.dims()[0] / 2;
    let (xc, xu) = (x.clone().narrow(0, 0, half), x.narrow(0, half, half));
    let (mut c, mut u) = (fake(xc.clone(), t[0], true), fake(xu.clone(), t[0], false));
    if learned {
        c = Tensor::cat(vec![c, fake_var(xc, t[0])], 1);
        // The unconditional variance channels differ, so taking them would be caught.
        u = Tensor::cat(vec![u, fake_var(xu, t[0]).neg()], 1);
    }
    Tensor::cat(vec![c, u], 0)
}

struct Case {
    name: &'static str,
    config: DiffusionConfig,
    guidance: Option<f64>,
}

fn run<const D: usize>(case: &Case) -> f64 {
    let fx = load(&format!("traj_{}.safetensors", case.name));
    let sampler = case.config.sampler().unwrap();
    let want_t: Vec<usize> = fx["timesteps"].usizes();
    assert_eq!(sampler.timesteps(), want_t, "{}: timestep grid", case.name);
    let noise: &Array = &fx["noise"];
    let samples: &Array = &fx["samples"];
    let variance = case.config.variance;
    let plain = |x: Tensor<B, D>, t: &[usize]| match variance {
        VarianceType::LearnedRange => {
            Tensor::cat(vec![fake(x.clone(), t[0], true), fake_var(x, t[0])], 1)
        }
        _ => fake(x, t[0], true),
    };
    let mut worst = 0.0f64;
    let mut steps = 0;
    let mut check = |p: unclip_diffusion::Progress<'_, B, D>| {
        let err = max_err(
            &values(p.output.prev_sample.clone()),
            &samples.row(p.step).values,
        );
        worst = worst.max(err);
        steps += 1;
    };
    let x_final = match case.guidance {
        Some(scale) => {
            let learned = variance == VarianceType::LearnedRange;
            let model = guided_model(
                move |x: Tensor<B, D>, t: &[usize]| doubled(x, t, learned),
                scale,
                variance,
            );
            sampler.sample(
                fx["x_start"].tensor::<D>(),
                model,
                |k| noise.row(k).tensor::<D>(),
                &mut check,
            )
        }
        None => sampler.sample(
            fx["x_start"].tensor::<D>(),
            plain,
            |k| noise.row(k).tensor::<D>(),
            &mut check,
        ),
    };
    assert_eq!(steps, want_t.len());
    let last = samples.row(want_t.len() - 1);
    let worst = worst.max(max_err(&values(x_final), &last.values));
    eprintln!("{}: {} steps, max error {worst:e}", case.name, want_t.len());
    worst
}

fn config(
    schedule: BetaSchedule,
    timesteps: usize,
    p: Parameterization,
    v: VarianceType,
    s: SamplingConfig,
) -> DiffusionConfig {
    let loss = if v == VarianceType::LearnedRange {
        LossType::Hybrid
    } else {
        LossType::Mse
    };
    DiffusionConfig {
        schedule,
        timesteps,
        parameterization: p,
        variance: v,
        loss,
        sampling: s,
        ..Default::default()
    }
}

fn sampling(sampler: SamplerKind, respacing: &str, eta: f64, clip_x0: ClipX0) -> SamplingConfig {
    SamplingConfig {
        sampler,
        respacing: respacing.into(),
        eta,
        guidance_scale: 1.0,
        clip_x0,
    }
}

#[test]
fn ddpm_full_linear_schedule_matches_ddpm_scheduler() {
    let case = Case {
        name: "ddpm_linear100",
        config: config(
            BetaSchedule::Linear,
            100,
            Parameterization::Eps,
            VarianceType::FixedSmall,
            sampling(SamplerKind::Ddpm, "", 0.0, ClipX0::Static(1.0)),
        ),
        guidance: None,
    };
    let err = run::<4>(&case);
    assert!(err <= 1e-5, "{}: max error {err:e}", case.name);
}

#[test]
fn ddpm_respaced_v_fixed_large_matches_ddpm_scheduler() {
    let case = Case {
        name: "ddpm_cosine_v_large",
        config: config(
            BetaSchedule::Cosine,
            1000,
            Parameterization::V,
            VarianceType::FixedLarge,
            sampling(SamplerKind::Ddpm, "ddim20", 0.0, ClipX0::Static(1.0)),
        ),
        guidance: None,
    };
    let err = run::<4>(&case);
    assert!(err <= 1e-5, "{}: max error {err:e}", case.name);
}

#[test]
fn unclip_decoder_learned_range_with_guidance_matches_unclip_scheduler() {
    let case = Case {
        name: "unclip_decoder_cfg",
        config: config(
            BetaSchedule::Cosine,
            1000,
            Parameterization::Eps,
            VarianceType::LearnedRange,
            sampling(SamplerKind::Ddpm, "25", 0.0, ClipX0::Static(1.0)),
        ),
        guidance: Some(3.0),
    };
    let err = run::<4>(&case);
    assert!(err <= 1e-5, "{}: max error {err:e}", case.name);
}

#[test]
fn unclip_prior_x0_embeddings_with_guidance_matches_unclip_scheduler() {
    let case = Case {
        name: "unclip_prior_cfg",
        config: config(
            BetaSchedule::Cosine,
            1000,
            Parameterization::X0,
            VarianceType::FixedSmall,
            sampling(SamplerKind::Ddpm, "25", 0.0, ClipX0::Static(5.0)),
        ),
        guidance: Some(4.0),
    };
    let err = run::<2>(&case);
    assert!(err <= 1e-5, "{}: max error {err:e}", case.name);
}

#[test]
fn ddim_eta0_matches_ddim_scheduler() {
    let case = Case {
        name: "ddim_eps_eta0",
        config: config(
            BetaSchedule::Cosine,
            1000,
            Parameterization::Eps,
            VarianceType::FixedSmall,
            sampling(SamplerKind::Ddim, "ddim50", 0.0, ClipX0::Static(1.0)),
        ),
        guidance: None,
    };
    let err = run::<4>(&case);
    assert!(err <= 1e-5, "{}: max error {err:e}", case.name);
}

#[test]
fn ddim_eta_v_dynamic_threshold_matches_ddim_scheduler() {
    let clip = ClipX0::Dynamic {
        percentile: 0.9,
        max_value: 1.5,
    };
    let case = Case {
        name: "ddim_v_eta07_dynamic",
        config: config(
            BetaSchedule::Linear,
            1000,
            Parameterization::V,
            VarianceType::FixedSmall,
            sampling(SamplerKind::Ddim, "ddim25", 0.7, clip),
        ),
        guidance: None,
    };
    let err = run::<4>(&case);
    assert!(err <= 1e-5, "{}: max error {err:e}", case.name);
}
