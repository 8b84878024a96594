"""Sampler, step and guidance sweeps of a model in the built-in world, scored by ``latentgen eval``.

    python benchmarks/sweep_builtin.py                    # the built-in model, every eval prompt, 1 image each
    python benchmarks/sweep_builtin.py --images 2 --limit 30

* step sweep: ``ddim``, ``dpm-solver`` and ``euler-a`` at 5, 10, 20 and 50 steps (the model's
  default guidance) → overall and per-category score, seconds per image;
* the chosen sampler and steps: the fewest steps whose overall score is within ``--tolerance`` of
  the best row's (a tie goes to the higher score);
* guidance sweep: 1, 3, 5, 7.5 and 10 at the chosen sampler and steps → the same; the chosen
  guidance is the best row's;
* "a cat wearing a hat" at the chosen settings on 16 seeds → how many the judge accepts.

The choice is written to the report (``chosen``); ``latentgen train export --steps --guidance
--sampler`` writes it into a model's scheduler config as its defaults.

Every configuration sees the same prompts and seeds, so differences are the settings' alone. Seconds
per image are for batches of ``--batch-size`` mixed prompts on this machine's CPU (fp32), judging
excluded. Writes ``benchmarks/sweep_builtin.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from latentgen import GenerationRequest, Pipeline, load_model
from latentgen.evaluate import EvalConfig, run_eval
from latentgen.world import judge, parse_prompt

HERE = Path(__file__).parent
CAT_HAT = "a cat wearing a hat"


def score_row(scores: dict) -> dict:
    return {
        "overall": scores["overall"],
        "overall_standard_error": scores["overall_standard_error"],
        "categories": scores["categories"],
        "seconds_per_image": scores["seconds_per_image"],
        "images": scores["images"],
    }


def choose_steps(rows: list[dict], tolerance: float) -> dict:
    """Sampler and steps of the cheapest row scoring within ``tolerance`` of the best row."""
    best = max(r["overall"] for r in rows)
    good = [r for r in rows if r["overall"] >= best - tolerance]
    pick = min(good, key=lambda r: (r["settings"]["steps"], -r["overall"]))
    return {"sampler": pick["settings"]["sampler"], "steps": pick["settings"]["steps"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--images", type=int, default=1, help="images per prompt (eval uses 4)")
    ap.add_argument("--limit", type=int, default=None, help="prompts per category (default: all)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", default="5,10,20,50")
    ap.add_argument("--samplers", default="ddim,dpm-solver,euler-a")
    ap.add_argument("--guidances", default="1,3,5,7.5,10")
    ap.add_argument("--tolerance", type=float, default=0.01, help="see 'the chosen sampler and steps'")
    args = ap.parse_args()

    model = load_model(args.model, device="cpu", dtype="fp32")
    defaults = model.source.defaults

    def run(**settings) -> dict:
        cfg = EvalConfig(
            images_per_prompt=args.images,
            batch_size=args.batch_size,
            prompts_per_category=args.limit,
            write_images=False,
            **settings,
        )
        t0 = time.perf_counter()
        row = {"settings": settings, **score_row(run_eval(model, None, cfg))}
        print(
            f"{settings}: overall {row['overall']:.3f}, {row['seconds_per_image']:.3f} s/image "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        return row

    step_rows = [
        run(sampler=sampler, steps=int(steps))
        for sampler in args.samplers.split(",")
        for steps in args.steps.split(",")
    ]
    chosen = choose_steps(step_rows, args.tolerance)
    guidance_rows = [run(**chosen, guidance=float(g)) for g in args.guidances.split(",")]
    chosen["guidance"] = max(guidance_rows, key=lambda r: r["overall"])["settings"]["guidance"]
    print(f"chosen defaults: {chosen}", flush=True)

    pipe = Pipeline(model)
    spec = parse_prompt(CAT_HAT)
    request = GenerationRequest(CAT_HAT, seed=0, num_images=16, **chosen)
    made = pipe.generate(request, batch_size=16)
    cat_hat = [all(judge(gen.image, spec).values()) for gen in made]
    print(f"{CAT_HAT!r}: {sum(cat_hat)}/16 seeds judged correct", flush=True)

    report = {
        "model": {"name": model.name, "hash": model.content_hash},
        "defaults": {
            "sampler": defaults.sampler.value,
            "steps": defaults.steps,
            "guidance": defaults.guidance,
        },
        "images_per_prompt": args.images,
        "prompts_per_category": args.limit,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "chosen": chosen,
        "tolerance": args.tolerance,
        "step_sweep": step_rows,
        "guidance_sweep": guidance_rows,
        "cat_wearing_hat": {"seeds": 16, "correct": sum(cat_hat), "per_seed": cat_hat},
    }
    (HERE / "sweep_builtin.json").write_text(json.dumps(report, indent=2) + "\n")
    cats = list(step_rows[0]["categories"])

    def table(rows: list[dict], keys: list[str]) -> list[str]:
        head = [*keys, "overall", *cats, "s/image"]
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            s = {**report["defaults"], **r["settings"]}
            cells = [str(s[k]) for k in keys]
            cells += [f"**{r['overall']:.3f}**", *(f"{r['categories'][c]:.2f}" for c in cats)]
            cells.append(f"{r['seconds_per_image']:.3f}")
            out.append("| " + " | ".join(cells) + " |")
        return out

    n_prompts = step_rows[0]["images"] // args.images
    lines = [
        f"# Sweeps of `{model.name}` in its world",
        "",
        f"`python benchmarks/sweep_builtin.py`: {n_prompts} eval prompts × {args.images} image(s), "
        f"seeds 0..{args.images - 1}, CPU fp32, {torch.get_num_threads()} threads, batches of "
        f"{args.batch_size}; seconds per image exclude judging. Model defaults: "
        f"{defaults.sampler.value}, {defaults.steps} steps, guidance {defaults.guidance}. One "
        f"binomial standard error of an overall score here is about "
        f"{max(r['overall_standard_error'] for r in step_rows):.3f}: rows closer than twice that "
        "are a tie.",
        "",
        f"## Steps (guidance {defaults.guidance})",
        "",
        *table(step_rows, ["sampler", "steps"]),
        "",
        f"Chosen: **{chosen['sampler']}, {chosen['steps']} steps** (the fewest steps within "
        f"{args.tolerance} of the best overall score).",
        "",
        f"## Guidance ({chosen['sampler']}, {chosen['steps']} steps)",
        "",
        *table(guidance_rows, ["guidance"]),
        "",
        f"Chosen: **guidance {chosen['guidance']}** (the best overall score).",
        "",
        f"## {CAT_HAT!r} at the chosen settings: {sum(cat_hat)}/16 seeds judged correct",
        "",
    ]
    (HERE / "sweep_builtin.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
