"""A procedurally rendered, captioned image world, and a judge of images against prompts.

The world: a deterministic map from (seed, index) to a 64x64 RGB image of simple objects (circle,
square, triangle, star, heart, cat, hat) in named colours, sizes, positions, counts and relations,
with several true captions and the structured scene. The built-in diffusion model trains on it.

The judge: reads an image (colour segmentation + a small CNN for object kinds) and says whether it
shows what a ``Spec`` asks for. ``eval_prompts()`` is a fixed GenEval-style prompt set with specs;
``parse_prompt`` turns any prompt of the world's language (every caption) into a spec.

    from latentgen.world import render_sample, eval_prompts, judge_ok
    sample = render_sample(seed=0, index=7)        # .image, .captions, .scene
    prompt = eval_prompts()[0]                     # .category, .prompt, .spec
    judge_ok(sample.image, prompt.spec)            # True / False
    judge(sample.image, parse_prompt("two red stars"))  # {"objects": ..., "count": ..., "colors": ...}
"""

from .captions import swap_subjects, unknown_words, vocabulary, word_objects
from .judge import Detection, Reading, check_reading, judge, judge_ok, read_image, reading_from_scene
from .layout import parse_layout_mix, random_scene, scene_for_spec
from .palette import COLOUR_NAMES, COLOURS
from .parse import parse_prompt
from .prompts import CATEGORIES, EvalPrompt, eval_prompts
from .render import IMAGE_SIZE, render_sample, render_scene
from .scene import KINDS, POSITIONS, RELATIONS, SIZES, Relation, Sample, Scene, SceneObject
from .spec import ObjectSpec, Spec, spec_from_scene

__all__ = [
    "CATEGORIES",
    "COLOURS",
    "COLOUR_NAMES",
    "IMAGE_SIZE",
    "KINDS",
    "POSITIONS",
    "RELATIONS",
    "SIZES",
    "Detection",
    "EvalPrompt",
    "ObjectSpec",
    "Reading",
    "Relation",
    "Sample",
    "Scene",
    "SceneObject",
    "Spec",
    "check_reading",
    "eval_prompts",
    "judge",
    "judge_ok",
    "parse_layout_mix",
    "parse_prompt",
    "random_scene",
    "read_image",
    "reading_from_scene",
    "render_sample",
    "render_scene",
    "scene_for_spec",
    "spec_from_scene",
    "swap_subjects",
    "unknown_words",
    "vocabulary",
    "word_objects",
]
