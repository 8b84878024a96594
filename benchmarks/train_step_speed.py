"""Seconds per U-Net training step on this CPU: the recipe's step and ways to make it cheaper.

One step as ``latentgen.train.unet`` takes it (text encoder, U-Net, MSE loss, backward, gradient
clip, AdamW; batch 32 of 16×16×8 latents, 24 tokens), with the recipe's models built by the
training code's own builders, on random data (the speed does not depend on it). Each variant is
timed over ``--steps`` steps after 3 warm-up steps, in one process, so the ratios compare like with
like:

- ``fp32``: the recipe as it trains today
- ``fused AdamW``: ``torch.optim.AdamW(fused=True)``
- ``channels_last``: the U-Net and its input in NHWC, the layout oneDNN convolutions prefer
- ``bf16 autocast`` (with and without channels_last): CPU autocast, where AMX (if the CPU has it)
  runs the matmuls and convolutions
- ``torch.compile`` (``--compile``; about 2 min of compiling on 2 threads)

And the recipe's step with attention at the 16×16 level too (``attention=1,1,1,1``), and at half
the resolution (32×32 images, 8×8 latents; batch 32 and 64): what a resolution curriculum, SD's
256-then-512, would save a step here.

    python benchmarks/train_step_speed.py --threads 2 --json benchmarks/builtin/train_step_speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTokenizer

from latentgen.loader import BUILTIN, resolve_model
from latentgen.train.unet import UNetTrainConfig, build_text_encoder, build_unet


def time_step(
    cfg: UNetTrainConfig,
    tokenizer,
    *,
    latent: tuple[int, int],
    steps: int,
    fused: bool = False,
    channels_last: bool = False,
    bf16: bool = False,
    compile_unet: bool = False,
) -> float:
    """Seconds per training step, averaged over ``steps`` after 3 warm-up steps."""
    torch.manual_seed(0)
    channels, size = latent
    unet = build_unet(cfg, channels, size)
    text_encoder = build_text_encoder(cfg, tokenizer)
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
    forward = torch.compile(unet) if compile_unet else unet
    batch = cfg.batch_size
    latents = torch.randn(batch, channels, size, size)
    if channels_last:
        latents = latents.to(memory_format=torch.channels_last)
    target = torch.randn(batch, channels, size, size)
    ids = torch.randint(0, len(tokenizer), (batch, cfg.max_tokens))
    timesteps = torch.randint(0, cfg.num_train_timesteps, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            text = text_encoder(ids)[0]
            pred = forward(latents, timesteps, encoder_hidden_states=text).sample
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (minutes)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    builtin = resolve_model(BUILTIN)
    tokenizer = CLIPTokenizer.from_pretrained(builtin.path / "tokenizer")
    recipe = UNetTrainConfig()
    # the latents the recipe trains on: the shipped VAE's channels, its factor applied to the resolution
    vae = AutoencoderKL.load_config(builtin.path / "vae")
    latent = (vae["latent_channels"], recipe.resolution // builtin.vae_scale_factor)
    variants = {  # name: (config, time_step options)
        "fp32": (recipe, {}),
        "fused AdamW": (recipe, {"fused": True}),
        "channels_last": (recipe, {"channels_last": True}),
        "bf16 autocast": (recipe, {"bf16": True}),
        "bf16 autocast, channels_last": (recipe, {"bf16": True, "channels_last": True}),
    }
    if args.compile:
        variants["torch.compile U-Net, fused AdamW"] = (recipe, {"compile_unet": True, "fused": True})
    variants["fp32, attention at 16x16 too"] = (replace(recipe, attention=(1, 1, 1, 1)), {})
    half = (latent[0], latent[1] // 2)
    variants["fp32, 32x32 images"] = (replace(recipe, resolution=recipe.resolution // 2), {"latent": half})
    variants["fp32, 32x32 images, batch 64"] = (
        replace(recipe, resolution=recipe.resolution // 2, batch_size=2 * recipe.batch_size),
        {"latent": half},
    )
    seconds = {}
    for name, (cfg, options) in variants.items():
        options = {"latent": latent, **options}
        seconds[name] = time_step(cfg, tokenizer, steps=args.steps, **options)
        print(f"{name:36s} {seconds[name]:.3f} s/step  {seconds[name] / seconds['fp32']:.2f}x", flush=True)
    cpu_flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    result = {
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.machine(),
        "amx_bf16": "amx_bf16" in cpu_flags,
        "avx512_bf16": "avx512_bf16" in cpu_flags,
        "batch": recipe.batch_size,
        "timed_steps": args.steps,
        "seconds_per_step": seconds,
        "ratio_to_fp32": {name: s / seconds["fp32"] for name, s in seconds.items()},
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
