//! Per-call tensor math against tensors.safetensors (references computed in float64 from the
//! guided-diffusion / improved-diffusion formulas; dynamic thresholding by diffusers itself).

mod common;

use common::{assert_close, load, values, B};
use unclip_diffusion::{
    BetaSchedule, ClipX0, GaussianDiffusion, LossOptions, LossType, Parameterization, Schedule,
    VarianceType,
};

const TOL: f64 = 1e-5;

fn diffusion(p: Parameterization, v: VarianceType) -> GaussianDiffusion {
    GaussianDiffusion::new(Schedule::new(BetaSchedule::Cosine, 1000).unwrap(), p, v)
}

#[test]
fn q_sample_and_parameterization_conversions() {
    let fx = load("tensors.safetensors");
    let idx = fx["idx"].usizes();
    let d = diffusion(Parameterization::Eps, VarianceType::FixedSmall);
    let (x0, noise, out, x_t) = (
        fx["x0"].tensor::<4>(),
        fx["noise"].tensor::<4>(),
        fx["eps_out"].tensor::<4>(),
        fx["x_t"].tensor::<4>(),
    );
    assert_close(
        "q_sample",
        &values(d.q_sample(x0.clone(), &idx, noise.clone())),
        &fx["x_t"].values,
        TOL,
    );
    assert_close(
        "x0_from_eps",
        &values(d.x0_from_eps(x_t.clone(), out.clone(), &idx)),
        &fx["x0_from_eps"].values,
        TOL,
    );
    assert_close(
        "eps_from_x0",
        &values(d.eps_from_x0(x_t.clone(), x0.clone(), &idx)),
        &fx["eps_from_x0"].values,
        TOL,
    );
    assert_close(
        "x0_from_v",
        &values(d.x0_from_v(x_t.clone(), out.clone(), &idx)),
        &fx["x0_from_v"].values,
        TOL,
    );
    assert_close(
        "eps_from_v",
        &values(d.eps_from_v(x_t.clone(), out.clone(), &idx)),
        &fx["eps_from_v"].values,
        TOL,
    );
    let v = diffusion(Parameterization::V, VarianceType::FixedSmall);
    assert_close(
        "v target",
        &values(v.target(x0.clone(), noise.clone(), &idx)),
        &fx["v_target"].values,
        TOL,
    );
    let x = diffusion(Parameterization::X0, VarianceType::FixedSmall);
    assert_close(
        "x0 target",
        &values(x.target(x0, noise.clone(), &idx)),
        &fx["x0"].values,
        0.0,
    );
    assert_close(
        "eps target",
        &values(d.target(fx["x0"].tensor::<4>(), noise, &idx)),
        &fx["noise"].values,
        0.0,
    );
}

#[test]
fn p_mean_variance_for_each_variance_type() {
    let fx = load("tensors.safetensors");
    let idx = fx["idx"].usizes();
    let x_t = fx["x_t"].tensor::<4>();
    let eps = fx["eps_out"].tensor::<4>();
    for (variance, key) in [
        (VarianceType::FixedSmall, "logvar_fixed_small"),
        (VarianceType::FixedLarge, "logvar_fixed_large"),
        (VarianceType::LearnedRange, "logvar_learned_range"),
    ] {
        let d = diffusion(Parameterization::Eps, variance);
        let output = match variance {
            VarianceType::LearnedRange => {
                burn::tensor::Tensor::cat(vec![eps.clone(), fx["var_out"].tensor::<4>()], 1)
            }
            _ => eps.clone(),
        };
        let mv = d.p_mean_variance(output, x_t.clone(), &idx, ClipX0::Static(1.0));
        assert_close(
            "pred_x0",
            &values(mv.pred_x0),
            &fx["pmv_pred_x0"].values,
            TOL,
        );
        assert_close("mean", &values(mv.mean), &fx["pmv_mean"].values, TOL);
        let logvar = values(mv.log_variance.expand(x_t.dims()));
        assert_close(key, &logvar, &fx[key].values, TOL);
    }
}

#[test]
fn prior_shaped_embeddings_with_x0_model() {
    let fx = load("tensors.safetensors");
    let idx = fx["idx"].usizes();
    let d = diffusion(Parameterization::X0, VarianceType::FixedSmall);
    let emb_t = d.q_sample(fx["emb"].tensor::<2>(), &idx, fx["emb_noise"].tensor::<2>());
    assert_close(
        "emb q_sample",
        &values(emb_t.clone()),
        &fx["emb_t"].values,
        TOL,
    );
    let mv = d.p_mean_variance(fx["emb"].tensor::<2>(), emb_t, &idx, ClipX0::Static(1.0));
    assert_close(
        "emb mean",
        &values(mv.mean),
        &fx["emb_pmv_mean"].values,
        TOL,
    );
}

#[test]
fn vb_terms_and_hybrid_loss() {
    let fx = load("tensors.safetensors");
    let idx = fx["idx"].usizes();
    assert_eq!(idx[0], 0, "the fixture covers the t = 0 decoder NLL");
    let d = diffusion(Parameterization::Eps, VarianceType::LearnedRange);
    let output = burn::tensor::Tensor::cat(
        vec![fx["eps_out"].tensor::<4>(), fx["var_out"].tensor::<4>()],
        1,
    );
    let (x0, x_t, noise) = (
        fx["x0"].tensor::<4>(),
        fx["x_t"].tensor::<4>(),
        fx["noise"].tensor::<4>(),
    );
    let vb = d.vb_terms::<B, 4>(output.clone(), x0.clone(), x_t.clone(), &idx);
    assert_close("vb bits", &values(vb), &fx["vb_bits"].values, TOL);
    let opts = LossOptions {
        loss: LossType::Hybrid,
        vlb_weight: 0.001,
        min_snr_gamma: None,
    };
    let losses = d.training_losses(&opts, output, x0, x_t, noise, &idx);
    assert_close("mse", &values(losses.mse), &fx["mse_eps"].values, TOL);
    assert_close(
        "hybrid",
        &values(losses.loss),
        &fx["hybrid_loss"].values,
        TOL,
    );
}

#[test]
fn min_snr_weights_per_parameterization() {
    let fx = load("tensors.safetensors");
    let idx = fx["idx"].usizes();
    for (p, key) in [
        (Parameterization::Eps, "min_snr5_eps"),
        (Parameterization::X0, "min_snr5_x0"),
        (Parameterization::V, "min_snr5_v"),
    ] {
        let w = diffusion(p, VarianceType::FixedSmall).min_snr_weights(5.0, &idx);
        assert_close(key, &w, &fx[key].values, 1e-6);
    }
    // The weighted loss is the mse scaled by those weights.
    let d = diffusion(Parameterization::Eps, VarianceType::FixedSmall);
    let opts = LossOptions {
        min_snr_gamma: Some(5.0),
        ..LossOptions::default()
    };
    let l = d.training_losses(
        &opts,
        fx["eps_out"].tensor::<4>(),
        fx["x0"].tensor::<4>(),
        fx["x_t"].tensor::<4>(),
        fx["noise"].tensor::<4>(),
        &idx,
    );
    let want: Vec<f64> = fx["mse_eps"]
        .values
        .iter()
        .zip(&fx["min_snr5_eps"].values)
        .map(|(m, w)| m * w)
        .collect();
    assert_close("min-snr loss", &values(l.loss), &want, TOL);
}

#[test]
fn dynamic_thresholding_matches_diffusers() {
    let fx = load("tensors.safetensors");
    let clip = ClipX0::Dynamic {
        percentile: 0.9,
        max_value: 2.0,
    };
    let got = values(clip.apply(fx["thresh_in"].tensor::<4>()));
    assert_close("dynamic threshold", &got, &fx["thresh_out"].values, TOL);
    let stat = values(ClipX0::Static(1.0).apply(fx["thresh_in"].tensor::<4>()));
    assert!(stat.iter().all(|v| v.abs() <= 1.0) && stat != got);
}
