"""How each kind of object is drawn: a list of filled parts in the unit square of its box.

A part is an ellipse (given by its box) or a polygon (given by its points), in coordinates where the
object's box is [0, 1] x [0, 1], y down. Every kind's parts together touch all four sides of the box,
so the drawn object fills its box and the judge can measure its size and centre from the pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import ImageDraw

from .scene import Box

Point = tuple[float, float]


@dataclass(frozen=True)
class Part:
    """One filled part: ``shape`` is "ellipse" (``points`` = two corners) or "polygon"."""

    shape: str
    points: tuple[Point, ...]


def _normalised(points: list[Point]) -> tuple[Point, ...]:
    """Scale and shift points so their bounding box is exactly the unit square."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, y0, w, h = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    return tuple(((x - x0) / w, (y - y0) / h) for x, y in points)


def _star(points: int = 5, inner_ratio: float = 0.45) -> tuple[Point, ...]:
    """A star pointing up, alternating outer and inner corners."""
    corners = []
    for i in range(2 * points):
        radius = 1.0 if i % 2 == 0 else inner_ratio
        angle = math.pi * i / points - math.pi / 2
        corners.append((radius * math.cos(angle), radius * math.sin(angle)))
    return _normalised(corners)


def _heart(steps: int = 72) -> tuple[Point, ...]:
    """The classic parametric heart curve, y flipped so the point is at the bottom."""
    curve = []
    for i in range(steps):
        t = 2 * math.pi * i / steps
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        curve.append((x, -y))
    return _normalised(curve)


# A sitting cat seen from the front: body, head, two ears and a tail curling up on the right.
_CAT: tuple[Part, ...] = (
    Part("ellipse", ((0.10, 0.42), (0.78, 1.0))),
    Part("ellipse", ((0.24, 0.12), (0.66, 0.52))),
    Part("polygon", ((0.25, 0.28), (0.24, 0.0), (0.43, 0.15))),
    Part("polygon", ((0.65, 0.28), (0.66, 0.0), (0.47, 0.15))),
    Part("polygon", ((0.66, 0.96), (0.90, 0.80), (1.0, 0.42), (0.90, 0.40), (0.82, 0.74), (0.64, 0.84))),
)
# A top hat: a tall crown on a wide brim.
_HAT: tuple[Part, ...] = (
    Part("polygon", ((0.2, 0.0), (0.8, 0.0), (0.8, 0.8), (0.2, 0.8))),
    Part("polygon", ((0.0, 0.72), (1.0, 0.72), (1.0, 1.0), (0.0, 1.0))),
)

PARTS: dict[str, tuple[Part, ...]] = {
    "circle": (Part("ellipse", ((0.0, 0.0), (1.0, 1.0))),),
    "square": (Part("polygon", ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))),),
    "triangle": (Part("polygon", ((0.5, 0.0), (1.0, 1.0), (0.0, 1.0))),),
    "star": (Part("polygon", _star()),),
    "heart": (Part("polygon", _heart()),),
    "cat": _CAT,
    "hat": _HAT,
}

# Where a worn hat goes, in the unit square of the cat's box: centred over the head, its brim
# sinking slightly into the top of the head so hat and cat touch.
HAT_ON_CAT: Box = (0.24, -0.19, 0.66, 0.17)


def hat_box_on(cat_box: Box) -> Box:
    """The box of a hat worn by a cat whose box is ``cat_box``."""
    x0, y0, x1, y1 = cat_box
    w, h = x1 - x0, y1 - y0
    hx0, hy0, hx1, hy1 = HAT_ON_CAT
    return (x0 + hx0 * w, y0 + hy0 * h, x0 + hx1 * w, y0 + hy1 * h)


def draw_object(
    draw: ImageDraw.ImageDraw, kind: str, box: Box, fill: tuple[int, int, int], scale: float
) -> None:
    """Draw ``kind`` filling ``box`` (canvas fractions) in ``fill``; ``scale`` is the canvas side in pixels."""
    x0, y0, x1, y1 = (v * scale for v in box)
    w, h = x1 - x0, y1 - y0
    for part in PARTS[kind]:
        points = [(x0 + u * w, y0 + v * h) for u, v in part.points]
        if part.shape == "ellipse":
            draw.ellipse(points, fill=fill)
        else:
            draw.polygon(points, fill=fill)
