#!/usr/bin/env python3
"""Write the committed parity fixtures of the diffusion prior (crates/unclip-models,
``PriorTransformer``) under tests/reference/fixtures/prior/.

Run from the repository root, in a venv with torch, safetensors and diffusers (0.42.1 was used)::

    /root/venv/bin/python tests/reference/make_prior_fixtures.py

The Rust test crates/unclip-models/tests/prior_diffusers.rs reads the files, so CI needs no
Python. The output is deterministic for a given torch version (fixed seed, CPU, float32).

Files (all small):

``diffusers/config.json``, ``diffusers/diffusion_pytorch_model.safetensors``
    A tiny diffusers ``PriorTransformer`` written by ``save_pretrained``: 2 heads x 8 channels
    (inner width 16), 2 layers, embedding_dim 12 (deliberately != the inner width, so a
    transposed Linear weight cannot pass), 7 text tokens, 4 additional tokens, dropout 0.1 (a
    config value only: the reference runs in eval mode). Every tensor is random, including the
    ones diffusers initialises to constants (positional_embedding, prd_embedding, LayerNorm
    gains/offsets, clip_mean, clip_std), so the parity test exercises all of them.
``io.safetensors`` (float32)
    Inputs ``x_t`` [3, 12], ``timesteps`` [3] (integers stored as float32), ``text_embed``
    [3, 12], ``text_encodings`` [3, 7, 12], ``text_mask`` [3, 7] (uint8, 1 = real token; rows
    with 7, 4 and 1 real tokens) and diffusers' output ``predicted_image_embedding`` [3, 12]
    (``model.eval()``, ``torch.no_grad()``).
``diffusers_time_embed/`` (same two files), ``io_time_embed.safetensors``
    A second tiny model, identical in shape except ``time_embed_dim=64`` (4x the inner width,
    so ``time_embedding`` is Linear(16 -> 64) -> SiLU -> Linear(64 -> 16) and ``config.json``
    carries 64 instead of null), with its own seed, random tensors and inputs laid out as in
    ``io.safetensors`` (mask rows with 3, 7 and 0 real tokens).
"""

import json
import os

import diffusers
import torch
from diffusers import PriorTransformer
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "prior")


def make(seed, model_dir, io_name, real_tokens, **extra):
    torch.manual_seed(seed)
    model = PriorTransformer(
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=2,
        embedding_dim=12,
        num_embeddings=7,
        additional_embeddings=4,
        dropout=0.1,
        **extra,
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "clip_std":
                p.copy_(0.5 + torch.rand_like(p))
            elif name.endswith(".weight") and p.ndim == 1:  # LayerNorm gains
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name in ("positional_embedding", "prd_embedding", "clip_mean") or (
                p.ndim == 1
            ):
                p.copy_(0.5 * torch.randn_like(p))
            else:  # Linear weights: keep PyTorch's default init, already random
                pass
    model.eval()

    n, d, length = 3, 12, 7
    x_t = torch.randn(n, d)
    timesteps = torch.tensor([0, 17, 999], dtype=torch.long)
    text_embed = torch.randn(n, d)
    text_encodings = torch.randn(n, length, d)
    text_mask = torch.zeros(n, length, dtype=torch.bool)
    for row, real in enumerate(real_tokens):
        text_mask[row, :real] = True
    with torch.no_grad():
        out = model(
            x_t,
            timesteps,
            proj_embedding=text_embed,
            encoder_hidden_states=text_encodings,
            attention_mask=text_mask,
        ).predicted_image_embedding

    model.save_pretrained(os.path.join(OUT, model_dir), safe_serialization=True)
    save_file(
        {
            "x_t": x_t.contiguous(),
            "timesteps": timesteps.to(torch.float32),
            "text_embed": text_embed.contiguous(),
            "text_encodings": text_encodings.contiguous(),
            "text_mask": text_mask.to(torch.uint8),
            "predicted_image_embedding": out.contiguous(),
        },
        os.path.join(OUT, io_name),
    )
    with open(os.path.join(OUT, model_dir, "config.json")) as f:
        print(json.dumps(json.load(f), indent=1))
    print("output", out)


def main():
    make(20240601, "diffusers", "io.safetensors", [7, 4, 1])
    make(
        20240602,
        "diffusers_time_embed",
        "io_time_embed.safetensors",
        [3, 7, 0],
        time_embed_dim=64,
    )
    print("torch", torch.__version__, "diffusers", diffusers.__version__)


if __name__ == "__main__":
    main()
