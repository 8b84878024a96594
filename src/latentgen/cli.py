"""The ``latentgen`` command line: parse options → build a request → call the library → print paths.

Exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 checkpoint refused as unsafe, 130 interrupted.
stdout carries only results (paths, or JSON with ``--json``); logs and progress go to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, replace
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
NegativeOpt = Annotated[str | None, typer.Option("--negative", "-n", help="What to steer away from.")]
StepsOpt = Annotated[int | None, typer.Option(help="Sampler steps (default: the model's).")]
GuidanceOpt = Annotated[float | None, typer.Option(help="Classifier-free guidance; ≤ 1 turns it off.")]
SamplerOpt = Annotated[str | None, typer.Option(help="ddim, dpm-solver, euler, euler-a, unipc.")]
LayoutOpt = Annotated[
    float | None,
    typer.Option(
        help="Layout guidance: 'above', 'left of'... place their nouns; 0 turns it off (default: the model's)."
    ),
]
SubjectOpt = Annotated[
    float | None,
    typer.Option(
        help="Subject guidance: every noun of 'a cat and a star' gets its own place; 0 turns it off "
        "(default: the model's)."
    ),
]
CountOpt = Annotated[
    float | None,
    typer.Option(
        help="Count guidance: 'three hearts' gets three places spread over the picture; 0 turns it off "
        "(default: the model's)."
    ),
]


def _default_strength(kind: str, where: str = ""):
    """The option giving the default strength of one guidance (batch lines, exported models)."""
    return Annotated[float | None, typer.Option(help=f"Default {kind} guidance strength{where} (0: off).")]


BatchLayoutOpt, BatchSubjectOpt, BatchCountOpt = (
    _default_strength(k) for k in ("layout", "subject", "count")
)
ExportLayoutOpt, ExportSubjectOpt, ExportCountOpt = (
    _default_strength(k, " written into the model") for k in ("layout", "subject", "count")
)
RescaleOpt = Annotated[
    float | None,
    typer.Option(
        help="Guidance rescale φ, 0 to 1: pulls the guided prediction's spread back to the conditional "
        "prediction's (keeps colours from over-saturating); 0 turns it off (default: the model's)."
    ),
]
FillOpt = Annotated[
    bool | None,
    typer.Option(
        "--fill-in/--no-fill-in",
        help="Draw the colours and background the prompt leaves open from the seed, as the built-in "
        "model's world does, before sampling (default: the model's; on for the built-in model).",
    ),
]
KarrasOpt = Annotated[bool | None, typer.Option("--karras/--no-karras", help="Karras sigmas.")]
SeedOpt = Annotated[int | None, typer.Option(help="Seed of image 0; image i uses seed+i. Default: random.")]
NumImagesOpt = Annotated[int | None, typer.Option("--num-images", "-N", help="How many images.")]
# Default 1: then image i of -N is byte for byte a single run with seed S+i (and --replay of it is
# exact). Larger batches are ~3x faster on CPU (built-in model, 16 images: 0.41 → 0.14 s/image) but
# float sums differ with batch shape, so pixels may differ by 1 from the single runs.
BatchSizeOpt = Annotated[
    int, typer.Option(help="Images per U-Net batch: faster, pixels may differ by 1 from single runs.")
]
OutFileOpt = Annotated[
    Path | None, typer.Option("--out", "-o", help="A .png file for one image, else a folder.")
]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace existing files.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON record per image on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")]
DownloadOpt = Annotated[bool, typer.Option(help="Let a repo id be fetched from the Hugging Face hub.")]


@app.command()
def generate(
    prompt: Annotated[str | None, typer.Argument(help="What to draw.")] = None,
    model: ModelOpt = None,
    negative: NegativeOpt = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    sampler: SamplerOpt = None,
    karras: KarrasOpt = None,
    layout_strength: LayoutOpt = None,
    subject_strength: SubjectOpt = None,
    count_strength: CountOpt = None,
    guidance_rescale: RescaleOpt = None,
    fill_in: FillOpt = None,
    seed: SeedOpt = None,
    width: Annotated[int | None, typer.Option(help="Pixels (default: the model's).")] = None,
    height: Annotated[int | None, typer.Option(help="Pixels (default: the model's).")] = None,
    num_images: NumImagesOpt = None,
    batch_size: BatchSizeOpt = 1,
    out: OutFileOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    replay: Annotated[
        Path | None, typer.Option(help="Regenerate the image this PNG's metadata describes.")
    ] = None,
    allow_download: DownloadOpt = False,
    init_image: Annotated[
        Path | None, typer.Option(help="img2img: start from this image (the output has its size).")
    ] = None,
    strength: Annotated[
        float | None, typer.Option(help="img2img: how far to move from --init-image, 0–1 (default 0.8).")
    ] = None,
) -> None:
    """Generate images from a text prompt (img2img with --init-image)."""
    from latentgen.api import GenerationRequest, load_model, resolve_model
    from latentgen.edit import EditRequest, iter_edit, prepare_edit
    from latentgen.metadata import edit_of, read, request_of
    from latentgen.outputs import OutputPlan
    from latentgen.pipeline import Pipeline

    _setup_logging(quiet)
    base, replay_rec, edit = None, None, None
    if replay is not None:
        replay_rec = read(replay)
        base, edit = request_of(replay_rec), edit_of(replay_rec)
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
    if init_image is not None:
        edit = EditRequest.img2img(init_image, strength)
    elif strength is not None:
        if edit is None:
            raise UsageError("--strength is for img2img: give --init-image too")
        edit = replace(edit, strength=strength)
    if edit is not None and fill_in:
        raise UsageError("--fill-in is for text to image: an img2img picture already has its colours")
    if edit is not None and (width is not None or height is not None):
        raise UsageError("--width/--height do not apply to img2img: the output has the source image's size")

    overrides = {
        "prompt": prompt,
        "negative_prompt": negative,
        "steps": steps,
        "guidance": guidance,
        "sampler": sampler,
        "karras": karras,
        "layout_strength": layout_strength,
        "subject_strength": subject_strength,
        "count_strength": count_strength,
        "guidance_rescale": guidance_rescale,
        "fill_in": fill_in,
        "seed": seed,
        "width": width,
        "height": height,
        "num_images": num_images,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    request = replace(base, **overrides) if base else GenerationRequest.from_dict(overrides)

    # Everything the user typed is checked before any weights are read.
    source = resolve_model(model or "builtin", allow_download=allow_download)
    job = prepare_edit(request, edit, source) if edit else None  # also reads and checks the images
    request = job.request if job else request.resolve(source)
    plan = OutputPlan(out, request.num_images, overwrite)

    loaded = load_model(source, device=device, dtype=dtype)
    if replay_rec and replay_rec["model"]["hash"] != loaded.content_hash:
        log.warning("model %s is not the one that made %s (its hash differs)", loaded.name, replay)
    pipe = Pipeline(loaded)
    batches = -(-request.num_images // batch_size)
    with _progress(batches * (job.steps if job else request.steps), quiet) as bar:
        if job:
            images = iter_edit(pipe, job, batch_size=batch_size, progress=bar)
        else:
            images = pipe.iter_generate(request, batch_size=batch_size, progress=bar)
        _write_all(images, plan, json_out)


def _write_all(images, plan, json_out: bool) -> None:
    """Write each image as it comes and print its path (or, with --json, its path and record)."""
    from latentgen.metadata import record

    for gen in images:
        path = plan.write(gen)
        if json_out:
            print(json.dumps({"path": str(path), **record(gen)}, ensure_ascii=False), flush=True)
        else:
            print(path, flush=True)


@app.command()
def inpaint(
    prompt: Annotated[str, typer.Argument(help="What to paint where the mask is white.")],
    image: Annotated[Path, typer.Option("--image", "-i", help="The image to change.")],
    mask: Annotated[
        Path | None,
        typer.Option(help="White = repaint, black = keep. Default: the image's transparent pixels."),
    ] = None,
    strength: Annotated[
        float | None, typer.Option(help="How far to move from the image, 0–1 (default 1; outpaint 0.9).")
    ] = None,
    mask_blur: Annotated[int, typer.Option(help="Pixels of feathering where new meets kept.")] = 4,
    invert_mask: Annotated[bool, typer.Option(help="Repaint the black part instead.")] = False,
    expand: Annotated[
        str | None, typer.Option(help="Outpaint: grow the canvas by LEFT,TOP,RIGHT,BOTTOM pixels.")
    ] = None,
    resize_mask: Annotated[bool, typer.Option(help="Resize a mask of another size to the image's.")] = False,
    resample: Annotated[
        int | None,
        typer.Option(
            help="Run each step this many times, re-noising in between, so the new part fits the kept "
            "part (default 3; 1 for inpainting models, and fastest)."
        ),
    ] = None,
    model: ModelOpt = None,
    negative: NegativeOpt = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    sampler: SamplerOpt = None,
    karras: KarrasOpt = None,
    layout_strength: LayoutOpt = None,
    subject_strength: SubjectOpt = None,
    count_strength: CountOpt = None,
    guidance_rescale: RescaleOpt = None,
    seed: SeedOpt = None,
    num_images: NumImagesOpt = None,
    batch_size: BatchSizeOpt = 1,
    out: OutFileOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    allow_download: DownloadOpt = False,
) -> None:
    """Repaint part of an image (inpaint), or grow it and paint the new border (outpaint, --expand)."""
    from latentgen.api import GenerationRequest, load_model, resolve_model
    from latentgen.edit import EditRequest, iter_edit, parse_expand, prepare_edit
    from latentgen.outputs import OutputPlan
    from latentgen.pipeline import Pipeline

    _setup_logging(quiet)
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size} is invalid; use 1 or more")
    fields = {
        "prompt": prompt,
        "negative_prompt": negative,
        "steps": steps,
        "guidance": guidance,
        "sampler": sampler,
        "karras": karras,
        "layout_strength": layout_strength,
        "subject_strength": subject_strength,
        "count_strength": count_strength,
        "guidance_rescale": guidance_rescale,
        "seed": seed,
        "num_images": num_images,
    }
    request = GenerationRequest.from_dict({k: v for k, v in fields.items() if v is not None})
    edit = EditRequest.inpaint(
        image,
        mask,
        strength=strength,
        mask_blur=mask_blur,
        invert_mask=invert_mask,
        expand=parse_expand(expand) if expand is not None else (0, 0, 0, 0),
        resize_mask=resize_mask,
        resample=resample,
    )

    # Everything the user gave, images included, is checked before any weights are read.
    source = resolve_model(model or "builtin", allow_download=allow_download)
    job = prepare_edit(request, edit, source)
    plan = OutputPlan(out, job.request.num_images, overwrite)

    pipe = Pipeline(load_model(source, device=device, dtype=dtype))
    batches = -(-job.request.num_images // batch_size)
    with _progress(batches * job.steps, quiet) as bar:
        _write_all(iter_edit(pipe, job, batch_size=batch_size, progress=bar), plan, json_out)


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
        "defaults": {  # a model without inpainting defaults shows none
            k: v
            for k, v in {**asdict(src.defaults), "sampler": src.defaults.sampler.value}.items()
            if v is not None
        },
        "vocabulary": src.vocabulary,
    }
    if json_out:
        print(json.dumps(desc, indent=2))
    else:
        for k, v in desc.items():
            if v is not None:
                print(f"{k}: {' '.join(v) if isinstance(v, list) else v}")


@app.command()
def batch(
    prompt_file: Annotated[
        Path, typer.Argument(help=".txt (a prompt a line), .jsonl or .csv with per-line fields.")
    ],
    model: ModelOpt = None,
    negative: Annotated[str | None, typer.Option("--negative", "-n", help="Default negative prompt.")] = None,
    steps: Annotated[int | None, typer.Option(help="Default sampler steps.")] = None,
    guidance: Annotated[float | None, typer.Option(help="Default guidance.")] = None,
    sampler: Annotated[str | None, typer.Option(help="Default sampler.")] = None,
    karras: Annotated[bool, typer.Option("--karras/--no-karras", help="Karras sigmas.")] = False,
    layout_strength: BatchLayoutOpt = None,
    subject_strength: BatchSubjectOpt = None,
    count_strength: BatchCountOpt = None,
    guidance_rescale: Annotated[
        float | None, typer.Option(help="Default guidance rescale φ (0: off).")
    ] = None,
    fill_in: FillOpt = None,
    seed: Annotated[int, typer.Option(help="Default seed of each line's image 0 (image i: seed+i).")] = 0,
    width: Annotated[int | None, typer.Option(help="Default width.")] = None,
    height: Annotated[int | None, typer.Option(help="Default height.")] = None,
    num_images: Annotated[int, typer.Option("--num-images", "-N", help="Default images per line.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Images per U-Net batch.")] = 8,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default outputs/FILE-STEM).")
    ] = None,
    layout: Annotated[str, typer.Option(help="flat, or geneval (<out>/00000/samples/0000.png).")] = "flat",
    grid: Annotated[bool, typer.Option(help="Also write a contact sheet, grid.png.")] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace files from a different request.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="A JSON record per image on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Generate images for every line of a prompt file; run again to resume where it stopped."""
    from latentgen import batch as b
    from latentgen.devices import dtype_name, resolve_device, resolve_dtype
    from latentgen.loader import load_model, model_hash, resolve_model
    from latentgen.outputs import remove_stale_temps
    from latentgen.pipeline import Pipeline
    from latentgen.prompts_file import read_prompt_file

    _setup_logging(quiet)
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size} is invalid; use 1 or more")
    lines, line_errors = read_prompt_file(prompt_file)
    rank, world, group_device = _process_group()
    defaults = {"seed": seed, "num_images": num_images, "karras": karras}
    for key, value in (
        ("negative", negative),
        ("steps", steps),
        ("guidance", guidance),
        ("sampler", sampler),
        ("layout_strength", layout_strength),
        ("subject_strength", subject_strength),
        ("count_strength", count_strength),
        ("guidance_rescale", guidance_rescale),
        ("fill_in", fill_in),
    ):
        if value is not None:
            defaults[key] = value
    defaults.update({k: v for k, v in (("width", width), ("height", height)) if v is not None})
    source = resolve_model(model or "builtin")
    torch_device = group_device or resolve_device(device)
    dtype_label = dtype_name(resolve_dtype(dtype, torch_device))
    items, plan_errors = b.plan(lines, defaults, source, model_hash(source.path), dtype_label, layout)
    for err in sorted(line_errors + plan_errors, key=lambda e: e.line):
        log.warning("%s %s", prompt_file, err)
    mine = [it for it in items if it.line.index % world == rank]

    out_dir = out if out is not None else Path("outputs") / prompt_file.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir)
    shard = b.ManifestShard(out_dir / b.shard_name(rank, world))
    summary = b.Summary(total=len(mine), bad_lines=len(line_errors) + len(plan_errors))
    try:
        todo, summary.skipped = b.pending(mine, out_dir, shard)
        if layout == "geneval":
            b.write_geneval_metadata(mine, out_dir)
        if todo:
            loaded = load_model(source, device=str(torch_device), dtype=dtype)
            with _progress(len(todo), quiet, unit="img") as bar, _stop_after_batch() as stop:
                b.run(
                    Pipeline(loaded),
                    todo,
                    out_dir,
                    shard,
                    batch_size=batch_size,
                    overwrite=overwrite,
                    on_image=_batch_reporter(bar, json_out, len(todo)),
                    should_stop=stop.is_set,
                    summary=summary,
                )
    finally:
        shard.close()
    if grid and world > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()
    if grid and rank == 0:
        sheet = b.grid(items, out_dir)
        if sheet is not None:
            sheet.save(out_dir / "grid.png")
    if summary.failed or summary.bad_lines:
        log.warning(summary.describe())
    else:
        log.info(summary.describe())
    if summary.interrupted:
        raise typer.Exit(130)
    if summary.failed or summary.bad_lines:
        raise typer.Exit(1)


def _process_group():
    """(rank, world size, device) under accelerate launch / torchrun; (0, 1, None) otherwise."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state.device


def _batch_reporter(bar, json_out: bool, total: int):
    """Called per written image: stdout gets the path (or a JSON record); plain progress logs when no bar."""
    import time

    start, last, count = time.perf_counter(), [0.0], [0]

    def report(item, path) -> None:
        count[0] += 1
        if json_out:
            print(json.dumps({"path": str(path), **_manifest_view(item)}, ensure_ascii=False), flush=True)
        else:
            print(path, flush=True)
        if bar.bar is not None:
            bar.bar.update(1)
            return
        now = time.perf_counter()
        if now - last[0] >= 10 or count[0] == total:
            last[0] = now
            rate = count[0] / max(now - start, 1e-9)
            log.info(
                "%d/%d images, %.2f images/s, ETA %.0f s", count[0], total, rate, (total - count[0]) / rate
            )

    return report


def _manifest_view(item) -> dict:
    return {"key": item.key, "line": item.line.line, "image": item.image, "request": item.request.to_dict()}


class _stop_after_batch:
    """First Ctrl-C: finish the current batch, then stop (exit 130). Second Ctrl-C: stop at once."""

    def __enter__(self):
        import signal
        import threading

        self.event = threading.Event()
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self.event

    def _handle(self, signum, frame):
        import signal

        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()
        log.warning("stopping after the current batch (Ctrl-C again to stop now)")
        signal.signal(signal.SIGINT, self._handle)

    def __exit__(self, *exc):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@app.command("eval")
def eval_(
    model: ModelOpt = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for images (GenEval layout) and scores.")
    ] = Path("eval"),
    images_per_prompt: Annotated[int, typer.Option("--images", "-N", help="Images per prompt.")] = 4,
    steps: StepsOpt = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance.")] = None,
    sampler: SamplerOpt = None,
    karras: Annotated[bool, typer.Option("--karras/--no-karras", help="Karras sigmas.")] = False,
    layout_strength: LayoutOpt = None,
    subject_strength: SubjectOpt = None,
    count_strength: CountOpt = None,
    guidance_rescale: RescaleOpt = None,
    fill_in: FillOpt = None,
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
        layout_strength=layout_strength,
        subject_strength=subject_strength,
        count_strength=count_strength,
        guidance_rescale=guidance_rescale,
        fill_in=fill_in,
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
        print(f"{'overall':14s} {scores['overall']:.3f} ± {scores['overall_standard_error']:.3f}")
        print(f"({scores['images']} images, {scores['seconds_per_image']:.3f} s/image; written to {out})")


train_app = typer.Typer(
    no_args_is_help=True,
    help="Train a model in two resumable stages (VAE, then U-Net + text encoder), then export it.",
)
app.add_typer(train_app, name="train")
DataOpt = Annotated[str | None, typer.Option(help="'world' or a folder of NAME.png + NAME.txt.")]
TrainStepsOpt = Annotated[int | None, typer.Option(help="Total training steps.")]
ThreadsOpt = Annotated[int | None, typer.Option(help="torch CPU threads.")]
RunOpt = Annotated[Path, typer.Option(help="Run folder: checkpoints, log; rerun to resume.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override any config field: --set max_steps=500 (repeatable)."),
]


def _train_config(cls, run: Path, data: str | None, steps: int | None, threads: int | None, sets, **extra):
    """A stage's config from its defaults, the common options and ``--set key=value`` overrides."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {"run_dir": str(run), **extra}
    for key, value in (("data", data), ("max_steps", steps), ("threads", threads)):
        if value is not None:
            values[key] = value
    for item in sets or []:
        key, sep, text = item.partition("=")
        if not sep or key not in fields:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE with KEY one of: {', '.join(fields)}")
        default = fields[key].default
        try:
            if isinstance(default, bool):
                values[key] = text.lower() in ("1", "true", "yes", "on")
            elif isinstance(default, tuple):
                values[key] = tuple(int(x) for x in text.split(","))
            else:
                values[key] = type(default)(text)
        except ValueError:
            raise UsageError(f"--set {item!r}: {text!r} is not a valid {type(default).__name__}") from None
    return cls(**values)


@train_app.command("vae")
def train_vae_cmd(
    run: RunOpt = Path("runs/vae"),
    data: DataOpt = None,
    steps: TrainStepsOpt = None,
    threads: ThreadsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Stage 1: the VAE (reconstruction + KL); reports held-out PSNR."""
    from latentgen.train import VAETrainConfig, train_vae

    _setup_logging(quiet=False)
    print(train_vae(_train_config(VAETrainConfig, run, data, steps, threads, set_)))


@train_app.command("unet")
def train_unet_cmd(
    run: RunOpt = Path("runs/unet"),
    vae: Annotated[Path, typer.Option(help="A finished VAE run folder (or a diffusers VAE folder).")] = Path(
        "runs/vae"
    ),
    data: DataOpt = None,
    steps: TrainStepsOpt = None,
    threads: ThreadsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Stage 2: the U-Net and the CLIP text encoder, on latents from the trained VAE."""
    from latentgen.train import UNetTrainConfig, train_unet

    _setup_logging(quiet=False)
    print(train_unet(_train_config(UNetTrainConfig, run, data, steps, threads, set_, vae=str(vae))))


@train_app.command("export")
def train_export_cmd(
    run: Annotated[Path, typer.Option(help="A U-Net run folder.")] = Path("runs/unet"),
    out: Annotated[Path, typer.Option("--out", "-o", help="The diffusers folder to write.")] = Path("model"),
    steps: Annotated[int, typer.Option(help="Default sampler steps written into the model.")] = 20,
    guidance: Annotated[float, typer.Option(help="Default guidance written into the model.")] = 5.0,
    sampler: Annotated[str, typer.Option(help="Default sampler written into the model.")] = "dpm-solver",
    inpaint_steps: Annotated[
        int | None, typer.Option(help="Default steps for inpainting, if not --steps.")
    ] = None,
    inpaint_guidance: Annotated[
        float | None, typer.Option(help="Default guidance for inpainting, if not --guidance.")
    ] = None,
    layout_strength: ExportLayoutOpt = 0.0,
    subject_strength: ExportSubjectOpt = 0.0,
    count_strength: ExportCountOpt = 0.0,
    guidance_rescale: Annotated[
        float, typer.Option(help="Default guidance rescale φ written into the model (0: off).")
    ] = 0.0,
    fill_in: Annotated[
        bool, typer.Option(help="Turn fill-in on by default for the model (for models of the world only).")
    ] = False,
    family: Annotated[str | None, typer.Option(help="Family name recorded in latentgen.json.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Export the EMA weights of a U-Net run as a diffusers folder (fp16 safetensors)."""
    from latentgen.train import export_model

    _setup_logging(quiet=False)
    out_dir = export_model(
        run,
        out,
        steps=steps,
        guidance=guidance,
        sampler=sampler,
        inpaint_steps=inpaint_steps,
        inpaint_guidance=inpaint_guidance,
        layout_strength=layout_strength,
        subject_strength=subject_strength,
        count_strength=count_strength,
        guidance_rescale=guidance_rescale,
        fill_in=fill_in,
        family=family,
        overwrite=overwrite,
    )
    print(out_dir)


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
