"""Reading a prompt of the world's language into the ``Spec`` the judge checks.

The grammar covers every caption and evaluation prompt:

    prompt      := count-phrase [background] | object [link object] [background]
    count-phrase:= number [size] [colour] plural            "three small red hearts"
    object      := determiner [size] [colour] kind [place]   "a big blue star in the top left corner"
    link        := "and" | relation | "wearing" | "with"     "above", "to the left of", "next to"
    background  := "on" ("a" | "an") colour "background"
"""

from __future__ import annotations

from ..errors import UsageError
from .captions import DETERMINERS, NUMBER_WORDS, POSITION_PHRASES, RELATION_PHRASES, WEARING_PHRASES, words
from .captions import unknown_words as _unknown_words
from .palette import COLOUR_NAMES
from .scene import KINDS, PLURALS, SIZES, WEARING
from .spec import ObjectSpec, Spec, check_spec

_COUNTS = {word: n for n, word in NUMBER_WORDS.items() if n > 1}  # "one" is a determiner
_KIND_OF_PLURAL = {plural: kind for kind, plural in PLURALS.items()}
# Phrase (as a word tuple) -> meaning; longest first, so "to the left of" wins over "left of".
_PLACES = sorted(
    ((tuple(p.split()), name) for name, ps in POSITION_PHRASES.items() for p in ps), key=lambda x: -len(x[0])
)
_RELATIONS = sorted(
    ((tuple(p.split()), name) for name, ps in RELATION_PHRASES.items() for p in ps), key=lambda x: -len(x[0])
)
_DETERMINERS = sorted((tuple(d.split()) for d in (*DETERMINERS, "an")), key=len, reverse=True)


class _Words:
    """A cursor over a prompt's words."""

    def __init__(self, prompt: str):
        self.prompt = prompt
        self.words = words(prompt)
        self.at = 0

    def peek(self) -> str | None:
        return self.words[self.at] if self.at < len(self.words) else None

    def take(self, options) -> str | None:
        """Consume and return the next word if it is in ``options``."""
        word = self.peek()
        if word is not None and word in options:
            self.at += 1
            return word
        return None

    def take_phrase(self, phrases: list) -> object | None:
        """Consume the first of ``phrases`` ((words, meaning) pairs) found here; return its meaning."""
        for phrase, meaning in phrases:
            if tuple(self.words[self.at : self.at + len(phrase)]) == phrase:
                self.at += len(phrase)
                return meaning
        return None

    def fail(self, expected: str) -> UsageError:
        found = self.peek()
        where = f"at {found!r}" if found else "at the end"
        return UsageError(f"cannot read prompt {self.prompt!r} {where}: expected {expected}")


def parse_prompt(prompt: str) -> Spec:
    """The spec of ``prompt``; raises UsageError naming unknown words or where the prompt breaks off."""
    unknown = _unknown_words(prompt)
    if unknown:
        raise UsageError(f"prompt {prompt!r} has words outside the world's vocabulary: {', '.join(unknown)}")
    cursor = _Words(prompt)
    count = cursor.take(_COUNTS)
    if count is not None:
        objects, relation = (_count_phrase(cursor),), None
    else:
        first = _object(cursor)
        objects, relation = (first,), None
        if cursor.take(("and",)):
            objects = (first, _object(cursor))
        elif (found := cursor.take_phrase(_RELATIONS)) is not None or cursor.take(WEARING_PHRASES):
            relation = found or WEARING
            objects = (first, _object(cursor))
    background = _background(cursor)
    if cursor.peek() is not None:
        raise cursor.fail("the end of the prompt")
    spec = Spec(objects, count=_COUNTS[count] if count else None, relation=relation, background=background)
    check_spec(spec)
    return spec


def _count_phrase(cursor: _Words) -> ObjectSpec:
    size, colour = cursor.take(SIZES), cursor.take(COLOUR_NAMES)
    plural = cursor.take(_KIND_OF_PLURAL)
    if plural is None:
        raise cursor.fail(f"one of {', '.join(_KIND_OF_PLURAL)}")
    return ObjectSpec(_KIND_OF_PLURAL[plural], colour, size)


def _object(cursor: _Words) -> ObjectSpec:
    if cursor.take_phrase([(d, d) for d in _DETERMINERS]) is None:
        raise cursor.fail('"a", "an", "one" or "a single"')
    size, colour = cursor.take(SIZES), cursor.take(COLOUR_NAMES)
    kind = cursor.take(KINDS)
    if kind is None:
        raise cursor.fail(f"one of {', '.join(KINDS)}")
    return ObjectSpec(kind, colour, size, cursor.take_phrase(_PLACES))


def _background(cursor: _Words) -> str | None:
    start = cursor.at
    if cursor.take(("on",)) and cursor.take(("a", "an")):
        colour = cursor.take(COLOUR_NAMES)
        if colour is not None and cursor.take(("background",)):
            return colour
    cursor.at = start
    return None
