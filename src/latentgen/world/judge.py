"""The judge: does an image show what its prompt asked for?

1. Read the image: colour segmentation gives the background and blobs with colours and boxes
   (``segment.py``); a small CNN names each blob's kind (``classifier.py``); sizes, positions and
   relations come from the blobs' boxes with the renderer's own geometry (``scene.py``).
2. Check the reading against a ``Spec``, one verdict per aspect the spec asks about:
   "objects" (every named kind is there), "count", "colors", "sizes", "position" (named positions,
   relations, a hat worn by a cat) and "background".
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .classifier import classify, load_weights
from .layout import COUNTS
from .render import IMAGE_SIZE
from .scene import WEARING, Box, Scene, position_of, relation_holds, size_of, wearing_holds
from .segment import segment
from .spec import ObjectSpec, Spec, check_spec


@dataclass(frozen=True)
class Detection:
    """One object the judge found: kind, colour, size and named position read from the pixels."""

    kind: str
    colour: str
    size: str
    position: str
    box: Box  # canvas fractions


@dataclass(frozen=True)
class Reading:
    """Everything the judge read from an image."""

    background: str
    objects: tuple[Detection, ...]


def read_image(image: Image.Image) -> Reading:
    """Segment ``image`` (any size; read at 64x64) and name each object's kind, colour, size, position."""
    image = image.convert("RGB")
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    segmentation = segment(np.asarray(image))
    kinds = classify(load_weights(), segmentation)
    objects = tuple(
        Detection(kind, blob.colour, size_of(blob.box), position_of(blob.box), blob.box)
        for kind, blob in zip(kinds, segmentation.blobs, strict=True)
    )
    return Reading(segmentation.background, objects)


def reading_from_scene(scene: Scene) -> Reading:
    """What a perfect judge would read from ``scene``'s image: sizes and positions from the boxes.

    Checking a spec against this is checking it against the ground truth (captions, eval scenes).
    """
    objects = tuple(
        Detection(o.kind, o.colour, size_of(o.box), position_of(o.box), o.box) for o in scene.objects
    )
    return Reading(scene.background, objects)


def judge(image: Image.Image, spec: Spec) -> dict[str, bool]:
    """Per-aspect verdicts of ``image`` against ``spec``; only the aspects the spec asks about."""
    check_spec(spec)
    return check_reading(read_image(image), spec)


def judge_ok(image: Image.Image, spec: Spec) -> bool:
    """True if ``image`` passes every check of ``spec``."""
    return all(judge(image, spec).values())


def check_reading(reading: Reading, spec: Spec) -> dict[str, bool]:
    """The verdicts of ``judge`` for an image already read."""
    verdicts = _check_count(reading, spec) if spec.count is not None else _check_objects(reading, spec)
    if len(reading.objects) > MAX_OBJECTS:
        return dict.fromkeys(verdicts, False)
    return verdicts


def _check_objects(reading: Reading, spec: Spec) -> dict[str, bool]:
    """Every case but counting: the wanted objects are there (more may be), with what is asked of them."""
    objects, wanted = reading.objects, spec.objects
    verdicts = {"objects": _assignable(objects, wanted, _same_kind)}
    if spec.exact:
        verdicts["count"] = len(objects) == len(wanted)
    if any(w.colour for w in wanted):
        verdicts["colors"] = _assignable(objects, wanted, _same_colour)
    if any(w.size for w in wanted):
        verdicts["sizes"] = _assignable(objects, wanted, _same_size)
    if spec.relation or any(w.position for w in wanted):
        verdicts["position"] = _assignable(objects, wanted, _same_position, spec.relation)
    if spec.background:
        verdicts["background"] = reading.background == spec.background
    return verdicts


def _check_count(reading: Reading, spec: Spec) -> dict[str, bool]:
    """Counting: exactly ``spec.count`` of the kind; the colour and size asked hold for all of them."""
    (wanted,) = spec.objects
    of_kind = [d for d in reading.objects if d.kind == wanted.kind]
    count_ok = len(of_kind) == spec.count and (not spec.exact or len(reading.objects) == spec.count)
    verdicts = {"objects": bool(of_kind), "count": count_ok}
    if wanted.colour:
        verdicts["colors"] = bool(of_kind) and all(d.colour == wanted.colour for d in of_kind)
    if wanted.size:
        verdicts["sizes"] = bool(of_kind) and all(d.size == wanted.size for d in of_kind)
    if spec.background:
        verdicts["background"] = reading.background == spec.background
    return verdicts


# No scene of the world holds more objects than this. An image read as more is clutter (noise, an
# untrained model's blotches), not a picture of the world: it fails every check, however many of
# its blobs happen to be classified as the kinds a prompt names.
MAX_OBJECTS = max(COUNTS)

Match = Callable[[Detection, ObjectSpec], bool]


def _same_kind(found: Detection, wanted: ObjectSpec) -> bool:
    return found.kind == wanted.kind


def _same_colour(found: Detection, wanted: ObjectSpec) -> bool:
    return found.kind == wanted.kind and wanted.colour in (None, found.colour)


def _same_size(found: Detection, wanted: ObjectSpec) -> bool:
    return found.kind == wanted.kind and wanted.size in (None, found.size)


def _same_position(found: Detection, wanted: ObjectSpec) -> bool:
    return found.kind == wanted.kind and wanted.position in (None, found.position)


def _assignable(
    found: tuple[Detection, ...], wanted: tuple[ObjectSpec, ...], match: Match, relation: str | None = None
) -> bool:
    """True if distinct detections can stand for the wanted objects, each matching, in ``relation``."""
    for chosen in itertools.permutations(found, len(wanted)):
        if not all(match(f, w) for f, w in zip(chosen, wanted, strict=True)):
            continue
        if relation is None or _related(chosen[0].box, chosen[1].box, relation):
            return True
    return False


def _related(subject: Box, obj: Box, relation: str) -> bool:
    if relation == WEARING:
        return wearing_holds(subject, obj)
    return relation_holds(subject, obj, relation)
