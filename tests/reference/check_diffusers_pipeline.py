#!/usr/bin/env python3
"""Loads the folder written by `unclip pipeline assemble --layout diffusers` (PIPELINE/diffusers)
with diffusers' `UnCLIPPipeline.from_pretrained(…, trust_remote_code=True)`, checks its text side
against unclip's own CLIP and generates images.

1. Text encoder + tokenizer: for every caption of SHARDS (a split of the shards the embedding
   store STORE was made from, with unclip's CLIP — the pipeline's clip/) and for the empty
   caption, the pipeline's tokenizer and text encoder give `text_embeds` (L2-normalised by the
   folder's text_encoder module), `last_hidden_state` and the attention mask; they are compared
   with the store's `text_embed`, `text_encodings` (at unmasked positions) and `text_mask`.
   The store holds f16, so agreement is to about 1e-3.
2. The schedulers: each stage's `UnCLIPScheduler.set_timesteps(n)` (n from the folder's
   unclip_pipeline.json `call`) must visit the timesteps of the stage's respacing in the native
   pipeline.json (recomputed here for a single-count respacing).
   For a decoder given constant variance channels (v = -1, see docs/inference.md), the
   decoder scheduler's learned_range variance at v = -1 is compared with its fixed_small_log
   variance at every step.
3. Generation: `pipe(prompts, **call)` on the CPU; the images are written to --out as one PNG
   row.

    /root/venv/bin/python tests/reference/check_diffusers_pipeline.py PIPELINE SHARDS STORE \
        [--prompt "a red square"]... [--out grid.png] [--rust-dump FILE]
"""

import argparse
import glob
import json
import tarfile
import time

import numpy as np
import torch
from diffusers import UnCLIPPipeline
from PIL import Image
from safetensors import safe_open
from safetensors.numpy import load_file


def captions(shards: str) -> dict:
    found = {}
    for path in sorted(glob.glob(f"{shards}/*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                if ext == "txt":
                    found[key] = tar.extractfile(m).read().decode("utf-8")
    return found


def store_rows(store: str):
    keys, rows = [], []
    for p in sorted(glob.glob(f"{store}/*.emb.safetensors")):
        with safe_open(p, "np") as f:
            keys += json.loads(f.metadata()["unclip_embeddings"])["keys"]
        rows.append(load_file(p))
    cat = lambda k: np.concatenate([r[k] for r in rows]).astype(np.float32)
    return keys, cat("text_embed"), cat("text_encodings"), np.concatenate([r["text_mask"] for r in rows]) > 0


def encode(pipe, texts):
    tok = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = pipe.text_encoder(tok.input_ids)
    return out.text_embeds.numpy(), out.last_hidden_state.numpy(), tok.attention_mask.numpy() > 0


def compare(pipe, texts, embed, enc, mask) -> dict:
    e, h, m = [], [], []
    for i in range(0, len(texts), 64):
        a, b, c = encode(pipe, texts[i:i + 64])
        e.append(a), h.append(b), m.append(c)
    e, h, m = np.concatenate(e), np.concatenate(h), np.concatenate(m)
    sel = mask[:, :, None].repeat(enc.shape[2], 2)
    return {
        "captions": len(texts),
        "text_embeds_max_abs_diff": float(np.abs(e - embed).max()),
        "text_embeds_norm": [float(np.linalg.norm(e, axis=1).min()), float(np.linalg.norm(e, axis=1).max())],
        "encodings_max_abs_diff_unmasked": float(np.abs(h - enc)[sel].max()),
        "encodings_max_abs": float(np.abs(enc[sel]).max()),
        "masks_equal": bool((m == mask).all()),
    }


def one_step(pipe, path: str) -> dict:
    """The pipeline's components on the inputs of the dump, against our stages' outputs."""
    d = {k: torch.tensor(v) for k, v in load_file(path).items()}
    with safe_open(path, "np") as f:
        t = int(f.metadata()["timestep"])
    n = d["text_embed"].shape[0]
    ts = torch.full((n,), t, dtype=torch.long)
    rel = lambda a, b: float((a - b).abs().max() / b.abs().max())
    out = {"timestep": t}
    with torch.no_grad():
        # The pipeline's own text side on the same captions.
        emb, hid, mask = encode(pipe, ["a red square", "a blue circle"])
        m = d["text_mask"] > 0
        out["text_embeds_max_abs_diff"] = float(np.abs(emb - d["text_embed"].numpy()).max())
        out["encodings_max_abs_diff_unmasked"] = float(np.abs(hid - d["text_encodings"].numpy())[m.numpy()].max())
        out["masks_equal"] = bool((mask == m.numpy()).all())
        # Prior: x0 prediction for x_t at t.
        p = pipe.prior(d["prior_x_t"], timestep=ts, proj_embedding=d["text_embed"],
                       encoder_hidden_states=d["text_encodings"], attention_mask=m).predicted_image_embedding
        out["prior_max_rel_diff"] = rel(p, d["prior_out"])
        # Decoder: conditional and unconditional branches as the pipeline builds them.
        k = pipe.text_proj.clip_extra_context_tokens
        hidden, additive = pipe.text_proj(
            image_embeddings=d["image_embed"],
            prompt_embeds=torch.cat([d["empty_embed"], d["text_embed"]]),
            text_encoder_hidden_states=torch.cat([d["empty_encodings"], d["text_encodings"]]),
            do_classifier_free_guidance=True)
        full = torch.nn.functional.pad(torch.cat([d["empty_mask"] > 0, m]), (k, 0), value=True)
        x = torch.cat([d["decoder_x_t"]] * 2)
        eps = pipe.decoder(x, torch.cat([ts, ts]), encoder_hidden_states=hidden, class_labels=additive,
                           attention_mask=full).sample
        ours_c = d["decoder_cond"]
        c = ours_c.shape[1]
        out["decoder_cond_max_rel_diff"] = rel(eps[n:, :c], ours_c)
        out["decoder_uncond_max_rel_diff"] = rel(eps[:n, :c], d["decoder_uncond"])
        if eps.shape[1] > c:
            out["decoder_added_variance_channels"] = [float(eps[:, c:].min()), float(eps[:, c:].max())]
        # Upsampler (super_res_first and super_res_last).
        x = torch.cat([d["upsampler_x_t"], d["upsampler_low_res"]], 1)
        for name in ["super_res_first", "super_res_last"]:
            e = getattr(pipe, name)(x, ts).sample
            out[f"{name}_max_rel_diff"] = rel(e, d["upsampler_out"])
    return out


def karlo_like_ours(t: int, respacing: str) -> list:
    """unclip's respacing for a single count N (`"N"`, or `""` = every step)."""
    n = t if respacing.strip() == "" else int(respacing)
    stride, cur, out = (t - 1) / (n - 1), 0.0, []
    for _ in range(n):
        out.append(int(np.round(cur)))
        cur += stride
    return sorted(set(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("pipeline")
    ap.add_argument("shards")
    ap.add_argument("store")
    ap.add_argument("--prompt", action="append")
    ap.add_argument("--out", default="diffusers_pipeline.png")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rust-dump", help="our stages' one-step outputs (see module docstring, 4.)")
    args = ap.parse_args()
    folder = f"{args.pipeline}/diffusers"
    t0 = time.time()
    pipe = UnCLIPPipeline.from_pretrained(folder, trust_remote_code=True)
    load_s = time.time() - t0
    with open(f"{folder}/unclip_pipeline.json") as f:
        call = json.load(f)["call"]
    report = {
        "loaded": {k: type(v).__name__ for k, v in pipe.components.items()},
        "load_seconds": round(load_s, 2),
        "call": call,
    }

    # 1. Text side against the store made by unclip's CLIP.
    caps = captions(args.shards)
    keys, embed, enc, mask = store_rows(args.store)
    texts = [caps[k] for k in keys]
    report["text_vs_store"] = compare(pipe, texts, embed, enc, mask)
    empty = load_file(f"{args.store}/empty_caption.safetensors")
    report["empty_caption_vs_store"] = compare(
        pipe, [""], empty["text_embed"].astype(np.float32), empty["text_encodings"].astype(np.float32),
        empty["text_mask"] > 0)

    # 2. Scheduler timesteps against the native pipeline.json respacing.
    with open(f"{args.pipeline}/pipeline.json") as f:
        native = json.load(f)
    sched = {}
    for stage, sch, entry, steps in [
        ("prior", pipe.prior_scheduler, native["prior"], call["prior_num_inference_steps"]),
        ("decoder", pipe.decoder_scheduler, native["decoder"], call["decoder_num_inference_steps"]),
        ("upsampler", pipe.super_res_scheduler, native["upsamplers"][0], call["super_res_num_inference_steps"]),
    ]:
        sch.set_timesteps(steps)
        theirs = sorted(sch.timesteps.tolist())
        ours = karlo_like_ours(sch.config.num_train_timesteps, entry["sampling"]["respacing"])
        sched[stage] = {"steps": steps, "same_timesteps": theirs == ours}
    report["schedulers"] = sched
    # A fixed-variance decoder was given constant variance channels v = -1: check that
    # UnCLIPScheduler's learned_range variance at v = -1 is its fixed_small_log one at every step.
    s = pipe.decoder_scheduler
    s.set_timesteps(call["decoder_num_inference_steps"])
    ts = s.timesteps.tolist()
    worst = 0.0
    for i, t in enumerate(ts[:-1]):
        prev = ts[i + 1]
        learned = (0.5 * s._get_variance(t, prev, torch.tensor(-1.0), "learned_range")).exp()
        fixed = s._get_variance(t, prev, None, "fixed_small_log")
        worst = max(worst, float((learned / fixed - 1).abs()))
    report["decoder_variance_v_minus_1_vs_fixed_small_max_rel_diff"] = worst

    if args.rust_dump:
        report["one_step_vs_rust"] = one_step(pipe, args.rust_dump)

    # 3. Generate.
    prompts = args.prompt or ["a red square"]
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    images = pipe(prompts, generator=g, **call).images
    report["generated"] = {
        "prompts": prompts,
        "size": list(images[0].size),
        "seconds": round(time.time() - t0, 1),
        "out": args.out,
    }
    w, h = images[0].size
    grid = Image.new("RGB", (w * len(images), h))
    for i, img in enumerate(images):
        grid.paste(img, (i * w, 0))
    grid.save(args.out)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
