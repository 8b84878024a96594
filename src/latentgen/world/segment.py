"""Colour segmentation: split an image into a background colour and blobs of object colour.

Steps, all in numpy on a [H, W, 3] float array (0..255):

1. Background = median of the border pixels; its name = nearest named colour.
2. Foreground = pixels far enough from the background (a threshold that rises with the border's noise).
3. Each foreground pixel gets the named colour it is a blend of: an anti-aliased edge pixel lies on the
   line from the background to its object's colour, so we pick the colour whose line passes nearest;
   a 3x3 majority vote then removes labels scattered by noise.
4. Seeds = connected regions of one colour label after a one-pixel erosion, so thin seams (edges
   between a hat and its cat, blur fringes) cannot start a blob of their own.
5. Every foreground pixel joins the seed it reaches first (geodesic growth); a foreground component
   without a seed becomes a region of its own.
6. Pieces of one object are merged back (same colour touching broadly, specks, blur fringes);
   isolated specks are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .palette import COLOUR_NAMES, nearest_colour, palette_array
from .scene import Box

BORDER = 2  # pixels of the frame read as background
FOREGROUND_MIN = 45.0  # RGB distance from the background above which a pixel is foreground
NOISE_FACTOR = 3.0  # ...or this many times the border's median distance, if larger
SEED_MIN_AREA = 3  # eroded seeds smaller than this are seams, not objects
BLOB_MIN_AREA = 15  # blobs smaller than this (pixels at 64x64) are specks
MIN_CONTACT = 3  # same-coloured regions touching along this many solid pixels are one object
SOLID_ALPHA = 0.5  # a pixel holding at least this much of its object's colour is solid
# A blob's colour is read from this fraction of its pixels, those farthest from the background.
CORE_FRACTION = 0.3
# A thin region within this RGB distance of the line from the background to a neighbour's colour,
# holding less than FRINGE_MAX_ALPHA of that colour, is a blur fringe of the neighbour.
FRINGE_TOLERANCE = 30.0
FRINGE_MAX_ALPHA = 0.9
# How strongly a pixel's colour label prefers colours it matches fully (see _blend_labels).
PURITY_WEIGHT = 0.3

_NEIGHBOURS_8 = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


@dataclass
class Blob:
    """One segmented object. ``mask`` is [H, W] bool; ``box`` in canvas fractions; ``rgb`` is [3]."""

    mask: np.ndarray
    colour: str
    rgb: np.ndarray
    box: Box
    area: int


@dataclass
class Segmentation:
    """The background and the blobs of an image; ``pixels`` is the [H, W, 3] float array read."""

    pixels: np.ndarray
    background: str
    background_rgb: np.ndarray
    blobs: list[Blob]


def segment(pixels: np.ndarray) -> Segmentation:
    """Segment ``pixels`` ([H, W, 3], 0..255) into a background colour and blobs."""
    pixels = np.asarray(pixels, dtype=np.float32)
    background_rgb, noise = _background(pixels)
    background = nearest_colour(background_rgb)
    distance = np.linalg.norm(pixels - background_rgb, axis=-1)  # [H, W]
    foreground = distance > max(FOREGROUND_MIN, NOISE_FACTOR * noise)
    names = tuple(n for n in COLOUR_NAMES if n != background)
    labels = _majority_filter(
        _blend_labels(pixels, background_rgb, palette_array(names)), foreground, len(names)
    )
    regions = _grow(_seeds(labels, foreground), foreground)
    regions = _add_unseeded(regions, foreground)
    regions = _merge(regions, labels, pixels, background_rgb)
    blobs = [_blob(regions == r, pixels, background_rgb, names) for r in np.unique(regions[regions > 0])]
    blobs.sort(key=lambda b: (b.box[1], b.box[0]))
    return Segmentation(pixels, background, background_rgb, blobs)


def connected_components(mask: np.ndarray) -> np.ndarray:
    """Label 8-connected regions of a [H, W] bool mask: [H, W] int, 0 outside, 1..N inside."""
    h, w = mask.shape
    big = h * w + 1
    labels = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), big)
    while True:  # propagate the smallest label through each region
        padded = np.pad(labels, 1, constant_values=big)
        smallest = labels.copy()
        for dy, dx in _NEIGHBOURS_8:
            np.minimum(smallest, padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w], out=smallest)
        smallest = np.where(mask, smallest, big)
        if np.array_equal(smallest, labels):
            break
        labels = smallest
    dense = np.zeros((h, w), dtype=np.int64)
    dense[mask] = np.searchsorted(np.unique(labels[mask]), labels[mask]) + 1
    return dense


def erode(mask: np.ndarray) -> np.ndarray:
    """Keep the pixels of a [H, W] bool mask whose 8 neighbours are all in the mask."""
    padded = np.pad(mask, 1, constant_values=False)
    h, w = mask.shape
    out = mask.copy()
    for dy, dx in _NEIGHBOURS_8:
        out &= padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
    return out


def dilate(mask: np.ndarray) -> np.ndarray:
    """Add the 8 neighbours of every pixel of a [H, W] bool mask."""
    padded = np.pad(mask, 1, constant_values=False)
    h, w = mask.shape
    out = mask.copy()
    for dy, dx in _NEIGHBOURS_8:
        out |= padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
    return out


def _background(pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """Median colour of the border frame ([3]) and the border's median distance from it."""
    frame = np.ones(pixels.shape[:2], dtype=bool)
    frame[BORDER:-BORDER, BORDER:-BORDER] = False
    border = pixels[frame]  # [N, 3]
    rgb = np.median(border, axis=0)
    return rgb, float(np.median(np.linalg.norm(border - rgb, axis=-1)))


def _blend_labels(pixels: np.ndarray, background_rgb: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """For each pixel, the index of the palette colour it is most likely a blend of: [H, W] int.

    A pixel p is compared with the line background + a * (colour - background), a in [0, 1]: the cost is
    p's distance to the line plus PURITY_WEIGHT times the distance left to the full colour. Edge pixels
    follow their line; a pixel on two lines (gray lies on black-to-white) goes to the colour it reaches.
    """
    offset = (pixels - background_rgb)[..., None, :]  # [H, W, 1, 3]
    direction = palette - background_rgb  # [K, 3]
    length = np.linalg.norm(direction, axis=-1).clip(min=1e-6)  # [K]
    alpha = ((offset * direction).sum(-1) / length**2).clip(0, 1)  # [H, W, K]
    residual = np.linalg.norm(offset - alpha[..., None] * direction, axis=-1)
    return (residual + PURITY_WEIGHT * (1 - alpha) * length).argmin(-1)


def _majority_filter(labels: np.ndarray, foreground: np.ndarray, n_labels: int) -> np.ndarray:
    """Replace each foreground pixel's label by the most common one among its foreground 3x3 neighbours.

    Noise scatters single wrong labels through an object; the vote removes them. [H, W] int in and out.
    """
    h, w = labels.shape
    votes = np.zeros((h + 2, w + 2, n_labels), dtype=np.int32)
    one_hot = np.eye(n_labels, dtype=np.int32)[labels] * foreground[..., None]  # [H, W, K]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            votes[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] += one_hot
    return np.where(foreground, votes[1:-1, 1:-1].argmax(-1), labels)


def _seeds(labels: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Seed regions: eroded one-colour regions of the foreground, [H, W] int (0 = no seed)."""
    seeds = np.zeros(labels.shape, dtype=np.int64)
    for label in np.unique(labels[foreground]):
        regions = connected_components(erode(foreground & (labels == label)))
        for r in range(1, regions.max() + 1):
            region = regions == r
            if region.sum() >= SEED_MIN_AREA:
                seeds[region] = seeds.max() + 1
    return seeds


def _grow(seeds: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Give every foreground pixel connected to a seed the label of the seed it reaches first."""
    regions = seeds.copy()
    h, w = regions.shape
    while True:
        padded = np.pad(regions, 1)
        grown = regions.copy()
        for dy, dx in _NEIGHBOURS_8:  # fixed order: ties go to the first neighbour that has a label
            neighbour = padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            take = foreground & (grown == 0) & (neighbour > 0)
            grown[take] = neighbour[take]
        if np.array_equal(grown, regions):
            return regions
        regions = grown


def _add_unseeded(regions: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Foreground components no seed reached (a small object so blurred that erosion left nothing) become
    regions of their own."""
    unseeded = connected_components(foreground & (regions == 0))
    for c in range(1, unseeded.max() + 1):
        component = unseeded == c
        if component.sum() >= BLOB_MIN_AREA:
            regions[component] = regions.max() + 1
    return regions


def _merge(
    regions: np.ndarray, labels: np.ndarray, pixels: np.ndarray, background_rgb: np.ndarray
) -> np.ndarray:
    """Merge the pieces of one object back together and drop specks; [H, W] int regions in and out.

    A region joins a neighbour when it is a speck (under BLOB_MIN_AREA pixels); when it is thin (a
    tail, an ear, a blur fringe) and has the neighbour's colour or a blend of it with the background;
    or when it has the neighbour's colour and touches it along at least MIN_CONTACT solid pixels (a
    noise bridge between two separate objects is faint). Specks touching nothing vanish.
    """
    while (piece := _find_piece(regions, labels, pixels, background_rgb)) is not None:
        region, target = piece
        regions[regions == region] = target
    for r in np.unique(regions[regions > 0]):
        if (regions == r).sum() < BLOB_MIN_AREA:
            regions[regions == r] = 0
    return regions


def _find_piece(
    regions: np.ndarray, labels: np.ndarray, pixels: np.ndarray, background_rgb: np.ndarray
) -> tuple[int, int] | None:
    """The smallest region that belongs to a neighbour, and that neighbour (most contact first)."""
    for r in sorted(np.unique(regions[regions > 0]), key=lambda r: (regions == r).sum()):
        region = regions == r
        ring = regions[dilate(region) & ~region]
        counts = np.bincount(ring[ring > 0])
        for n in sorted(np.nonzero(counts)[0], key=lambda n: -counts[n]):
            if _belongs_to(region, regions == n, labels, pixels, background_rgb):
                return int(r), int(n)
    return None


def _belongs_to(
    region: np.ndarray,
    neighbour: np.ndarray,
    labels: np.ndarray,
    pixels: np.ndarray,
    background_rgb: np.ndarray,
) -> bool:
    """True if ``region`` is a piece of the object ``neighbour`` (see ``_merge``)."""
    if region.sum() < BLOB_MIN_AREA:
        return True
    same_colour = _majority(labels, region) == _majority(labels, neighbour)
    if erode(erode(region)).sum() < SEED_MIN_AREA:  # thin: a tail, an ear, a fringe
        fringe_rgb = np.median(pixels[region], axis=0)
        return same_colour or _is_blend(
            fringe_rgb, background_rgb, _core_rgb(neighbour, pixels, background_rgb)
        )
    solid_contact = dilate(_solid(region, pixels, background_rgb)) & _solid(neighbour, pixels, background_rgb)
    return same_colour and solid_contact.sum() >= MIN_CONTACT


def _solid(mask: np.ndarray, pixels: np.ndarray, background_rgb: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` at least SOLID_ALPHA as far from the background as its core: [H, W] bool."""
    distance = np.linalg.norm(pixels - background_rgb, axis=-1)
    core_distance = float(np.linalg.norm(_core_rgb(mask, pixels, background_rgb) - background_rgb))
    return mask & (distance >= SOLID_ALPHA * core_distance)


def _majority(labels: np.ndarray, mask: np.ndarray) -> int:
    return int(np.bincount(labels[mask]).argmax())


def _is_blend(rgb: np.ndarray, start: np.ndarray, end: np.ndarray) -> bool:
    """True if ``rgb`` lies within FRINGE_TOLERANCE of the line from ``start`` to ``end`` (short of ``end``)."""
    direction = end - start
    alpha = float((rgb - start) @ direction / max(float(direction @ direction), 1e-6))
    nearest = start + min(max(alpha, 0.0), 1.0) * direction
    return alpha <= FRINGE_MAX_ALPHA and float(np.linalg.norm(rgb - nearest)) <= FRINGE_TOLERANCE


def _core_rgb(mask: np.ndarray, pixels: np.ndarray, background_rgb: np.ndarray) -> np.ndarray:
    """Median colour [3] of the CORE_FRACTION of ``mask``'s pixels farthest from the background."""
    distance = np.linalg.norm(pixels[mask] - background_rgb, axis=-1)
    core = distance >= np.quantile(distance, 1 - CORE_FRACTION)
    return np.median(pixels[mask][core], axis=0)


def _blob(mask: np.ndarray, pixels: np.ndarray, background_rgb: np.ndarray, names: tuple[str, ...]) -> Blob:
    """Describe one region: its colour, read from its core, and its extent.

    The extent is that of the pixels holding at least half the core's colour, so blur (which spreads
    faint colour outwards) does not make objects look bigger.
    """
    rgb = _core_rgb(mask, pixels, background_rgb)
    label = _blend_labels(rgb[None, None], background_rgb, palette_array(names))[0, 0]
    direction = rgb - background_rgb
    alpha = (pixels - background_rgb) @ direction / max(float(direction @ direction), 1e-6)  # [H, W]
    solid = mask & (alpha >= SOLID_ALPHA)
    ys, xs = np.nonzero(solid if solid.any() else mask)
    h, w = mask.shape
    box = (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)
    return Blob(mask, names[label], rgb, box, int(mask.sum()))
