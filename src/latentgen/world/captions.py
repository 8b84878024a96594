"""Captions: several true phrasings of one scene, and the world's vocabulary.

A caption may leave out any attribute (size, colour, position, background) but never states a false
one. Phrasings vary (determiners, word order, "left of" / "to the left of", the inverse relation,
"centre" / "center" / "middle") so a text encoder learns the words rather than a few templates.
"""

from __future__ import annotations

import random
import re

from .palette import COLOUR_NAMES
from .scene import INVERSE, KINDS, PLURALS, SIZES, Scene, SceneObject

NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
DETERMINERS: tuple[str, ...] = ("a", "one", "a single")
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left corner", "at the top left"),
    "top": ("at the top",),
    "top right": ("in the top right corner", "at the top right"),
    "left": ("on the left",),
    "centre": ("in the centre", "in the center", "in the middle"),
    "right": ("on the right",),
    "bottom left": ("in the bottom left corner", "at the bottom left"),
    "bottom": ("at the bottom",),
    "bottom right": ("in the bottom right corner", "at the bottom right"),
}
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "above": ("above",),
    "below": ("below",),
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "next to": ("next to",),
}
WEARING_PHRASES: tuple[str, ...] = ("wearing", "with")
OTHER_WORDS: tuple[str, ...] = ("an", "and", "on", "background")

CAPTIONS_PER_SAMPLE = 4
SIZE_P, COLOUR_P, POSITION_P, BACKGROUND_P = 0.4, 0.75, 0.6, 0.35  # chance a caption mentions each
_WORD = re.compile(r"[^\W_]+")


def vocabulary() -> list[str]:
    """Every word any caption or evaluation prompt may use, sorted, lower case."""
    phrases = [
        *DETERMINERS,
        *NUMBER_WORDS.values(),
        *SIZES,
        *COLOUR_NAMES,
        *KINDS,
        *PLURALS.values(),
        *(p for group in POSITION_PHRASES.values() for p in group),
        *(p for group in RELATION_PHRASES.values() for p in group),
        *WEARING_PHRASES,
        *OTHER_WORDS,
    ]
    return sorted({word for phrase in phrases for word in phrase.split()})


def words(text: str) -> list[str]:
    """The words of ``text``: lower case, punctuation stripped."""
    return _WORD.findall(text.lower())


def unknown_words(prompt: str) -> list[str]:
    """Words of ``prompt`` outside the vocabulary, lower case, in order of first appearance."""
    known = set(vocabulary())
    unknown = [w for w in words(prompt) if w not in known]
    return list(dict.fromkeys(unknown))


def word_objects(caption: str, scene: Scene) -> list[int]:
    """For each word of ``caption`` (as :func:`words` splits it), the scene objects it describes.

    A bit mask over ``scene.objects`` (bit i = object i), 0 for words that describe no one object
    (determiners, relations, the background). A noun phrase's kind word and the number, size and
    colour words just before it describe every object of that kind: one in a pair or a wearing scene,
    where the two kinds differ, all of them in a count. Training uses it to tie words to places.
    """
    attributes = {*NUMBER_WORDS.values(), *SIZES, *COLOUR_NAMES}
    kind_of = {**{k: k for k in KINDS}, **{p: k for k, p in PLURALS.items()}}
    masks, pending = [], []  # pending: indices of attribute words waiting for their noun
    for word in words(caption):
        masks.append(0)
        if word in kind_of:
            mask = sum(1 << i for i, o in enumerate(scene.objects) if o.kind == kind_of[word])
            for i in (*pending, len(masks) - 1):
                masks[i] = mask
            pending = []
        elif word in attributes:
            pending.append(len(masks) - 1)
        else:  # "background", "and", a relation...: the attributes before it were not an object's
            pending = []
    return masks


def swap_subjects(caption: str) -> str | None:
    """``caption`` with its two noun phrases swapped around its stated direction, or None.

    "a red circle to the left of a blue square on a white background" becomes "a blue square to the
    left of a red circle on a white background": the same words, false of every scene the caption is
    true of. Only "above", "below", "left of" and "right of" change meaning when swapped; captions
    with no such relation (one object, a count, "and", "next to", a cat wearing a hat) give None.
    """
    ws = caption.split()
    kind_words = set(KINDS)
    directional = sorted(
        (p.split() for name in ("above", "below", "left of", "right of") for p in RELATION_PHRASES[name]),
        key=len,
        reverse=True,
    )
    for i in range(1, len(ws)):
        phrase = next((p for p in directional if ws[i : i + len(p)] == p), None)
        if phrase is None:
            continue
        first, rest = ws[:i], ws[i + len(phrase) :]
        end = next((j for j, w in enumerate(rest) if w in kind_words), None)
        if first[-1] not in kind_words or end is None:
            return None
        return " ".join([*rest[: end + 1], *phrase, *first, *rest[end + 1 :]])
    return None


def captions(scene: Scene, rng: random.Random, n: int = CAPTIONS_PER_SAMPLE) -> list[str]:
    """``n`` distinct true captions of ``scene`` (fewer if the scene has fewer phrasings).

    The first caption states everything (sizes, colours, position, background); the others leave out
    attributes at random and vary the phrasing.
    """
    make = {"single": _single, "count": _count, "pair": _pair, "wearing": _wearing}[scene.layout]
    found = [make(scene, rng, full=True)]
    for _ in range(8 * n):
        if len(found) == n:
            break
        caption = make(scene, rng, full=False)
        if caption not in found:
            found.append(caption)
    return found


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _maybe(rng: random.Random, p: float, full: bool) -> bool:
    return full or rng.random() < p


def _noun_phrase(
    obj: SceneObject, rng: random.Random, full: bool, determiner: str = "a", size: bool = True
) -> str:
    """E.g. "a small red circle", "one circle", "an orange heart"."""
    words = []
    if size and _maybe(rng, SIZE_P, full):
        words.append(obj.size)
    if _maybe(rng, COLOUR_P, full):
        words.append(obj.colour)
    words.append(obj.kind)
    if determiner == "a":
        determiner = article(words[0])
    return " ".join([determiner, *words])


def _background(scene: Scene, rng: random.Random, full: bool) -> str:
    if not _maybe(rng, BACKGROUND_P, full):
        return ""
    return f" on {article(scene.background)} {scene.background} background"


def _single(scene: Scene, rng: random.Random, full: bool) -> str:
    (obj,) = scene.objects
    text = _noun_phrase(obj, rng, full, determiner=rng.choice(DETERMINERS))
    if obj.position is not None and _maybe(rng, POSITION_P, full):
        text += " " + rng.choice(POSITION_PHRASES[obj.position])
    return text + _background(scene, rng, full)


def _count(scene: Scene, rng: random.Random, full: bool) -> str:
    first = scene.objects[0]
    words = [NUMBER_WORDS[len(scene.objects)]]
    if _maybe(rng, SIZE_P, full):
        words.append(first.size)
    if _maybe(rng, COLOUR_P, full):
        words.append(first.colour)
    words.append(PLURALS[first.kind] if len(scene.objects) > 1 else first.kind)
    return " ".join(words) + _background(scene, rng, full)


def _pair(scene: Scene, rng: random.Random, full: bool) -> str:
    relation = scene.relation
    subject, obj = scene.objects[relation.subject], scene.objects[relation.object]
    name = relation.name
    if not full and rng.random() < 0.5:  # state it the other way round
        subject, obj, name = obj, subject, INVERSE[name]
    a, b = _noun_phrase(subject, rng, full), _noun_phrase(obj, rng, full)
    form = "relation" if full else rng.choice(("relation", "relation", "and", "next to"))
    if form == "next to" and name not in ("left of", "right of"):
        form = "and"
    if form == "and":
        text = f"{a} and {b}"
    else:
        phrase = "next to" if form == "next to" else rng.choice(RELATION_PHRASES[name])
        text = f"{a} {phrase} {b}"
    return text + _background(scene, rng, full)


def _wearing(scene: Scene, rng: random.Random, full: bool) -> str:
    cat, hat = scene.objects  # built by layout.wearing_scene: the cat, then the hat drawn over it
    a, b = _noun_phrase(cat, rng, full), _noun_phrase(hat, rng, full, size=False)
    verb = WEARING_PHRASES[0] if full else rng.choice(WEARING_PHRASES)
    return f"{a} {verb} {b}" + _background(scene, rng, full)
