#!/usr/bin/env python3
"""Write the small, committed data-pipeline fixtures under tests/reference/fixtures/data/.

The Rust tests of the shard loader and the image transform read these files and compare what
they get with what the Python reference stack (webdataset, PIL, torchvision, img2dataset) gets.

What it writes (all under ``tests/reference/fixtures/data/``):

``webdataset/shard-000000.tar``
    Six samples written with webdataset's own ``webdataset.TarWriter`` (ustar headers, members
    of a sample in sorted extension order, as TarWriter writes them; ``mtime`` is fixed to
    0 so the bytes do not depend on the clock). Keys include folder paths (``imgs/cat_001``)
    and a dot inside a folder name (``imgs/v1.0/dog_003``, which webdataset still splits at
    the first dot of the *base name*). Images are small JPEGs (24x16, 16x24) and PNGs (16x16,
    one of them palette mode "P") whose pixel (0, 0) lies in a flat 16x16 block of a
    distinctive colour. Captions are ``txt`` members with non-ASCII text (one with a trailing
    newline, to check trimming); some samples carry a ``json`` member with a ``caption``
    field and other metadata (TarWriter serialises it with ``json.dumps``, so non-ASCII is
    written as ``\\uXXXX`` escapes); one sample has only a json caption and no txt; one has
    an extra ``cls`` member.
``webdataset/expected.json``
    What webdataset itself reads back from the tar: per sample, in order, ``__key__``, the
    sorted extensions, the txt text (raw and trimmed), the json caption, the image size and
    the RGB value of pixel (0, 0) after ``PIL.Image.open(...).convert("RGB")``.

``img2dataset/00000.tar``, ``00000_stats.json``, ``00000.parquet``
    A real img2dataset run (when ``--img2dataset`` is given or ``img2dataset`` is on PATH):
    five local source images of assorted sizes/formats (one JPEG with EXIF, one RGBA PNG,
    one WEBP) are served by a throw-away HTTP server on 127.0.0.1 and downloaded with::

        img2dataset --url_list urls.csv --input_format csv --url_col url
            --caption_col caption --output_format webdataset --output_folder OUT
            --image_size 32 --resize_mode center_crop --processes_count 1
            --thread_count 1 --number_sample_per_shard 10000 --timeout 10 --retries 0
            --enable_wandb False

    so the outputs are 32x32 JPEGs with keys ``000000000`` .. ``000000004`` (shard number
    padded to 5, in-shard index padded to 4) and members ``.jpg``, ``.txt``, ``.json``.
    img2dataset's own TarWriter stamps members with the current time and its stats file holds
    start/end times, so those bytes change from run to run; member names, order and contents
    do not. Without img2dataset the committed files are left as they are.
``img2dataset/expected.json``
    Like the webdataset one, plus the json fields img2dataset wrote.

``transform/*`` (torchvision transform parity)
    Nine small source images (256x256 JPEG q95 with gradients / sharp shapes / noise / stripes,
    a grayscale JPEG, a 300x200 JPEG, a 200x303 PNG, a 120x90 RGBA PNG with partial
    transparency, a lossless WEBP) and ``expected.safetensors``: float32 [3, 64, 64] tensors,
    the output of ``Compose([Resize(64), CenterCrop(64), ToTensor(), Normalize([0.5]*3,
    [0.5]*3)])`` on ``PIL.Image.open(f).convert("RGB")``, named by file name. Extra tensors:

    * ``t08_rgba.png:composite_on_white`` -- the RGBA image composited over opaque white with
      ``Image.alpha_composite`` before ``convert("RGB")`` (what our loader does; plain
      ``convert("RGB")`` just drops alpha, and that is the tensor named ``t08_rgba.png``).
    * ``t06_landscape.jpg:resize80_crop64`` -- ``Resize(80)`` then ``CenterCrop(64)``, to test
      the crop offset.

    ``expected.json`` lists every tensor with its source, sizes, crop offsets and the exact
    transform. The portrait PNG is 200x303 rather than 200x301 on purpose: 64*303/200 = 96.96,
    so torchvision's truncation (96) differs from rounding (97). The RGBA image resizes to
    85x64, whose centre-crop offset round(10.5) = 10 checks half-to-even rounding.

How to run (from the repository root)::

    /root/venv/bin/python tests/reference/make_data_fixtures.py
    # to regenerate the img2dataset files too (img2dataset pins webdataset 0.2.x, so keep it
    # in its own venv):
    python3 -m venv /tmp/i2d-venv && /tmp/i2d-venv/bin/pip install img2dataset==1.47.0
    /root/venv/bin/python tests/reference/make_data_fixtures.py \\
        --img2dataset /tmp/i2d-venv/bin/img2dataset

Last run with: Python 3.11.7, torch 2.15.0+cu132, torchvision 0.29.2+cu132, webdataset 1.0.2,
Pillow 13.0.0 (libjpeg-turbo 3.2.0, libwebp 1.6.0), numpy 2.4.6, safetensors 0.8.0; img2dataset
1.47.0 (in its own venv with webdataset 0.2.111, opencv-python-headless 4.14.0.94, pyarrow
26.0.1, albumentations 1.4.24). The script prints the versions it runs with and records them
in each expected.json.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
import webdataset as wds
from PIL import Image, ImageDraw, features
from torchvision import transforms as T

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "tests" / "reference" / "fixtures" / "data"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
FIXED_PORT = 47613  # the local HTTP server img2dataset downloads from


def versions() -> dict:
    import safetensors

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "webdataset": wds.__version__,
        "pillow": PIL.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "libwebp": features.version("webp"),
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
    }


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def block_image(size, colors, block=16) -> Image.Image:
    """An RGB image of flat `block`-wide vertical bands cycling through `colors`.

    Pixel (0, 0) sits in a flat 16x16 block, so a JPEG decodes it (almost) exactly
    whatever the decoder's chroma upsampling."""
    w, h = size
    a = np.zeros((h, w, 3), np.uint8)
    for i, x0 in enumerate(range(0, w, block)):
        a[:, x0 : x0 + block] = colors[i % len(colors)]
    if h > block:  # a second row of bands, shifted, so the image is not 1-D
        for i, x0 in enumerate(range(0, w, block)):
            a[block:, x0 : x0 + block] = colors[(i + 1) % len(colors)]
    return Image.fromarray(a, "RGB")


def describe_sample(sample: dict) -> dict:
    """What the reference stack sees in one raw webdataset sample."""
    exts = sorted(k for k in sample if not k.startswith("__"))
    txt = sample["txt"].decode("utf-8") if "txt" in sample else None
    meta = json.loads(sample["json"]) if "json" in sample else None
    img_ext = next((e for e in IMAGE_EXTS if e in sample), None)
    out = {
        "__key__": sample["__key__"],
        "extensions": exts,
        "image_ext": img_ext,
        "txt_raw": txt,
        "caption_txt": txt.strip() if txt is not None else None,
        "caption_json": meta.get("caption") if isinstance(meta, dict) else None,
    }
    if img_ext is not None:
        img = Image.open(io.BytesIO(sample[img_ext]))
        out["image_mode"] = img.mode
        out["width"], out["height"] = img.size
        out["pixel00_rgb"] = list(img.convert("RGB").getpixel((0, 0)))
    if "cls" in sample:
        out["cls"] = sample["cls"].decode("ascii")
    if meta is not None:
        out["json"] = meta
    return out


def read_back(tar: Path) -> list[dict]:
    ds = wds.WebDataset(str(tar), shardshuffle=False, empty_check=False)
    return [describe_sample(s) for s in ds]


# ---------------------------------------------------------------------------------------------
# a. webdataset shard written by webdataset.TarWriter
# ---------------------------------------------------------------------------------------------


def make_webdataset(out: Path, vers: dict) -> None:
    d = out / "webdataset"
    d.mkdir(parents=True, exist_ok=True)
    palette_img = block_image((16, 16), [(200, 30, 60)]).convert("P", palette=Image.ADAPTIVE, colors=4)
    samples = [
        {
            "__key__": "imgs/cat_001",
            "jpg": encode(block_image((24, 16), [(240, 128, 32), (20, 60, 200)]), "JPEG", quality=95),
            "txt": "a tabby cat sleeping on a red mat",
        },
        {
            "__key__": "imgs/cat_002",
            "png": encode(block_image((16, 16), [(17, 34, 51)]), "PNG"),
            "txt": "un chat très mignon — 猫 🐈\n",
            "json": {
                "caption": "un chat très mignon — 猫 🐈",
                "width": 16,
                "height": 16,
                "source": "unclip fixture",
                "similarity": 0.3125,
            },
        },
        {
            "__key__": "imgs/v1.0/dog_003",
            "jpg": encode(block_image((24, 16), [(30, 180, 90), (250, 250, 250)]), "JPEG", quality=95),
            "txt": "ein Hund läuft über die Wiese",
            "cls": 3,
        },
        {
            "__key__": "000004",
            "png": encode(palette_img, "PNG"),
            "json": {"caption": "Ελληνικά: ένας σκύλος στην παραλία", "meta": {"lang": "el"}, "nsfw": False},
        },
        {
            "__key__": "imgs/cat_005",
            "jpg": encode(block_image((24, 16), [(0, 0, 0), (255, 255, 255)]), "JPEG", quality=95),
            "txt": "a black cat at night",
        },
        {
            "__key__": "imgs/bird_006",
            "jpg": encode(block_image((16, 24), [(90, 20, 160)]), "JPEG", quality=95),
            "txt": "日本語のキャプション：青い鳥が枝にとまっている",
            "json": {"caption": "a blue bird on a branch", "lang": "ja", "url": "https://example.com/bird.jpg"},
        },
    ]
    tar_path = d / "shard-000000.tar"
    with wds.TarWriter(str(tar_path), mtime=0.0) as sink:
        for s in samples:
            sink.write(dict(s))
    expected = {
        "description": (
            "Samples of shard-000000.tar in order, as webdataset reads them back "
            "(WebDataset(shardshuffle=False), group_by_keys: key = member path up to the first dot "
            "of its base name, extension = the rest, lower-cased). txt_raw is the txt member "
            "decoded as UTF-8, caption_txt the same stripped, caption_json the json 'caption' field. "
            "width/height and pixel00_rgb come from PIL.Image.open(...).convert('RGB'); pixel (0,0) "
            "lies in a flat 16x16 block, so JPEG decoders should agree within +-2, PNG exactly. "
            "Written by webdataset.TarWriter with mtime=0, mode 0o444, user/group 'bigdata'."
        ),
        "tar": tar_path.name,
        "generated_with": vers,
        "samples": read_back(tar_path),
    }
    write_json(d / "expected.json", expected)


# ---------------------------------------------------------------------------------------------
# b. img2dataset output
# ---------------------------------------------------------------------------------------------


def img2dataset_sources(src: Path) -> list[tuple[str, str]]:
    """Writes the source images to `src`; returns (file name, caption) in url-list order."""
    rng = np.random.default_rng(1234)
    src.mkdir(parents=True, exist_ok=True)

    img = block_image((64, 48), [(220, 40, 40), (40, 40, 220), (40, 200, 40), (230, 230, 30)])
    exif = Image.Exif()
    exif[0x010F] = "unclip"  # Make
    exif[0x0110] = "fixture camera"  # Model
    exif[0x0112] = 1  # Orientation: normal
    img.save(src / "a_landscape.jpg", quality=95, exif=exif.tobytes())

    g = np.linspace(0, 255, 40, dtype=np.float64)
    a = np.stack([np.tile(g, (40, 1)), np.tile(g[:, None], (1, 40)), np.full((40, 40), 128.0)], -1)
    Image.fromarray(a.round().astype(np.uint8), "RGB").save(src / "b_gradient.png")

    noise = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise, "RGB").save(src / "c_noise.jpg", quality=95)

    rgba = np.zeros((36, 36, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 1] = np.tile(np.linspace(0, 255, 36).astype(np.uint8), (36, 1))
    rgba[..., 3] = np.tile(np.linspace(0, 255, 36).astype(np.uint8)[:, None], (1, 36))
    Image.fromarray(rgba, "RGBA").save(src / "d_alpha.png")

    block_image((48, 64), [(10, 120, 200), (250, 160, 0), (128, 128, 128)]).save(
        src / "e_portrait.webp", quality=90
    )
    return [
        ("a_landscape.jpg", "four coloured stripes, with EXIF"),
        ("b_gradient.png", "a smooth gradient"),
        ("c_noise.jpg", "bruit aléatoire — ノイズ"),
        ("d_alpha.png", "a red square fading to transparent"),
        ("e_portrait.webp", "three vertical bands in a portrait WEBP"),
    ]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the fixture run's output readable
        pass


def make_img2dataset(out: Path, exe: str, vers: dict) -> None:
    d = out / "img2dataset"
    d.mkdir(parents=True, exist_ok=True)
    py = Path(exe).with_name("python")
    i2d_version = subprocess.run(
        [str(py), "-c", "import importlib.metadata as m; print(m.version('img2dataset'), m.version('webdataset'))"],
        capture_output=True,
        text=True,
    ).stdout.split()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = img2dataset_sources(tmp / "src")
        handler = functools.partial(_QuietHandler, directory=str(tmp / "src"))
        try:  # a fixed port keeps the urls (and so the json members) the same from run to run
            server = http.server.ThreadingHTTPServer(("127.0.0.1", FIXED_PORT), handler)
        except OSError:
            print(f"port {FIXED_PORT} busy: the urls will carry another port", file=sys.stderr)
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            with open(tmp / "urls.csv", "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["url", "caption"])
                for name, caption in files:
                    w.writerow([f"http://127.0.0.1:{port}/{name}", caption])
            cmd = [
                exe, "--url_list", str(tmp / "urls.csv"), "--input_format", "csv",
                "--url_col", "url", "--caption_col", "caption",
                "--output_format", "webdataset", "--output_folder", str(tmp / "out"),
                "--image_size", "32", "--resize_mode", "center_crop",
                "--processes_count", "1", "--thread_count", "1",
                "--number_sample_per_shard", "10000", "--timeout", "10", "--retries", "0",
                "--enable_wandb", "False",
            ]  # fmt: skip
            env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        finally:
            server.shutdown()
        for name in ("00000.tar", "00000_stats.json", "00000.parquet"):
            if (tmp / "out" / name).exists():
                shutil.copyfile(tmp / "out" / name, d / name)
        samples = read_back(d / "00000.tar")
    stats = json.loads((d / "00000_stats.json").read_text())
    expected = {
        "description": (
            "img2dataset's own output for 5 local images served over HTTP on 127.0.0.1 "
            "(see make_data_fixtures.py for the command): keys are shard (5 digits) + in-shard "
            "index (4 digits, ceil(log10(number_sample_per_shard=10000))), members .jpg/.txt/.json, "
            "images center-cropped to 32x32 and re-encoded by OpenCV as JPEG q95 (the RGBA source "
            "is alpha-matted on white by img2dataset). Fields as in the webdataset expected.json; "
            "'json' is img2dataset's metadata verbatim (sha256 is that of the downloaded source "
            "bytes, exif a JSON string). pixel00_rgb is PIL's decode; pixel (0,0) is not always in a "
            "flat block here, so another JPEG decoder may differ by a few levels. The tar members carry the run's time as mtime (img2dataset's TarWriter) and "
            "00000_stats.json its start/end times, so those bytes change when regenerated."
        ),
        "tar": "00000.tar",
        "generated_with": dict(vers, img2dataset=i2d_version[0], img2dataset_webdataset=i2d_version[1]),
        "stats": {k: stats.get(k) for k in ("count", "successes", "failed_to_download", "failed_to_resize")},
        "samples": samples,
    }
    write_json(d / "expected.json", expected)


# ---------------------------------------------------------------------------------------------
# c. torchvision transform parity
# ---------------------------------------------------------------------------------------------


def transform_sources(d: Path) -> list[str]:
    rng = np.random.default_rng(20240607)
    names = []

    def save(img: Image.Image, name: str, **kw):
        img.save(d / name, **kw)
        names.append(name)

    n = 256
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)
    # smooth gradients + a soft radial blob
    r = np.hypot(x - 160, y - 96)
    a = np.stack([x, y, 255 * (0.5 + 0.5 * np.cos(r / 24))], -1)
    save(Image.fromarray(a.clip(0, 255).round().astype(np.uint8), "RGB"), "t01_gradient.jpg", quality=95)

    # sharp edges: hard shapes and 1-px lines (ImageDraw does not antialias)
    img = Image.new("RGB", (n, n), (245, 245, 240))
    dr = ImageDraw.Draw(img)
    dr.rectangle([20, 30, 110, 100], fill=(200, 20, 20))
    dr.ellipse([120, 20, 230, 130], fill=(20, 60, 220), outline=(0, 0, 0), width=3)
    dr.polygon([(30, 230), (128, 130), (226, 230)], fill=(30, 170, 60))
    for i in range(0, 256, 9):
        dr.line([(i, 140), (255 - i, 255)], fill=(0, 0, 0), width=1)
    dr.rectangle([0, 0, 7, 255], fill=(255, 255, 0))
    save(img, "t02_shapes.jpg", quality=95)

    # noise: uniform noise over the top half, low-amplitude noise over a gradient below
    a = np.empty((n, n, 3), np.float64)
    a[:128] = rng.integers(0, 256, (128, n, 3))
    a[128:] = x[128:, :, None] * 0.6 + 50 + rng.normal(0, 12, (128, n, 3))
    save(Image.fromarray(a.clip(0, 255).round().astype(np.uint8), "RGB"), "t03_noise.jpg", quality=95)

    # high-frequency stripes and a checkerboard: stresses the antialiasing filter
    a = np.zeros((n, n, 3), np.uint8)
    a[:, :, 0] = np.where((x.astype(int) // 1) % 2 == 0, 255, 0)
    a[:, :, 1] = np.where((y.astype(int) // 2) % 2 == 0, 230, 20)
    a[:, :, 2] = np.where(((x.astype(int) // 3) + (y.astype(int) // 3)) % 2 == 0, 200, 40)
    save(Image.fromarray(a, "RGB"), "t04_stripes.jpg", quality=95)

    # grayscale JPEG (mode "L"): convert("RGB") replicates the channel
    g = 128 + 100 * np.sin(x / 17) * np.cos(y / 23)
    save(Image.fromarray(g.round().astype(np.uint8), "L"), "t05_gray.jpg", quality=95)

    # landscape 300x200 JPEG
    img = Image.new("RGB", (300, 200), (20, 40, 90))
    dr = ImageDraw.Draw(img)
    dr.rectangle([0, 120, 299, 199], fill=(40, 140, 50))
    dr.ellipse([210, 20, 270, 80], fill=(255, 220, 60))
    dr.polygon([(10, 120), (90, 40), (170, 120)], fill=(120, 110, 100))
    dr.rectangle([0, 0, 299, 3], fill=(255, 0, 255))  # marks the top edge
    dr.rectangle([0, 0, 3, 199], fill=(0, 255, 255))  # and the left edge
    save(img, "t06_landscape.jpg", quality=95)

    # portrait 200x303 PNG (64*303/200 = 96.96: truncation vs rounding)
    yy, xx = np.mgrid[0:303, 0:200].astype(np.float64)
    a = np.stack([xx * 255 / 199, yy * 255 / 302, ((xx // 10 + yy // 10) % 2) * 255], -1)
    img = Image.fromarray(a.round().astype(np.uint8), "RGB")
    ImageDraw.Draw(img).rectangle([60, 100, 140, 200], fill=(255, 255, 255), outline=(0, 0, 0))
    save(img, "t07_portrait.png")

    # RGBA 120x90: opaque left part, horizontal alpha ramp, fully transparent corner
    yy, xx = np.mgrid[0:90, 0:120].astype(np.float64)
    a = np.zeros((90, 120, 4), np.float64)
    a[..., 0] = 230
    a[..., 1] = yy * 255 / 89
    a[..., 2] = 40
    a[..., 3] = np.clip((120 - xx) * 255 / 80, 0, 255)
    a[:20, 100:, 3] = 0
    a[:20, 100:, :3] = (0, 255, 0)  # hidden colour under full transparency
    save(Image.fromarray(a.round().astype(np.uint8), "RGBA"), "t08_rgba.png")

    # lossless WEBP 192x128 (lossless so the decoder cannot differ)
    img = Image.new("RGB", (192, 128), (250, 250, 250))
    dr = ImageDraw.Draw(img)
    for i in range(8):
        dr.rectangle([i * 24, 0, i * 24 + 23, 63], fill=(i * 32, 255 - i * 32, (i * 73) % 256))
    dr.ellipse([40, 70, 150, 125], fill=(180, 0, 90))
    save(img, "t09_lossless.webp", lossless=True)
    return names


def tv_geometry(w: int, h: int, short: int, crop: int) -> dict:
    """torchvision's Resize(short) size and CenterCrop(crop) offsets, written out."""
    if w <= h:
        rw, rh = short, int(short * h / w)
    else:
        rw, rh = int(short * w / h), short
    return {
        "resized_wh": [rw, rh],
        "crop_left": int(round((rw - crop) / 2.0)),
        "crop_top": int(round((rh - crop) / 2.0)),
    }


def composite_on_white(img: Image.Image) -> Image.Image:
    bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(bg, img.convert("RGBA")).convert("RGB")


def make_transform(out: Path, vers: dict) -> None:
    from safetensors.numpy import save_file

    d = out / "transform"
    d.mkdir(parents=True, exist_ok=True)
    names = transform_sources(d)

    def pipeline(size: int, crop: int):
        return T.Compose(
            [T.Resize(size), T.CenterCrop(crop), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)]
        )

    tensors, entries = {}, []

    def add(name: str, source: str, rgb: Image.Image, size: int, how: str):
        t = pipeline(size, 64)(rgb)
        assert t.shape == (3, 64, 64) and t.dtype == torch.float32
        tensors[name] = t.numpy().copy()
        src = Image.open(d / source)
        # The same by hand: PIL bilinear resize to tv_geometry's size, crop at its offsets.
        g = tv_geometry(*src.size, size, 64)
        by_hand = rgb if list(rgb.size) == g["resized_wh"] else rgb.resize(g["resized_wh"], Image.BILINEAR)
        l, top = g["crop_left"], g["crop_top"]
        by_hand = np.asarray(by_hand.crop((l, top, l + 64, top + 64)), dtype=np.float32)
        assert np.array_equal((by_hand.transpose(2, 0, 1) / 255 - 0.5) / 0.5, tensors[name]), name
        entries.append(
            {
                "tensor": name,
                "source": source,
                "source_mode": src.mode,
                "source_wh": list(src.size),
                "source_sha256": hashlib.sha256((d / source).read_bytes()).hexdigest(),
                "to_rgb": how,
                "transform": (
                    f"Compose([Resize({size}), CenterCrop(64), ToTensor(), "
                    "Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])])"
                ),
                **tv_geometry(*src.size, size, 64),
                "shape": [3, 64, 64],
                "dtype": "float32",
            }
        )

    for name in names:
        add(name, name, Image.open(d / name).convert("RGB"), 64, 'Image.open(f).convert("RGB")')
    add(
        "t08_rgba.png:composite_on_white",
        "t08_rgba.png",
        composite_on_white(Image.open(d / "t08_rgba.png")),
        64,
        'Image.alpha_composite(Image.new("RGBA", size, (255,255,255,255)), Image.open(f)).convert("RGB")',
    )
    add(
        "t06_landscape.jpg:resize80_crop64",
        "t06_landscape.jpg",
        Image.open(d / "t06_landscape.jpg").convert("RGB"),
        80,
        'Image.open(f).convert("RGB")',
    )

    # Sanity: PIL's alpha_composite over white equals round((c*a + 255*(255-a)) / 255)?
    src = np.asarray(Image.open(d / "t08_rgba.png").convert("RGBA")).astype(np.int64)
    ours = (src[..., :3] * src[..., 3:] + 255 * (255 - src[..., 3:]) + 127) // 255
    pil = np.asarray(composite_on_white(Image.open(d / "t08_rgba.png"))).astype(np.int64)
    composite_max_diff = int(np.abs(ours - pil).max())

    save_file(tensors, str(d / "expected.safetensors"), metadata={"generator": "make_data_fixtures.py"})
    write_json(
        d / "expected.json",
        {
            "description": (
                "torchvision transform parity. Each tensor in expected.safetensors is float32 "
                "[3, 64, 64] (CHW, values in [-1, 1]) = transform(to_rgb(source)). Resize(s) on a "
                "PIL image: shorter side -> s, longer -> int(s * long / short) (truncated), "
                "PIL.Image.resize(..., Image.BILINEAR) i.e. Pillow's antialiased triangle "
                "filter whose support scales with the downscale factor; skipped when the size "
                "already matches. CenterCrop(c): offset int(round((side - c) / 2.0)) (Python "
                "round: half to even). ToTensor: uint8 / 255. Normalize: (x - 0.5) / 0.5. "
                "JPEGs were written by Pillow at quality 95 with its default 4:2:0 chroma "
                "subsampling and decoded by Pillow (libjpeg-turbo, ISLOW IDCT, fancy upsampling); "
                "another JPEG decoder may differ by a few levels, PNG/lossless WEBP not at all."
            ),
            "composite_on_white_formula_max_abs_diff_vs_round_c_a_plus_255_255_minus_a_div_255": composite_max_diff,
            "generated_with": vers,
            "files": names,
            "tensors": entries,
        },
    )


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument(
        "--img2dataset",
        default=shutil.which("img2dataset"),
        help="img2dataset executable (its sibling 'python' must be the venv it lives in); "
        "without one the committed img2dataset/ files are kept",
    )
    args = ap.parse_args()
    vers = versions()
    print("versions:", json.dumps(vers))
    args.out.mkdir(parents=True, exist_ok=True)
    make_webdataset(args.out, vers)
    make_transform(args.out, vers)
    if args.img2dataset:
        make_img2dataset(args.out, args.img2dataset, vers)
    else:
        print("img2dataset not found: keeping the committed img2dataset/ files", file=sys.stderr)
    total = 0
    for p in sorted(args.out.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            print(f"{p.stat().st_size:>9}  {p.relative_to(args.out)}")
    print(f"{total:>9}  total")


if __name__ == "__main__":
    main()
