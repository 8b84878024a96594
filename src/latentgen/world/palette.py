"""The world's named colours and how far apart they are.

Colours are chosen well apart in RGB so a pixel's nearest named colour survives blur, noise and
small colour shifts. An object is never drawn in a colour too close to its background
(``MIN_CONTRAST``), so it always stands out and the judge can segment it.
"""

from __future__ import annotations

import math

import numpy as np

# name -> sRGB, 0..255. The closest pair (orange/yellow, red/orange) is ~105 apart.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 30, 35),
    "orange": (245, 130, 20),
    "yellow": (240, 225, 50),
    "green": (40, 165, 65),
    "blue": (40, 85, 225),
    "purple": (145, 45, 190),
    "pink": (245, 140, 200),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
    "gray": (128, 128, 128),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

# Smallest RGB distance between an object's colour and its background, and between a hat and the
# cat wearing it. Rules out red/orange, orange/yellow, green/gray, blue/purple, purple/gray, pink/white.
MIN_CONTRAST = 120.0


def colour_distance(a: str, b: str) -> float:
    """Euclidean RGB distance between two named colours."""
    return math.dist(COLOURS[a], COLOURS[b])


def contrasts(a: str, b: str) -> bool:
    """True if colours ``a`` and ``b`` may touch (object on background, hat on cat)."""
    return colour_distance(a, b) >= MIN_CONTRAST


def contrasting(background: str, exclude: tuple[str, ...] = ()) -> list[str]:
    """Colour names that may be drawn on ``background`` (and also contrast with each of ``exclude``)."""
    return [c for c in COLOUR_NAMES if contrasts(c, background) and all(contrasts(c, e) for e in exclude)]


def palette_array(names: tuple[str, ...] = COLOUR_NAMES) -> np.ndarray:
    """The RGB values of ``names`` as float32, shape [N, 3]."""
    return np.array([COLOURS[n] for n in names], dtype=np.float32)


def nearest_colour(rgb: np.ndarray, exclude: tuple[str, ...] = ()) -> str:
    """The named colour nearest to ``rgb`` (shape [3], 0..255), skipping the names in ``exclude``."""
    names = tuple(n for n in COLOUR_NAMES if n not in exclude)
    distances = np.linalg.norm(palette_array(names) - np.asarray(rgb, dtype=np.float32), axis=1)
    return names[int(np.argmin(distances))]
