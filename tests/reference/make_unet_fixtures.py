#!/usr/bin/env python3
"""Write the committed UNet parity fixtures of crates/unclip-models under
tests/reference/fixtures/unet/.

Run from the repository root, in a venv with torch, safetensors and diffusers (0.42.1 was used)::

    /root/venv/bin/python tests/reference/make_unet_fixtures.py

The Rust test crates/unclip-models/tests/unet_diffusers.rs reads the files, so CI needs no
Python. Two tiny models, in the block types of Karlo's (kakaobrain/karlo-v1-alpha) unCLIP stages,
with random weights (every norm gain/offset and the learned null image embedding re-randomised so
that nothing is trivially constant), written with diffusers' own ``save_pretrained``:

``decoder/unet/``  (config.json + diffusion_pytorch_model.safetensors)
    ``UNet2DConditionModel``: ResnetDownsampleBlock2D + SimpleCrossAttnDownBlock2D,
    UNetMidBlock2DSimpleCrossAttn, SimpleCrossAttnUpBlock2D + ResnetUpsampleBlock2D,
    class_embed_type "identity", resnet_time_scale_shift "scale_shift" (as Karlo's decoder).
``decoder/text_proj/``
    ``UnCLIPTextProjModel`` (4 extra context tokens).
``decoder/io.safetensors``
    inputs ``x``, ``timesteps`` (int64), ``image_embed``, ``text_embed`` (pooled),
    ``text_encodings``, ``text_mask`` (uint8, with padding) and, in eval mode,
    ``emb_add`` / ``context`` (text_proj outputs), ``out`` (decoder output, chained as
    UnCLIPPipeline does: text_proj without CFG doubling, the mask left-padded with 4 ones), and
    ``cfg_emb_add`` / ``cfg_context``: text_proj with do_classifier_free_guidance=True (its first
    N rows use the learned null image embedding; the pooled text is given twice).
``super_res/unet/`` + ``super_res/io.safetensors``
    ``UNet2DModel`` as Karlo's super_res_first (ResnetDownsampleBlock2D / ResnetUpsampleBlock2D,
    add_attention=False, resnet_time_scale_shift left at its default "default", exactly as the
    diffusers Karlo conversion config), inputs ``x`` (6 channels), ``timesteps``; output ``out``.
``super_res_aug/unet/`` + ``super_res_aug/io.safetensors``
    the same ``UNet2DModel`` with ``class_embed_type="timestep"`` (our upsampler with Imagen-style
    noise augmentation: the augmentation timestep goes through the shared sinusoid and the
    ``class_embedding`` MLP), inputs ``x``, ``timesteps``, ``class_labels`` (int64); output ``out``.
"""

import os

import torch
from safetensors.torch import save_file

import diffusers
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "unet")


def rerandomise(model, gen):
    """Norm gains/offsets and zero-initialised parameters get random values."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = "norm" in name
            if name == "learned_classifier_free_guidance_embeddings":
                p.copy_(torch.randn(p.shape, generator=gen))
            elif is_norm and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif is_norm and name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            elif bool((p == 0).all()):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def decoder(gen):
    clip_dim, cross, n, length = 16, 16, 2, 6
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=3,
        out_channels=6,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        norm_eps=1e-5,
        cross_attention_dim=cross,
        attention_head_dim=8,
        class_embed_type="identity",
        resnet_time_scale_shift="scale_shift",
        dropout=0.1,
    )
    time_embed_dim = 4 * 8
    proj = UnCLIPTextProjModel(
        clip_extra_context_tokens=4,
        clip_embeddings_dim=clip_dim,
        time_embed_dim=time_embed_dim,
        cross_attention_dim=cross,
    )
    rerandomise(unet, gen)
    rerandomise(proj, gen)
    unet.eval()
    proj.eval()

    x = torch.randn(n, 3, 16, 16, generator=gen)
    timesteps = torch.tensor([3, 517], dtype=torch.int64)
    image_embed = torch.randn(n, clip_dim, generator=gen)
    text_embed = torch.randn(n, clip_dim, generator=gen)
    text_encodings = torch.randn(n, length, clip_dim, generator=gen)
    text_mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)

    with torch.no_grad():
        context, emb_add = proj(
            image_embeddings=image_embed,
            prompt_embeds=text_embed,
            text_encoder_hidden_states=text_encodings,
            do_classifier_free_guidance=False,
        )
        mask = torch.nn.functional.pad(text_mask, (4, 0), value=True)
        out = unet(
            x, timesteps, encoder_hidden_states=context, class_labels=emb_add, attention_mask=mask
        ).sample
        cfg_context, cfg_emb_add = proj(
            image_embeddings=image_embed,
            prompt_embeds=torch.cat([text_embed, text_embed]),
            text_encoder_hidden_states=torch.cat([text_encodings, text_encodings]),
            do_classifier_free_guidance=True,
        )

    unet.save_pretrained(os.path.join(OUT, "decoder", "unet"))
    proj.save_pretrained(os.path.join(OUT, "decoder", "text_proj"))
    save_file(
        {
            "x": x,
            "timesteps": timesteps,
            "image_embed": image_embed,
            "text_embed": text_embed,
            "text_encodings": text_encodings,
            "text_mask": text_mask.to(torch.uint8),
            "emb_add": emb_add,
            "context": context,
            "out": out,
            "cfg_emb_add": cfg_emb_add,
            "cfg_context": cfg_context,
        },
        os.path.join(OUT, "decoder", "io.safetensors"),
    )
    return out


def super_res_unet(gen, **extra):
    """The tiny Karlo-style super-resolution UNet2DModel, re-randomised, in eval mode."""
    unet = UNet2DModel(
        sample_size=16,
        in_channels=6,
        out_channels=3,
        down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
        up_block_types=("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        add_attention=False,
        **extra,
    )
    rerandomise(unet, gen)
    unet.eval()
    return unet


def super_res(gen):
    unet = super_res_unet(gen)
    x = torch.randn(2, 6, 16, 16, generator=gen)
    timesteps = torch.tensor([0, 999], dtype=torch.int64)
    with torch.no_grad():
        out = unet(x, timesteps).sample
    unet.save_pretrained(os.path.join(OUT, "super_res", "unet"))
    save_file(
        {"x": x, "timesteps": timesteps, "out": out},
        os.path.join(OUT, "super_res", "io.safetensors"),
    )
    return out


def super_res_aug(gen):
    unet = super_res_unet(gen, class_embed_type="timestep")
    x = torch.randn(2, 6, 16, 16, generator=gen)
    timesteps = torch.tensor([3, 800], dtype=torch.int64)
    class_labels = torch.tensor([250, 17], dtype=torch.int64)
    with torch.no_grad():
        out = unet(x, timesteps, class_labels=class_labels).sample
    unet.save_pretrained(os.path.join(OUT, "super_res_aug", "unet"))
    save_file(
        {"x": x, "timesteps": timesteps, "class_labels": class_labels, "out": out},
        os.path.join(OUT, "super_res_aug", "io.safetensors"),
    )
    return out


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    d = decoder(gen)
    s = super_res(gen)
    a = super_res_aug(gen)
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}")
    print("decoder out", tuple(d.shape), float(d.abs().max()))
    print("super_res out", tuple(s.shape), float(s.abs().max()))
    print("super_res_aug out", tuple(a.shape), float(a.abs().max()))
    total = 0
    for root, _, files in os.walk(OUT):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    print(f"fixtures: {total} bytes")


if __name__ == "__main__":
    main()
