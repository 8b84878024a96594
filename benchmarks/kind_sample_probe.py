"""How often does a model in the built-in world draw the kind its prompt names? A probe by sampling.

Prompts "a KIND" and "a big KIND" for each of the world's kinds, ``--seeds`` images each (seeds 0..),
sampled with every sampling-time help off (layout, subject and count guidance, fill-in), so the
weights alone answer. The judge's reading of each image gives the count of images showing exactly
the named kind, and a confusion table: what was drawn for each named kind ("-" for no object or
more than one). It also counts the images whose one object is in the centre, and how many of the
right ones are there: a model trained on centred scenes (the world's "centred" layout) draws there.
Cheap enough (112 images at the defaults, 30–40 s on 2 CPU threads) to run during a training run,
paused, where ``latentgen eval`` takes minutes.

    python benchmarks/kind_sample_probe.py --model runs/export-x
    python benchmarks/kind_sample_probe.py --model builtin --seeds 16 --json kinds.json

Complements ``kind_probe.py``, which asks the U-Net for one clean-latent prediction at fixed noise.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch

from latentgen import GenerationRequest, Pipeline, load_model
from latentgen.world import KINDS, read_image

FORMS = ("a {}", "a big {}")


@torch.no_grad()
def probe(model, seeds: int, sampler: str, steps: int, guidance: float) -> dict:
    pipe = Pipeline(model)
    drawn: dict[str, collections.Counter] = {kind: collections.Counter() for kind in KINDS}
    by_form = collections.Counter()
    # images whose one object the judge places in the centre (1 in 9 of the world's single objects),
    # and those of them of the named kind: a model trained on centred scenes draws there
    centred = right_centred = 0
    for form in FORMS:
        for kind in KINDS:
            request = GenerationRequest(
                form.format(kind), seed=0, num_images=seeds, sampler=sampler, steps=steps, guidance=guidance,
                layout_strength=0, subject_strength=0, count_strength=0, fill_in=False,
            )  # fmt: skip
            for made in pipe.generate(request, batch_size=8):
                objects = read_image(made.image).objects
                got = objects[0].kind if len(objects) == 1 else "-"
                in_centre = len(objects) == 1 and objects[0].position == "centre"
                centred += in_centre
                right_centred += in_centre and got == kind
                drawn[kind][got] += 1
                by_form[form] += got == kind
    right = {kind: drawn[kind][kind] for kind in KINDS}
    return {
        "right": sum(right.values()),
        "images": seeds * len(KINDS) * len(FORMS),
        "right_by_kind": right,
        "right_by_form": dict(by_form),
        "one_object_in_the_centre": centred,
        "right_in_the_centre": right_centred,
        "drawn": {kind: dict(counts) for kind, counts in drawn.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--seeds", type=int, default=8, help="images per prompt")
    ap.add_argument("--sampler", default="euler-a")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu", dtype="fp32")
    result = probe(model, args.seeds, args.sampler, args.steps, args.guidance)
    print(
        f"{args.model}: kind right on {result['right']} of {result['images']} images {result['right_by_form']}; "
        f"one object in the centre: {result['one_object_in_the_centre']} ({result['right_in_the_centre']} of them right)"
    )
    columns = [*KINDS, "-"]
    print("| named \\ drawn | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for kind in KINDS:
        print(f"| {kind} | " + " | ".join(str(result["drawn"][kind].get(c, 0)) for c in columns) + " |")
    if args.json:
        settings = {k: getattr(args, k) for k in ("model", "seeds", "sampler", "steps", "guidance")}
        args.json.write_text(json.dumps({"settings": settings, **result}, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
