#!/usr/bin/env python3
"""Peer training benchmark of the decoder: DALLE2-pytorch's ``Decoder`` on the torch CPU
backend, fed random tensors the way our decoder benchmark (configs/bench/decoder.yaml) is.

Install: the venv of tests/reference/bench_peer_prior.py (``dalle2-pytorch==1.15.6``).

Run from the repository root::

    /tmp/d2-venv/bin/python tests/reference/bench_peer_decoder.py [--threads 2] [--warmup 1]
        [--steps 3] [--batch 8]

What one step is (as ``DecoderTrainer`` does it; CLIP left out, its outputs given):
``Unet(dim=64, dim_mults=(1, 2, 4), cond_dim=128, image_embed_dim=512, text_embed_dim=512,
cond_on_text_encodings=True)`` inside ``Decoder(image_size=64, timesteps=1000,
learned_variance=False, image_cond_drop_prob=0.1, text_cond_drop_prob=0.5)`` (cosine schedule,
ε prediction, L2 loss), fed random tensors drawn once and reused every step: ``image``
[8, 3, 64, 64] (uniform in [0, 1], what the decoder expects), ``image_embed`` [8, 512] (standard
normal, then L2-normalised like CLIP embeddings) and ``text_encodings`` [8, 77, 512] (standard
normal); forward + backward, grad-norm clipping at 1.0, AdamW (lr 1e-4, weight decay 1e-2,
eps 1e-8: our bench config's optimizer), then an EMA (beta 0.9999) updated every step.

Prints one JSON line. ``params`` counts the trainable parameters of the ``Decoder`` (its one
``Unet`` as the decoder rebuilds it, with image-embedding conditioning on); ``params_unet_as_built``
those of the ``Unet`` as constructed above. Timings are wall-clock means over the timed steps,
after the warm-up steps.
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
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--steps", type=int, default=3, help="timed steps")
    ap.add_argument("--batch", type=int, default=8)
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
    from dalle2_pytorch import Decoder, Unet
    from dalle2_pytorch.trainer import DecoderTrainer

    dim, text_len, size = 512, 77, 64
    unet = Unet(
        dim=64,
        dim_mults=(1, 2, 4),
        cond_dim=128,
        image_embed_dim=dim,
        text_embed_dim=dim,
        cond_on_text_encodings=True,
    )
    params_unet = trainable(unet)
    decoder = Decoder(
        unet=unet,
        image_size=size,
        timesteps=1000,
        learned_variance=False,
        image_cond_drop_prob=0.1,
        text_cond_drop_prob=0.5,
    )
    params = trainable(decoder)

    trainer = DecoderTrainer(
        decoder,
        accelerator=Accelerator(cpu=args.device == "cpu"),
        use_ema=True,
        lr=1e-4,
        wd=1e-2,
        eps=1e-8,
        max_grad_norm=1.0,
        ema_beta=0.9999,
        ema_update_after_step=0,
        ema_update_every=1,
    )
    trainer.train()

    n = args.batch
    image = torch.rand(n, 3, size, size).to(device)
    image_embed = torch.nn.functional.normalize(torch.randn(n, dim), dim=-1).to(device)
    text_encodings = torch.randn(n, text_len, dim).to(device)

    def step():
        loss = trainer(
            image,
            image_embed=image_embed,
            text_encodings=text_encodings,
            unet_number=1,
        )
        trainer.update(unet_number=1)
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
        "stage": "decoder",
        "s_per_step": round(s_per_step, 4),
        "samples_per_s": round(n / s_per_step, 2),
        "batch": n,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "params": params,
        "params_unet_as_built": params_unet,
        "last_loss": round(float(losses[-1]), 5),
        "torch_threads": torch.get_num_threads(),
        "device": args.device,
        "torch": torch.__version__,
        "dalle2_pytorch": version("dalle2-pytorch"),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
