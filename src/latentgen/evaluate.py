"""``latentgen eval``: a GenEval-style prompt-adherence benchmark in the built-in model's world.

For every prompt of :func:`latentgen.world.eval_prompts` (six categories, ≥ 50 prompts each) it makes
N images, asks the judge whether each shows what its prompt asked for, and scores each category as
the fraction of correct images; overall = mean of the categories (as GenEval does). Images go out in
GenEval's folder layout so other tools can score them too::

    <out>/00000/metadata.jsonl       {"tag": "colors", "prompt": "a blue square", "include": [...], ...}
    <out>/00000/samples/0000.png
    <out>/scores.json                per-category and overall scores, and the run's settings
    <out>/contact_sheet.png          a few prompts per category with their images
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from latentgen.loader import Model
from latentgen.pipeline import Job, Pipeline, Settings
from latentgen.request import GenerationRequest

log = logging.getLogger("latentgen")


@dataclass(frozen=True)
class EvalConfig:
    images_per_prompt: int = 4  # GenEval uses 4
    seed: int = 0  # image j of every prompt uses seed + j
    steps: int | None = None  # None: the model's defaults
    guidance: float | None = None
    sampler: str | None = None
    karras: bool = False
    layout_strength: float | None = None  # None: the model's default
    subject_strength: float | None = None  # None: the model's default
    count_strength: float | None = None  # None: the model's default
    guidance_rescale: float | None = None  # None: the model's default
    fill_in: bool | None = None  # None: the model's default; judged against the prompt as written
    batch_size: int = 32  # images per U-Net batch (prompts are mixed within a batch)
    prompts_per_category: int | None = None  # None: all; fewer for quick looks and tests
    write_images: bool = True


def resolve_settings(cfg: EvalConfig, source) -> GenerationRequest:
    """The sampling settings every prompt shares, resolved against the model (validates them)."""
    request = GenerationRequest(
        "(eval)",
        steps=cfg.steps,
        guidance=cfg.guidance,
        sampler=cfg.sampler,
        karras=cfg.karras,
        seed=cfg.seed,
        layout_strength=cfg.layout_strength,
        subject_strength=cfg.subject_strength,
        count_strength=cfg.count_strength,
        guidance_rescale=cfg.guidance_rescale,
        fill_in=cfg.fill_in,
    )
    return request.resolve(source)


def overall_standard_error(per_category: dict[str, list[bool]]) -> float:
    """Binomial standard error of the overall score (the mean of the category scores).

    It treats images as independent, which several images of one prompt are not quite, so it is a
    lower bound: differences between runs well inside two of these are noise.
    """
    variance = sum((p := sum(v) / len(v)) * (1 - p) / len(v) for v in per_category.values() if v)
    return math.sqrt(variance) / max(1, len(per_category))


def run_eval(
    model: Model,
    out: Path | None,
    cfg: EvalConfig = EvalConfig(),  # noqa: B008 - frozen dataclass, safe as a default
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Generate, judge and score; write the layout under ``out`` (if given). Returns the scores dict."""
    from latentgen.world import CATEGORIES, eval_prompts, judge

    prompts = eval_prompts()
    if cfg.prompts_per_category is not None:
        taken: dict[str, int] = defaultdict(int)
        kept = []
        for p in prompts:
            if taken[p.category] < cfg.prompts_per_category:
                taken[p.category] += 1
                kept.append(p)
        prompts = kept

    base = resolve_settings(cfg, model.source)
    settings = Settings.of(base)
    pipe = Pipeline(model)
    jobs = [(pi, j) for pi in range(len(prompts)) for j in range(cfg.images_per_prompt)]
    verdicts: dict[tuple[int, int], dict[str, bool]] = {}
    images: dict[tuple[int, int], Image.Image] = {}
    t0 = time.perf_counter()
    for start in range(0, len(jobs), cfg.batch_size):
        chunk = jobs[start : start + cfg.batch_size]
        batch = [Job(prompts[pi].prompt, "", cfg.seed + j) for pi, j in chunk]
        made, _notes = pipe.sample(batch, settings)
        for key, image in zip(chunk, made, strict=True):
            verdicts[key] = judge(image, prompts[key[0]].spec)
            images[key] = image
        if progress is not None:
            progress(min(start + cfg.batch_size, len(jobs)), len(jobs))
    seconds = time.perf_counter() - t0

    per_cat: dict[str, list[bool]] = defaultdict(list)
    per_check: dict[str, list[bool]] = defaultdict(list)
    for (pi, _j), v in verdicts.items():
        per_cat[prompts[pi].category].append(all(v.values()))
        for check, ok in v.items():
            per_check[check].append(ok)
    categories = {c: sum(v) / len(v) for c, v in per_cat.items()}
    scores = {
        "categories": {c: categories[c] for c in CATEGORIES if c in categories},
        "overall": sum(categories.values()) / len(categories),
        "overall_standard_error": overall_standard_error(per_cat),
        "checks": {k: sum(v) / len(v) for k, v in sorted(per_check.items())},
        "images": len(jobs),
        "prompts": len(prompts),
        "seconds": seconds,
        "seconds_per_image": seconds / max(1, len(jobs)),
        "settings": {**base.to_dict(), "images_per_prompt": cfg.images_per_prompt},
        "model": {"name": model.name, "hash": model.content_hash},
        "config": asdict(cfg),
    }
    for k in ("prompt", "negative_prompt", "seed", "num_images"):
        scores["settings"].pop(k)
    if out is not None:
        _write_layout(Path(out), prompts, images, verdicts, cfg, scores)
    return scores


def _write_layout(out: Path, prompts, images, verdicts, cfg: EvalConfig, scores: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if cfg.write_images:
        for pi, p in enumerate(prompts):
            folder = out / f"{pi:05d}"
            (folder / "samples").mkdir(parents=True, exist_ok=True)
            meta = {
                "tag": p.category,
                "prompt": p.prompt,
                "include": geneval_include(p.spec),
                "spec": asdict(p.spec),
            }
            (folder / "metadata.jsonl").write_text(json.dumps(meta) + "\n")
            for j in range(cfg.images_per_prompt):
                images[(pi, j)].save(folder / "samples" / f"{j:04d}.png")
        results = [
            {
                "folder": f"{pi:05d}",
                "sample": j,
                "tag": prompts[pi].category,
                "prompt": prompts[pi].prompt,
                "correct": all(v.values()),
                "checks": v,
            }
            for (pi, j), v in sorted(verdicts.items())
        ]
        with open(out / "results.jsonl", "w") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    (out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    contact_sheet(prompts, images, verdicts, cfg.images_per_prompt).save(out / "contact_sheet.png")


def geneval_include(spec) -> list[dict]:
    """GenEval's ``include`` list for a spec: class, count, colour; a relation as ``position``."""
    include = []
    for i, obj in enumerate(spec.objects):
        item = {"class": obj.kind, "count": spec.count if (spec.count and i == 0) else 1}
        if obj.colour:
            item["color"] = obj.colour
        if i == 0 and spec.relation:
            item["position"] = [spec.relation, 1]  # objects[0] is <relation> objects[1]
        include.append(item)
    return include


def contact_sheet(prompts, images, verdicts, n: int, per_category: int = 4, scale: int = 2) -> Image.Image:
    """A few prompts per category: the prompt, then its images, each framed green (correct) or red."""
    rows, seen = [], defaultdict(int)
    for pi, p in enumerate(prompts):
        if seen[p.category] < per_category:
            seen[p.category] += 1
            rows.append(pi)
    side = next(iter(images.values())).width * scale
    label_w, pad = 260, 4
    sheet = Image.new("RGB", (label_w + n * (side + pad) + pad, len(rows) * (side + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for r, pi in enumerate(rows):
        y = pad + r * (side + pad)
        draw.text((pad, y + side // 2 - 12), prompts[pi].category, fill=(120, 120, 120))
        draw.text((pad, y + side // 2), prompts[pi].prompt, fill="black")
        for j in range(n):
            x = label_w + pad + j * (side + pad)
            sheet.paste(images[(pi, j)].resize((side, side), Image.NEAREST), (x, y))
            ok = all(verdicts[(pi, j)].values())
            draw.rectangle(
                (x - 1, y - 1, x + side, y + side), outline=(0, 160, 0) if ok else (200, 0, 0), width=2
            )
    return sheet
