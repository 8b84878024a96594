"""What a scene of the world is, and the geometry shared by the renderer and the judge.

All coordinates are fractions of the canvas, in [0, 1], origin top left, y down. A box is
``(x0, y0, x1, y1)``. The renderer places objects so that every named position, size and relation
it reports holds by the predicates below with a clear margin; the judge reads images with the very
same predicates.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

Box = tuple[float, float, float, float]

# Object kinds. "cat" and "hat" are drawn from several parts; a cat can wear a hat.
KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cat", "hat")
PLURALS: dict[str, str] = {kind: kind + "s" for kind in KINDS}
SIZES: tuple[str, ...] = ("small", "big")

# Side of an object's (square) box. Far apart, so the judge's threshold sits in a wide gap.
SIDE_RANGE: dict[str, tuple[float, float]] = {"small": (0.17, 0.22), "big": (0.34, 0.40)}
BIG_SIDE_THRESHOLD = 0.28  # judge: a box whose longer side is at least this is "big"

# Named positions: a 3x3 grid. Objects are placed at an anchor (+/- POSITION_JITTER); the judge
# reads a position from which third (split at ZONE_EDGES) the box centre falls in.
COLUMNS: dict[str, float] = {"left": 0.27, "centre": 0.5, "right": 0.73}
ROWS: dict[str, float] = {"top": 0.27, "middle": 0.5, "bottom": 0.73}
ZONE_EDGES = (0.375, 0.625)
POSITION_JITTER = 0.04
POSITIONS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "centre",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)

# Relations between two objects, read from box centres. "next to" means left of or right of.
RELATIONS: tuple[str, ...] = ("above", "below", "left of", "right of", "next to")
INVERSE: dict[str, str] = {
    "above": "below",
    "below": "above",
    "left of": "right of",
    "right of": "left of",
    "next to": "next to",
}
MIN_OFFSET = 0.1  # judge: the centres must be at least this far apart along the relation's axis
WEARING = "wearing"  # cat (subject) wearing hat (object): the hat sits on top of the cat's head
HAT_GAP, HAT_SINK, HAT_CENTRE_DEPTH = 0.05, 0.4, 0.2  # judge: see wearing_holds (drawn: 0, 0.17, -0.01)


@dataclass(frozen=True)
class SceneObject:
    """One drawn object.

    ``position`` is a name from ``POSITIONS`` when the object was placed at that anchor (single-object
    scenes), else None: objects of other layouts may sit anywhere.
    """

    kind: str
    colour: str
    size: str
    box: Box
    position: str | None = None


@dataclass(frozen=True)
class Relation:
    """``objects[subject]`` is ``name`` ``objects[object]``: "above", "left of", "wearing", ..."""

    name: str
    subject: int = 0
    object: int = 1


@dataclass(frozen=True)
class Scene:
    """A plain background and the objects drawn on it, in drawing order.

    ``layout`` says how the scene was composed: "single", "count" (2-4 copies of one object),
    "pair" (two objects in a relation) or "wearing" (a cat wearing a hat).
    """

    background: str
    objects: tuple[SceneObject, ...]
    layout: str
    relation: Relation | None = None


@dataclass(frozen=True)
class Sample:
    """A rendered scene: ``image`` is RGB, 64x64 by default; every caption is true of it."""

    image: Image.Image
    captions: list[str]
    scene: Scene


def box_centre(box: Box) -> tuple[float, float]:
    """Centre ``(cx, cy)`` of a box."""
    x0, y0, x1, y1 = box
    return (x0 + x1) / 2, (y0 + y1) / 2


def size_of(box: Box) -> str:
    """ "big" or "small", from the longer side of the box."""
    x0, y0, x1, y1 = box
    return "big" if max(x1 - x0, y1 - y0) >= BIG_SIDE_THRESHOLD else "small"


def _third(value: float, names: tuple[str, str, str]) -> str:
    low, high = ZONE_EDGES
    return names[0] if value < low else names[2] if value > high else names[1]


def position_of(box: Box) -> str:
    """The named position of a box centre: "top left", "top", ..., "centre", ..., "bottom right"."""
    cx, cy = box_centre(box)
    column = _third(cx, ("left", "centre", "right"))
    row = _third(cy, ("top", "middle", "bottom"))
    if row == "middle":
        return column
    return row if column == "centre" else f"{row} {column}"


def anchor_of(position: str) -> tuple[float, float]:
    """The centre ``(cx, cy)`` at which the renderer places an object at ``position``."""
    words = position.split()
    column = next((w for w in words if w in ("left", "right")), "centre")
    row = next((w for w in words if w in ("top", "bottom")), "middle")
    return COLUMNS[column], ROWS[row]


def relation_holds(subject: Box, obj: Box, relation: str, margin: float = MIN_OFFSET) -> bool:
    """True if ``subject`` is ``relation`` ``obj`` ("above", "below", "left of", "right of", "next to").

    The offset between the centres along the relation's axis must be at least ``margin`` and larger
    than the offset along the other axis.
    """
    (sx, sy), (ox, oy) = box_centre(subject), box_centre(obj)
    dx, dy = ox - sx, oy - sy  # dx > 0: subject is left of obj; dy > 0: subject is above obj
    if relation == "above":
        return dy >= margin and dy > abs(dx)
    if relation == "below":
        return -dy >= margin and -dy > abs(dx)
    if relation == "left of":
        return dx >= margin and dx > abs(dy)
    if relation == "right of":
        return -dx >= margin and -dx > abs(dy)
    if relation == "next to":
        return relation_holds(subject, obj, "left of", margin) or relation_holds(
            subject, obj, "right of", margin
        )
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


def wearing_holds(cat: Box, hat: Box) -> bool:
    """True if ``hat`` sits on top of ``cat``: centred over it, its bottom edge in the cat's top part.

    The hat's bottom may float up to HAT_GAP above the cat's top and sink at most HAT_SINK of the cat's
    height into it; the hat's centre must stay above the cat's top HAT_CENTRE_DEPTH.
    """
    cx0, cy0, cx1, cy1 = cat
    hx, hy = box_centre(hat)
    height = cy1 - cy0
    on_top = cy0 - HAT_GAP <= hat[3] <= cy0 + HAT_SINK * height and hy < cy0 + HAT_CENTRE_DEPTH * height
    return cx0 <= hx <= cx1 and on_top


def boxes_apart(a: Box, b: Box, gap: float) -> bool:
    """True if the boxes are separated by at least ``gap`` along x or along y."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]
