"""Inpainting in the built-in model's world: repaint one object of a rendered scene, judge the result.

Each case renders a two-object scene of ``latentgen.world``, masks one object's box (plus a margin),
and prompts the full caption of the scene with that object changed: another colour, and in every
other case another kind as well. The world's judge then says whether the inpainted image shows
exactly the edited scene (kinds, colours, sizes, relation, background, nothing else). Two checks come
with it: every pixel outside the mask and its blur band must equal the input's, and, as a control,
the judge should reject the unedited image for the edited prompt.

    python benchmarks/inpaint_demo.py --model builtin               # 50 cases
    python benchmarks/inpaint_demo.py --model PATH --cases 2        # any model, e.g. a tiny test one

Writes to ``--out`` (default ``benchmarks/inpaint_demo/``): ``summary.json``, ``summary.md``,
``strip.png`` (before | mask | after, one row per case, for the first cases) and the inputs of every
case under ``cases/``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from latentgen import GenerationRequest, Pipeline, inpaint, load_model
from latentgen.world import judge, render_scene, spec_from_scene
from latentgen.world.captions import captions
from latentgen.world.layout import pair_scene
from latentgen.world.palette import contrasting

HERE = Path(__file__).parent
PLAIN_KINDS = ("circle", "square", "triangle", "star", "heart")  # no cat/hat: "wearing" is another story


def edited_scene(rng: random.Random, case: int):
    """A two-object scene, which object to change, and the scene with it changed."""
    scene = pair_scene(rng, kinds=(rng.choice(PLAIN_KINDS), None))
    target = case % 2
    old, other = scene.objects[target], scene.objects[1 - target]
    colours = [c for c in contrasting(scene.background) if c not in (old.colour, other.colour)]
    kind = old.kind
    if case % 4 >= 2:  # every other pair of cases changes the kind too
        kind = rng.choice([k for k in PLAIN_KINDS if k not in (old.kind, other.kind)])
    new = replace(old, kind=kind, colour=rng.choice(colours))
    objects = tuple(new if i == target else o for i, o in enumerate(scene.objects))
    return scene, target, replace(scene, objects=objects)


def box_pixels(box, size: int, margin: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return (
        max(0, int(np.floor(x0 * size)) - margin),
        max(0, int(np.floor(y0 * size)) - margin),
        min(size, int(np.ceil(x1 * size)) + margin),
        min(size, int(np.ceil(y1 * size)) + margin),
    )


def outside_band(size: int, box: tuple[int, int, int, int], blur: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    near = np.zeros((size, size), bool)
    near[max(0, y0 - blur) : y1 + blur, max(0, x0 - blur) : x1 + blur] = True
    return ~near


def strip(rows: list[tuple[Image.Image, Image.Image, Image.Image, str]], scale: int = 3) -> Image.Image:
    """before | mask | after per row, with the prompt written under each row."""
    size = rows[0][0].width * scale
    text_h = 14
    sheet = Image.new("RGB", (3 * size + 4 * 4, len(rows) * (size + text_h + 4) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (before, mask, after, prompt) in enumerate(rows):
        y = 4 + r * (size + text_h + 4)
        for c, im in enumerate((before, mask.convert("RGB"), after)):
            sheet.paste(im.resize((size, size), Image.Resampling.NEAREST), (4 + c * (size + 4), y))
        draw.text((4, y + size + 1), prompt[:80], fill="black")
    return sheet


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--cases", type=int, default=50)
    ap.add_argument("--steps", type=int, default=None, help="default: the model's")
    ap.add_argument("--guidance", type=float, default=None, help="default: the model's")
    ap.add_argument("--sampler", default=None, help="default: the model's")
    ap.add_argument("--layout-strength", type=float, default=None, help="default: the model's (0: off)")
    ap.add_argument("--subject-strength", type=float, default=None, help="default: the model's (0: off)")
    ap.add_argument("--strength", type=float, default=1.0)
    ap.add_argument("--resample", type=int, default=None, help="runs of each step; default: latentgen's")
    ap.add_argument("--mask-blur", type=int, default=2)
    ap.add_argument("--margin", type=int, default=3, help="pixels added around the object's box")
    ap.add_argument("--seed", type=int, default=0, help="scenes and noise seeds derive from it")
    ap.add_argument("--size", type=int, default=64, help="scene size in pixels")
    ap.add_argument("--strip-rows", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", type=Path, default=HERE / "inpaint_demo")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    cases_dir = args.out / "cases"
    cases_dir.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model, device="cpu", dtype="fp32")
    pipe = Pipeline(model)

    results, rows = [], []
    t0 = time.perf_counter()
    for case in range(args.cases):
        rng = random.Random(f"latentgen.inpaint_demo:{args.seed}:{case}")
        scene, target, edited = edited_scene(rng, case)
        prompt = captions(edited, rng, n=1)[0]  # the full caption: every attribute stated
        spec = spec_from_scene(edited)
        before = render_scene(scene, args.size)
        box = box_pixels(scene.objects[target].box, args.size, args.margin)
        mask = Image.new("L", before.size, 0)
        ImageDraw.Draw(mask).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=255)
        before_path, mask_path = cases_dir / f"{case:03d}-before.png", cases_dir / f"{case:03d}-mask.png"
        before.save(before_path)
        mask.save(mask_path)

        request = GenerationRequest(
            prompt,
            steps=args.steps,
            guidance=args.guidance,
            sampler=args.sampler,
            seed=args.seed + case,
            layout_strength=args.layout_strength,
            subject_strength=args.subject_strength,
        )
        after = inpaint(
            pipe,
            request,
            before_path,
            mask_path,
            strength=args.strength,
            mask_blur=args.mask_blur,
            resample=args.resample,
        )[0]
        used = {
            "steps": after.request.steps,
            "guidance": after.request.guidance,
            "sampler": after.request.sampler.value,
            "resample": after.edit.resample,
            "layout_strength": after.request.layout_strength,
            "subject_strength": after.request.subject_strength,
        }  # as resolved: the model's defaults where not given
        after = after.image
        after.save(cases_dir / f"{case:03d}-after.png")
        verdicts = judge(after, spec)
        kept = outside_band(args.size, box, args.mask_blur)
        diff = np.abs(np.asarray(after, np.int16) - np.asarray(before, np.int16))[kept]
        results.append(
            {
                "case": case,
                "prompt": prompt,
                "changed": {"from": scene.objects[target].__dict__, "to": edited.objects[target].__dict__},
                "edit": "colour" if edited.objects[target].kind == scene.objects[target].kind else "kind",
                "ok": all(verdicts.values()),
                "verdicts": verdicts,
                "control_ok": all(judge(before, spec).values()),  # should be False
                "kept_max_diff": int(diff.max(initial=0)),
            }
        )
        if case < args.strip_rows:
            rows.append((before, mask, after, prompt))
        print(f"case {case:3d}: {'ok  ' if results[-1]['ok'] else 'FAIL'} {prompt}", file=sys.stderr)

    seconds = time.perf_counter() - t0
    summary = {
        "model": args.model,
        "model_hash": model.content_hash,
        "settings": {
            **{k: getattr(args, k) for k in ("strength", "mask_blur", "margin")},
            **used,
        },
        "cases": args.cases,
        "successes": sum(r["ok"] for r in results),
        "by_edit": {
            edit: {"cases": len(rs), "successes": sum(r["ok"] for r in rs)}
            for edit in ("colour", "kind")
            if (rs := [r for r in results if r["edit"] == edit])
        },
        "control_successes": sum(r["control_ok"] for r in results),
        "kept_pixels_max_diff": max((r["kept_max_diff"] for r in results), default=0),
        "seconds_per_case": seconds / max(1, args.cases),
        "results": results,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (args.out / "summary.md").write_text(
        f"# Inpainting in the world ({args.model})\n\n"
        f"- judged right: **{summary['successes']} / {args.cases}** "
        f"(control, the unedited image: {summary['control_successes']} / {args.cases})\n"
        + "".join(
            f"- {'colour changed' if e == 'colour' else 'kind and colour changed'}: "
            f"{b['successes']} / {b['cases']}\n"
            for e, b in summary["by_edit"].items()
        )
        + f"- pixels outside mask + blur band: max difference {summary['kept_pixels_max_diff']}\n"
        f"- {summary['seconds_per_case']:.2f} s per case; settings {summary['settings']}\n\n"
        "![before | mask | after](strip.png)\n"
    )
    if rows:
        strip(rows).save(args.out / "strip.png")
    print(
        f"{summary['successes']}/{args.cases} judged right (control {summary['control_successes']}); "
        f"kept pixels max diff {summary['kept_pixels_max_diff']}; written to {args.out}"
    )
    return summary


if __name__ == "__main__":
    main()
