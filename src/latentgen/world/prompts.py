"""A fixed GenEval-style evaluation set: prompts in six categories, each with the spec the judge checks.

Mirrors GenEval's categories on this world's objects: "single_object" ("a circle"), "two_objects"
("a circle and a star", "a cat wearing a hat"), "counting" ("three hearts"), "colors"
("a blue square"), "position" ("a star above a heart") and "color_attr" ("a red circle and a blue
star"). The set is built from constants only, so it is identical on every call and every machine.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from .captions import NUMBER_WORDS, RELATION_PHRASES
from .palette import COLOUR_NAMES, contrasts
from .scene import KINDS, PLURALS, WEARING
from .spec import ObjectSpec, Spec

CATEGORIES: tuple[str, ...] = ("single_object", "two_objects", "counting", "colors", "position", "color_attr")
POSITION_RELATIONS: tuple[str, ...] = ("above", "below", "left of", "right of")


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt, its GenEval category and exactly what the judge must check."""

    category: str
    prompt: str
    spec: Spec


def eval_prompts() -> list[EvalPrompt]:
    """The evaluation set, in a fixed order: 56-70 prompts per category, 372 in all."""
    return [
        *_single_object(),
        *_two_objects(),
        *_counting(),
        *_colors(),
        *_position(),
        *_color_attr(),
    ]


def _a(word: str) -> str:
    """``word`` with its indefinite article."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _ordered_pairs() -> list[tuple[str, str]]:
    return list(itertools.permutations(KINDS, 2))


def _single_object() -> list[EvalPrompt]:
    """Each kind bare, with a determiner, with a size, and on three backgrounds (8 x 7 = 56)."""
    prompts = []
    backgrounds = itertools.cycle(COLOUR_NAMES)
    for kind in KINDS:
        one = (ObjectSpec(kind),)
        prompts += [
            EvalPrompt("single_object", _a(kind), Spec(one)),
            EvalPrompt("single_object", f"one {kind}", Spec(one)),
            EvalPrompt("single_object", f"a single {kind}", Spec(one)),
            EvalPrompt("single_object", f"a small {kind}", Spec((ObjectSpec(kind, size="small"),))),
            EvalPrompt("single_object", f"a big {kind}", Spec((ObjectSpec(kind, size="big"),))),
        ]
        for background in itertools.islice(backgrounds, 3):
            text = f"{_a(kind)} on {_a(background)} background"
            prompts.append(EvalPrompt("single_object", text, Spec(one, background=background)))
    return prompts


def _two_objects() -> list[EvalPrompt]:
    """Every ordered pair of kinds, unordered pairs again with "one", and a cat wearing a hat (64)."""
    prompts = [
        EvalPrompt("two_objects", f"{_a(a)} and {_a(b)}", Spec((ObjectSpec(a), ObjectSpec(b))))
        for a, b in _ordered_pairs()
    ]
    prompts += [
        EvalPrompt("two_objects", f"one {a} and one {b}", Spec((ObjectSpec(a), ObjectSpec(b))))
        for a, b in itertools.combinations(KINDS, 2)
    ]
    wearing = Spec((ObjectSpec("cat"), ObjectSpec("hat")), relation=WEARING)
    prompts.append(EvalPrompt("two_objects", "a cat wearing a hat", wearing))
    return prompts


def _counting() -> list[EvalPrompt]:
    """Two to four of each kind: bare, with a colour, and small (3 x 7 x 3 = 63)."""
    prompts = []
    colours = itertools.cycle(COLOUR_NAMES)
    for count in (2, 3, 4):
        number = NUMBER_WORDS[count]
        for kind in KINDS:
            plural, colour = PLURALS[kind], next(colours)
            prompts += [
                EvalPrompt("counting", f"{number} {plural}", Spec((ObjectSpec(kind),), count=count)),
                EvalPrompt(
                    "counting", f"{number} {colour} {plural}", Spec((ObjectSpec(kind, colour),), count=count)
                ),
                EvalPrompt(
                    "counting",
                    f"{number} small {plural}",
                    Spec((ObjectSpec(kind, size="small"),), count=count),
                ),
            ]
    return prompts


def _colors() -> list[EvalPrompt]:
    """Every colour on every kind (10 x 7 = 70)."""
    return [
        EvalPrompt("colors", _a(f"{colour} {kind}"), Spec((ObjectSpec(kind, colour),)))
        for colour in COLOUR_NAMES
        for kind in KINDS
    ]


def _position() -> list[EvalPrompt]:
    """Every ordered pair with one of four relations in turn, unordered pairs "next to" (42 + 21 = 63)."""
    prompts = []
    for i, (a, b) in enumerate(_ordered_pairs()):
        relation = POSITION_RELATIONS[i % len(POSITION_RELATIONS)]
        phrase = RELATION_PHRASES[relation][-1]  # GenEval's wording: "left of", not "to the left of"
        spec = Spec((ObjectSpec(a), ObjectSpec(b)), relation=relation)
        prompts.append(EvalPrompt("position", f"{_a(a)} {phrase} {_a(b)}", spec))
    for a, b in itertools.combinations(KINDS, 2):
        spec = Spec((ObjectSpec(a), ObjectSpec(b)), relation="next to")
        prompts.append(EvalPrompt("position", f"{_a(a)} next to {_a(b)}", spec))
    return prompts


def _color_attr() -> list[EvalPrompt]:
    """Every ordered pair with two different colours, and cats in hats of contrasting colour (42 + 14)."""
    prompts = []
    n = len(COLOUR_NAMES)
    for i, (a, b) in enumerate(_ordered_pairs()):
        colour_a, colour_b = COLOUR_NAMES[i % n], COLOUR_NAMES[(3 * i + 5) % n]
        if colour_a == colour_b:
            colour_b = COLOUR_NAMES[(3 * i + 6) % n]
        spec = Spec((ObjectSpec(a, colour_a), ObjectSpec(b, colour_b)))
        prompts.append(
            EvalPrompt("color_attr", f"{_a(colour_a + ' ' + a)} and {_a(colour_b + ' ' + b)}", spec)
        )
    hat_pairs = [(c, h) for c, h in itertools.permutations(COLOUR_NAMES, 2) if contrasts(c, h)]
    for cat, hat in hat_pairs[:: len(hat_pairs) // 14][:14]:
        spec = Spec((ObjectSpec("cat", cat), ObjectSpec("hat", hat)), relation=WEARING)
        prompts.append(EvalPrompt("color_attr", f"{_a(cat + ' cat')} wearing {_a(hat + ' hat')}", spec))
    return prompts
