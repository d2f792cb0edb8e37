#!/usr/bin/env python3
"""Loads a prior exported by `unclip export --layout diffusers` with diffusers'
`PriorTransformer.from_pretrained` and checks that it predicts sensible image embeddings.

For the held-out samples of an embedding store it noises each true image embedding (standardised
with the model's own clip_mean / clip_std) at timestep T, asks the model for x0 with the caption's
pooled embedding, and reports the mean cosine of the un-standardised prediction with the true
embedding, next to the cosine of the text embedding itself. A prior trained with
`text_encodings: none` gets all-padding encodings with an all-false mask (equivalent to leaving the
text tokens out); a prior trained with `store` gets the store's encodings and mask. Which one is
read from the export's `unclip_export.json` (the run's `model.text_encodings`).

    /root/venv/bin/python tests/reference/check_diffusers_prior_export.py EXPORT_DIR STORE_DIR [--t 500]
"""

import argparse
import glob
import json
import math

import numpy as np
import torch
from diffusers import PriorTransformer
from safetensors.numpy import load_file


def alphas_cumprod_cosine(steps: int) -> np.ndarray:
    f = lambda t: math.cos((t / steps + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = [min(1 - f(i + 1) / f(i), 0.999) for i in range(steps)]
    return np.cumprod(1 - np.array(betas, dtype=np.float64))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("export")
    ap.add_argument("store")
    ap.add_argument("--t", type=int, default=500)
    args = ap.parse_args()
    model = PriorTransformer.from_pretrained(args.export).eval()
    cfg = model.config
    rows = [load_file(f) for f in sorted(glob.glob(f"{args.store}/*.emb.safetensors"))]
    img = torch.tensor(np.concatenate([r["image_embed"] for r in rows]).astype(np.float32))
    txt = torch.tensor(np.concatenate([r["text_embed"] for r in rows]).astype(np.float32))
    n = img.shape[0]
    with open(f"{args.export}/unclip_export.json") as f:
        mode = json.load(f)["model"]["text_encodings"]
    if mode != "none":
        enc = torch.tensor(np.concatenate([r["text_encodings"] for r in rows]).astype(np.float32))
        mask = torch.tensor(np.concatenate([r["text_mask"] for r in rows]) > 0)
    else:
        enc = torch.zeros(n, cfg.num_embeddings, cfg.embedding_dim)
        mask = torch.zeros(n, cfg.num_embeddings, dtype=torch.bool)
    mean, std = model.clip_mean.detach(), model.clip_std.detach()
    ab = alphas_cumprod_cosine(1000)[args.t]
    g = torch.Generator().manual_seed(0)
    x0 = (img - mean) / std
    x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        out = model(
            x_t,
            timestep=torch.full((n,), args.t),
            proj_embedding=txt,
            encoder_hidden_states=enc,
            attention_mask=mask,
        ).predicted_image_embedding
    mse = ((out - x0) ** 2).mean().item()
    pred = out * std + mean
    cos = torch.nn.functional.cosine_similarity
    print(json.dumps({
        "samples": n,
        "text_encodings": mode,
        "t": args.t,
        "missing_or_unexpected_keys": "none (from_pretrained raised nothing)",
        "cos_pred_x0": round(cos(pred, img).mean().item(), 4),
        "mse_standardised": round(mse, 4),
        "cos_text_baseline": round(cos(txt, img).mean().item(), 4),
        "cos_noised_input": round(cos(x_t * std + mean, img).mean().item(), 4),
    }))


if __name__ == "__main__":
    main()
