"""Export a trained U-Net run as a diffusers model folder that any Stable Diffusion loader reads::

    model_index.json       StableDiffusionPipeline: unet, vae, text_encoder, tokenizer, scheduler
    unet/ vae/ text_encoder/   save_pretrained, fp16 safetensors (the U-Net and text encoder use EMA)
    tokenizer/             the run's CLIPTokenizer
    scheduler/             the training noise schedule + latentgen_default_{steps,guidance,sampler}
    latentgen.json         vocabulary (the words that are one token each), family, training summary

The folder is written beside ``out_dir`` and renamed into place, so it is never seen half-written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from latentgen.errors import OutputExistsError, UsageError
from latentgen.request import is_nonnegative, is_rescale
from latentgen.train.run import config_from_json, load_checkpoint, restore
from latentgen.train.unet import UNetTrainConfig, build_text_encoder, build_unet, noise_schedule_config

log = logging.getLogger("latentgen.train")


def _training_record(run: Path, step: int, cfg) -> dict:
    """What the exported weights were trained on: this run's steps, and the runs it continued."""
    record = {"steps": step, "data": cfg.data, "num_images": cfg.num_images, "data_seed": cfg.data_seed}
    if cfg.layout_mix:  # only when not the world's own mix, so older records read the same
        record["layout_mix"] = cfg.layout_mix
    if cfg.text_from:  # the text encoder came from another model (kept as it was with freeze_text)
        record["text_from"] = cfg.text_from
        record["freeze_text"] = cfg.freeze_text
    lineage = run / "init_from.json"
    if lineage.is_file():  # written by a run started with init_from
        before = json.loads(lineage.read_text(encoding="utf-8"))
        record["continues"] = before
        record["total_steps"] = step + before.get("total_steps", before.get("steps", 0))
    return record


def export_model(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    steps: int = 20,  # latentgen_default_steps
    guidance: float = 5.0,  # latentgen_default_guidance
    sampler: str = "dpm-solver",  # latentgen_default_sampler: a latentgen.samplers.Sampler value
    inpaint_steps: int | None = None,  # latentgen_inpaint_steps; None: inpainting uses ``steps``
    inpaint_guidance: float | None = None,  # latentgen_inpaint_guidance; None: ``guidance``
    layout_strength: float = 0.0,  # latentgen_default_layout_strength (latentgen.layout); 0: off
    subject_strength: float = 0.0,  # latentgen_default_subject_strength (latentgen.excite); 0: off
    count_strength: float = 0.0,  # latentgen_default_count_strength (latentgen.layout); 0: off
    guidance_rescale: float = 0.0,  # latentgen_default_guidance_rescale, φ in [0, 1]; 0: off
    fill_in: bool = False,  # latentgen_default_fill_in (latentgen.world.fill); for world models only
    family: str | None = None,  # written to latentgen.json, e.g. "builtin"
    overwrite: bool = False,
) -> Path:
    """Write the EMA weights of the U-Net run in ``run_dir`` as a diffusers folder ``out_dir``."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTokenizer

    from latentgen.samplers import Sampler, build_scheduler

    run, out = Path(run_dir), Path(out_dir)
    ckpt = load_checkpoint(run)
    if ckpt is None or not (run / "tokenizer").is_dir():
        raise UsageError(f"{run} is not a U-Net training run (no checkpoint/ and tokenizer/)")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; choose another folder or pass overwrite")
    sampler_name = Sampler.parse(sampler)
    strengths = {"layout": layout_strength, "subject": subject_strength, "count": count_strength}
    for kind, value in strengths.items():
        if not is_nonnegative(value):
            raise UsageError(f"{kind} strength {value!r} is invalid; use a number ≥ 0 (0: off)")
    if not is_rescale(guidance_rescale):
        raise UsageError(
            f"guidance rescale {guidance_rescale!r} is invalid; use a number from 0 to 1 (0: off)"
        )
    cfg = config_from_json(UNetTrainConfig, ckpt.config)
    if ckpt.step < cfg.max_steps:
        log.warning("exporting %s at step %d of %d: training is not finished", run, ckpt.step, cfg.max_steps)

    # 1. rebuild the models from the run's config, load the trained weights, then the EMA over them
    tokenizer = CLIPTokenizer.from_pretrained(run / "tokenizer")
    vae = AutoencoderKL.from_pretrained(run / "vae", use_safetensors=True)
    latent_size = cfg.resolution // 2 ** (len(vae.config.block_out_channels) - 1)
    modules = {
        "unet": build_unet(cfg, vae.config.latent_channels, latent_size),
        "text_encoder": build_text_encoder(cfg, tokenizer),
    }
    restore(ckpt, modules)
    with torch.no_grad():
        for name, module in modules.items():
            for k, p in module.named_parameters():
                p.copy_(ckpt.tensors[f"ema.{name}.{k}"])

    # 2. write everything into a temporary folder beside out_dir
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with _quiet_progress_bars():
        for name, module in (*modules.items(), ("vae", vae)):
            # .half() rather than .to(float16): diffusers' .to() warns about fp32 modules even when none
            module.half().save_pretrained(tmp / name, safe_serialization=True)
            _drop_load_path(tmp / name / "config.json")
    tokenizer.save_pretrained(tmp / "tokenizer")
    scheduler = build_scheduler(sampler_name, False, noise_schedule_config(cfg))
    scheduler.register_to_config(
        latentgen_default_steps=steps,
        latentgen_default_guidance=guidance,
        latentgen_default_sampler=sampler_name.value,
    )
    scheduler.register_to_config(
        **{f"latentgen_default_{kind}_strength": v for kind, v in strengths.items() if v}
    )
    if guidance_rescale:
        scheduler.register_to_config(latentgen_default_guidance_rescale=guidance_rescale)
    if fill_in:
        scheduler.register_to_config(latentgen_default_fill_in=True)
    inpaint = {"latentgen_inpaint_steps": inpaint_steps, "latentgen_inpaint_guidance": inpaint_guidance}
    scheduler.register_to_config(**{k: v for k, v in inpaint.items() if v is not None})
    scheduler.save_config(tmp / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": _diffusers_version(),
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", type(scheduler).__name__],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    vocabulary_file = run / "vocabulary.json"
    vocabulary = json.loads(vocabulary_file.read_text(encoding="utf-8")) if vocabulary_file.is_file() else []
    extra = {
        **({"family": family} if family else {}),
        "vocabulary": vocabulary,
        # the pipeline reads every prompt as the text encoder was trained to (1: left out, as before)
        **({"prompt_repeat": cfg.prompt_repeat} if cfg.prompt_repeat > 1 else {}),
        "training": _training_record(run, ckpt.step, cfg),
    }
    (tmp / "latentgen.json").write_text(json.dumps(extra, indent=1) + "\n", encoding="utf-8")

    # 3. swap it into place
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log.info("exported %s (step %d) to %s: %.1f MB", run, ckpt.step, out, size / 1e6)
    return out


def _drop_load_path(config_file: Path) -> None:
    """diffusers writes where a model was loaded from ("_name_or_path": the run's vae/) into its
    config; a shipped model should not carry a path of the machine that trained it."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.pop("_name_or_path", None) is not None:
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """transformers' save_pretrained draws a progress bar on stderr; not for a few small files."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__
