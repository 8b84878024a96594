"""Stage 1: train the VAE (diffusers ``AutoencoderKL``) that maps 64×64 images to small latents.

Loss: L1 reconstruction + an L1 on image gradients (keeps edges crisp; there is no pretrained
perceptual network to use offline) + a small KL term that keeps the latent space smooth. Held-out
reconstruction PSNR is logged while training. At the end the latent std is measured over training
images and ``scaling_factor = 1 / std`` is written into the VAE config, as Stable Diffusion does, so the
U-Net sees unit-variance latents.

Output: ``run_dir/vae/`` (``save_pretrained``, safetensors) and ``run_dir/metrics.json``.

    from latentgen.train import VAETrainConfig, train_vae
    train_vae(VAETrainConfig(run_dir="runs/vae"))   # run again to resume
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from latentgen.errors import LatentgenError, UsageError
from latentgen.train.data import WORLD, ImageCaptions, load_data
from latentgen.train.run import (
    Progress,
    check_norm_groups,
    check_resume,
    format_duration,
    load_checkpoint,
    lr_at,
    restore,
    run_context,
    save_checkpoint,
    write_json,
)

log = logging.getLogger("latentgen.train")


@dataclass
class VAETrainConfig:
    run_dir: str = "runs/vae"  # checkpoints, train.log and the finished vae/ go here; rerun to resume
    # data
    data: str = "world"  # "world" (the built-in renderer) or a folder of name.png + name.txt pairs
    num_images: int = 20_000  # world renders held in memory (12 KB each); for a folder: a cap, 0 = all
    eval_images: int = 256  # held-out images for PSNR (world only; a folder holds out its last tenth)
    data_seed: int = 0  # world stream to render; held-out renders use another stream
    resolution: int = 64  # images are square, this many pixels a side
    flip: bool = True  # random horizontal flips: fine here, the VAE never sees captions
    # model: each entry of block_out_channels after the first halves the size: 3 entries → factor 4
    # (64×64×3 → 16×16×4). Measured (batch 32, same schedule), held-out PSNR after 300 / 600 steps:
    # factor 4: 20.7 / 22.4 dB, objects visible from step 300; factor 8 (32, 64, 128, 128):
    # 18.2 / 18.6 dB and still 18.8 at 750 of a longer run, backgrounds only, no objects yet.
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    # 8, not SD's 4: at factor 4 a small object is 3×3 latent cells, and 4 channels could not hold its
    # shape (candidate 2, 4 channels: the judge accepted 89.5% of round trips after 1000 steps). The
    # U-Net's cost hardly depends on it (only its first and last convolutions see these channels).
    latent_channels: int = 8
    norm_num_groups: int = 8  # divides every entry; 32 groups of one channel would erase flat colours
    init_logvar: float = -6.0  # start nearly deterministic, so the decoder sees the latents from step 1
    # loss
    edge_weight: float = 0.5  # L1 on horizontal and vertical pixel differences
    # Extra L1 weight on object pixels (those far from the image's border colour). Objects are ~10% of
    # a world image, so plain L1/PSNR let them blur: candidate 1's VAE (26.2 dB) passed the judge on
    # only 44.5% of round trips. 0 = plain L1.
    object_weight: float = 4.0
    kl_weight: float = 1e-5  # on the KL per latent element, next to the per-pixel L1
    # Continue from a finished VAE (a VAE run folder, a VAE folder, or a model folder with vae/; its
    # model config must match this one). With ``train_encoder=False`` only the decoder learns: the
    # latents, and so any U-Net trained on them, stay valid, and the scaling_factor is kept.
    init_from: str = ""
    train_encoder: bool = True
    # optimisation (AdamW)
    batch_size: int = 32
    max_steps: int = 2_000
    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05  # cosine decay ends at lr * this
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0  # initial weights, batches, posterior noise
    # bookkeeping (may change when resuming)
    log_every: int = 25  # steps between progress lines
    eval_every: int = 500  # steps between held-out PSNR measurements
    checkpoint_minutes: float = 5.0
    threads: int = 0  # torch CPU threads; 0 keeps torch's default

    @classmethod
    def tiny(cls, **overrides) -> VAETrainConfig:
        """A seconds-long config for tests: 16×16 images, factor-2 VAE with 8 and 16 channels."""
        tiny = cls(
            num_images=16,
            eval_images=4,
            resolution=16,
            block_out_channels=(8, 16),
            norm_num_groups=4,
            batch_size=4,
            max_steps=4,
            warmup_steps=2,
            log_every=1,
            eval_every=2,
        )
        return replace(tiny, **overrides)

    @property
    def factor(self) -> int:
        """Pixels per latent cell along each side."""
        return 2 ** (len(self.block_out_channels) - 1)


def build_vae(cfg: VAETrainConfig):
    from diffusers import AutoencoderKL

    check_norm_groups(cfg.block_out_channels, cfg.norm_num_groups)
    n = len(cfg.block_out_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.resolution,
    )
    # quant_conv maps the encoder's output to [mean, logvar]: shift the initial logvar down
    with torch.no_grad():
        vae.quant_conv.bias[cfg.latent_channels :] += cfg.init_logvar
    return vae


def vae_loss(
    recon: torch.Tensor, pixels: torch.Tensor, posterior, cfg: VAETrainConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts. ``recon``, ``pixels``: ``[B, 3, H, W]`` in [-1, 1]."""
    error = (recon - pixels).abs()
    l1 = error.mean()
    if cfg.object_weight:
        l1 = l1 + cfg.object_weight * (error * object_mask(pixels)).mean()
    edge = (_dx(recon) - _dx(pixels)).abs().mean() + (_dy(recon) - _dy(pixels)).abs().mean()
    kl = posterior.kl().mean() / posterior.mean[0].numel()  # kl() sums over [C, h, w]
    loss = l1 + cfg.edge_weight * edge + cfg.kl_weight * kl
    return loss, {"loss": loss.item(), "l1": l1.item(), "kl": kl.item()}


def object_mask(pixels: torch.Tensor, threshold: float = 0.2) -> torch.Tensor:
    """``[B, 1, H, W]``: 1.0 where a pixel differs from its image's border colour (median of the frame)
    by more than ``threshold`` in some channel (pixels in [-1, 1]), else 0.0."""
    frame = torch.cat([pixels[..., 0, :], pixels[..., -1, :], pixels[..., :, 0], pixels[..., :, -1]], -1)
    background = frame.median(dim=-1).values[..., None, None]  # [B, 3, 1, 1]
    return ((pixels - background).abs().amax(1, keepdim=True) > threshold).float()


def _load_init(vae, name: str) -> float:
    """Load the weights of the finished VAE ``name`` into ``vae``; returns its scaling_factor."""
    from diffusers import AutoencoderKL

    path = Path(name)
    folder = next((f for f in (path / "vae", path) if (f / "config.json").is_file()), None)
    if folder is None:
        raise UsageError(f"init_from {name!r} holds no finished VAE (expected {path}/vae/ or a VAE folder)")
    source = AutoencoderKL.from_pretrained(folder, use_safetensors=True)
    try:
        vae.load_state_dict({k: v.float() for k, v in source.state_dict().items()})
    except RuntimeError as e:
        raise UsageError(
            f"the VAE in {folder} does not fit this config ({str(e).splitlines()[1].strip()}); "
            "use the model config it was trained with"
        ) from None
    log.info("initialised the VAE from %s", folder)
    return float(source.config.scaling_factor)


def _dx(x: torch.Tensor) -> torch.Tensor:
    return x[..., :, 1:] - x[..., :, :-1]


def _dy(x: torch.Tensor) -> torch.Tensor:
    return x[..., 1:, :] - x[..., :-1, :]


def _quality(vae, held_out: ImageCaptions, cfg: VAETrainConfig) -> str:
    psnr, judged = reconstruction_quality(vae, held_out, judge=cfg.data == WORLD)
    text = f"PSNR {psnr:.2f} dB"
    if judged is not None:
        text += f", judge accepts {100 * judged:.1f}% of round trips"
    return text


@torch.no_grad()
def reconstruction_quality(
    vae, data: ImageCaptions, *, judge: bool, batch_size: int = 64
) -> tuple[float, float | None]:
    """One round trip (encode, decode the posterior mean) of every image, and two readings of it:
    the mean per-image PSNR (dB, pixels in [0, 1]) and, with ``judge`` (world data only), the
    fraction the world's judge accepts for the image's first caption: the ceiling of any U-Net
    trained on this VAE's latents."""
    from PIL import Image

    from latentgen.world import judge_ok, parse_prompt

    scores, passed = [], 0
    for start in range(0, len(data), batch_size):
        index = torch.arange(start, min(start + batch_size, len(data)))
        pixels = data.pixels(index)
        recon = vae.decode(vae.encode(pixels).latent_dist.mode()).sample.clamp(-1, 1)
        mse = ((recon - pixels) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        scores.append(-10 * torch.log10(mse))
        if judge:
            images = ((recon + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            for i, image in zip(index.tolist(), images, strict=True):
                passed += judge_ok(Image.fromarray(image), parse_prompt(data.captions[i][0]))
    return torch.cat(scores).mean().item(), (passed / len(data) if judge else None)


def reconstruction_judged(vae, data: ImageCaptions, batch_size: int = 64) -> float:
    """Fraction of round trips the world's judge accepts (see :func:`reconstruction_quality`)."""
    return reconstruction_quality(vae, data, judge=True, batch_size=batch_size)[1]


@torch.no_grad()
def latent_stats(
    vae, data: ImageCaptions, max_images: int = 2048, batch_size: int = 64
) -> tuple[float, float]:
    """Mean and std of posterior samples over (up to) ``max_images`` images, all channels pooled."""
    gen = torch.Generator().manual_seed(0)
    samples = []
    for start in range(0, min(len(data), max_images), batch_size):
        pixels = data.pixels(torch.arange(start, min(start + batch_size, len(data), max_images)))
        samples.append(vae.encode(pixels).latent_dist.sample(generator=gen).flatten())
    z = torch.cat(samples)
    return z.mean().item(), z.std().item()


def train_vae(cfg: VAETrainConfig, *, stop_at: int | None = None) -> Path:
    """Train (or resume) a VAE in ``cfg.run_dir``; returns the run folder.

    When ``max_steps`` is reached, the finished VAE is written to ``run_dir/vae``. ``stop_at`` ends this
    call early at that step with a checkpoint, as an interruption would (a later call resumes).
    """
    run_dir = Path(cfg.run_dir)
    with run_context(run_dir, cfg.threads) as stop:
        ckpt = load_checkpoint(run_dir)
        check_resume(ckpt, cfg)

        # 1. data
        t_data = time.monotonic()
        train = load_data(cfg.data, cfg.num_images, cfg.data_seed, cfg.resolution)
        held_out = load_data(cfg.data, cfg.eval_images, cfg.data_seed, cfg.resolution, held_out=True)
        log.info(
            "VAE data: %d training and %d held-out images from %s (%.1fs)",
            len(train),
            len(held_out),
            cfg.data,
            time.monotonic() - t_data,
        )

        # 2. model, optimiser, RNG: from the seed (or init_from), or from the checkpoint
        torch.manual_seed(cfg.seed)
        vae = build_vae(cfg)
        init_scale = _load_init(vae, cfg.init_from) if cfg.init_from else None
        if not cfg.train_encoder:
            if init_scale is None:
                raise UsageError("train_encoder=false needs init_from: a trained VAE whose latents to keep")
            for part in (vae.encoder, vae.quant_conv):
                part.requires_grad_(False)
        trainable = [p for p in vae.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        step, elapsed = 0, 0.0
        if ckpt is not None:
            restore(ckpt, {"vae": vae}, optimizer, gen)
            step, elapsed = ckpt.step, ckpt.meta.get("elapsed_s", 0.0)
            log.info("resuming %s from step %d", run_dir, step)
        else:
            n_params = sum(p.numel() for p in vae.parameters())
            log.info("new VAE run %s: %.2fM parameters, factor %d", run_dir, n_params / 1e6, cfg.factor)

        def checkpoint() -> None:
            save_checkpoint(
                run_dir,
                step=step,
                cfg=cfg,
                modules={"vae": vae},
                optimizer=optimizer,
                generator=gen,
                meta={"elapsed_s": elapsed + time.monotonic() - t_start},
            )

        # 3. the loop
        start_step = step
        end = min(cfg.max_steps, stop_at if stop_at is not None else cfg.max_steps)
        progress = Progress(step, cfg.max_steps, cfg.batch_size, cfg.log_every)
        t_start = t_saved = time.monotonic()
        vae.train()
        if not cfg.train_encoder:
            vae.encoder.eval()
        while step < end:
            lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            index = torch.randint(len(train), (cfg.batch_size,), generator=gen)
            pixels = train.pixels(index)  # [B, 3, H, W]
            if cfg.flip:
                flip = torch.rand(cfg.batch_size, generator=gen) < 0.5
                pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)

            posterior = vae.encode(pixels).latent_dist
            recon = vae.decode(posterior.sample(generator=gen)).sample
            loss, parts = vae_loss(recon, pixels, posterior, cfg)
            if not math.isfinite(parts["loss"]):
                raise LatentgenError(
                    f"VAE loss is {parts['loss']} at step {step}; lower the learning rate (lr)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            step += 1

            progress.update(step, lr, **parts)
            if step % cfg.eval_every == 0 and step < cfg.max_steps:
                log.info("step %d: held-out %s", step, _quality(vae, held_out, cfg))
            if stop.is_set():
                checkpoint()
                raise KeyboardInterrupt
            if time.monotonic() - t_saved > cfg.checkpoint_minutes * 60:
                checkpoint()
                t_saved = time.monotonic()
        if step > start_step:
            checkpoint()
        if step < cfg.max_steps:
            return run_dir

        # 4. finish: latent scale, held-out quality, the VAE in diffusers layout
        vae.eval()
        mean, std = latent_stats(vae, train)
        # a frozen encoder keeps its scale: the U-Nets trained on its latents were scaled with it
        scale = init_scale if not cfg.train_encoder else 1.0 / std
        vae.register_to_config(scaling_factor=scale)
        psnr, judged = reconstruction_quality(vae, held_out, judge=cfg.data == WORLD)
        vae.save_pretrained(run_dir / "vae", safe_serialization=True)
        total = elapsed + time.monotonic() - t_start
        metrics = {
            "steps": step,
            "held_out_psnr_db": round(psnr, 3),
            "held_out_judged": judged,
            "latent_mean": mean,
            "latent_std": std,
            "scaling_factor": scale,
            "train_time_s": round(total, 1),
        }
        write_json(run_dir / "metrics.json", metrics)
        if judged is not None:
            log.info("VAE round trips the judge accepts (ceiling of the U-Net): %.1f%%", 100 * judged)
        log.info(
            "VAE done in %s: held-out PSNR %.2f dB, latent mean %.3f std %.3f, scaling_factor %.4f; in %s",
            format_duration(total),
            psnr,
            mean,
            std,
            scale,
            run_dir / "vae",
        )
        return run_dir
