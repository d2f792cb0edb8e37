#!/usr/bin/env python3
"""Photo-like benchmark shards for scripts/bench-data.sh: JPEGs that cost what photographs cost.

    python tests/reference/make_photo_shards.py --out DIR [--count 4000] [--size 256]
        [--quality 95] [--per-shard 500] [--seed 0]

The shapes world's flat colours compress to almost nothing and decode fast; photographs do not.
Each image here has what makes a photograph expensive to decode: a smooth two-axis colour
gradient, a few overlapping shapes of other colours with soft edges, fine texture (sinusoids of
random frequency) and per-pixel noise, saved as baseline JPEG at quality 95 with 4:2:0 chroma
subsampling (PIL's default, what most photo JPEGs use). Writes DIR/train/NNNNN.tar in the
webdataset layout (``KEY.jpg`` + ``KEY.txt``), deterministic for a seed.
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def photo(rng: np.random.Generator, size: int) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1, c2 = (rng.uniform(0, 255, 3) for _ in range(3))
    img = c0 * (1 - x)[..., None] * (1 - y)[..., None] + c1 * x[..., None] + c2 * y[..., None]
    img = img / 2.0
    for _ in range(3):
        fx, fy = rng.uniform(4, 40, 2)
        phase = rng.uniform(0, 6.28)
        amp = rng.uniform(6, 18)
        img += amp * np.sin(fx * x * 6.28 + fy * y * 6.28 + phase)[..., None]
    base = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    layer = Image.new("RGB", (size, size))
    mask = Image.new("L", (size, size), 0)
    d, m = ImageDraw.Draw(layer), ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = rng.uniform(-0.2, 0.9, 2) * size
        w, h = rng.uniform(0.15, 0.6, 2) * size
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        box = [x0, y0, x0 + w, y0 + h]
        if rng.random() < 0.5:
            d.ellipse(box, fill=color)
            m.ellipse(box, fill=255)
        else:
            d.rectangle(box, fill=color)
            m.rectangle(box, fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 3.0)))
    base.paste(layer, (0, 0), mask)
    arr = np.asarray(base).astype(np.float32)
    arr += rng.normal(0, rng.uniform(4, 10), arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=4000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--quality", type=int, default=95)
    ap.add_argument("--per-shard", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = os.path.join(a.out, "train")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    total = 0
    for shard in range((a.count + a.per_shard - 1) // a.per_shard):
        path = os.path.join(out, f"{shard:05d}.tar")
        with tarfile.open(path + ".tmp", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(min(a.per_shard, a.count - total)):
                key = f"{shard:05d}{i:04d}"
                buf = io.BytesIO()
                photo(rng, a.size).save(buf, "JPEG", quality=a.quality)
                for ext, data in (("jpg", buf.getvalue()), ("txt", f"photo {key}".encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    info.mtime = 0
                    tar.addfile(info, io.BytesIO(data))
                total += 1
        os.replace(path + ".tmp", path)
    print(f"{total} photo-like JPEGs ({a.size}px, q{a.quality}) in {out}")


if __name__ == "__main__":
    main()
