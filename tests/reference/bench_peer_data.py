#!/usr/bin/env python3
"""Benchmark peer for `unclip bench data`: the usual PyTorch loading stack on the same shards.

    python tests/reference/bench_peer_data.py --shards SPEC --image-size 64 --batch-size 32 \\
        --workers 2 [--passes 1] [--torch-threads 1]

SPEC is a directory (every ``*.tar`` in it, sorted), a brace pattern such as
``dir/{00000..00009}.tar`` or a glob such as ``dir/*.tar``; it is expanded here into a sorted
list of existing ``.tar`` files.

Pipeline (what a PyTorch user writes for image-caption shards):

    wds.WebDataset(urls, shardshuffle=False, empty_check=False)
      .decode("pil")                      # PIL.Image.open + .convert("RGB") per image member
      .to_tuple("jpg;png;jpeg;webp", "txt")
      .map_tuple(transform, identity)
    transform = Compose([Resize(S), CenterCrop(S), ToTensor(), Normalize([0.5]*3, [0.5]*3)])
    DataLoader(dataset, batch_size=B, num_workers=W)

Notes on what is measured:

* webdataset hands out whole shards to DataLoader workers round-robin (worker i reads shards
  i, i+W, ...), so with 8 shards and 2 workers each worker reads 4 shards. When the shard
  count is not a multiple of W the last round leaves some workers idle; when there are fewer
  shards than workers some workers get nothing (``empty_check=False`` keeps that from being an
  error). Each worker batches its own samples, so every worker's last batch may be short.
* Timing starts just before the DataLoader is created, so worker start-up (fork) is included,
  as it is for ``unclip bench data``; it stops after the last batch. ``images_per_s`` covers the
  whole run; ``images_per_s_after_first_batch`` excludes the wait for the first batch of the
  first pass (start-up and pipeline fill). With ``--passes N`` the data is read N times, each
  pass with a fresh DataLoader (so each pass pays worker start-up again).
* Each worker calls ``torch.set_num_threads(--torch-threads)`` (default 1): W workers each
  using all cores would oversubscribe the CPU; decoding and resizing run in PIL anyway, which
  is single-threaded per image. The main process only collates batches.

Prints ONE JSON line, e.g.
{"bench": "data", "impl": "webdataset+PIL+torchvision", "images": 4000, "seconds": ..., ...}
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import braceexpand
import PIL
import torch
import torchvision
import webdataset as wds
from torch.utils.data import DataLoader
from torchvision import transforms as T


def expand_shards(spec: str) -> list[str]:
    if os.path.isdir(spec):
        files = glob.glob(os.path.join(spec, "*.tar"))
    else:
        files = []
        for pattern in braceexpand.braceexpand(spec):
            matches = glob.glob(pattern)
            files.extend(matches if matches else [])
    files = sorted({f for f in files if f.endswith(".tar") and os.path.isfile(f)})
    if not files:
        sys.exit(f"bench_peer_data.py: no .tar shards match {spec!r}")
    return files


def identity(x):
    return x


def worker_init(threads: int):
    def init(_worker_id: int):
        torch.set_num_threads(threads)

    return init


def make_loader(urls: list[str], size: int, batch_size: int, workers: int, threads: int) -> DataLoader:
    transform = T.Compose(
        [T.Resize(size), T.CenterCrop(size), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)]
    )
    dataset = (
        wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        .decode("pil")
        .to_tuple("jpg;png;jpeg;webp", "txt")
        .map_tuple(transform, identity)
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        worker_init_fn=worker_init(threads) if workers > 0 else None,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description="webdataset + PIL + torchvision data-loading benchmark")
    ap.add_argument("--shards", required=True, help="directory, brace pattern or glob of .tar shards")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--passes", type=int, default=1)
    ap.add_argument("--torch-threads", type=int, default=1, help="torch threads in each worker")
    args = ap.parse_args()
    if args.workers == 0:
        torch.set_num_threads(args.torch_threads)

    urls = expand_shards(args.shards)
    size = args.image_size
    images = 0
    first_batch = None  # (time, images) when the first batch of the first pass arrived
    t0 = time.perf_counter()
    for _ in range(args.passes):
        loader = make_loader(urls, size, args.batch_size, args.workers, args.torch_threads)
        for imgs, captions in loader:
            if imgs.shape[1:] != (3, size, size) or len(captions) != imgs.shape[0]:
                sys.exit(f"bench_peer_data.py: unexpected batch {tuple(imgs.shape)}")
            images += imgs.shape[0]
            if first_batch is None:
                first_batch = (time.perf_counter(), images)
        del loader
    seconds = time.perf_counter() - t0
    if first_batch is None:
        sys.exit("bench_peer_data.py: the shards held no samples")
    rest_s = t0 + seconds - first_batch[0]
    rest_n = images - first_batch[1]
    print(
        json.dumps(
            {
                "bench": "data",
                "impl": "webdataset+PIL+torchvision",
                "images": images,
                "seconds": round(seconds, 4),
                "images_per_s": round(images / seconds, 2),
                "images_per_s_after_first_batch": round(rest_n / rest_s, 2) if rest_n > 0 and rest_s > 0 else None,
                "workers": args.workers,
                "batch_size": args.batch_size,
                "image_size": size,
                "shards": len(urls),
                "passes": args.passes,
                "torch_threads_per_worker": args.torch_threads,
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
                "webdataset": wds.__version__,
                "pillow": PIL.__version__,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
