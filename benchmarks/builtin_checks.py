"""Two figures the built-in model's notes quote beside `latentgen eval`'s scores.

- ``--model M``: "a cat wearing a hat" on seeds 0..15 at the model's defaults, judged as
  tests/test_builtin.py judges it (the issue's bar: 15 of 16).
- ``--eval DIR``: position, split into directional prompts ("above", "left of", ...) and "next to",
  read from the ``results.jsonl`` that ``latentgen eval --out DIR`` writes.

    python benchmarks/builtin_checks.py --model builtin --eval /tmp/eval-out --json checks.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from latentgen import GenerationRequest, Pipeline, load_model
from latentgen.world import parse_prompt
from latentgen.world.judge import judge_ok

CAT_HAT = "a cat wearing a hat"


def cat_hat(model_name: str, seeds: int = 16) -> list[bool]:
    """Per seed 0..seeds-1: is "a cat wearing a hat" judged correct?"""
    model = load_model(model_name, device="cpu", dtype="fp32")
    made = Pipeline(model).generate(GenerationRequest(CAT_HAT, seed=0, num_images=seeds), batch_size=seeds)
    return [judge_ok(g.image, parse_prompt(CAT_HAT)) for g in made]


def position_split(eval_dir: Path) -> dict[str, list[int]]:
    """``{"directional": [right, of], "next to": [right, of]}`` over the position images of an eval."""
    split = {"directional": [0, 0], "next to": [0, 0]}
    with open(eval_dir / "results.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["tag"] == "position":
                counts = split["next to" if " next to " in r["prompt"] else "directional"]
                counts[0] += bool(r["correct"])
                counts[1] += 1
    return split


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="count the cat and hat with this model")
    ap.add_argument("--eval", type=Path, default=None, help="a `latentgen eval --out` folder")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.model and not args.eval:
        ap.error("give --model, --eval or both")
    if args.eval and not (args.eval / "results.jsonl").is_file():
        ap.error(f"--eval {str(args.eval)!r} has no results.jsonl: run `latentgen eval --out DIR` first")
    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict = {}
    if args.model:
        seeds = cat_hat(args.model)
        out["cat_hat"] = {"right": sum(seeds), "of": len(seeds), "per_seed": seeds}
        print(f'"{CAT_HAT}": {sum(seeds)} of {len(seeds)} seeds judged right')
    if args.eval:
        out["position"] = position_split(args.eval)
        for name, (right, of) in out["position"].items():
            print(f"position, {name}: {right} of {of} right")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
