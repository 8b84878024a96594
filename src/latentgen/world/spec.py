"""What the judge checks: a partial description of a scene.

A ``Spec`` names only what a prompt asks for; everything it leaves as None is not checked. The same
type describes a whole rendered scene (``spec_from_scene``), with ``exact=True``: then the image must
hold no other object.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from .palette import COLOUR_NAMES
from .scene import KINDS, POSITIONS, RELATIONS, SIZES, WEARING, Scene

MAX_COUNT = 4


@dataclass(frozen=True)
class ObjectSpec:
    """An object the image must show; None fields are not checked."""

    kind: str
    colour: str | None = None
    size: str | None = None
    position: str | None = None  # a name from scene.POSITIONS


@dataclass(frozen=True)
class Spec:
    """What an image must show.

    - ``objects``: one or two objects (two: distinct objects in the image).
    - ``count``: exactly this many objects of ``objects[0]``'s kind (counting prompts); the object's
      colour and size, when given, must then hold for every one of them.
    - ``relation``: ``objects[0]`` is ``relation`` ``objects[1]`` ("above", "below", "left of",
      "right of", "next to", "wearing").
    - ``background``: the background colour.
    - ``exact``: the image holds nothing but the objects named.
    """

    objects: tuple[ObjectSpec, ...]
    count: int | None = None
    relation: str | None = None
    background: str | None = None
    exact: bool = False


def spec_from_scene(scene: Scene) -> Spec:
    """The full description of a rendered scene, for validating the judge against ground truth."""
    if scene.layout == "count":
        first = scene.objects[0]
        return Spec(
            objects=(ObjectSpec(first.kind, first.colour, first.size),),
            count=len(scene.objects),
            background=scene.background,
            exact=True,
        )
    relation = scene.relation
    order = list(range(len(scene.objects)))
    if relation is not None:  # the spec's relation is always objects[0] -> objects[1]
        order = [relation.subject, relation.object] + [
            i for i in order if i not in (relation.subject, relation.object)
        ]
    hat_worn = relation is not None and relation.name == "wearing"
    objects = tuple(
        ObjectSpec(o.kind, o.colour, None if hat_worn and o.kind == "hat" else o.size, o.position)
        for o in (scene.objects[i] for i in order)
    )
    name = relation.name if relation else None
    return Spec(objects=objects, relation=name, background=scene.background, exact=True)


def check_spec(spec: Spec) -> None:
    """Raise UsageError, naming the value, if ``spec`` asks for something this world cannot show."""
    if not 1 <= len(spec.objects) <= 2:
        raise UsageError(f"a spec names one or two objects, not {len(spec.objects)}")
    for obj in spec.objects:
        _check_value("kind", obj.kind, KINDS)
        _check_value("colour", obj.colour, COLOUR_NAMES, optional=True)
        _check_value("size", obj.size, SIZES, optional=True)
        _check_value("position", obj.position, POSITIONS, optional=True)
    _check_value("background", spec.background, COLOUR_NAMES, optional=True)
    _check_value("relation", spec.relation, (*RELATIONS, WEARING), optional=True)
    if spec.count is not None and (len(spec.objects) != 1 or not 1 <= spec.count <= MAX_COUNT):
        raise UsageError(f"a count spec names one object and a count in 1..{MAX_COUNT}, not {spec.count}")
    if spec.relation is not None and len(spec.objects) != 2:
        raise UsageError(f"relation {spec.relation!r} needs two objects, got {len(spec.objects)}")
    if spec.relation == WEARING and tuple(o.kind for o in spec.objects) != ("cat", "hat"):
        raise UsageError("only a cat can wear a hat: objects must be (cat, hat)")


def _check_value(field: str, value: object, allowed: tuple, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value not in allowed:
        raise UsageError(f"unknown {field} {value!r}; expected one of: {', '.join(map(str, allowed))}")
