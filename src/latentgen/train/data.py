"""Training data: images with their captions, from the world renderer or from a folder.

Both sources give the same thing, an :class:`ImageCaptions` held in memory:

- ``"world"``: ``latentgen.world.render_sample(seed, index)`` for ``index`` in ``range(n)``, its layouts
  (single, count, pair, wearing) weighed by an optional mix. Each render comes with several true
  captions of its scene; the held-out set uses another seed.
- a folder: every ``name.png`` (or .jpg/.jpeg/.webp) with a ``name.txt`` beside it holding one caption
  per line (blank lines and ``#`` comments skipped). Images are centre-cropped to a square and resized.
  The last files in name order are held out.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latentgen.errors import UsageError

log = logging.getLogger("latentgen.train")

WORLD = "world"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# A different stream of renders for evaluation, so held-out images are never trained on.
_EVAL_SEED_OFFSET = 1_000_003


@dataclass
class ImageCaptions:
    """Images as uint8 ``[N, 3, H, W]`` (cheap to hold: 12 KB per 64×64 image) and their captions.

    World renders also say where their objects are, for the grounding loss
    (``latentgen.train.grounding``); a folder's images do not (None).
    """

    images: torch.Tensor  # [N, 3, H, W] uint8
    captions: list[list[str]]  # N lists, each with at least one caption
    boxes: torch.Tensor | None = None  # [N, K, 4] objects' (x0, y0, x1, y1) canvas fractions; NaN: none
    # per image, per caption, per word (as latentgen.world.captions.words splits it): a bit mask of
    # the objects (rows of ``boxes``) the word names; 0 for words that name none
    word_objects: list[list[list[int]]] | None = None
    # [N, K] int8: the index in latentgen.world.scene.KINDS of each object's kind; -1: none
    kinds: torch.Tensor | None = None
    # [N, K] int8: the index in latentgen.world.COLOUR_NAMES of each object's colour; -1: none
    colours: torch.Tensor | None = None
    backgrounds: torch.Tensor | None = None  # [N] int8: the index in COLOUR_NAMES of the background

    def __len__(self) -> int:
        return len(self.captions)

    def pixels(self, index: torch.Tensor) -> torch.Tensor:
        """The images at ``index`` as float pixels in [-1, 1]: ``[B, 3, H, W]``."""
        return self.images[index].float() / 127.5 - 1.0


def load_data(
    source: str, num_images: int, seed: int, resolution: int, *, held_out: bool = False, layout_mix: str = ""
) -> ImageCaptions:
    """Training (or, with ``held_out``, evaluation) images of ``source``: ``"world"`` or a folder path.

    For the world, ``num_images`` renders; for a folder, up to ``num_images`` of its pairs (0: all).
    """
    mix = layout_weights(source, layout_mix)
    if source == WORLD:
        return _render_world(num_images, seed + _EVAL_SEED_OFFSET if held_out else seed, resolution, mix)
    return _read_folder(Path(source), num_images, resolution, held_out)


def caption_words(captions: list[list[str]]) -> list[str]:
    """The distinct lower-case ASCII words of ``captions`` (what a folder dataset's tokenizer needs)."""
    words = {w for caps in captions for c in caps for w in re.findall(r"[a-z]+", c.lower())}
    return sorted(words)


def world_vocabulary() -> list[str]:
    return list(_world().vocabulary())


def layout_weights(source: str, text: str) -> dict[str, float] | None:
    """The world's layout weights from ``text`` (``"pair=0.45,count=0.25,..."``; "" = the default);
    None for a folder, which has no layouts to weigh."""
    if source == WORLD:
        return _world().parse_layout_mix(text)
    if text:
        raise UsageError(
            f"layout_mix {text!r} weighs the world's layouts; data {source!r} is a folder, and folder "
            "data has none: drop it"
        )
    return None


def _world():
    try:
        from latentgen import world
    except ImportError as exc:
        raise UsageError(f"the world renderer is not available ({exc}); train on a folder instead") from None
    if not all(
        hasattr(world, name) for name in ("render_sample", "vocabulary", "parse_layout_mix", "word_objects")
    ):
        raise UsageError(
            "latentgen.world lacks render_sample(), vocabulary(), parse_layout_mix() or word_objects(); "
            "train on a folder instead"
        )
    return world


def _render_world(n: int, seed: int, resolution: int, mix: dict[str, float]) -> ImageCaptions:
    from latentgen.train.grounding import MAX_OBJECTS

    world = _world()
    images = torch.empty(n, 3, resolution, resolution, dtype=torch.uint8)
    boxes = torch.full((n, MAX_OBJECTS, 4), float("nan"))
    kinds = torch.full((n, MAX_OBJECTS), -1, dtype=torch.int8)
    colours = torch.full((n, MAX_OBJECTS), -1, dtype=torch.int8)
    backgrounds = torch.empty(n, dtype=torch.int8)
    captions, word_objects = [], []
    for i in range(n):
        sample = world.render_sample(seed, i, mix=mix)
        images[i] = _to_tensor(sample.image, resolution)
        captions.append([c.strip() for c in sample.captions if c.strip()])
        if not captions[-1]:
            raise UsageError(f"world render (seed {seed}, index {i}) has no caption")
        objects = sample.scene.objects
        if len(objects) > MAX_OBJECTS:
            raise UsageError(
                f"world render (seed {seed}, index {i}) has {len(objects)} objects; at most {MAX_OBJECTS}"
            )
        boxes[i, : len(objects)] = torch.tensor([o.box for o in objects], dtype=torch.float32)
        kinds[i, : len(objects)] = torch.tensor([world.KINDS.index(o.kind) for o in objects])
        colours[i, : len(objects)] = torch.tensor([world.COLOUR_NAMES.index(o.colour) for o in objects])
        backgrounds[i] = world.COLOUR_NAMES.index(sample.scene.background)
        word_objects.append([world.word_objects(c, sample.scene) for c in captions[-1]])
    return ImageCaptions(images, captions, boxes, word_objects, kinds, colours, backgrounds)


def _read_folder(folder: Path, limit: int, resolution: int, held_out: bool) -> ImageCaptions:
    if not folder.is_dir():
        raise UsageError(f"training data {str(folder)!r} is neither 'world' nor a folder")
    pairs = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        text = path.with_suffix(".txt")
        if not text.is_file():
            log.warning("skipping %s: no caption file %s", path, text.name)
            continue
        lines = text.read_text(encoding="utf-8-sig").splitlines()
        caps = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not caps:
            log.warning("skipping %s: %s has no caption", path, text.name)
            continue
        pairs.append((path, caps))
    if len(pairs) < 2:
        raise UsageError(f"folder {folder} needs at least 2 image + caption pairs (name.png + name.txt)")
    # Hold out the last tenth (at most 256 pairs, at least one) for evaluation.
    n_eval = max(1, min(256, len(pairs) // 10))
    pairs = pairs[-n_eval:] if held_out else pairs[:-n_eval]
    if limit:
        pairs = pairs[:limit]
    images = torch.empty(len(pairs), 3, resolution, resolution, dtype=torch.uint8)
    for i, (path, _) in enumerate(pairs):
        try:
            with Image.open(path) as im:
                images[i] = _to_tensor(im, resolution)
        except OSError as exc:
            raise UsageError(f"cannot read training image {path}: {exc}") from None
    return ImageCaptions(images, [caps for _, caps in pairs])


def _to_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """A PIL image as uint8 ``[3, R, R]``: RGB, centre-cropped to a square, resized to ``resolution``."""
    image = image.convert("RGB")
    w, h = image.size
    if w != h:
        s = min(w, h)
        image = image.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
