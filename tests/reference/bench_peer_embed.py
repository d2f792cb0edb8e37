#!/usr/bin/env python3
"""Benchmark peer for the embedding benchmark: what `unclip embed` does, done with transformers.

    python tests/reference/bench_peer_embed.py --clip DIR --shards SPEC --batch-size B \\
        [--threads N] [--workers 2]

DIR is a Hugging Face CLIP folder (``config.json`` + ``model.safetensors``, optionally
``tokenizer.json``), loaded with ``CLIPModel.from_pretrained(DIR)`` in float32 on the CPU. SPEC
is a directory (every ``*.tar`` in it, sorted), a brace pattern such as
``dir/{00000..00009}.tar`` or a glob such as ``dir/*.tar``.

The model to compare with is ViT-B/32, made once by unclip and loaded by both sides, so both
run the same random weights:

    unclip clip init --config configs/clip/vit-b-32.json --seed 0 --out /tmp/clip-b32

``configs/clip/vit-b-32.json`` is OpenAI's ViT-B/32 shape: vision hidden 768 (MLP 3072),
12 layers, 12 heads, patch 32, image 224; text hidden 512 (MLP 2048), 12 layers, 8 heads,
vocabulary 49408, context 77; projection 512; ``hidden_act`` ``quick_gelu`` in both towers.
(Without the unclip binary, the same shape made with transformers — ``CLIPModel(CLIPConfig(
text_config=..., vision_config=..., projection_dim=512))`` then
``save_pretrained(DIR, safe_serialization=True)`` — times the same, but then the two sides do
not share weights.)

What is measured, each printed as a rate over the whole run:

1. ``images_per_s``, tar bytes to normalised image embeddings:
   ``wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pilrgb")``
   (PIL decode) ``.to_tuple("jpg;png;jpeg;webp").map_tuple(preprocess)``, where ``preprocess``
   is transformers' ``CLIPImageProcessor`` for the config's image size (shortest side resized
   to it, bicubic; centre crop; rescale to [0, 1]; CLIP mean/std), batched by
   ``DataLoader(batch_size=B, num_workers=--workers)``; the main process runs
   ``model.get_image_features`` under ``torch.inference_mode()`` and L2-normalises. Timing
   starts just before the DataLoader is created (worker start-up included) and stops after the
   last batch is embedded. webdataset hands whole shards to workers round-robin, so use at
   least as many shards as workers. Workers run with one torch thread each.
2. ``captions_per_s``: the shards' ``.txt`` captions (read before timing) in batches of B through
   the tokenizer (``CLIPTokenizerFast`` from DIR's ``tokenizer.json``, else the bundled
   ``crates/unclip-clip/assets/clip-tokenizer.json``; padded/truncated to the context length)
   and ``model.get_text_features``, L2-normalised.

One untimed warm-up batch of each kind runs first. The field names follow
`unclip bench embed`'s JSON so the two lines can be compared directly. ``--threads`` sets the main process's torch
threads (default: torch's own default). Prints ONE JSON line, e.g.
{"bench": "embed", "impl": "transformers", "images": 300, "images_per_s": ..., "captions": 300,
 "captions_per_s": ..., "batch_size": 32, "torch_threads": 2, "torch": ..., "transformers": ...}

Written against torch 2.15.0, transformers 5.24.0, webdataset 1.0.2 (where
``CLIPImageProcessor`` is the torchvision-backed processor and ``CLIPTokenizerFast`` an alias of
the tokenizers-backed ``CLIPTokenizer``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time

import braceexpand
import torch
import transformers
import webdataset as wds
from torch.utils.data import DataLoader
from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizerFast

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLED_TOKENIZER = os.path.join(REPO, "crates", "unclip-clip", "assets", "clip-tokenizer.json")


def expand_shards(spec: str) -> list[str]:
    if os.path.isdir(spec):
        files = sorted(glob.glob(os.path.join(spec, "*.tar")))
    else:
        files = []
        for part in braceexpand.braceexpand(spec):
            files.extend(sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part])
    files = [f for f in files if os.path.isfile(f)]
    if not files:
        raise SystemExit(f"no .tar shards match {spec!r}")
    return files


def worker_init(_: int) -> None:
    torch.set_num_threads(1)


def normalised(out) -> torch.Tensor:
    # transformers 5 returns an output object whose pooler_output is the projected embedding.
    feats = out if isinstance(out, torch.Tensor) else out.pooler_output
    return feats / feats.norm(dim=-1, keepdim=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clip", required=True)
    ap.add_argument("--shards", required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    urls = expand_shards(args.shards)

    model = CLIPModel.from_pretrained(args.clip, dtype=torch.float32).eval()
    size = model.config.vision_config.image_size
    context = model.config.text_config.max_position_embeddings
    processor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    own_tokenizer = os.path.join(args.clip, "tokenizer.json")
    tokenizer = CLIPTokenizerFast(
        tokenizer_file=own_tokenizer if os.path.isfile(own_tokenizer) else BUNDLED_TOKENIZER
    )

    def preprocess(img):
        return processor(images=img, return_tensors="pt")["pixel_values"][0]

    def tokenize(captions):
        return tokenizer(
            captions,
            padding="max_length",
            max_length=context,
            truncation=True,
            return_tensors="pt",
        )

    captions = [
        c
        for (c,) in wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        .decode()
        .to_tuple("txt")
    ]
    b = args.batch_size
    with torch.inference_mode():
        normalised(model.get_image_features(pixel_values=torch.zeros(b, 3, size, size)))
        normalised(model.get_text_features(**tokenize(captions[:b] or ["warm up"])))

    dataset = (
        wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        .decode("pilrgb")
        .to_tuple("jpg;png;jpeg;webp")
        .map_tuple(preprocess)
    )
    images = 0
    start = time.perf_counter()
    loader = DataLoader(
        dataset, batch_size=b, num_workers=args.workers, worker_init_fn=worker_init
    )
    with torch.inference_mode():
        for (pixels,) in loader:
            emb = normalised(model.get_image_features(pixel_values=pixels))
            images += emb.shape[0]
    image_seconds = time.perf_counter() - start

    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(captions), b):
            emb = normalised(model.get_text_features(**tokenize(captions[i : i + b])))
    caption_seconds = time.perf_counter() - start

    print(
        json.dumps(
            {
                "bench": "embed",
                "impl": "transformers",
                "images": images,
                "images_per_s": round(images / image_seconds, 2),
                "images_seconds": round(image_seconds, 3),
                "captions": len(captions),
                "captions_per_s": round(len(captions) / caption_seconds, 2),
                "captions_seconds": round(caption_seconds, 3),
                "batch_size": b,
                "workers": args.workers,
                "image_size": size,
                "context_length": context,
                "embed_dim": model.config.projection_dim,
                "shards": len(urls),
                "torch_threads": torch.get_num_threads(),
                "cores": os.cpu_count(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
