#!/usr/bin/env python3
"""Loads a decoder exported by `unclip export --layout diffusers` with diffusers'
`UNet2DConditionModel` and `UnCLIPTextProjModel` and checks that it denoises held-out images as
well as the run's own validation says.

For the held-out shards and their embedding store it centre-crops each image to the run's
`data.image_size` (shorter side resized with PIL bicubic first, as a check, not bit-exact with the
Rust loader), scales it to [-1, 1], noises it at a random timestep of the run's schedule, runs
text_proj → unet as diffusers' `UnCLIPPipeline` does (4 image tokens before the caption's
tokens, their mask entries true) without guidance, and reports the mean squared error of the
predicted noise. The run's `val_loss` (metrics.jsonl) is the same quantity.

    /root/venv/bin/python tests/reference/check_diffusers_decoder_export.py EXPORT_DIR SHARDS_DIR STORE_DIR
"""

import argparse
import glob
import io
import json
import math
import tarfile

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
from PIL import Image
from safetensors.numpy import load_file


def schedule(kind: str, steps: int) -> np.ndarray:
    if kind == "linear":
        scale = 1000 / steps
        betas = np.linspace(scale * 1e-4, scale * 0.02, steps, dtype=np.float64)
    else:
        f = lambda t: math.cos((t / steps + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(steps)])
    return np.cumprod(1 - betas)


def images(shards: str, keys: list, size: int) -> torch.Tensor:
    found = {}
    for path in sorted(glob.glob(f"{shards}/*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                if ext in ("png", "jpg", "jpeg", "webp"):
                    img = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
                    w, h = img.size
                    s = size / min(w, h)
                    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
                    w, h = img.size
                    l, t = (w - size) // 2, (h - size) // 2
                    found[key] = np.asarray(img.crop((l, t, l + size, t + size)), dtype=np.float32)
    x = np.stack([found[k] for k in keys]) / 127.5 - 1.0
    return torch.tensor(x).permute(0, 3, 1, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("export")
    ap.add_argument("shards")
    ap.add_argument("store")
    args = ap.parse_args()
    unet = UNet2DConditionModel.from_pretrained(f"{args.export}/unet").eval()
    proj = UnCLIPTextProjModel.from_pretrained(f"{args.export}/text_proj").eval()
    with open(f"{args.export}/unet/unclip_export.json") as f:
        meta = json.load(f)
    size, diff = meta["image_size"], meta["diffusion"]
    rows = [load_file(p) for p in sorted(glob.glob(f"{args.store}/*.emb.safetensors"))]
    keys = []
    for p in sorted(glob.glob(f"{args.store}/*.emb.safetensors")):
        from safetensors import safe_open
        with safe_open(p, "np") as f:
            keys += json.loads(f.metadata()["unclip_embeddings"])["keys"]
    cat = lambda k: torch.tensor(np.concatenate([r[k] for r in rows]).astype(np.float32))
    img_emb, txt_emb, enc = cat("image_embed"), cat("text_embed"), cat("text_encodings")
    mask = torch.tensor(np.concatenate([r["text_mask"] for r in rows]) > 0)
    x0 = images(args.shards, keys, size)
    n = x0.shape[0]
    ab = schedule(diff["schedule"], diff["timesteps"])
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, diff["timesteps"], (n,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    a = torch.tensor(ab[t.numpy()], dtype=torch.float32)[:, None, None, None]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    with torch.no_grad():
        hidden, additive = proj(
            image_embeddings=img_emb,
            prompt_embeds=txt_emb,
            text_encoder_hidden_states=enc,
            do_classifier_free_guidance=False,
        )
        full_mask = torch.cat([torch.ones(n, proj.clip_extra_context_tokens, dtype=torch.bool), mask], 1)
        eps = unet(x_t, t, encoder_hidden_states=hidden, class_labels=additive,
                   attention_mask=full_mask).sample[:, :3]
    print(json.dumps({
        "samples": n,
        "image_size": size,
        "missing_or_unexpected_keys": "none (from_pretrained raised nothing)",
        "eps_mse": round(((eps - noise) ** 2).mean().item(), 4),
        "eps_mse_of_zero_prediction": round((noise ** 2).mean().item(), 4),
    }))


if __name__ == "__main__":
    main()
