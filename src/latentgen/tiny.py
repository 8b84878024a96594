"""Small randomly initialised models in diffusers layout, built in code under a fixed seed.

They draw noise, not pictures, but they exercise every code path offline: tests use ``tiny`` (a
few thousand parameters, milliseconds per step); benchmarks use ``small`` (an SD-shaped model of a
few million parameters) until a trained model is the better yardstick.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from latentgen.tokenizer import build_clip_tokenizer

# Enough words for prompts used in tests and benchmarks to be whole tokens.
WORDS = [
    "a",
    "an",
    "the",
    "one",
    "two",
    "three",
    "four",
    "red",
    "green",
    "blue",
    "yellow",
    "orange",
    "purple",
    "pink",
    "white",
    "black",
    "gray",
    "circle",
    "square",
    "triangle",
    "star",
    "heart",
    "cat",
    "hat",
    "wearing",
    "on",
    "of",
    "above",
    "below",
    "left",
    "right",
    "next",
    "to",
    "small",
    "big",
    "background",
    "corner",
    "top",
    "bottom",
    "centre",
    "center",
    "and",
    "with",
    "in",
]

SD_SCHEDULER = {
    "_class_name": "PNDMScheduler",  # what SD 1.x ships; every sampler is rebuilt from this config
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}


@dataclass(frozen=True)
class TinySpec:
    unet_channels: tuple[int, ...]
    vae_channels: tuple[int, ...]  # len 4 → VAE factor 8
    text_hidden: int
    text_layers: int
    cross_dim: int
    groups: int
    sample_size: int  # latent side; image side = sample_size * 8


SPECS = {
    "tiny": TinySpec((8, 16), (8, 8, 8, 8), 16, 2, 16, 4, 4),
    "small": TinySpec((32, 64, 128), (32, 64, 64, 64), 64, 2, 64, 16, 8),
}


def build_components(
    spec: str = "tiny", seed: int = 0, tokenizer_dir: str | Path | None = None, unet_in_channels: int = 4
):
    """Return ``(unet, vae, text_encoder, tokenizer, scheduler_config)`` built under ``seed``.

    ``unet_in_channels=9`` builds an inpainting U-Net (latents, mask, masked-image latents).
    """
    import tempfile

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    s = SPECS[spec]
    tok = build_clip_tokenizer(WORDS, tokenizer_dir or tempfile.mkdtemp(prefix="latentgen-tok-"))
    n = len(s.unet_channels)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=s.sample_size,
        in_channels=unet_in_channels,
        out_channels=4,
        block_out_channels=s.unet_channels,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=s.cross_dim,
        attention_head_dim=4,
        norm_num_groups=s.groups,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=s.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(s.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(s.vae_channels),
        layers_per_block=1,
        norm_num_groups=min(s.groups, min(s.vae_channels)),
        sample_size=s.sample_size * 8,
        force_upcast=False,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=s.text_hidden,
            intermediate_size=2 * s.text_hidden,
            num_hidden_layers=s.text_layers,
            num_attention_heads=2,
            max_position_embeddings=tok.model_max_length,
            projection_dim=s.cross_dim,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    if s.text_hidden != s.cross_dim:
        raise ValueError("text hidden size must equal the U-Net's cross-attention dim")
    for m in (unet, vae, text_encoder):
        m.eval()
    return unet, vae, text_encoder, tok, dict(SD_SCHEDULER)


def write_model(out_dir: str | Path, spec: str = "tiny", seed: int = 0, unet_in_channels: int = 4) -> Path:
    """Build a model (see :func:`build_components`) and save it in diffusers layout at ``out_dir``."""
    out = Path(out_dir)
    unet, vae, text_encoder, _tok, sched = build_components(
        spec, seed, tokenizer_dir=out / "tokenizer", unet_in_channels=unet_in_channels
    )
    save_diffusers_folder(out, unet=unet, vae=vae, text_encoder=text_encoder, scheduler_config=sched)
    return out


def save_diffusers_folder(out: Path, *, unet, vae, text_encoder, scheduler_config: dict) -> None:
    """Write the weight parts, the scheduler config and model_index.json (the tokenizer is already there)."""
    import diffusers
    import transformers

    unet.save_pretrained(out / "unet", safe_serialization=True)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    cfg = {**scheduler_config, "_diffusers_version": diffusers.__version__}
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg, indent=2))
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "_transformers_version": transformers.__version__,
        "feature_extractor": [None, None],
        "safety_checker": [None, None],
        "requires_safety_checker": False,
        "scheduler": ["diffusers", scheduler_config.get("_class_name", "DDIMScheduler")],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


def reference_pipeline(model, sampler, karras: bool = False, cls=None):
    """diffusers' own pipeline (``StableDiffusionPipeline`` unless ``cls``) on a loaded model's components.

    The yardstick of the tests and benchmarks: same weights, same scheduler built from the same config.
    """
    from latentgen.samplers import build_scheduler

    if cls is None:
        from diffusers import StableDiffusionPipeline as cls
    pipe = cls(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=build_scheduler(sampler, karras, model.source.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bench_model(arg: str | None, workdir: Path) -> tuple[str, str]:
    """(model to load, label) for a benchmark: ``arg`` if given, else builtin if installed, else ``small``."""
    from latentgen.loader import BUILTIN_DIR

    if arg:
        return arg, arg
    if (BUILTIN_DIR / "model_index.json").is_file():
        return "builtin", "builtin"
    return str(write_model(workdir / "small", "small", seed=0)), "small (random, SD-shaped)"
