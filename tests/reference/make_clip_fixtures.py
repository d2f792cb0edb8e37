"""Write the CLIP parity fixtures used by `crates/unclip-clip` tests.

Run from the repository root (needs torch, transformers, open-clip-torch, pillow, safetensors):

    /root/venv/bin/python tests/reference/make_clip_fixtures.py

It writes `tests/reference/fixtures/clip/`:

- `hf_<case>/{config.json, model.safetensors}` and `hf_<case>/io.safetensors`: a tiny random
  transformers `CLIPModel` (weights stored in f32, f16 or bf16), its inputs (`input_ids`,
  `pixel_values`) and its outputs (`image_embeds`, `text_embeds`, `text_encodings`), computed in
  f32 from the weights exactly as stored on disk.
- `open_clip/{config.json, open_clip_model.safetensors, io.safetensors}`: a tiny random open_clip
  `CLIP` saved in open_clip's own key layout, with a HF-style config.json describing it.
- `tokenizer_captions.json`: captions and the ids open_clip's `SimpleTokenizer` gives them.
- `preprocess/<name>.png` + `preprocess/expected.safetensors`: images and the `pixel_values`
  transformers' `CLIPImageProcessorPil` (PIL bicubic) produces for them at size 64.

The script prints the package versions it ran with. Everything is seeded, so reruns with the same
versions give the same files.
"""

import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import open_clip
import transformers
from open_clip.tokenizer import SimpleTokenizer
from transformers import CLIPConfig, CLIPModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "clip")
CTX = 77


def ids_batch(vocab, bos, eos, pad, lengths, gen):
    """Rows of `CTX` ids: bos, random content, eos, then `pad`. Content avoids bos/eos/pad."""
    rows = []
    for n in lengths:
        content = torch.randint(1, vocab - 2, (n,), generator=gen)
        row = [bos] + content.tolist() + [eos]
        row = row[:CTX]
        row[-1] = eos
        row = row + [pad] * (CTX - len(row))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.int64)


def round_weights(model, dtype):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))


def hf_case(name, text, vision, projection_dim, dtype, pad_is_eos, seed):
    torch.manual_seed(seed)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    model = CLIPModel(cfg).eval()
    # Default init leaves biases at zero and LayerNorms at identity: perturb everything so the
    # fixture checks every tensor's wiring.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    round_weights(model, dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    vocab, bos, eos = text["vocab_size"], text["bos_token_id"], text["eos_token_id"]
    pad = eos if pad_is_eos else 0
    input_ids = ids_batch(vocab, bos, eos, pad, [3, 12, 90], gen)
    size = vision["image_size"]
    pixel_values = torch.randn(2, 3, size, size, generator=gen)
    with torch.no_grad():
        t = model.text_model(input_ids=input_ids)
        v = model.vision_model(pixel_values=pixel_values)
        text_embeds = model.text_projection(t.pooler_output)
        image_embeds = model.visual_projection(v.pooler_output)
    d = os.path.join(OUT, f"hf_{name}")
    os.makedirs(d, exist_ok=True)
    sd = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(d, "model.safetensors"))
    cfg_dict = cfg.to_dict()
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2, sort_keys=True)
    save_file(
        {
            "input_ids": input_ids,
            "pixel_values": pixel_values,
            "image_embeds": torch.nn.functional.normalize(image_embeds, dim=-1),
            "text_embeds": torch.nn.functional.normalize(text_embeds, dim=-1),
            "text_encodings": t.last_hidden_state.contiguous(),
        },
        os.path.join(d, "io.safetensors"),
    )


def open_clip_case(seed):
    torch.manual_seed(seed)
    vocab = 1000
    vision_cfg = open_clip.model.CLIPVisionCfg(
        layers=2, width=32, head_width=8, mlp_ratio=4.0, patch_size=8, image_size=32
    )
    text_cfg = open_clip.model.CLIPTextCfg(
        context_length=CTX, vocab_size=vocab, width=32, heads=4, layers=2
    )
    model = open_clip.model.CLIP(
        embed_dim=24, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=False
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    gen = torch.Generator().manual_seed(seed + 1)
    # open_clip pools at argmax(ids): the end token must be the largest id, as in real CLIP.
    input_ids = ids_batch(vocab, vocab - 2, vocab - 1, 0, [5, 30, 80], gen)
    pixel_values = torch.randn(2, 3, 32, 32, generator=gen)
    with torch.no_grad():
        image_embeds = model.encode_image(pixel_values, normalize=True)
        text_embeds = model.encode_text(input_ids, normalize=True)
        x = model.token_embedding(input_ids) + model.positional_embedding
        x = model.transformer(x, attn_mask=model.attn_mask)
        text_encodings = model.ln_final(x)
    d = os.path.join(OUT, "open_clip")
    os.makedirs(d, exist_ok=True)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(d, "open_clip_model.safetensors"))
    config = {
        "model_type": "clip",
        "projection_dim": 24,
        "text_config": {
            "vocab_size": vocab,
            "hidden_size": 32,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": CTX,
            "hidden_act": "gelu",
            "bos_token_id": vocab - 2,
            "eos_token_id": vocab - 1,
        },
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
            "hidden_act": "gelu",
        },
    }
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    save_file(
        {
            "input_ids": input_ids,
            "pixel_values": pixel_values,
            "image_embeds": image_embeds,
            "text_embeds": text_embeds,
            "text_encodings": text_encodings.contiguous(),
        },
        os.path.join(d, "io.safetensors"),
    )


CAPTIONS = [
    "a photo of a cat",
    "A PHOTO OF A DOG.",
    "two dogs playing in the snow, near a red barn!",
    "Hello, world! How's it going? I'm fine; you're great.",
    "they've said we'll go, he'd agree, it's done",
    "numbers: 1234567890 and 3.14159 and 1,000,000",
    "price $19.99 (50% off) - limited #deal @store",
    "email: someone@example.com, url: https://example.com/a?b=c&d=e",
    "emoji 🐱🐶🚀 and ❤️ hearts",
    "café naïve résumé façade über straße",
    "日本語のキャプション、猫の写真",
    "中文标题：一只猫在桌子上",
    "Привет мир, кошка на столе",
    "مرحبا بالعالم",
    "ελληνικά γράμματα αβγ",
    "한국어 캡션 고양이",
    "tabs\tand\nnewlines\r\n  and   multiple    spaces",
    "   leading and trailing spaces   ",
    "",
    "!!!???...;;;",
    "snake_case and kebab-case and CamelCase",
    "C++ and C# and F# and .NET",
    "3D render of a low-poly fox, 4k, trending on artstation",
    "x" * 300,
    " ".join(["word"] * 120),
    "a very long caption " * 20 + "that ends here",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "Tom &amp; Jerry",
    "5 &lt; 6 &gt; 4",
    "&quot;quoted&quot; and &#39;single&#39;",
    "caf&eacute; and na&iuml;ve",
    "&copy; 2024 &mdash; all rights reserved &trade;",
    "numeric &#169; &#xA9; &#8212; entities",
    "double escaped &amp;amp; entity",
    "&nbsp;non&nbsp;breaking&nbsp;spaces",
    "unknown &foo; entity stays",
    "curly “double” and ‘single’ quotes",
    "ligatures: ﬁsh ﬂower",
    "fullwidth ＡＢＣ１２３ text",
    "caf\u00c3\u00a9 mojibake",
    "The Mona Lisa\u00e2\u20ac\u2122s smile",
    "\u00e2\u20ac\u0153quoted mojibake\u00e2\u20ac\u009d",
    "combining e\u0301 accent vs \u00e9",
    "zero\u200bwidth space",
    "control\u0007char",
    "mixed CASE ÀÉÎÕÜ letters",
    "a dog's toy; the dogs' toys",
    "ISN'T IT GREAT? WE'VE WON!",
    "1st 2nd 3rd 4th 21st century",
    "½ cup of sugar, 2² = 4",
    "⌘ + C, ⇧ + Tab, © ® ™",
    "an astronaut riding a horse on mars, digital art",
    "<b>bold</b> html tags and <i>italic</i>",
    "path/to/file.jpg and C:\\Windows\\System32",
    "hashtags #sunset #beach #nofilter",
    "dimensions 1920x1080 16:9 aspect",
]


def tokenizer_fixture():
    tok = SimpleTokenizer(context_length=CTX)
    rows = []
    for c in CAPTIONS:
        ids = tok([c], context_length=CTX)[0].tolist()
        rows.append({"text": c, "ids": ids})
    with open(os.path.join(OUT, "tokenizer_captions.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, ensure_ascii=False, indent=0)


def preprocess_fixture():
    d = os.path.join(OUT, "preprocess")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(7)
    shapes = {"wide": (61, 97), "tall": (120, 50), "big": (150, 200), "small": (40, 40)}
    proc = CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    expected = {}
    for name, (h, w) in shapes.items():
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack(
            [
                (xx * 255 / max(w - 1, 1)),
                (yy * 255 / max(h - 1, 1)),
                128 + 100 * np.sin(xx / 5.0) * np.cos(yy / 7.0),
            ],
            axis=-1,
        )
        img = img + rng.normal(0, 20, img.shape)
        img = np.clip(img, 0, 255).astype(np.uint8)
        Image.fromarray(img, "RGB").save(os.path.join(d, f"{name}.png"))
        with Image.open(os.path.join(d, f"{name}.png")) as im:
            pv = proc(images=im.convert("RGB"), return_tensors="pt")["pixel_values"][0]
        expected[name] = pv.contiguous().to(torch.float32)
    save_file(expected, os.path.join(d, "expected.safetensors"))


def main():
    print(
        f"python {sys.version.split()[0]}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, open_clip {open_clip.__version__}, "
        f"numpy {np.__version__}"
    )
    os.makedirs(OUT, exist_ok=True)
    tiny_text = dict(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CTX,
        bos_token_id=998,
        eos_token_id=999,
        pad_token_id=0,
    )
    tiny_vision = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    hf_case(
        "quickgelu_pad0_f32",
        dict(tiny_text, hidden_act="quick_gelu"),
        dict(tiny_vision, hidden_act="quick_gelu"),
        24,
        torch.float32,
        False,
        1,
    )
    hf_case(
        "gelu_padeos_f16",
        dict(tiny_text, hidden_act="gelu", pad_token_id=999),
        dict(tiny_vision, hidden_act="gelu"),
        24,
        torch.float16,
        True,
        2,
    )
    # Unequal tower widths, head counts and depths catch a width wired to the wrong tower.
    hf_case(
        "mixed_padeos_bf16",
        dict(tiny_text, hidden_size=48, intermediate_size=64, num_attention_heads=6,
             hidden_act="quick_gelu", pad_token_id=999),
        dict(tiny_vision, num_hidden_layers=3, num_attention_heads=2, image_size=24,
             patch_size=6, hidden_act="gelu"),
        20,
        torch.bfloat16,
        True,
        3,
    )
    open_clip_case(4)
    tokenizer_fixture()
    preprocess_fixture()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
