"""Does the model read word order? A probe of relation prompts in the built-in world.

For every directional relation ("above", "below", "left of", "right of") and every pair of kinds
A, B, two prompts that differ only in order are asked with the same seeds:

    P = "a red A above a blue B"        Q = "a blue B above a red A"

The judge reads each image and finds A and B (the first of each kind it sees). An image is then
**right** (the prompt's subject is on the stated side), **reversed** (the two are on the relation's
axis, the wrong way round), **wrong axis** (side by side when asked for above/below, or stacked
when asked for left/right) or **missing** (A or B not found). Two numbers sum it up:

- *order right*: right / (right + reversed). A model that puts the two kinds on the stated axis
  but in either order scores 0.5.
- *same layout under swap*: of the seeds where both P and Q put A and B on the axis, the share
  where A is on the same side in both. A model that follows order gets 0 (Q swaps the two); one
  that reads the prompt as a bag of words gets 1, since only the noise decides which goes where.

Then, one U-Net call deep: rendered pairs ("a red A above a blue B", drawn true), noised to t, are
denoised under their true caption, under the swapped one ("a blue B above a red A", false of the
picture) and under one with the other axis ("a red A left of a blue B", also false). The mean
errors say whether the model's predictions depend on the order of the words at all (swapped =
true: they do not) and, as a control, on the relation word (other axis > true).

And in the text alone: a causal text encoder's state of the first noun cannot depend on the
relation that follows it, but the second noun's can. The probe compares the second noun's final
state (what the U-Net reads) in "a red A above a blue B" and "a red A below a blue B" (and "left
of"/"right of"): a cosine of 1 means the text never says which side B is on, so no U-Net could
tell the two prompts' layouts apart by that word.

Images are made at the model's defaults, layout guidance (``latentgen.layout``) included where the
model turns it on; ``--layout-strength 0`` turns layout guidance off, and with
``--subject-strength 0`` too (subject guidance, ``latentgen.excite``, guides relation prompts that
nothing places) it probes the weights alone.

    python benchmarks/relation_probe.py --model builtin
    python benchmarks/relation_probe.py --model PATH --seeds 4 --json probe.json

Prints a table; ``--json FILE`` also writes the counts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler

from latentgen import GenerationRequest, Pipeline, load_model
from latentgen.world import KINDS, parse_prompt, read_image, render_scene, scene_for_spec
from latentgen.world.judge import Reading
from latentgen.world.scene import box_centre

RELATIONS = ("above", "below", "left of", "right of")
OTHER_AXIS = {"above": "left of", "below": "right of", "left of": "above", "right of": "below"}
OUTCOMES = ("right", "reversed", "wrong axis", "missing")


def subject_side(reading: Reading, subject: str, obj: str, relation: str) -> bool | str:
    """True/False: is ``subject`` on the side of ``obj`` that ``relation`` names; else "wrong axis"/"missing"."""
    found = {}
    for d in reading.objects:
        found.setdefault(d.kind, d.box)
    if subject not in found or obj not in found:
        return "missing"
    (sx, sy), (ox, oy) = box_centre(found[subject]), box_centre(found[obj])
    dx, dy = ox - sx, oy - sy  # dx > 0: the subject is left of the object; dy > 0: above it
    vertical = relation in ("above", "below")
    if (abs(dy) > abs(dx)) != vertical:
        return "wrong axis"
    ahead = bool((dy if vertical else dx) > 0)  # a plain bool, not numpy's
    return ahead == (relation in ("above", "left of"))


def same_layout(side_p: bool | str, side_q: bool | str) -> bool | None:
    """Is A on the same side of B in P's image as in Q's (where B is the subject)? None: not both on the axis."""
    if isinstance(side_p, str) or isinstance(side_q, str):
        return None
    return side_p == (not side_q)  # in Q, A's side of B is the opposite of B's side of A


def outcome(side: bool | str) -> str:
    """One of :data:`OUTCOMES` for a :func:`subject_side` result."""
    if isinstance(side, str):
        return side
    return "right" if side else "reversed"


@torch.no_grad()
def probe(
    model,
    seeds: int,
    kinds=KINDS,
    steps: int | None = None,
    guidance: float | None = None,
    layout_strength: float | None = None,
    subject_strength: float | None = None,
) -> dict:
    pipe = Pipeline(model)
    counts = {r: Counter() for r in RELATIONS}
    swapped = {r: Counter() for r in RELATIONS}  # "same" / "swapped" layouts of P and Q per seed
    for relation, (a, b) in itertools.product(RELATIONS, itertools.combinations(kinds, 2)):
        p, q = f"a red {a} {relation} a blue {b}", f"a blue {b} {relation} a red {a}"
        sides = []
        for prompt, subject, obj in ((p, a, b), (q, b, a)):
            request = GenerationRequest(
                prompt,
                seed=0,
                num_images=seeds,
                steps=steps,
                guidance=guidance,
                layout_strength=layout_strength,
                subject_strength=subject_strength,
            )
            made = pipe.generate(request, batch_size=seeds)
            sides.append([subject_side(read_image(g.image), subject, obj, relation) for g in made])
        for side_p, side_q in zip(*sides, strict=True):
            counts[relation][outcome(side_p)] += 1
            counts[relation][outcome(side_q)] += 1
            same = same_layout(side_p, side_q)
            if same is not None:
                swapped[relation]["same" if same else "swapped"] += 1
    return {"counts": counts, "swap": swapped}


@torch.no_grad()
def error_gaps(model, scenes: int, timesteps: list[int], kinds=KINDS) -> list[dict]:
    """Mean denoising error of rendered pairs under their true, swapped and other-axis captions."""
    pipe = Pipeline(model)
    cfg = model.source.scheduler_config
    alphas = DDPMScheduler.from_config(cfg).alphas_cumprod
    prediction = cfg.get("prediction_type", "epsilon")
    vae, size = model.vae, model.source.default_size
    rng = random.Random("relation_probe")
    sums = {
        t: {"true": 0.0, "swapped": 0.0, "other_axis": 0.0, "true_lower_than_swapped": 0} for t in timesteps
    }
    for i in range(scenes):
        a, b = rng.sample(list(kinds), 2)
        relation = rng.choice(RELATIONS)
        true = f"a red {a} {relation} a blue {b}"
        captions = (true, f"a blue {b} {relation} a red {a}", f"a red {a} {OTHER_AXIS[relation]} a blue {b}")
        pixels = np.asarray(render_scene(scene_for_spec(parse_prompt(true), rng), size), np.float32)
        x = torch.from_numpy(pixels / 127.5 - 1).permute(2, 0, 1)[None].to(model.device, vae.dtype)
        z = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
        emb = torch.cat([pipe.encode(c) for c in captions])
        for t in timesteps:
            noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(i)).to(z)
            alpha = alphas[t].to(z)
            noisy = (alpha.sqrt() * z + (1 - alpha).sqrt() * noise).expand(len(captions), -1, -1, -1)
            out = model.unet(noisy.to(model.dtype), torch.tensor([t]), encoder_hidden_states=emb).sample
            target = {"epsilon": noise, "v_prediction": alpha.sqrt() * noise - (1 - alpha).sqrt() * z}.get(
                prediction, z
            )
            err = (out.to(z) - target).pow(2).mean(dim=(1, 2, 3)).tolist()
            row = sums[t]
            row["true"] += err[0] / scenes
            row["swapped"] += err[1] / scenes
            row["other_axis"] += err[2] / scenes
            row["true_lower_than_swapped"] += err[0] < err[1]
    return [{"t": t, **row, "scenes": scenes} for t, row in sums.items()]


def text_sides(model, kinds=KINDS) -> dict[str, float]:
    """Mean cosine of the second noun's text-encoder state after opposite relations, per axis."""
    pipe = Pipeline(model)
    out = {}
    for relations in (("above", "below"), ("left of", "right of")):

        def captions(a, b, relations=relations):
            return [f"a red {a} {r} a blue {b}" for r in relations]

        # the second noun is the last word: the token just before the end of text
        out[" / ".join(relations)] = _mean_cosine(model, pipe, kinds, captions, before_end=1)
    return out


def text_end(model, kinds=KINDS) -> dict[str, float]:
    """Mean cosine of the end-of-text state, the one token a causal encoder has read the whole caption
    by: under swapped nouns ("a red A above a blue B" / "a blue B above a red A", the same scene in
    words) and under opposite relations ("… above …" / "… below …", the mirrored scene)."""
    pipe = Pipeline(model)
    pairs = {
        "swapped nouns": lambda a, b: (f"a red {a} above a blue {b}", f"a blue {b} above a red {a}"),
        "above / below": lambda a, b: (f"a red {a} above a blue {b}", f"a red {a} below a blue {b}"),
    }
    return {name: _mean_cosine(model, pipe, kinds, make, before_end=0) for name, make in pairs.items()}


@torch.no_grad()
def _mean_cosine(model, pipe: Pipeline, kinds, captions, before_end: int) -> float:
    """Over every ordered pair of kinds ``a, b``, the mean cosine between the final text-encoder
    states of the two ``captions(a, b)`` at the token ``before_end`` places before the end of text."""
    cosines = []
    for a, b in itertools.permutations(kinds, 2):
        states = []
        for caption in captions(a, b):
            # as the pipeline reads it: for a prompt_repeat model, the last copy's tokens
            token = len(model.tokenizer(pipe.model_text(caption)).input_ids) - 1 - before_end
            states.append(pipe.encode(caption)[0, token].float())
        cosines.append(torch.nn.functional.cosine_similarity(*states, dim=0).item())
    return sum(cosines) / len(cosines)


def summary(result: dict) -> dict:
    """Order right and same layout under swap, per relation and over all."""
    rows = {}
    for relation in (*RELATIONS, "all"):
        keys = RELATIONS if relation == "all" else (relation,)
        c = sum((result["counts"][k] for k in keys), Counter())
        s = sum((result["swap"][k] for k in keys), Counter())
        on_axis, pairs = c["right"] + c["reversed"], s["same"] + s["swapped"]
        rows[relation] = {
            **{o: c[o] for o in OUTCOMES},
            "order_right": c["right"] / on_axis if on_axis else None,
            "same_layout_under_swap": s["same"] / pairs if pairs else None,
            "swap_pairs": pairs,
        }
    return rows


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per prompt (0, 1, ...)")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated; every pair is asked")
    ap.add_argument("--steps", type=int, default=None, help="default: the model's")
    ap.add_argument("--guidance", type=float, default=None, help="default: the model's")
    ap.add_argument(
        "--layout-strength",
        type=float,
        default=None,
        help="layout guidance (default: the model's; 0: off)",
    )
    ap.add_argument(
        "--subject-strength",
        type=float,
        default=None,
        help="subject guidance (default: the model's; 0 with --layout-strength 0: the model alone)",
    )
    ap.add_argument("--scenes", type=int, default=40, help="rendered pairs for the error gaps (0: skip)")
    ap.add_argument("--timesteps", default="300,500,700,900", help="noise levels for the error gaps")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = tuple(k.strip() for k in args.kinds.split(","))
    if len(kinds) < 2 or not set(kinds) <= set(KINDS):
        ap.error(f"--kinds {args.kinds!r}: give two or more of {', '.join(KINDS)}")
    model = load_model(args.model, device="cpu", dtype="fp32")
    strengths = (args.layout_strength, args.subject_strength)
    rows = summary(probe(model, args.seeds, kinds, args.steps, args.guidance, *strengths))
    print("| relation | right | reversed | wrong axis | missing | order right | same layout under swap |")
    print("|---|---|---|---|---|---|---|")
    for relation, r in rows.items():
        cells = [str(r[o]) for o in OUTCOMES] + [_fmt(r["order_right"]), _fmt(r["same_layout_under_swap"])]
        print(f"| {relation} | " + " | ".join(cells) + f" (of {r['swap_pairs']}) |")
    gaps = (
        error_gaps(model, args.scenes, [int(t) for t in args.timesteps.split(",")], kinds)
        if args.scenes
        else []
    )
    if gaps:
        print("\n| t | error, true caption | swapped objects | other axis | true below swapped |")
        print("|---|---|---|---|---|")
        for g in gaps:
            print(
                f"| {g['t']} | {g['true']:.4f} | {g['swapped']:.4f} | {g['other_axis']:.4f} "
                f"| {g['true_lower_than_swapped']}/{g['scenes']} |"
            )
    sides = text_sides(model, kinds)
    print("\n| text: second noun after … | cosine of its states (1: the side is not in the text) |")
    print("|---|---|")
    for pair, cosine in sides.items():
        print(f"| {pair} | {cosine:.3f} |")
    end = text_end(model, kinds)
    print("\n| text: end-of-text state under … | cosine (1: the text does not tell the two apart) |")
    print("|---|---|")
    for pair, cosine in end.items():
        print(f"| {pair} | {cosine:.3f} |")
    if args.json:
        settings = {
            "seeds": args.seeds,
            "kinds": kinds,
            "steps": args.steps,
            "guidance": args.guidance,
        }
        resolved = GenerationRequest("x", layout_strength=strengths[0], subject_strength=strengths[1])
        resolved = resolved.resolve(model.source)
        settings["layout_strength"] = resolved.layout_strength
        settings["subject_strength"] = resolved.subject_strength
        tables = {"rows": rows, "error_gaps": gaps, "text_sides": sides, "text_end": end}
        record = {"model": args.model, **settings, **tables}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
