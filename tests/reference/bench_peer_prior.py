#!/usr/bin/env python3
"""Peer training benchmark of the diffusion prior: DALLE2-pytorch's ``DiffusionPrior`` on the
torch CPU backend, fed random tensors the way our prior benchmark is.

Install (DALLE2-pytorch in its own venv, so /root/venv keeps its torch; the ``.pth`` line lets the
new venv see /root/venv's torch, so pip does not download another one)::

    /root/venv/bin/python -m venv /tmp/d2-venv
    echo /root/venv/lib/python3.11/site-packages \\
        > /tmp/d2-venv/lib/python3.11/site-packages/zz_root_venv.pth
    /tmp/d2-venv/bin/pip install dalle2-pytorch==1.15.6

Run from the repository root::

    /tmp/d2-venv/bin/python tests/reference/bench_peer_prior.py [--threads 2] [--warmup 2]
        [--steps 5] [--batch 64] [--max-text-len 77]

What one step is (as ``DiffusionPriorTrainer`` does it; the trainer is used, CLIP left out):
``DiffusionPriorNetwork(dim=512, depth=6, dim_head=64, heads=8, max_text_len=77)`` inside
``DiffusionPrior(image_embed_dim=512, timesteps=1000, cond_drop_prob=0.1,
condition_on_text_encodings=True)`` (cosine schedule, x0 prediction, L2 loss, the default
sqrt(D) image-embedding scale), fed random tensors drawn once and reused every step:
``text_embed`` [64, 512] and ``image_embed`` [64, 512] (standard normal, then L2-normalised like
CLIP embeddings) and ``text_encodings`` [64, 77, 512] (standard normal); forward
+ backward, grad-norm clipping at 1.0, AdamW (lr 1.1e-4, weight decay 6e-2 on the >= 2-d
parameters as DALLE2-pytorch groups them, betas (0.9, 0.96), eps 1e-6), then an EMA
(beta 0.9999) of the weights updated every step (``ema_update_after_step=0``,
``ema_update_every=1``; ema-pytorch's defaults would update every 10th step only).

``max_text_len`` defaults to 77 (the CLIP context length)
so the sequence is 77 + 4 tokens like ours; DALLE2-pytorch's own default, 256, pads every caption
with learned null tokens to 256 + 4 tokens.

Prints one JSON line. ``params`` counts the trainable parameters of the prior network,
``params_diffusion_prior`` those of the whole ``DiffusionPrior`` (the same without CLIP). Timings
are wall-clock means over the timed steps, after the warm-up steps.
"""

import argparse
import json
import time
from importlib.metadata import version

import torch


def trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-text-len", type=int, default=77)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--device", default="cpu", help="cpu or cuda (the GPU check, scripts/gpu-check.sh)"
    )
    args = ap.parse_args()
    device = torch.device(args.device)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    # Imported late: importing dalle2_pytorch pulls in much (accelerate, open_clip, kornia, ...).
    from accelerate import Accelerator
    from dalle2_pytorch import DiffusionPrior, DiffusionPriorNetwork
    from dalle2_pytorch.trainer import DiffusionPriorTrainer

    dim, text_len = 512, 77
    net = DiffusionPriorNetwork(
        dim=dim, depth=6, dim_head=64, heads=8, max_text_len=args.max_text_len
    )
    prior = DiffusionPrior(
        net=net,
        image_embed_dim=dim,
        timesteps=1000,
        cond_drop_prob=0.1,
        condition_on_text_encodings=True,
    )
    params_net = trainable(net)
    params_prior = trainable(prior)

    trainer = DiffusionPriorTrainer(
        prior,
        accelerator=Accelerator(cpu=args.device == "cpu"),
        use_ema=True,
        lr=1.1e-4,
        wd=6e-2,
        eps=1e-6,
        betas=(0.9, 0.96),
        max_grad_norm=1.0,
        ema_beta=0.9999,
        ema_update_after_step=0,
        ema_update_every=1,
    )
    trainer.train()

    n = args.batch
    # Unit-norm pooled embeddings, as CLIP gives them (DiffusionPrior then scales the image
    # embedding by sqrt(D)); the per-token encodings stay standard normal.
    text_embed = torch.nn.functional.normalize(torch.randn(n, dim), dim=-1).to(device)
    image_embed = torch.nn.functional.normalize(torch.randn(n, dim), dim=-1).to(device)
    text_encodings = torch.randn(n, text_len, dim).to(device)

    def step():
        # DiffusionPrior.forward scales image_embed in place: hand it a fresh copy each step.
        loss = trainer(
            text_embed=text_embed,
            image_embed=image_embed.clone(),
            text_encodings=text_encodings,
        )
        trainer.update()
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    t0 = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    sync()
    elapsed = time.perf_counter() - t0
    s_per_step = elapsed / args.steps

    out = {
        "bench": "train",
        "peer": "dalle2-pytorch",
        "stage": "prior",
        "s_per_step": round(s_per_step, 4),
        "samples_per_s": round(n / s_per_step, 2),
        "batch": n,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "params": params_net,
        "params_diffusion_prior": params_prior,
        "max_text_len": args.max_text_len,
        "last_loss": round(float(losses[-1]), 5),
        "torch_threads": torch.get_num_threads(),
        "device": args.device,
        "torch": torch.__version__,
        "dalle2_pytorch": version("dalle2-pytorch"),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
