"""Measuring the judge against the renderer's ground truth.

Every measure renders fresh samples (a world seed the classifier never trained on) and counts how
often the judge's verdicts agree with the truth:

- ``agreement``: a render judged against its own full scene; every check should pass.
- ``mismatched_pairs``: a render judged against another render's scene; it should fail.
- ``hard_negatives``: a render judged against its own scene with one attribute changed (a colour, a
  kind, the count, the relation, the position, the size, the background); it should fail.
- ``eval_prompt_renders``: a scene built for each evaluation prompt's spec; it should pass.
- ``caption_agreement``: a render judged against each of its captions; every caption should pass.
- ``kind_accuracy``: how often the classifier names each kind of segmented object right.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from dataclasses import dataclass, replace

import numpy as np

from .classifier import ClassifierWeights, classify, load_weights
from .degrade import Degradation, degrade
from .judge import check_reading, read_image
from .judge_training import match_blobs
from .layout import scene_for_spec
from .palette import COLOUR_NAMES
from .parse import parse_prompt
from .prompts import eval_prompts
from .render import render_sample, render_scene
from .scene import INVERSE, KINDS, POSITIONS, WEARING, Sample
from .segment import segment
from .spec import MAX_COUNT, Spec, spec_from_scene

VALIDATION_SEED = 2  # world seed for validation renders; the classifier trains on judge_training.TRAIN_SEED


@dataclass
class Tally:
    """How many of ``total`` verdicts came out as expected."""

    agreed: int = 0
    total: int = 0

    def add(self, ok: bool) -> None:
        self.agreed += int(ok)
        self.total += 1

    @property
    def rate(self) -> float:
        return self.agreed / self.total if self.total else float("nan")


Table = dict[str, dict[str, Tally]]  # group (layout, category, ...) -> check -> tally


def agreement(n: int, seed: int = VALIDATION_SEED, degradation: Degradation | None = None) -> Table:
    """Per layout and check: how often the judge confirms a render's own scene (``n`` renders).

    With ``degradation``, each render is first spoiled that much (one fixed noise stream per seed).
    """
    rng = np.random.default_rng(seed)
    table: Table = defaultdict(lambda: defaultdict(Tally))
    for index in range(n):
        sample = render_sample(seed, index)
        image = degrade(sample.image, degradation, rng) if degradation else sample.image
        verdicts = check_reading(read_image(image), spec_from_scene(sample.scene))
        for check, ok in verdicts.items():
            for group, column in itertools.product((sample.scene.layout, "all"), (check, "all")):
                table[group][column].add(ok)
    return table


def caption_agreement(n: int, seed: int = VALIDATION_SEED) -> Table:
    """Per layout: how often the judge accepts a render against each of its captions (``n`` renders)."""
    table: Table = defaultdict(lambda: defaultdict(Tally))
    for index in range(n):
        sample = render_sample(seed, index)
        reading = read_image(sample.image)
        for caption in sample.captions:
            passed = all(check_reading(reading, parse_prompt(caption)).values())
            table[sample.scene.layout]["passed"].add(passed)
            table["all"]["passed"].add(passed)
    return table


def mismatched_pairs(n: int, seed: int = VALIDATION_SEED, same_layout: bool = False) -> Table:
    """Per layout: how often the judge rejects render i judged against the scene of another render.

    The other render is the next one (of the same layout, with ``same_layout``) whose full spec differs.
    """
    samples = [render_sample(seed, index) for index in range(n)]
    specs = [spec_from_scene(s.scene) for s in samples]
    table: Table = defaultdict(lambda: defaultdict(Tally))
    for i, sample in enumerate(samples):
        j = _other(samples, specs, i, same_layout)
        if j is None:
            continue
        rejected = not all(check_reading(read_image(sample.image), specs[j]).values())
        table[sample.scene.layout]["rejected"].add(rejected)
        table["all"]["rejected"].add(rejected)
    return table


def hard_negatives(n: int, seed: int = VALIDATION_SEED) -> Table:
    """Per changed attribute: how often the judge rejects a render against its scene with one change."""
    rng = random.Random(seed)
    table: Table = defaultdict(lambda: defaultdict(Tally))
    for index in range(n):
        sample = render_sample(seed, index)
        reading = read_image(sample.image)
        for change, spec in _perturbations(spec_from_scene(sample.scene), rng).items():
            rejected = not all(check_reading(reading, spec).values())
            for group, column in itertools.product((sample.scene.layout, "all"), (change, "all")):
                table[group][column].add(rejected)
    return table


def eval_prompt_renders(
    renders: int = 3, seed: int = VALIDATION_SEED, degradation: Degradation | None = None
) -> Table:
    """Per category: how often a scene built for an eval prompt's spec passes it (``renders`` each)."""
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    table: Table = defaultdict(lambda: defaultdict(Tally))
    for prompt in eval_prompts():
        for _ in range(renders):
            image = render_scene(scene_for_spec(prompt.spec, rng))
            image = degrade(image, degradation, noise) if degradation else image
            verdicts = check_reading(read_image(image), prompt.spec)
            table[prompt.category]["passed"].add(all(verdicts.values()))
            table["all"]["passed"].add(all(verdicts.values()))
    return table


def kind_accuracy(
    n: int,
    seed: int = VALIDATION_SEED,
    degradation: Degradation | None = None,
    weights: ClassifierWeights | None = None,
) -> Table:
    """Per true kind: how often the classifier (default: the shipped one) names a segmented object's
    kind right (``n`` renders)."""
    rng = np.random.default_rng(seed)
    weights = weights or load_weights()
    table: Table = defaultdict(lambda: defaultdict(Tally))
    for index in range(n):
        sample = render_sample(seed, index)
        image = degrade(sample.image, degradation, rng) if degradation else sample.image
        segmentation = segment(np.asarray(image))
        kinds = dict(zip(map(id, segmentation.blobs), classify(weights, segmentation), strict=True))
        for blob, obj in match_blobs(sample.scene, segmentation):
            truth = sample.scene.objects[obj].kind
            table[truth]["correct"].add(kinds[id(blob)] == truth)
            table["all"]["correct"].add(kinds[id(blob)] == truth)
    return table


def as_rates(table: Table) -> dict[str, dict[str, dict[str, float | int]]]:
    """A table as plain data: group -> check -> {"rate", "agreed", "total"} (for JSON reports)."""
    return {
        group: {check: {"rate": t.rate, "agreed": t.agreed, "total": t.total} for check, t in checks.items()}
        for group, checks in table.items()
    }


def _other(samples: list[Sample], specs: list[Spec], i: int, same_layout: bool) -> int | None:
    """The next sample after ``i`` (cyclically) with a different spec, and the same layout if asked."""
    for step in range(1, len(samples)):
        j = (i + step) % len(samples)
        if specs[j] == specs[i]:
            continue
        if not same_layout or samples[j].scene.layout == samples[i].scene.layout:
            return j
    return None


def _perturbations(spec: Spec, rng: random.Random) -> dict[str, Spec]:
    """The full scene ``spec`` with one attribute changed to a false value, for each attribute that can be."""
    changes: dict[str, Spec] = {}
    k = rng.randrange(len(spec.objects))
    obj = spec.objects[k]

    def with_object(**fields) -> Spec:
        objects = list(spec.objects)
        objects[k] = replace(obj, **fields)
        return replace(spec, objects=tuple(objects))

    changes["colour"] = with_object(colour=rng.choice([c for c in COLOUR_NAMES if c != obj.colour]))
    if spec.relation != WEARING:
        present = {o.kind for o in spec.objects}
        changes["kind"] = with_object(kind=rng.choice([kind for kind in KINDS if kind not in present]))
    if obj.size is not None:
        changes["size"] = with_object(size="small" if obj.size == "big" else "big")
    if obj.position is not None:
        changes["position"] = with_object(position=rng.choice([p for p in POSITIONS if p != obj.position]))
    if spec.count is not None:
        wrong = [c for c in (spec.count - 1, spec.count + 1) if 1 <= c <= MAX_COUNT]
        changes["count"] = replace(spec, count=rng.choice(wrong))
    if spec.relation in INVERSE and spec.relation != "next to":
        changes["relation"] = replace(spec, relation=INVERSE[spec.relation])
    changes["background"] = replace(
        spec, background=rng.choice([c for c in COLOUR_NAMES if c != spec.background])
    )
    return changes
