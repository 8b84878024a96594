"""Composing scenes: choose what to draw, in which colours, and where.

Four layouts, mixed so a model sees every category often: one object at a named position, 2-4 copies
of one object, two objects in a relation, and a cat wearing a hat. Every builder takes optional
constraints (None = choose at random) so the same code samples training scenes and builds a scene
that satisfies an evaluation prompt's spec.
"""

from __future__ import annotations

import math
import random

from ..errors import LatentgenError, UsageError
from .palette import COLOUR_NAMES, contrasting, contrasts
from .scene import (
    KINDS,
    POSITION_JITTER,
    POSITIONS,
    SIDE_RANGE,
    SIZES,
    WEARING,
    Box,
    Relation,
    Scene,
    SceneObject,
    anchor_of,
    boxes_apart,
    size_of,
)
from .shapes import HAT_ON_CAT, hat_box_on
from .spec import Spec, check_spec

LAYOUT_WEIGHTS: dict[str, float] = {"single": 0.3, "count": 0.25, "pair": 0.3, "wearing": 0.15}
# Layouts a training mix may name that the world's own mix leaves out: single-object scenes with some
# of single_scene's choices fixed (name: its fixed arguments), the rungs of a curriculum. "centred":
# one big object in the centre, so that once the noise hides the picture the text is all that is
# left to tell the object's shape (the first rung). "big": one big object at any of the nine places.
# "small": one small object at any of the nine places (the rung between "big" and "single").
EXTRA_LAYOUTS: dict[str, dict[str, str]] = {
    "centred": {"size": "big", "position": "centre"},
    "big": {"size": "big"},
    "small": {"size": "small"},
}
COUNTS: tuple[int, ...] = (2, 3, 4)
PAIR_RELATIONS: tuple[str, ...] = ("above", "below", "left of", "right of")

MARGIN = 0.03  # objects keep this far from the canvas edge
GAP = 0.06  # smallest gap between the boxes of two objects (about 4 px at 64x64)
HAT_ABOVE_CAT_GAP = 0.12  # a hat above (not on) a cat keeps clear of it, so it never looks worn
CLEAR_OFFSET = 0.2  # a stated relation has centres at least this far apart along its axis...
CROSS_JITTER = 0.06  # ...and at most this far apart across it
SCATTER_TRIES = 200


def parse_layout_mix(text: str) -> dict[str, float]:
    """Layout weights from ``"single=0.15,count=0.25,pair=0.45,wearing=0.15"``; "" = LAYOUT_WEIGHTS.

    Weights are relative (they need not sum to 1); a layout left out is never drawn.
    """
    if not text.strip():
        return dict(LAYOUT_WEIGHTS)
    example = ",".join(f"{k}={v}" for k, v in LAYOUT_WEIGHTS.items())
    weights: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or (name not in LAYOUT_WEIGHTS and name not in EXTRA_LAYOUTS):
            names = ", ".join((*LAYOUT_WEIGHTS, *EXTRA_LAYOUTS))
            raise UsageError(
                f"layout mix item {item.strip()!r}: expected NAME=WEIGHT with NAME one of {names}, e.g. {example}"
            )
        try:
            weights[name] = float(value)
        except ValueError:
            raise UsageError(f"layout mix item {item.strip()!r}: {value!r} is not a number") from None
        if not 0 <= weights[name] < math.inf:  # also refuses nan
            raise UsageError(f"layout mix item {item.strip()!r}: weights must be finite and >= 0")
    if not sum(weights.values()) > 0:
        raise UsageError(f"layout mix {text!r} gives every layout weight 0; e.g. {example}")
    return weights


def random_scene(rng: random.Random, mix: dict[str, float] | None = None) -> Scene:
    """A scene from the training distribution: layout, kinds, colours, sizes, places all random.

    ``mix`` weighs the layouts (default :data:`LAYOUT_WEIGHTS`); see :func:`parse_layout_mix`.
    """
    mix = LAYOUT_WEIGHTS if mix is None else mix
    layout = rng.choices(list(mix), weights=list(mix.values()))[0]
    if layout == "single":
        return single_scene(rng)
    if layout in EXTRA_LAYOUTS:
        return single_scene(rng, **EXTRA_LAYOUTS[layout])
    if layout == "count":
        return count_scene(rng)
    if layout == "pair":
        return pair_scene(rng)
    return wearing_scene(rng)


def scene_for_spec(spec: Spec, rng: random.Random) -> Scene:
    """A random scene that satisfies ``spec`` exactly (only the objects it names)."""
    check_spec(spec)
    first = spec.objects[0]
    if (spec.count is not None or len(spec.objects) > 1) and any(o.position for o in spec.objects):
        raise UsageError("named positions are drawn for single objects only; use a relation for two")
    if spec.relation == WEARING and first.size == "small":
        raise UsageError("a cat wearing a hat is always drawn big: a small one's hat would be a speck")
    if spec.count is not None:
        return count_scene(rng, spec.count, first.kind, first.colour, first.size, spec.background)
    if spec.relation == WEARING:
        return wearing_scene(rng, first.colour, spec.objects[1].colour, spec.background)
    if len(spec.objects) == 2:
        second = spec.objects[1]
        return pair_scene(
            rng,
            kinds=(first.kind, second.kind),
            colours=(first.colour, second.colour),
            sizes=(first.size, second.size),
            relation=spec.relation,
            background=spec.background,
        )
    return single_scene(rng, first.kind, first.colour, first.size, first.position, spec.background)


def single_scene(
    rng: random.Random,
    kind: str | None = None,
    colour: str | None = None,
    size: str | None = None,
    position: str | None = None,
    background: str | None = None,
) -> Scene:
    """One object at a named position (anchor +/- jitter)."""
    kind = _pick(rng, kind, KINDS)
    size = _pick(rng, size, SIZES)
    position = _pick(rng, position, POSITIONS)
    background, (colour,) = _colours(rng, [colour], background)
    ax, ay = anchor_of(position)
    cx = ax + rng.uniform(-POSITION_JITTER, POSITION_JITTER)
    cy = ay + rng.uniform(-POSITION_JITTER, POSITION_JITTER)
    box = _box(cx, cy, _side(rng, size))
    return Scene(background, (SceneObject(kind, colour, size, box, position),), layout="single")


def count_scene(
    rng: random.Random,
    count: int | None = None,
    kind: str | None = None,
    colour: str | None = None,
    size: str | None = None,
    background: str | None = None,
) -> Scene:
    """``count`` copies (2-4) of one object, same colour and size, scattered without overlap."""
    count = _pick(rng, count, COUNTS)
    kind = _pick(rng, kind, KINDS)
    size = _pick(rng, size, SIZES if count <= 2 else ("small",))
    if size == "big" and count > 2:
        raise UsageError(f"at most two big objects fit in the canvas, not {count}; use small ones")
    background, (colour,) = _colours(rng, [colour], background)
    boxes = _scatter(rng, [_side(rng, size) for _ in range(count)])
    objects = tuple(SceneObject(kind, colour, size, box) for box in boxes)
    return Scene(background, objects, layout="count")


def pair_scene(
    rng: random.Random,
    kinds: tuple[str | None, str | None] = (None, None),
    colours: tuple[str | None, str | None] = (None, None),
    sizes: tuple[str | None, str | None] = (None, None),
    relation: str | None = None,
    background: str | None = None,
) -> Scene:
    """Two different objects, the first ``relation`` the second ("next to" becomes left or right of)."""
    kind_a = _pick(rng, kinds[0], KINDS)
    kind_b = _pick(rng, kinds[1], tuple(k for k in KINDS if k != kind_a))
    relation = _pick(rng, relation, PAIR_RELATIONS)
    if relation == "next to":
        relation = rng.choice(("left of", "right of"))
    size_a, size_b = _pick(rng, sizes[0], SIZES), _pick(rng, sizes[1], SIZES)
    background, (colour_a, colour_b) = _colours(rng, list(colours), background)
    hat_over_cat = (kind_a, kind_b, relation) in (("hat", "cat", "above"), ("cat", "hat", "below"))
    gap = HAT_ABOVE_CAT_GAP if hat_over_cat else GAP
    box_a, box_b = _place_pair(rng, _side(rng, size_a), _side(rng, size_b), relation, gap)
    objects = (SceneObject(kind_a, colour_a, size_a, box_a), SceneObject(kind_b, colour_b, size_b, box_b))
    return Scene(background, objects, layout="pair", relation=Relation(relation, 0, 1))


def wearing_scene(
    rng: random.Random,
    cat_colour: str | None = None,
    hat_colour: str | None = None,
    background: str | None = None,
) -> Scene:
    """A big cat wearing a hat of a clearly different colour; the hat is drawn over the cat's head."""
    background, (cat_colour, hat_colour) = _colours(rng, [cat_colour, hat_colour], background, touching=True)
    side = _side(rng, "big")
    hat_rise = -HAT_ON_CAT[1] * side  # how far the hat reaches above the cat's box
    x0 = rng.uniform(MARGIN, 1 - MARGIN - side)
    y0 = rng.uniform(MARGIN + hat_rise, 1 - MARGIN - side)
    cat_box = (x0, y0, x0 + side, y0 + side)
    hat_box = hat_box_on(cat_box)
    objects = (
        SceneObject("cat", cat_colour, "big", cat_box),
        SceneObject("hat", hat_colour, size_of(hat_box), hat_box),
    )
    return Scene(background, objects, layout="wearing", relation=Relation(WEARING, 0, 1))


def _pick(rng: random.Random, value, options):
    """``value`` if given, else a random choice from ``options``."""
    return value if value is not None else rng.choice(options)


def _colours(
    rng: random.Random, wanted: list[str | None], background: str | None, touching: bool = False
) -> tuple[str, list[str]]:
    """Choose a background and fill in the missing object colours.

    Every object colour contrasts with the background; with ``touching`` (a hat on a cat) the objects'
    colours also contrast with each other.
    """
    given = [c for c in wanted if c is not None]
    if background is None:
        options = [b for b in COLOUR_NAMES if all(contrasts(c, b) for c in given)]
        background = rng.choice(options)  # never empty: no colour is too close to every other
    clash = [c for c in given if not contrasts(c, background)]
    if clash:
        raise UsageError(f"{clash[0]} objects cannot be drawn on a {background} background: too alike")
    if touching and len(given) == 2 and not contrasts(*given):
        raise UsageError(f"a {given[1]} hat on a {given[0]} cat would not stand out: colours too alike")
    colours = list(wanted)
    for i, colour in enumerate(colours):
        if colour is None:
            others = tuple(c for c in colours if c is not None) if touching else ()
            colours[i] = rng.choice(contrasting(background, others))
    return background, colours


def _side(rng: random.Random, size: str) -> float:
    """A random box side for ``size`` ("small" or "big")."""
    return rng.uniform(*SIDE_RANGE[size])


def _box(cx: float, cy: float, side: float) -> Box:
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def _scatter(rng: random.Random, sides: list[float]) -> list[Box]:
    """Boxes of the given sides at random places inside the margins, pairwise at least GAP apart."""
    for _ in range(SCATTER_TRIES):
        boxes: list[Box] = []
        for side in sides:
            low, high = MARGIN + side / 2, 1 - MARGIN - side / 2
            box = _box(rng.uniform(low, high), rng.uniform(low, high), side)
            if not all(boxes_apart(box, other, GAP) for other in boxes):
                break
            boxes.append(box)
        if len(boxes) == len(sides):
            return boxes
    # Rarely every try above collides (seen once: world stream 19, image 11,502, four small boxes).
    # Then one box a cell of a grid, at a random place within it: cells keep boxes GAP apart. Only
    # reached after the tries, so the scenes of any stream that never got here are unchanged.
    n = math.ceil(math.sqrt(len(sides)))
    cell = (1 - 2 * MARGIN) / n
    cells = rng.sample(range(n * n), len(sides))
    boxes = []
    for side, c in zip(sides, cells, strict=True):
        centre = []
        for index in (c % n, c // n):
            low = MARGIN + index * cell + side / 2 + GAP / 2
            high = MARGIN + (index + 1) * cell - side / 2 - GAP / 2
            centre.append(rng.uniform(low, high) if low < high else (low + high) / 2)
        boxes.append(_box(*centre, side))
    if all(boxes_apart(a, b, GAP) for i, a in enumerate(boxes) for b in boxes[i + 1 :]):
        return boxes
    raise LatentgenError(f"could not place {len(sides)} objects without overlap")


def _place_pair(
    rng: random.Random, side_a: float, side_b: float, relation: str, gap: float
) -> tuple[Box, Box]:
    """Boxes for a subject and an object such that the subject is clearly ``relation`` the object.

    Along the relation's axis the centres are at least CLEAR_OFFSET (and the boxes ``gap``) apart;
    across it they differ by at most CROSS_JITTER.
    """
    need = max(CLEAR_OFFSET, (side_a + side_b) / 2 + gap)
    low_a, high_a = MARGIN + side_a / 2, 1 - MARGIN - side_a / 2
    low_b, high_b = MARGIN + side_b / 2, 1 - MARGIN - side_b / 2
    if relation in ("above", "left of"):  # the subject comes first along the axis
        along_a = rng.uniform(low_a, high_b - need)
        along_b = rng.uniform(along_a + need, high_b)
    else:
        along_b = rng.uniform(low_b, high_a - need)
        along_a = rng.uniform(along_b + need, high_a)
    across_a = rng.uniform(max(low_a, low_b + CROSS_JITTER), min(high_a, high_b - CROSS_JITTER))
    across_b = across_a + rng.uniform(-CROSS_JITTER, CROSS_JITTER)
    if relation in ("above", "below"):
        return _box(across_a, along_a, side_a), _box(across_b, along_b, side_b)
    return _box(along_a, across_a, side_a), _box(along_b, across_b, side_b)
