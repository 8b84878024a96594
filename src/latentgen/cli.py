"""The ``latentgen`` command line: parse options → build a request → call the library → print paths.

Exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 checkpoint refused as unsafe, 130 interrupted.
stdout carries only results (paths, or JSON with ``--json``); logs and progress go to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from latentgen.errors import LatentgenError, UsageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Text-to-image with latent diffusion, on your own machine. No download needed for the built-in model.",
)
log = logging.getLogger("latentgen")


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname_lower)s: %(message)s"))
    handler.addFilter(_lower_level)
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def _lower_level(record: logging.LogRecord) -> bool:
    record.levelname_lower = "note" if record.levelno == logging.INFO else record.levelname.lower()
    return True


ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="'builtin', a diffusers folder, or a repo id in the HF cache"),
]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")]
DtypeOpt = Annotated[str, typer.Option(help="auto (fp16 on GPU, fp32 on CPU), fp32, fp16, bf16")]


@app.command()
def generate(
    prompt: Annotated[str | None, typer.Argument(help="What to draw.")] = None,
    model: ModelOpt = None,
    negative: Annotated[str | None, typer.Option("--negative", "-n", help="What to steer away from.")] = None,
    steps: Annotated[int | None, typer.Option(help="Sampler steps (default: the model's).")] = None,
    guidance: Annotated[
        float | None, typer.Option(help="Classifier-free guidance; ≤ 1 turns it off.")
    ] = None,
    sampler: Annotated[str | None, typer.Option(help="ddim, dpm-solver, euler, euler-a, unipc.")] = None,
    karras: Annotated[bool | None, typer.Option("--karras/--no-karras", help="Karras sigmas.")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of image 0; image i uses seed+i. Default: random.")
    ] = None,
    width: Annotated[int | None, typer.Option(help="Pixels (default: the model's).")] = None,
    height: Annotated[int | None, typer.Option(help="Pixels (default: the model's).")] = None,
    num_images: Annotated[int | None, typer.Option("--num-images", "-N", help="How many images.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per U-Net batch.")] = 1,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="A .png file for one image, else a folder.")
    ] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace existing files.")] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print a JSON record per image on stdout.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")] = False,
    replay: Annotated[
        Path | None, typer.Option(help="Regenerate the image this PNG's metadata describes.")
    ] = None,
    allow_download: Annotated[
        bool, typer.Option(help="Let a repo id be fetched from the Hugging Face hub.")
    ] = False,
) -> None:
    """Generate images from a text prompt."""
    from latentgen.api import GenerationRequest, load_model, resolve_model
    from latentgen.metadata import read, record, request_of
    from latentgen.outputs import OutputPlan
    from latentgen.pipeline import Pipeline

    _setup_logging(quiet)
    base, replay_rec = None, None
    if replay is not None:
        replay_rec = read(replay)
        base = request_of(replay_rec)
        model = model or replay_rec["model"]["name"]
        device = replay_rec["device"] if device == "auto" else device
        dtype = replay_rec["dtype"] if dtype == "auto" else dtype
        if device.startswith("cuda") and not _cuda_available():
            log.warning("%s was made on %s; replaying on the CPU may differ slightly", replay, device)
            device = "auto"
    elif prompt is None:
        raise UsageError('give a prompt, e.g. latentgen generate "a red circle" (or --replay IMAGE)')
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size} is invalid; use 1 or more")

    overrides = {
        "prompt": prompt,
        "negative_prompt": negative,
        "steps": steps,
        "guidance": guidance,
        "sampler": sampler,
        "karras": karras,
        "seed": seed,
        "width": width,
        "height": height,
        "num_images": num_images,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    request = replace(base, **overrides) if base else GenerationRequest.from_dict(overrides)

    # Everything the user typed is checked before any weights are read.
    source = resolve_model(model or "builtin", allow_download=allow_download)
    request = request.resolve(source)
    plan = OutputPlan(out, request.num_images, overwrite)

    loaded = load_model(source, device=device, dtype=dtype)
    if replay_rec and replay_rec["model"]["hash"] != loaded.content_hash:
        log.warning("model %s is not the one that made %s (its hash differs)", loaded.name, replay)
    pipe = Pipeline(loaded)
    batches = -(-request.num_images // batch_size)
    with _progress(batches * request.steps, quiet) as bar:
        for gen in pipe.iter_generate(request, batch_size=batch_size, progress=bar):
            path = plan.write(gen)
            if json_out:
                print(json.dumps({"path": str(path), **record(gen)}, ensure_ascii=False), flush=True)
            else:
                print(path, flush=True)


@app.command()
def info(
    image: Annotated[Path | None, typer.Argument(help="A PNG made by latentgen.")] = None,
    model: ModelOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Show how an image was made (its metadata), or describe a model with --model."""
    from latentgen.loader import resolve_model
    from latentgen.metadata import read

    _setup_logging(quiet=True)
    if image is None and model is None:
        raise UsageError("give an image to describe, or --model NAME")
    if image is not None:
        rec = read(image)
        if json_out:
            print(
                json.dumps({k: v for k, v in rec.items() if k != "parameters"}, indent=2, ensure_ascii=False)
            )
        else:
            print(rec["parameters"])
            print(
                json.dumps({k: v for k, v in rec.items() if k != "parameters"}, indent=2, ensure_ascii=False)
            )
        return
    src = resolve_model(model)
    desc = {
        "name": src.name,
        "path": str(src.path),
        "family": src.family,
        "vae_scale_factor": src.vae_scale_factor,
        "default_size": src.default_size,
        "max_tokens": src.max_tokens,
        "defaults": {
            "steps": src.defaults.steps,
            "guidance": src.defaults.guidance,
            "sampler": src.defaults.sampler,
        },
        "vocabulary": src.vocabulary,
    }
    if json_out:
        print(json.dumps(desc, indent=2))
    else:
        for k, v in desc.items():
            if v is not None:
                print(f"{k}: {' '.join(v) if isinstance(v, list) else v}")


@app.command("eval")
def eval_(
    model: ModelOpt = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for images (GenEval layout) and scores.")
    ] = Path("eval"),
    images_per_prompt: Annotated[int, typer.Option("--images", "-N", help="Images per prompt.")] = 4,
    steps: Annotated[int | None, typer.Option(help="Sampler steps (default: the model's).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance.")] = None,
    sampler: Annotated[str | None, typer.Option(help="ddim, dpm-solver, euler, euler-a, unipc.")] = None,
    karras: Annotated[bool, typer.Option("--karras/--no-karras", help="Karras sigmas.")] = False,
    seed: Annotated[int, typer.Option(help="Image j of every prompt uses seed + j.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per U-Net batch.")] = 32,
    limit: Annotated[int | None, typer.Option(help="Prompts per category (default: all).")] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print the scores as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Score prompt adherence GenEval-style in the built-in model's world (six categories)."""
    from latentgen.evaluate import EvalConfig, resolve_settings, run_eval
    from latentgen.loader import load_model, resolve_model

    _setup_logging(quiet)
    if images_per_prompt < 1 or batch_size < 1 or (limit is not None and limit < 1):
        raise UsageError("--images, --batch-size and --limit must be 1 or more")
    cfg = EvalConfig(
        images_per_prompt=images_per_prompt,
        seed=seed,
        steps=steps,
        guidance=guidance,
        sampler=sampler,
        karras=karras,
        batch_size=batch_size,
        prompts_per_category=limit,
    )
    source = resolve_model(model or "builtin")
    resolve_settings(cfg, source)  # usage errors before any weights load
    loaded = load_model(source, device=device, dtype=dtype)
    with _progress(0, quiet, unit="image") as bar:
        scores = run_eval(loaded, out, cfg, progress=bar.absolute)
    if json_out:
        print(json.dumps(scores, indent=2))
    else:
        for cat, v in scores["categories"].items():
            print(f"{cat:14s} {v:.3f}")
        print(f"{'overall':14s} {scores['overall']:.3f}")
        print(f"({scores['images']} images, {scores['seconds_per_image']:.3f} s/image; written to {out})")


class _progress:
    """A tqdm bar on stderr when it is a terminal; usable as the pipeline's progress callback."""

    def __init__(self, total: int, quiet: bool, unit: str = "step"):
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total or None, file=sys.stderr, unit=unit, leave=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

    def __call__(self, step: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def absolute(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.total = total
            self.bar.n = done
            self.bar.refresh()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def main() -> None:
    """Console entry point: library errors become one-line messages with the right exit code.

    typer itself handles usage errors (exit 2, with usage help) and Ctrl-C (exit 130).
    """
    try:
        app()
    except LatentgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except SystemExit as exc:
        if exc.code == 130:
            print("\ninterrupted", file=sys.stderr)
        raise


if __name__ == "__main__":
    main()
