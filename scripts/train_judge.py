"""Train the world judge's shape classifier, validate the judge, and write the benchmark report.

    .venv/bin/python scripts/train_judge.py                  # train, save, validate, report
    .venv/bin/python scripts/train_judge.py --skip-training  # validate the shipped weights only

Writes src/latentgen/world/judge.safetensors + judge.json and benchmarks/judge_validation.md + .json.
Runs on one CPU thread (the machine is shared): about 1.5 minutes to train, 2 to validate.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from PIL import Image

from latentgen.world import validation
from latentgen.world.classifier import (
    CONFIG_PATH,
    WEIGHTS_PATH,
    load_classifier,
    load_weights,
    save_classifier,
)
from latentgen.world.degrade import MILD, MODERATE, STRONG, Degradation
from latentgen.world.judge import read_image
from latentgen.world.judge_training import TrainConfig, train
from latentgen.world.prompts import CATEGORIES
from latentgen.world.render import render_sample

REPORT = Path(__file__).resolve().parents[1] / "benchmarks" / "judge_validation"
LEVELS: dict[str, Degradation | None] = {"clean": None, "mild": MILD, "moderate": MODERATE, "strong": STRONG}

logger = logging.getLogger("train_judge")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-training", action="store_true", help="validate the shipped weights only")
    parser.add_argument("--images", type=int, default=TrainConfig.images, help="training renders")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--renders", type=int, default=1500, help="validation renders per measure")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)  # the machine is shared

    training: dict = {}
    if args.skip_training and REPORT.with_suffix(".json").is_file():  # keep the record of the last training
        training = json.loads(REPORT.with_suffix(".json").read_text()).get("training", {})
    if not args.skip_training:
        config = TrainConfig(images=args.images, epochs=args.epochs)
        start = time.monotonic()
        save_classifier(train(config))
        training = {"config": vars(config), "seconds": round(time.monotonic() - start)}
    load_weights.cache_clear()
    report = {"training": training, "model": _model_facts(), **_validate(args.renders)}
    REPORT.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    REPORT.with_suffix(".md").write_text(_markdown(report))
    logger.info("wrote %s.{md,json}", REPORT)


def _model_facts() -> dict:
    model = load_classifier()
    return {
        "weights": WEIGHTS_PATH.name,
        "weights_bytes": WEIGHTS_PATH.stat().st_size,
        "config": json.loads(CONFIG_PATH.read_text()),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _validate(n: int) -> dict:
    seed = validation.VALIDATION_SEED
    results: dict = {"validation_seed": seed, "renders": n}
    for name, level in LEVELS.items():
        logger.info("agreement, %s", name)
        results.setdefault("agreement", {})[name] = validation.as_rates(validation.agreement(n, seed, level))
        results.setdefault("kind_accuracy", {})[name] = validation.as_rates(
            validation.kind_accuracy(n, seed, level)
        )
    results["captions"] = validation.as_rates(validation.caption_agreement(n, seed))
    logger.info("mismatched pairs and hard negatives")
    results["mismatched_pairs"] = {
        "any_layout": validation.as_rates(validation.mismatched_pairs(n, seed)),
        "same_layout": validation.as_rates(validation.mismatched_pairs(n, seed, same_layout=True)),
    }
    results["hard_negatives"] = validation.as_rates(validation.hard_negatives(n, seed))
    logger.info("eval prompts")
    results["eval_prompts"] = {
        "clean": validation.as_rates(validation.eval_prompt_renders(5, seed)),
        "moderate": validation.as_rates(validation.eval_prompt_renders(3, seed, MODERATE)),
    }
    results["seconds_per_image"] = _time_per_image(seed)
    return results


def _time_per_image(seed: int, n: int = 200) -> float:
    images: list[Image.Image] = [render_sample(seed, i).image for i in range(n)]
    start = time.perf_counter()
    for image in images:
        read_image(image)
    return round((time.perf_counter() - start) / n, 4)


def _pct(cell: dict) -> str:
    return f"{100 * cell['rate']:.2f}% ({cell['agreed']}/{cell['total']})"


def _table(rates: dict, groups: list[str], columns: list[str]) -> list[str]:
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for group in groups:
        row = [_pct(rates[group][c]) if c in rates.get(group, {}) else "–" for c in columns]
        lines.append(f"| {group} | " + " | ".join(row) + " |")
    return lines


def _markdown(report: dict) -> str:
    layouts = ["single", "count", "pair", "wearing", "all"]
    checks = ["objects", "count", "colors", "sizes", "position", "background", "all"]
    n, seed = report["renders"], report["validation_seed"]
    lines = [
        "# World judge: validation",
        "",
        "Written by `scripts/train_judge.py`; the numbers are in `judge_validation.json`.",
        f"All measures use fresh renders of world seed {seed} (the classifier trained on seed "
        f"{TrainConfig.seed}), {n} renders per measure unless stated.",
        "",
        "## The judge",
        "",
        "Colour segmentation (background = border median; pixels labelled by the named colour they blend "
        "towards; seeds from eroded one-colour regions; geodesic growth; pieces, specks and blur fringes "
        "merged) plus a CNN that names each blob's kind from its alpha crop.",
        "",
        f"- weights: `{report['model']['weights']}`, {report['model']['weights_bytes'] / 1024:.0f} KiB, "
        f"{report['model']['parameters']} parameters (safetensors, config in `judge.json`)",
        f"- speed: {1000 * report['seconds_per_image']:.1f} ms per 64x64 image on one CPU thread",
    ]
    if report["training"]:
        config = report["training"]["config"]
        lines.append(
            f"- training: {config['images']} renders of seed {config['seed']}, {config['epochs']} epochs, "
            f"{config['degraded_fraction']:.0%} of renders degraded up to 'strong', "
            f"{report['training']['seconds']} s on one thread"
        )
    lines += [
        "",
        "Degradation levels (warp = smooth random displacement, px; blur = Gaussian radius, px; jitter = "
        "per-channel colour shift; noise = per-pixel std, 0..255):",
        "",
        "| level | warp | blur | jitter | noise |",
        "|---|---|---|---|---|",
    ]
    for name, level in LEVELS.items():
        level = level or Degradation()
        lines.append(f"| {name} | {level.warp} | {level.blur} | {level.jitter} | {level.noise} |")
    for name in LEVELS:
        lines += [
            "",
            f"## Agreement with ground truth: {name} renders",
            "",
            "Each render judged against its own full scene (`spec_from_scene`, exact: no other objects); "
            "rows are scene layouts, columns the checks (share of verdicts that agree with the truth).",
            "",
            *_table(report["agreement"][name], layouts, checks),
        ]
    lines += [
        "",
        "## Captions",
        "",
        "Each clean render judged against each of its captions (`parse_prompt(caption)`); all should pass.",
        "",
        *_table(report["captions"], layouts, ["passed"]),
        "",
        "## Kind classification (matched blobs)",
        "",
        "Share of segmented objects (matched to a scene object by box overlap) whose kind the CNN names right.",
        "",
    ]
    kinds = [k for k in report["kind_accuracy"]["clean"] if k != "all"] + ["all"]
    lines += _table(
        {
            k: {name: report["kind_accuracy"][name].get(k, {}).get("correct") for name in LEVELS}
            for k in kinds
        },
        kinds,
        list(LEVELS),
    )
    lines += [
        "",
        "## Mismatched pairs: rejection rate",
        "",
        "Render i judged against the full scene of the next render with a different scene "
        "(any layout, or the same layout); the judge should say no.",
        "",
        *_table(
            {
                g: {k: report["mismatched_pairs"][k][g]["rejected"] for k in ("any_layout", "same_layout")}
                for g in layouts
            },
            layouts,
            ["any_layout", "same_layout"],
        ),
        "",
        "## Hard negatives: rejection rate",
        "",
        "Render judged against its own scene with one attribute changed to a false value.",
        "",
        *_table(
            report["hard_negatives"],
            layouts,
            ["colour", "kind", "size", "position", "count", "relation", "background", "all"],
        ),
        "",
        "## Evaluation prompts rendered",
        "",
        "For every prompt of `eval_prompts()`, scenes built to satisfy its spec (`scene_for_spec`), "
        "judged against the spec (5 clean renders per prompt, 3 moderately degraded).",
        "",
    ]
    categories = [*CATEGORIES, "all"]
    lines += _table(
        {c: {k: report["eval_prompts"][k][c]["passed"] for k in ("clean", "moderate")} for c in categories},
        categories,
        ["clean", "moderate"],
    )
    lines += [
        "",
        "## Limits",
        "",
        "- The figures are on this world's own renders (plus synthetic degradation), not on generated "
        "images; they show the judge reads what the renderer draws, and how fast that degrades.",
        "- Under 'strong' degradation the weak spot is a cat wearing a hat: the small hat can blur into "
        "the cat or leave a fringe that counts as an extra object (the 'count' column).",
        "- Gray lies on the line from black to white, so a thick blur fringe of a white object on black "
        "(or the reverse) can read as a gray object.",
        "- The judge expects a plain background (read from the image border) and names every blob one of "
        "the seven kinds; it has no 'unknown object' class.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
