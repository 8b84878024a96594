"""Layout guidance: a prompt's relation words ("above", "left of") decide where its nouns go.

A U-Net reads "a cat above a dog" through cross-attention, where every latent position weighs every
text token. A model trained on little data can learn that "above" stacks two things without learning
which one goes on top: the built-in model puts the two kinds on the right axis but in either order
(``benchmarks/relation_probe.py``: order right 0.50, the same picture for swapped nouns).

Layout guidance needs no training. It adds a bias to the cross-attention scores, as eDiff-I's
"paint with words" does with a user's masks, with masks read off the prompt instead:

    bias[position, token] = strength × (how far ``position`` lies on its noun's side), in [-1, 1]

For "A above B" the side is the top for A's words and the bottom for B's; for "A left of B", left
and right. The bias is 0 across the middle, ``strength`` at the far edge of the noun's own side and
``-strength`` at the far edge of the other, in units of attention logits. It is added at every
cross-attention layer (pooled to each layer's grid), for the conditional half of classifier-free
guidance only, at every step. A batch with no relation to place runs exactly the unbiased
computation (the same bytes); in a batch that has one, the other rows (the unconditional half,
prompts without a relation) add zeros.

Relations read (``RELATION_PHRASES``): "above", "over", "below", "under", "beneath", "underneath",
"[to the | on the] left of", "[to the | on the] right of", and "next to" and "beside", which put the
first noun on the left (either side would be true of them). A noun phrase is the run of words next to
the relation up to a comma or full stop, "and", or (after it) "on", "in" and "at", without function
words ("a", "the", ...): "a cat wearing a hat above a dog on a white background" gives cat and hat
the top, dog the bottom.

Count guidance is built the same way for numbers: "four stars" gives the words of its phrase four
places (cells of a grid the seed picks) with a bias of ``+strength`` at each place's centre falling
to ``-strength`` away from them (``counts``, ``count_places``, ``count_map``), under its own strength.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from latentgen.tokenizer import span_tokens

# Phrase (lower-case words) → (axis, side of the subject): axis 0 runs top to bottom, 1 left to right;
# side -1 is the top/left end, +1 the bottom/right end.
RELATION_PHRASES: dict[tuple[str, ...], tuple[int, int]] = {
    ("above",): (0, -1),
    ("over",): (0, -1),
    ("below",): (0, 1),
    ("under",): (0, 1),
    ("beneath",): (0, 1),
    ("underneath",): (0, 1),
    ("to", "the", "left", "of"): (1, -1),
    ("on", "the", "left", "of"): (1, -1),
    ("left", "of"): (1, -1),
    ("to", "the", "right", "of"): (1, 1),
    ("on", "the", "right", "of"): (1, 1),
    ("right", "of"): (1, 1),
    # Either side would be true; reading order picks the first noun's (left)
    ("next", "to"): (1, -1),
    ("beside",): (1, -1),
}
_BY_LENGTH = sorted(RELATION_PHRASES, key=len, reverse=True)  # "to the left of" before "left of"
_STOP = {"a", "an", "the", "one", "single", "of", "to", "with", "wearing"}  # not a noun's own words
_ENDS_BOTH = {"and", ",", ".", ";", ":", "!", "?"}  # a noun phrase never runs across these
_ENDS_OBJECT = {"on", "in", "at"}  # "... a dog on a white background": the object ends at "on"
_ITEM = re.compile(r"[^\W_]+(?:'[^\W_]+)?|[,.;:!?]")


@dataclass(frozen=True)
class Placement:
    """Where one word of the prompt goes: its character span, and the side of ``axis`` it belongs to."""

    start: int  # character offsets into the prompt
    end: int
    axis: int  # 0: vertical (top to bottom), 1: horizontal (left to right)
    side: int  # -1: the top / left end, +1: the bottom / right end


def placements(text: str) -> list[Placement]:
    """The words of ``text`` that a relation places, each once (the first relation to claim it wins).

    >>> [(p.axis, p.side) for p in placements("a red cat above a dog")]
    [(0, -1), (0, -1), (0, 1)]
    """
    items = _items(text)
    found = _placed(items, _relations([w for w, _, _ in items]))
    return [found[k] for k in sorted(found)]


def _placed(
    items: list[tuple[str, int, int]], relations: list[tuple[int, int, tuple[str, ...]]]
) -> dict[int, Placement]:
    """Word index → its placement, for the words of ``items`` that ``relations`` place."""
    words = [w for w, _, _ in items]
    found: dict[int, Placement] = {}
    for n, (start, end, phrase) in enumerate(relations):
        axis, side = RELATION_PHRASES[phrase]
        before = relations[n - 1][1] if n else 0  # a phrase never runs across another relation
        after = relations[n + 1][0] if n + 1 < len(relations) else len(words)
        first = next((k + 1 for k in range(start - 1, before - 1, -1) if words[k] in _ENDS_BOTH), before)
        last = next((k for k in range(end, after) if words[k] in _ENDS_BOTH | _ENDS_OBJECT), after)
        subject = [k for k in range(first, start) if words[k] not in _STOP]
        obj = [k for k in range(end, last) if words[k] not in _STOP]
        if subject and obj:  # "left of the cat" alone places nothing
            for ks, s in ((subject, side), (obj, -side)):
                for k in ks:
                    found.setdefault(k, Placement(items[k][1], items[k][2], axis, s))
    return found


def _items(text: str) -> list[tuple[str, int, int]]:
    """The words and punctuation of ``text``: (lower-case item, start, end) with character offsets."""
    return [(m.group().lower(), m.start(), m.end()) for m in _ITEM.finditer(text)]


def _relations(words: list[str]) -> list[tuple[int, int, tuple[str, ...]]]:
    """(first word, one past the last word, phrase) of every relation phrase in ``words``, left to
    right, the longest phrase first where several start at one word ("to the left of", not "left of")."""
    relations = []
    i = 0
    while i < len(words):
        phrase = next((p for p in _BY_LENGTH if tuple(words[i : i + len(p)]) == p), None)
        if phrase is None:
            i += 1
        else:
            relations.append((i, i + len(phrase), phrase))
            i += len(phrase)
    return relations


SIDE_NAMES = {(0, -1): "top", (0, 1): "bottom", (1, -1): "left", (1, 1): "right"}


def describe(text: str) -> str:
    """What layout guidance does with ``text``, for the log: "red cat → top, dog → bottom" ('' if nothing).

    >>> describe("a red cat above a dog")
    'red cat → top, dog → bottom'
    """
    groups: list[tuple[list[str], tuple[int, int]]] = []
    for p in placements(text):
        where = (p.axis, p.side)
        if groups and groups[-1][1] == where:
            groups[-1][0].append(text[p.start : p.end])
        else:
            groups.append(([text[p.start : p.end]], where))
    return ", ".join(f"{' '.join(ws)} → {SIDE_NAMES[where]}" for ws, where in groups)


def token_placements(tokenizer, text: str, copies: int = 1) -> dict[int, tuple[int, int]]:
    """Token index (in the tokenized text, BOS counted) → (axis, side) for every placed word of ``text``.

    ``copies`` > 1: the text encoder reads ``text`` that many times, space-separated
    (``latentgen.tokenizer.repeat_prompt``), and every copy's words are placed alike. A word split
    into several tokens places them all. Tokens past the tokenizer's limit are left out.
    """
    text = text.strip()  # as repeat_prompt joins the copies
    found = placements(text)
    if not found:
        return {}
    spans = span_tokens(tokenizer, text, [(p.start, p.end) for p in found], copies)
    tokens: dict[int, tuple[int, int]] = {}
    for p, ks in zip(found, spans, strict=True):
        for k in ks:
            tokens.setdefault(k, (p.axis, p.side))
    return tokens


def bias_map(tokens: dict[int, tuple[int, int]], length: int, height: int, width: int) -> torch.Tensor:
    """Bias per token and latent cell, ``[length, height, width]`` in [-1, 1] (times strength later).

    A placed token's row is the cell's coordinate along its axis, from -1 at the far edge of the other
    side to +1 at the far edge of its own; every other token's row is 0.
    """
    bias = torch.zeros(length, height, width)
    rows = torch.linspace(-1, 1, height).view(height, 1).expand(height, width)
    cols = torch.linspace(-1, 1, width).view(1, width).expand(height, width)
    for k, (axis, side) in tokens.items():
        bias[k] = (rows if axis == 0 else cols) * side
    return bias


# Count guidance: "three hearts" gives the phrase's words three places, spread over the picture.
# Number words and numerals from two to ten are read; "one" and "a" are not counts to spread.
NUMBERS: dict[str, int] = {
    **{
        w: n
        for n, w in enumerate(("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"), 2)
    },
    **{str(n): n for n in range(2, 11)},
}
_ENDS_COUNT = _ENDS_BOTH | _ENDS_OBJECT | {"with", "wearing"}  # "three cats wearing hats": the cats
GRID_SPAN = 0.8  # the places lie on a grid over the middle 80% of each side (10% margins)
REACH = 0.625  # a place's bias falls from +1 at its centre to -1 at this many grid spacings from it


@dataclass(frozen=True)
class Count:
    """A counted phrase of the prompt: its character span (number word included) and the number."""

    start: int
    end: int
    number: int


def counts(text: str) -> list[Count]:
    """The counted noun phrases of ``text``: a number word, then the words up to the phrase's end
    (a comma, "and", "on"/"in"/"at", "with", "wearing", a relation or another number). A phrase a
    relation already places ("two cats above a dog") is left to layout guidance.

    >>> [(c.number, "three red hearts"[c.start : c.end]) for c in counts("three red hearts")]
    [(3, 'three red hearts')]
    """
    items = _items(text)
    words = [w for w, _, _ in items]
    relations = _relations(words)
    relation_at = {start for start, _, _ in relations}
    placed = _placed(items, relations)  # word indices a relation places
    found = []
    for i, word in enumerate(words):
        if word not in NUMBERS:
            continue
        j = i + 1
        while j < len(words) and not (words[j] in _ENDS_COUNT or words[j] in NUMBERS or j in relation_at):
            j += 1
        start, end = items[i][1], items[j - 1][2]
        if j > i + 1 and not any(k in placed for k in range(i, j)):
            found.append(Count(start, end, NUMBERS[word]))
    return found


def describe_counts(text: str) -> str:
    """What count guidance does with ``text``, for the log: "three red hearts → 3 places" ('' if nothing)."""
    return ", ".join(f"{text[c.start : c.end]} → {c.number} places" for c in counts(text))


Region = tuple[float, float, float, float]  # (left, top, right, bottom) in [0, 1] of the picture
WHOLE: Region = (0.0, 0.0, 1.0, 1.0)


def count_places(
    numbers: list[int], seed: int, region: Region = WHOLE
) -> tuple[list[list[tuple[float, float]]], float]:
    """Where the objects of a prompt's counts go: per count its places' centres ``(x, y)`` in [0, 1]
    (x from the left, y from the top), and the spacing of the grid they lie on.

    The places are cells of a square grid over the middle of the picture, 2 x 2 for up to four
    objects in all, 3 x 3 for up to nine, and so on; ``seed`` picks the cells and jitters each place
    a little, so the images of one prompt differ and a batch equals its singles. The first count
    gets the first places, and so on. (Measured on the built-in model: cells of the grid did better
    than fixed figures, a triangle for three, a row for three: benchmarks/builtin_training.md.)

    ``region``: the part of the picture the grid covers (inpainting: the box of the mask), the whole
    picture by default; the spacing is then the grid's along the region's shorter side.
    """
    rng = random.Random(seed)
    total = sum(numbers)
    side = max(2, math.ceil(math.sqrt(total)))
    spacing = GRID_SPAN / side
    low = (1 - GRID_SPAN) / 2 + spacing / 2  # the first cell's centre: 0.3 on a 2 x 2 grid
    cells = sorted(rng.sample(range(side * side), total))
    jitter = 0.1 * spacing
    points = [
        (
            low + (c % side) * spacing + rng.uniform(-jitter, jitter),
            low + (c // side) * spacing + rng.uniform(-jitter, jitter),
        )
        for c in cells
    ]
    left, top, right, bottom = region
    points = [(left + x * (right - left), top + y * (bottom - top)) for x, y in points]
    out, first = [], 0
    for n in numbers:
        out.append(points[first : first + n])
        first += n
    return out, spacing * min(right - left, bottom - top)


def count_map(centres: list[tuple[float, float]], spacing: float, height: int, width: int) -> torch.Tensor:
    """Bias ``[height, width]`` in [-1, 1] for one count's words: +1 at its places' centres, falling
    linearly with the distance to the nearest one to -1 at ``REACH`` grid spacings and beyond."""
    ys = ((torch.arange(height) + 0.5) / height).view(height, 1)
    xs = ((torch.arange(width) + 0.5) / width).view(1, width)
    dist = torch.stack([((ys - y) ** 2 + (xs - x) ** 2).sqrt() for x, y in centres]).amin(0)
    return (1 - 2 * dist / (REACH * spacing)).clamp(-1, 1)


def token_counts(tokenizer, text: str, copies: int = 1) -> list[tuple[tuple[int, ...], int]]:
    """(token indices, number) for every counted phrase of ``text`` as the text encoder reads it
    (BOS counted; ``copies`` as in :func:`token_placements`); phrases past the limit are left out."""
    text = text.strip()
    found = counts(text)
    if not found:
        return []
    spans = span_tokens(tokenizer, text, [(c.start, c.end) for c in found], copies)
    return [(tuple(ks), c.number) for c, ks in zip(found, spans, strict=True) if ks]


class _BiasedCrossAttention:
    """Wraps one cross-attention processor: the scores get the batch's layout bias added."""

    def __init__(self, inner, guide: LayoutBias):
        self.inner = inner
        self.guide = guide

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        if encoder_hidden_states is None:  # self-attention: nothing to place
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        bias = self.guide.at(hidden_states)  # [N, Q, T]
        if attention_mask is not None:  # the U-Net's own mask over tokens, [N, 1, T]: keep it
            bias = bias + attention_mask
        # One call for the whole batch (rows without a relation add zeros): splitting it into biased
        # and unbiased calls cost a tenth more time per image on the built-in model.
        return self.inner(attn, hidden_states, encoder_hidden_states, bias, **kwargs)


class LayoutBias:
    """The bias of one U-Net batch, ``[N, T, h, w]`` on the latent grid, pooled to each layer's grid."""

    def __init__(self, bias: torch.Tensor):
        self.bias = bias  # [N, T, h, w], strength included; rows with nothing to place are 0
        self._levels: dict[tuple, torch.Tensor] = {}
        self._first = 0  # rows from here on are the batch the U-Net sees (see ``from_row``)

    @contextmanager
    def from_row(self, first: int) -> Iterator[None]:
        """Inside the block the U-Net sees only rows ``first`` onwards (the conditional half, for
        subject guidance's extra pass)."""
        self._first = first
        try:
            yield
        finally:
            self._first = 0

    def at(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The bias on the grid of ``hidden_states`` (``[N, Q, C]`` or ``[N, C, H, W]``): ``[N, Q, T]``,
        in its dtype and on its device."""
        n, _, h, w = self.bias.shape
        n -= self._first
        if hidden_states.shape[0] != n:
            raise ValueError(f"layout bias is for a batch of {n}, the layer has {hidden_states.shape[0]}")
        if hidden_states.ndim == 4:
            size = tuple(hidden_states.shape[-2:])
        else:  # a U-Net halves its grid per level, rounding up
            q, f = hidden_states.shape[1], 1
            while -(-h // f) * -(-w // f) > q:
                f *= 2
            size = (-(-h // f), -(-w // f))
            if size[0] * size[1] != q:
                raise ValueError(f"cannot place a {q}-position layer on a {h}x{w} latent grid")
        key = (size, hidden_states.dtype, hidden_states.device, self._first)
        level = self._levels.get(key)
        if level is None:
            pooled = F.adaptive_avg_pool2d(self.bias[self._first :], size)  # [N, T, h', w']
            level = pooled.flatten(2).transpose(1, 2).to(hidden_states.device, hidden_states.dtype)
            self._levels[key] = level
        return level


@contextmanager
def wrapped_cross_attention(unet, wrap: Callable[[object], object] | None) -> Iterator[None]:
    """Inside the block every cross-attention processor ``p`` of ``unet`` is ``wrap(p)`` (self-attention
    is left alone); the processors are restored after. ``wrap`` None: nothing changes."""
    if wrap is None:
        yield
        return
    original = unet.attn_processors
    unet.set_attn_processor(
        {name: wrap(proc) if name.endswith("attn2.processor") else proc for name, proc in original.items()}
    )
    try:
        yield
    finally:
        unet.set_attn_processor(original)


def layout_attention(unet, guide: LayoutBias | None):
    """Inside the block, ``unet``'s cross-attention layers add ``guide``'s bias; restored after."""
    wrap = None if guide is None else (lambda proc: _BiasedCrossAttention(proc, guide))
    return wrapped_cross_attention(unet, wrap)
