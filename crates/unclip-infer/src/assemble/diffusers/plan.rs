//! What `UnCLIPPipeline` can compute the way our pipeline does: each stage's diffusion and
//! sampling defaults checked against what diffusers' `UnCLIPScheduler` and pipeline implement
//! (refusing the rest, with the reason), and the scheduler configs and call arguments planned.

use serde_json::{json, Value};
use unclip_diffusion::{
    BetaSchedule, ClipX0, DiffusionConfig, Parameterization, SamplerKind, SamplingConfig,
    VarianceType,
};
use unclip_models::DIFFUSERS_VERSION;
use unclip_stages::text::ClipDims;

use crate::InferError;

/// What the diffusers folder will hold, decided before anything is written.
pub(crate) struct Plan {
    /// `(folder, scheduler_config.json)` for the prior, the decoder and the upsampler.
    pub schedulers: Vec<(&'static str, Value)>,
    /// `UnCLIPPipeline.__call__` arguments equivalent to `pipeline.json`.
    pub call: Value,
    pub notes: Vec<String>,
    /// The decoder has a fixed variance: give it the constant variance channels
    /// UnCLIPPipeline's guidance needs (`widen_conv_out`).
    pub widen_decoder: bool,
}

mod erased_serialize {
    /// The config spelling of an enum value (`cosine`, `fixed_large`).
    pub trait Name {
        fn name(&self) -> String;
    }
    impl<T: serde::Serialize> Name for T {
        fn name(&self) -> String {
            serde_json::to_value(self)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "?".into())
        }
    }
}

fn refuse(why: impl std::fmt::Display) -> InferError {
    InferError::Invalid(format!("--layout diffusers: {why}"))
}

/// The `num_inference_steps` whose `UnCLIPScheduler.set_timesteps` visits exactly the
/// timesteps of `respacing` (Karlo's spacing: `round(i·(T−1)/(n−1))`), if any.
fn karlo_steps(t: usize, respacing: &str) -> Option<usize> {
    let ours = unclip_diffusion::space_timesteps(t, respacing).ok()?;
    let n = ours.len();
    if n < 2 {
        return None;
    }
    let ratio = (t - 1) as f64 / (n - 1) as f64;
    let karlo = (0..n).map(|i| (i as f64 * ratio).round_ties_even() as usize);
    karlo.eq(ours.iter().copied()).then_some(n)
}

/// The `UnCLIPScheduler` config of stage `name` and its step count, or why there is none.
fn scheduler(
    name: &str,
    d: &DiffusionConfig,
    learned_variance_ok: bool,
) -> Result<(Value, usize), InferError> {
    let stage = |why: String| refuse(format!("the {name}: {why}"));
    use erased_serialize::Name;
    if d.schedule != BetaSchedule::Cosine {
        return Err(stage(format!(
            "diffusion.schedule is {}; UnCLIPScheduler only has the cosine schedule \
             (squaredcos_cap_v2)",
            d.schedule.name()
        )));
    }
    let prediction = match d.parameterization {
        Parameterization::Eps => "epsilon",
        Parameterization::X0 => "sample",
        other => {
            return Err(stage(format!(
                "diffusion.parameterization is {}; UnCLIPScheduler takes epsilon or sample (x0) \
                 predictions only",
                other.name()
            )))
        }
    };
    let variance = match d.variance {
        VarianceType::FixedSmall => "fixed_small_log",
        VarianceType::LearnedRange if learned_variance_ok => "learned_range",
        other => {
            return Err(stage(format!(
                "diffusion.variance is {}; UnCLIPScheduler has fixed_small_log (our \
                 fixed_small){}",
                other.name(),
                if learned_variance_ok {
                    " and learned_range"
                } else {
                    " only here"
                }
            )))
        }
    };
    let s: &SamplingConfig = &d.sampling;
    if s.sampler != SamplerKind::Ddpm {
        return Err(stage(
            "diffusion.sampling.sampler is ddim; UnCLIPScheduler samples DDPM only".into(),
        ));
    }
    let (clip_sample, range) =
        match s.clip_x0 {
            ClipX0::None => (false, 1.0),
            ClipX0::Static(r) => (true, r),
            ClipX0::Dynamic { .. } => return Err(stage(
                "diffusion.sampling.clip_x0 is dynamic; UnCLIPScheduler clips x0 to a fixed range \
                 only"
                    .into(),
            )),
        };
    let steps = karlo_steps(d.timesteps, &s.respacing).ok_or_else(|| {
        stage(format!(
            "diffusion.sampling.respacing `{}` visits timesteps that UnCLIPScheduler's \
             set_timesteps(n) (round(i·(T−1)/(n−1))) does not; use a single count such as \"25\"",
            s.respacing
        ))
    })?;
    let config = json!({
        "_class_name": "UnCLIPScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "beta_schedule": "squaredcos_cap_v2",
        "clip_sample": clip_sample,
        "clip_sample_range": range,
        "num_train_timesteps": d.timesteps,
        "prediction_type": prediction,
        "variance_type": variance,
    });
    Ok((config, steps))
}

fn diffusion_of(meta: &Value, name: &str) -> Result<DiffusionConfig, InferError> {
    serde_json::from_value(meta["diffusion"].clone())
        .map_err(|e| refuse(format!("the {name} export's diffusion section: {e}")))
}

/// Checks that `UnCLIPPipeline` can compute what our pipeline does with these exports
/// (`config.json` of each) and plans the schedulers; every refusal says why.
pub(crate) fn plan(
    prior: &Value,
    decoder: &Value,
    upsamplers: &[Value],
    dims: ClipDims,
) -> Result<Plan, InferError> {
    let upsampler =
        match upsamplers {
            [one] => one,
            [] => return Err(refuse(
                "UnCLIPPipeline always runs one super-resolution stage after the decoder; give \
                 exactly one --upsampler",
            )),
            _ => {
                return Err(refuse(format!(
                    "UnCLIPPipeline has one super-resolution stage (its super_res_first and \
                 super_res_last are one upsampler's networks for all steps but the last and for \
                 the last); a second upsampler has no place in it: give only the first of the {}",
                    upsamplers.len()
                )))
            }
        };
    if prior["model"]["text_encodings"] == "none" {
        return Err(refuse(
            "the prior was trained with `model.text_encodings: none`: it has no projection of \
             the caption's per-token encodings, which UnCLIPPipeline always passes to the prior \
             (encoder_hidden_states); retrain it with `text_encodings: store` to export it",
        ));
    }
    if decoder["model"]["text_encodings"] == "none" {
        return Err(refuse(
            "the decoder was trained with `model.text_encodings: none`, and UnCLIPPipeline's \
             UnCLIPTextProjModel always projects the caption's per-token encodings",
        ));
    }
    let scale = decoder["model"]["embed_scale"].as_f64().unwrap_or(1.0);
    if scale != 1.0 {
        return Err(refuse(format!(
            "the decoder's model.embed_scale is {scale}; diffusers' UnCLIPTextProjModel has no \
             such factor"
        )));
    }
    if upsampler["model"]["noise_aug"]["enabled"] == true {
        return Err(refuse(
            "the upsampler was trained with noise augmentation (model.noise_aug): it expects \
             the augmentation level as a class label, and UnCLIPPipeline passes none to \
             super_res_first/super_res_last",
        ));
    }
    if upsampler["model"]["residual"] == true {
        return Err(refuse(
            "the upsampler denoises the residual image − low-res (model.residual): \
             UnCLIPPipeline would take its output for the image",
        ));
    }
    if dims.text_width != dims.embed_dim {
        return Err(refuse(format!(
            "the CLIP's text width {} differs from its embedding size {}: diffusers' \
             PriorTransformer and UnCLIPTextProjModel take per-token encodings of the embedding \
             size",
            dims.text_width, dims.embed_dim
        )));
    }
    let (p, d, u) = (
        diffusion_of(prior, "prior")?,
        diffusion_of(decoder, "decoder")?,
        diffusion_of(upsampler, "upsampler")?,
    );
    let (prior_sched, prior_steps) = scheduler("prior", &p, false)?;
    let (mut dec_sched, dec_steps) = scheduler("decoder", &d, true)?;
    // Under guidance UnCLIPPipeline splits the decoder's output into ε and a learned variance
    // (it fails on a 3-channel output); see `widen_conv_out`.
    let widen_decoder = dec_sched["variance_type"] == "fixed_small_log";
    if widen_decoder {
        dec_sched["variance_type"] = json!("learned_range");
    }
    let (up_sched, up_steps) = scheduler("upsampler", &u, true)?;
    for (name, g) in [
        ("prior", p.sampling.guidance_scale),
        ("decoder", d.sampling.guidance_scale),
    ] {
        if g < 1.0 {
            return Err(refuse(format!(
                "the {name}'s diffusion.sampling.guidance_scale is {g}; UnCLIPPipeline guides \
                 only with scales above 1 (and then both stages), so below 1 it cannot sample \
                 as ours does"
            )));
        }
    }
    let call = json!({
        "prior_num_inference_steps": prior_steps,
        "decoder_num_inference_steps": dec_steps,
        "super_res_num_inference_steps": up_steps,
        "prior_guidance_scale": p.sampling.guidance_scale,
        "decoder_guidance_scale": d.sampling.guidance_scale,
    });
    let mut notes = vec![
        "load with UnCLIPPipeline.from_pretrained(DIR, trust_remote_code=True): text_encoder/ \
         L2-normalises CLIP's text embeddings (what our stages were trained on) and text_proj/ \
         imports diffusers' own UnCLIPTextProjModel"
            .to_owned(),
        "steps and guidance scales are UnCLIPPipeline.__call__ arguments; `call` holds the \
         ones equal to pipeline.json"
            .to_owned(),
        "between the decoder and the upsampler ours quantises the images to 8 bits and \
         resizes them as the upsampler was trained; UnCLIPPipeline upsamples the float images \
         bicubically (antialiased)"
            .to_owned(),
    ];
    if widen_decoder {
        notes.push(
            "the decoder (fixed_small variance) gets 3 more output channels with zero weights              and bias -1, which UnCLIPPipeline reads as a learned variance: at v = -1              UnCLIPScheduler's learned_range variance is exactly the fixed_small one"
                .to_owned(),
        );
    }
    let candidates = prior["model"]["n_candidates"].as_u64().unwrap_or(1);
    if candidates > 1 {
        notes.push(format!(
            "ours draws {candidates} prior samples per caption and keeps the one closest to the \
             caption's text embedding; UnCLIPPipeline draws one"
        ));
    }
    Ok(Plan {
        schedulers: vec![
            ("prior_scheduler", prior_sched),
            ("decoder_scheduler", dec_sched),
            ("super_res_scheduler", up_sched),
        ],
        call,
        notes,
        widen_decoder,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn karlo_spacing_is_a_single_uniform_count() {
        assert_eq!(karlo_steps(1000, "25"), Some(25));
        assert_eq!(karlo_steps(50, "5"), Some(5));
        assert_eq!(karlo_steps(50, ""), Some(50));
        // ADM's stride spacing and sectioned spacings visit other timesteps.
        assert_eq!(karlo_steps(1000, "ddim25"), None);
        assert_eq!(karlo_steps(1000, "10,10,5"), None);
        assert_eq!(karlo_steps(1000, "fast27"), None);
    }
}
