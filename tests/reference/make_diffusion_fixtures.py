#!/usr/bin/env python3
"""Write the committed parity fixtures of crates/unclip-diffusion under
tests/reference/fixtures/diffusion/.

Run from the repository root, in a venv with torch, numpy, safetensors and diffusers::

    /root/venv/bin/pip install diffusers
    /root/venv/bin/python tests/reference/make_diffusion_fixtures.py

It prints the package versions it used; the Rust tests (crates/unclip-diffusion/tests/) read
the files, so CI needs no Python. Two kinds of reference:

* diffusers' own schedulers (``DDPMScheduler``, ``DDIMScheduler``, ``UnCLIPScheduler``): their
  buffers, timestep grids and whole sampling trajectories, driven by fixed noise (injected by
  replacing the schedulers' ``randn_tensor``, or DDIM's ``variance_noise``) and a fixed fake
  model (``fake_model`` below, implemented identically in Rust). The trajectories run
  diffusers' step functions in float64 with float64 buffers (see ``exact``).
* the guided-diffusion / improved-diffusion formulas (respacing, learned_range, the vb terms,
  fixed_large), written out below in float64 from the papers (Ho et al. 2020; Nichol &
  Dhariwal 2021; Song et al. 2021) -- no code is taken from either repository.

Files (all small):

``schedules.safetensors`` (float64)
    ``<name>.<buffer>`` for cosine/1000, linear/1000, linear/100 and the cosine/1000 schedule
    respaced with ``fast27``: every derived buffer. ``<name>.diffusers_betas`` /
    ``.diffusers_alphas_cumprod`` are DDPMScheduler's (float32, so compared more loosely).
``respacing.json``
    ADM section strings and the timesteps they select; UnCLIPScheduler's grids (equal to ADM's
    ``"N"``); DDIMScheduler's ``leading`` grids next to ADM's ``ddimN`` (equal when T % N == 0,
    different for 1000/27).
``tensors.safetensors`` (float32, references computed in float64)
    q_sample, parameterization conversions, p_mean_variance for each variance type, vb terms,
    mse and min-SNR weights, dynamic thresholding (diffusers ``_threshold_sample``).
``traj_<case>.safetensors``
    ``x_start``, ``noise`` [steps, ...], ``timesteps``, ``samples`` [steps, ...] (x after each
    step) for each sampling case in ``TRAJECTORIES``.
"""

import json
import math
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

import diffusers
from diffusers import DDIMScheduler, DDPMScheduler, UnCLIPScheduler
from diffusers.schedulers import scheduling_ddpm, scheduling_unclip

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "diffusion")


# ---------------------------------------------------------------- schedule formulas (float64)


def cosine_betas(T):
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=np.float64)


def linear_betas(T):
    s = 1000.0 / T
    return np.linspace(s * 1e-4, s * 0.02, T, dtype=np.float64)


def buffers(betas):
    ac = np.cumprod(1.0 - betas)
    acp = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - acp) / (1.0 - ac)
    return {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": acp,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1.0),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.append(post_var[1], post_var[1:])),
        "posterior_mean_coef1": betas * np.sqrt(acp) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - acp) * np.sqrt(1.0 - betas) / (1.0 - ac),
    }


def adm_space(T, spec):
    """ADM/GLIDE respacing, from the description in docs/diffusion.md."""
    if spec.startswith("ddim"):
        n = int(spec[4:])
        for stride in range(1, T):
            if len(range(0, T, stride)) == n:
                return sorted(range(0, T, stride))
        raise ValueError(spec)
    if spec == "fast27":
        steps = set(adm_space(T, "10,10,3,2,2"))
        steps.discard(T - 1)
        steps.add(T - 3)
        return sorted(steps)
    counts = [int(c) for c in spec.split(",")]
    per, extra = divmod(T, len(counts))
    start, steps = 0, []
    for i, c in enumerate(counts):
        size = per + (1 if i < extra else 0)
        stride = 1 if c <= 1 else (size - 1) / (c - 1)
        pos = 0.0
        for _ in range(c):
            steps.append(start + round(pos))
            pos += stride
        start += size
    return sorted(set(steps))


def respaced_betas(betas, kept):
    ac = np.cumprod(1.0 - betas)
    last, out = 1.0, []
    for t in kept:
        out.append(1.0 - ac[t] / last)
        last = ac[t]
    return np.array(out)


# ---------------------------------------------------------------- tensor formulas (float64)


def ex(buf, idx, ndim):
    return torch.from_numpy(np.asarray(buf)[idx]).reshape(-1, *([1] * (ndim - 1)))


def normal_kl(m1, lv1, m2, lv2):
    return 0.5 * (-1.0 + lv2 - lv1 + torch.exp(lv1 - lv2) + (m1 - m2) ** 2 * torch.exp(-lv2))


def approx_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def disc_loglik(x, means, log_scales):
    c = x - means
    inv = torch.exp(-log_scales)
    cdf_plus = approx_cdf(inv * (c + 1.0 / 255.0))
    cdf_min = approx_cdf(inv * (c - 1.0 / 255.0))
    log_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_1m_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_plus, torch.where(x > 0.999, log_1m_min, log_delta))


def mean_flat(x):
    return x.reshape(x.shape[0], -1).mean(dim=1)


def tensor_fixtures():
    g = torch.Generator().manual_seed(1234)
    b = buffers(cosine_betas(1000))
    idx = np.array([0, 1, 500, 999])
    # Data on the 8-bit grid of [-1, 1], with both edges present (edge bins of the decoder NLL).
    x0 = (torch.randint(0, 256, (4, 2, 3, 3), generator=g).double() / 127.5 - 1.0)
    x0[0, 0, 0, 0], x0[1, 0, 0, 0] = -1.0, 1.0
    noise = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
    eps_out = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
    var_out = torch.rand(4, 2, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    x0, noise, eps_out, var_out = (t.float().double() for t in (x0, noise, eps_out, var_out))
    E = lambda name: ex(b[name], idx, 4)
    x_t = E("sqrt_alphas_cumprod") * x0 + E("sqrt_one_minus_alphas_cumprod") * noise
    x_t = x_t.float().double()  # the Rust side starts from the stored float32 x_t
    out = {"x0": x0, "noise": noise, "eps_out": eps_out, "var_out": var_out, "x_t": x_t}
    out["idx"] = torch.from_numpy(idx.astype(np.int64))
    x0_from_eps = E("sqrt_recip_alphas_cumprod") * x_t - E("sqrt_recipm1_alphas_cumprod") * eps_out
    out["x0_from_eps"] = x0_from_eps
    out["eps_from_x0"] = (E("sqrt_recip_alphas_cumprod") * x_t - x0) / E("sqrt_recipm1_alphas_cumprod")
    out["v_target"] = E("sqrt_alphas_cumprod") * noise - E("sqrt_one_minus_alphas_cumprod") * x0
    out["x0_from_v"] = E("sqrt_alphas_cumprod") * x_t - E("sqrt_one_minus_alphas_cumprod") * eps_out
    out["eps_from_v"] = E("sqrt_one_minus_alphas_cumprod") * x_t + E("sqrt_alphas_cumprod") * eps_out
    # p_mean_variance with an eps model and static clipping to [-1, 1].
    pred_x0 = x0_from_eps.clamp(-1, 1)
    mean = E("posterior_mean_coef1") * pred_x0 + E("posterior_mean_coef2") * x_t
    out["pmv_pred_x0"], out["pmv_mean"] = pred_x0, mean
    out["logvar_fixed_small"] = E("posterior_log_variance_clipped").expand_as(x_t).contiguous()
    large = np.log(np.append(b["posterior_variance"][1], b["betas"][1:]))
    out["logvar_fixed_large"] = ex(large, idx, 4).expand_as(x_t).contiguous()
    frac = (var_out + 1) / 2
    lr = frac * ex(np.log(b["betas"]), idx, 4) + (1 - frac) * E("posterior_log_variance_clipped")
    out["logvar_learned_range"] = lr
    # vb terms (bits) for the learned_range output, unclipped x0 as in training.
    model_mean = E("posterior_mean_coef1") * x0_from_eps + E("posterior_mean_coef2") * x_t
    true_mean = E("posterior_mean_coef1") * x0 + E("posterior_mean_coef2") * x_t
    kl = mean_flat(normal_kl(true_mean, E("posterior_log_variance_clipped"), model_mean, lr)) / math.log(2.0)
    nll = -mean_flat(disc_loglik(x0, model_mean, 0.5 * lr)) / math.log(2.0)
    vb = torch.where(torch.from_numpy(idx == 0), nll, kl)
    out["vb_bits"] = vb
    mse = mean_flat((eps_out - noise) ** 2)
    out["mse_eps"] = mse
    out["hybrid_loss"] = mse + 0.001 * 1000 * vb
    snr = b["alphas_cumprod"] / (1 - b["alphas_cumprod"])
    s = snr[idx]
    out["min_snr5_eps"] = torch.from_numpy(np.minimum(s, 5.0) / s)
    out["min_snr5_x0"] = torch.from_numpy(np.minimum(s, 5.0))
    out["min_snr5_v"] = torch.from_numpy(np.minimum(s, 5.0) / (s + 1))
    # Prior-shaped [B, D] data with an x0 model and fixed_small.
    emb = torch.randn(4, 8, generator=g, dtype=torch.float64).float().double()
    emb_noise = torch.randn(4, 8, generator=g, dtype=torch.float64).float().double()
    emb_t = ex(b["sqrt_alphas_cumprod"], idx, 2) * emb + ex(b["sqrt_one_minus_alphas_cumprod"], idx, 2) * emb_noise
    out["emb"], out["emb_noise"], out["emb_t"] = emb, emb_noise, emb_t
    out["emb_pmv_mean"] = ex(b["posterior_mean_coef1"], idx, 2) * emb.clamp(-1, 1) + ex(
        b["posterior_mean_coef2"], idx, 2
    ) * emb_t.float().double()
    # Dynamic thresholding, by diffusers itself.
    raw = (torch.randn(3, 2, 3, 3, generator=g) * 2.0).float()
    sched = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.0)
    out["thresh_in"], out["thresh_out"] = raw.double(), sched._threshold_sample(raw.clone()).double()
    save_file({k: v.float().contiguous() if k != "idx" else v for k, v in out.items()}, os.path.join(OUT, "tensors.safetensors"))


# ---------------------------------------------------------------- trajectories


def fake_model(x, t, branch="cond"):
    """0.1·x + sin(t/100) (cond) or 0.05·x − cos(t/100) (uncond) on the prediction channels."""
    t = float(t)
    if branch == "cond":
        return 0.1 * x + math.sin(t / 100.0)
    return 0.05 * x - math.cos(t / 100.0)


def fake_var(x, t):
    """Learned-range channels: tanh(0.5·x + cos(t/100))."""
    return torch.tanh(0.5 * x + math.cos(float(t) / 100.0))


class NoiseFeed:
    """Stands in for diffusers' randn_tensor: hands out the pre-drawn noise in order."""

    def __init__(self, noise):
        self.noise, self.used = noise, 0

    def __call__(self, shape, **kwargs):
        z = self.noise[self.used]
        assert tuple(z.shape) == tuple(shape), (z.shape, shape)
        self.used += 1
        return z.clone().double()


def exact(s, betas):
    """Give a diffusers scheduler float64 buffers from the exact formulas above.

    diffusers keeps betas and ᾱ in float32; at t = 0 its 1 − ᾱ_0 (ᾱ_0 = 1 − β_0, β_0 ≈ 4e-5 for
    cosine) keeps only ~3 significant digits, which moves the last sample by up to 2e-3. The
    trajectories are therefore diffusers' own step functions run on float64 buffers and float64
    tensors; the float32 buffers are compared separately (schedules.safetensors).
    """
    s.betas = torch.from_numpy(betas)
    s.alphas = 1.0 - s.betas
    s.alphas_cumprod = torch.cumprod(s.alphas, dim=0)
    s.one = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(s, "final_alpha_cumprod"):
        s.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return s


def guided(x, t, scale, channels, learned):
    """CFG on a doubled batch: prediction channels guided, variance channels from the cond branch."""
    c, u = fake_model(x, t, "cond"), fake_model(x, t, "uncond")
    g = u + scale * (c - u)
    return torch.cat([g, fake_var(x, t)], dim=1) if learned else g


def trajectories():
    gen = torch.Generator().manual_seed(42)
    cases = {}

    def record(name, meta, x_start, noise, timesteps, samples):
        cases[name] = meta
        tensors = {
            "x_start": x_start,
            "noise": noise,
            "timesteps": torch.tensor([int(t) for t in timesteps], dtype=torch.int64),
            "samples": samples,
        }
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, f"traj_{name}.safetensors"))

    img = (2, 2, 3, 3)

    # a) DDPM, full 100-step linear schedule, eps, fixed_small, clip ±1.
    s = DDPMScheduler(num_train_timesteps=100, beta_schedule="linear", beta_start=1e-3, beta_end=0.2,
                      variance_type="fixed_small", prediction_type="epsilon", clip_sample=True, clip_sample_range=1.0)
    s.set_timesteps(100)
    exact(s, linear_betas(100))
    x, z = torch.randn(img, generator=gen), torch.randn((100, *img), generator=gen)
    traj = drive(s, scheduling_ddpm, x, z, fake_model, unclip=False)
    record("ddpm_linear100", {"schedule": "linear", "timesteps": 100, "respacing": "", "sampler": "ddpm",
                              "parameterization": "eps", "variance": "fixed_small", "clip": 1.0,
                              "diffusers": "DDPMScheduler(100, linear, beta 1e-3..0.2, fixed_small, epsilon, clip_sample)"},
           x, z, s.timesteps, traj)

    # b) DDPM respaced ddim20 == diffusers leading 20, cosine, v-prediction, fixed_large.
    s = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="fixed_large",
                      prediction_type="v_prediction", clip_sample=True, clip_sample_range=1.0)
    s.set_timesteps(20)
    exact(s, cosine_betas(1000))
    x, z = torch.randn(img, generator=gen), torch.randn((20, *img), generator=gen)
    traj = drive(s, scheduling_ddpm, x, z, fake_model, unclip=False)
    record("ddpm_cosine_v_large", {"schedule": "cosine", "timesteps": 1000, "respacing": "ddim20", "sampler": "ddpm",
                                   "parameterization": "v", "variance": "fixed_large", "clip": 1.0,
                                   "diffusers": "DDPMScheduler(1000, squaredcos_cap_v2, fixed_large, v_prediction, clip_sample).set_timesteps(20)"},
           x, z, s.timesteps, traj)

    # c) unCLIP decoder: UnCLIPScheduler learned_range, eps, clip ±1, 25 steps, CFG scale 3 on eps.
    s = UnCLIPScheduler(num_train_timesteps=1000, variance_type="learned_range", prediction_type="epsilon",
                        clip_sample=True, clip_sample_range=1.0)
    s.set_timesteps(25)
    exact(s, cosine_betas(1000))
    x, z = torch.randn(img, generator=gen), torch.randn((25, *img), generator=gen)
    traj = drive(s, scheduling_unclip, x, z, lambda x, t: guided(x, t, 3.0, 2, True), unclip=True)
    record("unclip_decoder_cfg", {"schedule": "cosine", "timesteps": 1000, "respacing": "25", "sampler": "ddpm",
                                  "parameterization": "eps", "variance": "learned_range", "clip": 1.0, "guidance": 3.0,
                                  "diffusers": "UnCLIPScheduler(learned_range, epsilon, clip 1.0).set_timesteps(25)"},
           x, z, s.timesteps, traj)

    # d) unCLIP prior: UnCLIPScheduler fixed_small_log, x0 ("sample"), clip ±5, 25 steps, CFG 4 on x0, [B, D].
    s = UnCLIPScheduler(num_train_timesteps=1000, variance_type="fixed_small_log", prediction_type="sample",
                        clip_sample=True, clip_sample_range=5.0)
    s.set_timesteps(25)
    exact(s, cosine_betas(1000))
    x, z = torch.randn((3, 8), generator=gen), torch.randn((25, 3, 8), generator=gen)
    traj = drive(s, scheduling_unclip, x, z, lambda x, t: guided(x, t, 4.0, 8, False), unclip=True)
    record("unclip_prior_cfg", {"schedule": "cosine", "timesteps": 1000, "respacing": "25", "sampler": "ddpm",
                                "parameterization": "x0", "variance": "fixed_small", "clip": 5.0, "guidance": 4.0,
                                "diffusers": "UnCLIPScheduler(fixed_small_log, sample, clip 5.0).set_timesteps(25)"},
           x, z, s.timesteps, traj)

    # e) DDIM eta 0, eps, cosine, 50 leading steps == ADM ddim50.
    # f) DDIM eta 0.7, v, linear, 25 leading steps == ADM ddim25, dynamic thresholding.
    for name, kw, n, eta, meta in [
        ("ddim_eps_eta0", dict(beta_schedule="squaredcos_cap_v2", prediction_type="epsilon", clip_sample=True), 50, 0.0,
         {"schedule": "cosine", "respacing": "ddim50", "parameterization": "eps", "clip": 1.0}),
        ("ddim_v_eta07_dynamic", dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, prediction_type="v_prediction",
                                      clip_sample=False, thresholding=True, dynamic_thresholding_ratio=0.9,
                                      sample_max_value=1.5), 25, 0.7,
         {"schedule": "linear", "respacing": "ddim25", "parameterization": "v", "dynamic": [0.9, 1.5]}),
    ]:
        s = DDIMScheduler(num_train_timesteps=1000, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading", **kw)
        s.set_timesteps(n)
        exact(s, cosine_betas(1000) if meta["schedule"] == "cosine" else linear_betas(1000))
        x, z = torch.randn(img, generator=gen), torch.randn((n, *img), generator=gen)
        samples, xx = [], x.double()
        for k, t in enumerate(s.timesteps):
            xx = s.step(fake_model(xx, t), int(t), xx, eta=eta, use_clipped_model_output=True,
                        variance_noise=z[k].double() if eta > 0 else None).prev_sample
            samples.append(xx.float())
        meta.update({"timesteps": 1000, "sampler": "ddim", "eta": eta, "variance": "fixed_small",
                     "diffusers": f"DDIMScheduler({kw}, leading, set_alpha_to_one, steps_offset=0).set_timesteps({n}); "
                                  f"step(eta={eta}, use_clipped_model_output=True)"})
        record(name, meta, x, z, s.timesteps, torch.stack(samples))
    return cases


def drive(s, module, x, z, model, unclip):
    """Run DDPMScheduler/UnCLIPScheduler over its timesteps; z[k] is the noise of step k."""
    module.randn_tensor = feed = NoiseFeed(z)
    samples, ts, x = [], s.timesteps, x.double()
    for k, t in enumerate(ts):
        feed.used = k
        if unclip:
            prev = None if k + 1 == len(ts) else int(ts[k + 1])
            x = s.step(model(x, t), int(t), x, prev_timestep=prev).prev_sample
        else:
            x = s.step(model(x, t), int(t), x).prev_sample
        samples.append(x.float())
    return torch.stack(samples)


# ---------------------------------------------------------------- main


def main():
    os.makedirs(OUT, exist_ok=True)
    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
                "diffusers": diffusers.__version__}
    print(json.dumps(versions))

    sched = {}
    named = {"cosine_1000": cosine_betas(1000), "linear_1000": linear_betas(1000), "linear_100": linear_betas(100)}
    dkw = {"cosine_1000": dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"),
           "linear_1000": dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
           "linear_100": dict(num_train_timesteps=100, beta_schedule="linear", beta_start=1e-3, beta_end=0.2)}
    for name, betas in named.items():
        for k, v in buffers(betas).items():
            sched[f"{name}.{k}"] = torch.from_numpy(v)
        d = DDPMScheduler(**dkw[name])
        sched[f"{name}.diffusers_betas"] = d.betas.double()
        sched[f"{name}.diffusers_alphas_cumprod"] = d.alphas_cumprod.double()
    kept = adm_space(1000, "fast27")
    for k, v in buffers(respaced_betas(named["cosine_1000"], kept)).items():
        sched[f"cosine_1000_fast27.{k}"] = torch.from_numpy(v)
    save_file(sched, os.path.join(OUT, "schedules.safetensors"))

    resp = {"adm": [], "unclip": [], "ddim_leading": []}
    for T, spec in [(1000, "25"), (1000, "64"), (1000, "250"), (1000, "10,10,3,2,2"), (1000, "fast27"),
                    (1000, "ddim50"), (1000, "ddim27"), (1000, "ddim25"), (100, "7,3"), (101, "3,3,4"), (1000, "1000")]:
        resp["adm"].append({"timesteps": T, "spec": spec, "selected": adm_space(T, spec)})
    for n in [2, 15, 25, 27, 50, 64, 100, 250]:
        u = UnCLIPScheduler(num_train_timesteps=1000)
        u.set_timesteps(n)
        resp["unclip"].append({"timesteps": 1000, "steps": n, "selected": sorted(int(t) for t in u.timesteps)})
    for n in [20, 25, 27, 50]:
        d = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="leading", steps_offset=0)
        d.set_timesteps(n)
        resp["ddim_leading"].append({"timesteps": 1000, "steps": n, "selected": sorted(int(t) for t in d.timesteps)})
    resp["versions"] = versions
    with open(os.path.join(OUT, "respacing.json"), "w") as f:
        json.dump(resp, f)

    tensor_fixtures()
    cases = trajectories()
    with open(os.path.join(OUT, "trajectories.json"), "w") as f:
        json.dump({"cases": cases, "versions": versions}, f, indent=1)
    total = sum(os.path.getsize(os.path.join(OUT, p)) for p in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files, {total} bytes, to {OUT}")


if __name__ == "__main__":
    main()
