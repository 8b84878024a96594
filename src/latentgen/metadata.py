"""Image metadata: what every PNG carries, and reading it back for ``info`` and ``--replay``.

Two PNG text chunks:

- ``parameters``: AUTOMATIC1111's format, so existing image browsers read our images::

      a red circle
      Negative prompt: blurry
      Steps: 20, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 42, Size: 64x64, Model hash: 0123456789, ...

- ``latentgen``: JSON with everything needed to reproduce the image (the resolved request, the model
  name and content hash, dtype, device and library versions).
"""

from __future__ import annotations

import functools
import json
import os
import platform
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from latentgen.edit import EditMode, EditRequest
from latentgen.errors import UsageError
from latentgen.pipeline import GeneratedImage
from latentgen.request import GenerationRequest
from latentgen.samplers import a1111_name

FORMAT_VERSION = 1
CHUNK = "latentgen"


@functools.cache
def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("latentgen", "torch", "diffusers", "transformers"):
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def record(gen: GeneratedImage) -> dict[str, Any]:
    """The ``latentgen`` JSON record of one image."""
    return {
        "format": FORMAT_VERSION,
        "request": gen.request.to_dict(),
        "index": gen.index,
        "model": {"name": gen.model_name, "hash": gen.model_hash, "family": gen.model_family},
        "dtype": gen.dtype,
        "device": gen.device,
        "versions": dict(versions()),
        "notes": list(gen.notes),
        **({"edit": gen.edit.to_dict()} if gen.edit else {}),
        **gen.extra,
    }


def a1111_parameters(gen: GeneratedImage) -> str:
    """AUTOMATIC1111's ``parameters`` text for one image."""
    r = gen.request
    lines = [r.prompt]
    if r.negative_prompt:
        lines.append(f"Negative prompt: {r.negative_prompt}")
    fields = [
        ("Steps", r.steps),
        ("Sampler", a1111_name(r.sampler, r.karras)),
        ("CFG scale", f"{r.guidance:g}"),
        ("Seed", r.seed),
        ("Size", f"{r.width}x{r.height}"),
        ("Model hash", gen.model_hash[:10]),
        ("Model", _a1111_value(Path(gen.model_name).name or gen.model_name)),
    ]
    if r.layout_strength:
        fields.append(("Layout strength", f"{r.layout_strength:g}"))
    if r.subject_strength:
        fields.append(("Subject strength", f"{r.subject_strength:g}"))
    if r.count_strength:
        fields.append(("Count strength", f"{r.count_strength:g}"))
    if r.guidance_rescale:
        fields.append(("Rescale CFG", f"{r.guidance_rescale:g}"))  # Forge's name for it
    if "drawn_prompt" in gen.extra:
        fields.append(("Prompt as drawn", _a1111_value(gen.extra["drawn_prompt"])))
    if gen.edit is not None:
        fields.append(("Denoising strength", f"{gen.edit.strength:g}"))
        if gen.edit.mode is EditMode.INPAINT:
            fields.append(("Mask blur", gen.edit.mask_blur))
    fields.append(("Version", f"latentgen {versions()['latentgen']}"))
    lines.append(", ".join(f"{k}: {v}" for k, v in fields))
    return "\n".join(lines)


def _a1111_value(text: str) -> str:
    # A1111 separates fields with ", " and keys with ": "; quote values that contain either.
    return json.dumps(text) if ("," in text or ":" in text) else text


def png_info(gen: GeneratedImage) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_parameters(gen))  # tEXt, or iTXt when not Latin-1
    info.add_itxt(CHUNK, json.dumps(record(gen), ensure_ascii=False, sort_keys=True))
    return info


def read(path: str | os.PathLike) -> dict[str, Any]:
    """The ``latentgen`` record of an image file; :class:`UsageError` naming the file otherwise."""
    text = read_text_chunks(path)
    if CHUNK not in text:
        hint = " (it has AUTOMATIC1111 parameters only)" if "parameters" in text else ""
        raise UsageError(f"{path} carries no latentgen metadata{hint}; it was not made by latentgen")
    try:
        rec = json.loads(text[CHUNK])
        GenerationRequest.from_dict(rec["request"])
        edit_of(rec)
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path} has corrupt latentgen metadata ({exc})") from None
    rec["parameters"] = text.get("parameters", "")
    return rec


def read_text_chunks(path: str | os.PathLike) -> dict[str, str]:
    try:
        with Image.open(path) as im:
            return dict(getattr(im, "text", {}) or {})
    except FileNotFoundError:
        raise UsageError(f"image {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder; give an image file") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise UsageError(f"{path} is not a readable image ({type(exc).__name__})") from None


def request_of(rec: dict[str, Any]) -> GenerationRequest:
    # Records written before layout, subject or count guidance, guidance rescale or fill-in existed
    # lack its field: it was off then.
    off = {
        "layout_strength": 0.0,
        "subject_strength": 0.0,
        "count_strength": 0.0,
        "guidance_rescale": 0.0,
        "fill_in": False,
    }
    return GenerationRequest.from_dict({**off, **rec["request"]})


def edit_of(rec: dict[str, Any]) -> EditRequest | None:
    """The img2img / inpainting part of a record (source image, mask, strength), if it has one."""
    return EditRequest.from_dict(rec["edit"]) if rec.get("edit") is not None else None
