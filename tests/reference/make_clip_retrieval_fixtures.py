"""Write the clip-retrieval import fixtures used by `data-tools/tests/import.rs`.

Run from the repository root (needs numpy, pandas, pyarrow):

    /root/venv/bin/python tests/reference/make_clip_retrieval_fixtures.py

Written with numpy 2.4.6, pandas 3.1.1 and pyarrow 26.0.1 (the script prints the versions it
runs with). Everything is seeded, so reruns with the same versions give the same files.

It writes `tests/reference/fixtures/clip-retrieval/`, shaped like the output folder of
clip-retrieval's inference step on a webdataset input (`image_path` is the sample key):

- `img_emb/img_emb_{0,1}.npy`, `text_emb/text_emb_{0,1}.npy`: float16 `[n, 8]` (`np.save`),
  rows L2-normalised in float32 before the cast to float16 — except key `000001001`, whose
  image and text rows are three times too long (the importer must rescale them).
- `metadata/metadata_{0,1}.parquet`: `pandas.DataFrame.to_parquet` with pyarrow's defaults
  (snappy), columns `image_path`, `caption`, `url`, `width`, `height`, rows aligned with the npy
  rows. Key `000000001` has the caption "" and key `000001002` a null caption.
- `errors/`: broken stand-ins for one file of a part — `text_emb_short.npy` (part 1's text
  embeddings one row short), `metadata_without_image_path.parquet` (part 1's metadata without
  `image_path`), `metadata_duplicate_key.parquet` (part 1's metadata with a key of part 0) and
  `img_emb_f64.npy` (part 0's image embeddings as float64).
- `expected.json`: per part the keys and captions, and per key the image and text rows as the
  store must hold them (float16 values, written exactly as floats; rescaled rows computed like
  the importer: float64 norm summed in row order, divide in float64, round to float32, then to
  float16), the keys that needed rescaling, the keys without a caption, and the store's
  image-embedding mean/std when every part is imported without `--shards`.
"""

import json
import math
import os

import numpy as np
import pandas as pd
import pyarrow

OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "fixtures", "clip-retrieval"
)
D = 8
TOL = 1e-3  # the importer rescales rows whose norm is further than this from 1

PARTS = [
    [
        ("000000000", "a small red circle on the left"),
        ("000000001", ""),
        ("000000002", "a blue square above a yellow triangle"),
        ("000000003", "a green triangle"),
    ],
    [
        ("000001000", "a purple circle"),
        ("000001001", "a large orange square"),
        ("000001002", None),
    ],
]
TOO_LONG = "000001001"


def unit_f16(rng, n):
    x = rng.standard_normal((n, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def stored(row16):
    """What the store holds for a float16 row: itself, or the row rescaled to unit length."""
    v = [float(x) for x in row16]
    norm = math.sqrt(sum_sequential(x * x for x in v))
    if abs(norm - 1.0) <= TOL:
        return v, False
    out = np.array([x / norm for x in v], dtype=np.float64).astype(np.float32)
    return [float(x) for x in out.astype(np.float16)], True


def sum_sequential(xs):
    s = 0.0
    for x in xs:
        s += x
    return s


def main():
    print(
        f"numpy {np.__version__}, pandas {pd.__version__}, pyarrow {pyarrow.__version__}"
    )
    rng = np.random.default_rng(20240611)
    for sub in ("img_emb", "text_emb", "metadata", "errors"):
        os.makedirs(os.path.join(OUT, sub), exist_ok=True)
    expected = {
        "dim": D,
        "parts": [],
        "image_embed": {},
        "text_embed": {},
        "renormalized_image": [],
        "renormalized_text": [],
        "missing_caption": [],
    }
    kept_image_rows = []
    for n, rows in enumerate(PARTS):
        img = unit_f16(rng, len(rows))
        txt = unit_f16(rng, len(rows))
        for i, (key, _) in enumerate(rows):
            if key == TOO_LONG:
                img[i] *= 3.0
                txt[i] *= 3.0
        img16, txt16 = img.astype(np.float16), txt.astype(np.float16)
        np.save(os.path.join(OUT, "img_emb", f"img_emb_{n}.npy"), img16)
        np.save(os.path.join(OUT, "text_emb", f"text_emb_{n}.npy"), txt16)
        df = pd.DataFrame(
            {
                "image_path": [k for k, _ in rows],
                "caption": [c for _, c in rows],
                "url": [f"https://example.com/{k}.jpg" for k, _ in rows],
                "width": [256] * len(rows),
                "height": [256] * len(rows),
            }
        )
        df.to_parquet(os.path.join(OUT, "metadata", f"metadata_{n}.parquet"))
        errors = os.path.join(OUT, "errors")
        if n == 0:
            np.save(os.path.join(errors, "img_emb_f64.npy"), img16.astype(np.float64))
        if n == 1:
            np.save(os.path.join(errors, "text_emb_short.npy"), txt16[:-1])
            df.drop(columns=["image_path"]).to_parquet(
                os.path.join(errors, "metadata_without_image_path.parquet")
            )
            dup = df.copy()
            dup.loc[0, "image_path"] = PARTS[0][2][0]
            dup.to_parquet(os.path.join(errors, "metadata_duplicate_key.parquet"))
        expected["parts"].append(
            {"n": n, "keys": [k for k, _ in rows], "captions": [c for _, c in rows]}
        )
        for i, (key, caption) in enumerate(rows):
            image, image_rescaled = stored(img16[i])
            text, text_rescaled = stored(txt16[i])
            expected["image_embed"][key] = image
            expected["text_embed"][key] = text
            if image_rescaled:
                expected["renormalized_image"].append(key)
            if text_rescaled:
                expected["renormalized_text"].append(key)
            if caption is None or caption.strip() == "":
                expected["missing_caption"].append(key)
            else:
                kept_image_rows.append(image)
    count = len(kept_image_rows)
    mean, std = [], []
    for d in range(D):
        s = sum_sequential(r[d] for r in kept_image_rows)
        q = sum_sequential(r[d] * r[d] for r in kept_image_rows)
        m = s / count
        mean.append(m)
        std.append(math.sqrt(max(q / count - m * m, 0.0)))
    expected["no_shards"] = {"rows": count, "image_embed_mean": mean, "image_embed_std": std}
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
