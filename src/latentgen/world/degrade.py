"""Imperfect copies of rendered images, like a small generator's output: warped, blurred, off-colour, noisy.

Used to train the judge's classifier and to measure that the judge still reads such images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

WARP_GRID = 4  # the warp's displacement field is smooth: random on a 4x4 grid, interpolated


@dataclass(frozen=True)
class Degradation:
    """How strongly to spoil an image (all zero = unchanged)."""

    warp: float = 0.0  # largest displacement of a smooth random warp, pixels (wobbly shapes)
    blur: float = 0.0  # Gaussian blur radius, pixels
    jitter: float = 0.0  # largest per-channel colour shift, 0..255 scale, one shift per image
    noise: float = 0.0  # standard deviation of per-pixel Gaussian noise, 0..255 scale


MILD = Degradation(warp=0.5, blur=0.7, jitter=10.0, noise=6.0)
MODERATE = Degradation(warp=1.0, blur=1.0, jitter=15.0, noise=10.0)
STRONG = Degradation(warp=1.5, blur=1.5, jitter=25.0, noise=15.0)


def degrade(image: Image.Image, degradation: Degradation, rng: np.random.Generator) -> Image.Image:
    """A copy of RGB ``image`` warped, blurred, shifted in colour and noised as ``degradation`` says."""
    if degradation.warp > 0:
        image = _warp(image, degradation.warp, rng)
    if degradation.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(degradation.blur))
    pixels = np.asarray(image, dtype=np.float32)  # [H, W, 3]
    pixels = pixels + rng.uniform(-degradation.jitter, degradation.jitter, size=3)
    if degradation.noise > 0:
        pixels = pixels + rng.normal(0.0, degradation.noise, size=pixels.shape)
    return Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8), mode="RGB")


def random_degradation(rng: np.random.Generator, strength: Degradation = MODERATE) -> Degradation:
    """Each effect at a uniform random fraction of ``strength``'s amount."""
    return Degradation(
        warp=float(rng.uniform(0, strength.warp)),
        blur=float(rng.uniform(0, strength.blur)),
        jitter=float(rng.uniform(0, strength.jitter)),
        noise=float(rng.uniform(0, strength.noise)),
    )


def _warp(image: Image.Image, amount: float, rng: np.random.Generator) -> Image.Image:
    """Resample ``image`` through a smooth random displacement field of at most ``amount`` pixels."""
    pixels = np.asarray(image, dtype=np.float32)  # [H, W, 3]
    h, w = pixels.shape[:2]
    coarse = rng.uniform(-amount, amount, size=(2, WARP_GRID, WARP_GRID)).astype(np.float32)
    dy, dx = (
        np.asarray(Image.fromarray(c, mode="F").resize((w, h), Image.Resampling.BILINEAR)) for c in coarse
    )
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    y, x = (ys + dy).clip(0, h - 1), (xs + dx).clip(0, w - 1)
    y0, x0 = np.floor(y).astype(int).clip(0, h - 2), np.floor(x).astype(int).clip(0, w - 2)
    fy, fx = (y - y0)[..., None], (x - x0)[..., None]
    top = pixels[y0, x0] * (1 - fx) + pixels[y0, x0 + 1] * fx
    bottom = pixels[y0 + 1, x0] * (1 - fx) + pixels[y0 + 1, x0 + 1] * fx
    warped = top * (1 - fy) + bottom * fy
    return Image.fromarray(warped.round().clip(0, 255).astype(np.uint8), mode="RGB")
