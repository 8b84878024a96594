"""The built-in model as shipped: packaged like any checkpoint, the default, and it follows prompts.

These run the real weights in ``src/latentgen/models/builtin`` (16×16 latents, so a few seconds on
CPU); the prompt-following bar here is a smoke test, the measured scores are in the README.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from latentgen import GenerationRequest, Pipeline, load_model
from latentgen.loader import BUILTIN_DIR, resolve_model
from latentgen.metadata import read
from latentgen.samplers import Sampler
from latentgen.tiny import reference_pipeline
from latentgen.world import eval_prompts, judge, judge_ok, parse_prompt, vocabulary

pytestmark = pytest.mark.skipif(
    not (BUILTIN_DIR / "model_index.json").is_file(), reason="the built-in model is not installed"
)


@pytest.fixture(scope="module")
def builtin():
    return load_model("builtin", device="cpu", dtype="fp32")


def test_shipped_as_fp16_safetensors_in_diffusers_layout_under_50_mb():
    index = json.loads((BUILTIN_DIR / "model_index.json").read_text())
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert part in index and (BUILTIN_DIR / part).is_dir(), part
    files = [p for p in BUILTIN_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 50 * 10**6  # the 50 MB, not the laxer 50 MiB
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt", ".pth")]
    assert {p.parent.name for p in weights} == {"unet", "vae", "text_encoder"}
    assert all(p.suffix == ".safetensors" for p in weights)
    from safetensors import safe_open

    for path in weights:
        with safe_open(path, "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}, path  # noqa: SIM118


def test_resolves_with_defaults_and_vocabulary_from_its_own_config():
    source = resolve_model("builtin")
    assert source.family == "builtin"
    assert source.vae_scale_factor == 4 and source.default_size == 64
    assert source.defaults.steps > 0 and source.defaults.guidance > 1
    assert set(source.vocabulary) == set(vocabulary())


def test_is_the_default_model_of_generate(run_cli, tmp_path):
    out = tmp_path / "cat.png"
    code, _stdout, err = run_cli("generate", "a cat wearing a hat", "--seed", 0, "--out", out)
    assert code == 0, err
    rec = read(out)
    assert rec["model"]["name"] == "builtin"
    assert Image.open(out).size == (64, 64)


def test_matches_diffusers_pipeline_on_its_components(builtin):
    """Pooled text in the time embedding and v-prediction: still a plain StableDiffusionPipeline (with
    layout and subject guidance and fill-in off: diffusers knows nothing of them, and this prompt has a
    relation one would place, two nouns the other would guide and no background the last would draw)."""
    req = GenerationRequest(
        "a red circle above a blue square",
        steps=8,
        sampler=Sampler.DDIM,
        seed=3,
        layout_strength=0.0,
        subject_strength=0.0,
        fill_in=False,
    )
    ours = Pipeline(builtin).generate(req.resolve(builtin.source))[0].image
    r = req.resolve(builtin.source)
    theirs = reference_pipeline(builtin, Sampler.DDIM)(
        r.prompt,
        num_inference_steps=8,
        guidance_scale=r.guidance,
        width=64,
        height=64,
        generator=torch.Generator("cpu").manual_seed(3),
    ).images[0]
    diff = np.abs(np.asarray(ours, np.int16) - np.asarray(theirs, np.int16))
    assert diff.max() <= 1


@pytest.mark.parametrize(
    "prompt",
    ["a circle on a red background", "two stars on a blue background", "a cat on a green background"],
)
def test_draws_the_background_it_is_asked_for(builtin, prompt):
    """What the shipped model does reliably (background right in 95% of eval images at its defaults);
    an untrained or text-blind model picks one of ten backgrounds at random."""
    made = Pipeline(builtin).generate(GenerationRequest(prompt, seed=0, num_images=4), batch_size=4)
    judged = [judge(g.image, parse_prompt(prompt))["background"] for g in made]
    assert sum(judged) >= 3, (prompt, judged)


def test_draws_the_colour_it_is_asked_for(builtin):
    """The judge's colour check (an object of the named kind, in the named colour): the shipped model
    (release 10) passes all 32 (seeds 0-3; release 4: 29, releases 5 to 9: 32); a model blind to colour
    words passes at most one in ten (ten colours). The bar, 30, is what no later release may fall below."""
    prompts = ["a red circle", "a blue square", "a green star", "a yellow heart"]
    prompts += ["a purple triangle", "an orange circle", "a pink square", "a black heart"]
    pipe = Pipeline(builtin)
    right = 0
    for prompt in prompts:
        made = pipe.generate(GenerationRequest(prompt, seed=0, num_images=4), batch_size=4)
        right += sum(judge(g.image, parse_prompt(prompt)).get("colors", False) for g in made)
    assert right >= 30, right


# The bar (and for "a cat wearing a hat" its own: 15 of 16 seeds). The shipped model (release 10)
# passes it at its defaults: with fill-in the cat and hat are right on 15 of seeds 0-15 (95 of 0-95).
# The weights alone, asked for the cat and hat with no colours named, manage 14 (81 of 96; releases 8
# and 9: 14): their misses are hats of the cat's colour (builtin_training.md).
# strict: a case that starts passing turns red, so its marker comes off with it.
NOT_ALONE = pytest.mark.xfail(
    strict=True, reason="without fill-in the cat and hat are right on 14 of 16 seeds"
)


@pytest.mark.parametrize(
    ("prompt", "seeds", "need", "fill_in"),
    [
        ("a cat wearing a hat", 16, 15, None),
        pytest.param("a cat wearing a hat", 16, 15, False, marks=NOT_ALONE),
        ("a red circle", 4, 3, None),
        ("two blue squares", 4, 3, None),
    ],
)
def test_follows_prompts_of_its_world(builtin, prompt, seeds, need, fill_in):
    request = GenerationRequest(prompt, seed=0, num_images=seeds, fill_in=fill_in)
    made = Pipeline(builtin).generate(request, batch_size=16)
    judged = [judge_ok(g.image, parse_prompt(prompt)) for g in made]
    assert sum(judged) >= need, (prompt, judged)


def _sides(builtin, relation_probe, prompt: str, subject: str, obj: str, **kw) -> list[bool | str]:
    """Per seed (16), ``relation_probe.subject_side``: True/False (is ``subject`` on the side the
    relation names, on its axis), else "wrong axis" or "missing". ``kw``: more request fields; fill-in
    is off, as when the figures below were measured."""
    from latentgen.world import read_image

    relation = next(r for r in relation_probe.RELATIONS if f" {r} " in prompt)
    request = GenerationRequest(prompt, seed=0, num_images=16, **{"fill_in": False, **kw})
    made = Pipeline(builtin).generate(request, batch_size=16)
    return [relation_probe.subject_side(read_image(g.image), subject, obj, relation) for g in made]


RELATIONS = [
    ("a green star above a yellow heart", "star", "heart"),
    ("a red circle left of a blue square", "circle", "square"),
]


@pytest.mark.parametrize(("prompt", "subject", "obj"), RELATIONS)
@pytest.mark.parametrize("guidance_off", [False, True], ids=["layout", "model-alone"])
def test_draws_both_objects_on_the_axis_its_relation_names(
    builtin, relation_probe, prompt, subject, obj, guidance_off
):
    """What the shipped model does with a relation: both objects, stacked for above/below, side by side
    for left of/right of, with layout guidance at its default and without (release 10: 16 and 15 of 16
    seeds with it, 15 and 16 alone, as release 9; a model blind to the relation word would pick the axis
    at random, about 8)."""
    off = {"layout_strength": 0.0, "subject_strength": 0.0} if guidance_off else {}
    sides = _sides(builtin, relation_probe, prompt, subject, obj, **off)
    assert sum(isinstance(s, bool) for s in sides) >= 14, sides


@pytest.mark.parametrize(("prompt", "subject", "obj"), RELATIONS)
def test_layout_guidance_puts_the_subject_on_the_side_its_relation_names(
    builtin, relation_probe, prompt, subject, obj
):
    """At the model's defaults layout guidance (latentgen.layout) decides the order the weights leave to
    chance (below): release 10 at strength 6 gets 16 and 15 of 16 (a square missing on the 16th), where
    the weights alone get 8 and 7."""
    assert resolve_model("builtin").defaults.layout_strength > 0
    sides = _sides(builtin, relation_probe, prompt, subject, obj)
    assert sum(s is True for s in sides) >= 14, sides


# Not yet: the model alone does not read word order (benchmarks/relation_probe.py with
# --layout-strength 0: order right 0.50 over 336 images, the same picture for swapped nouns), so which
# object comes first is a coin flip per seed (release 10: 8 of 15 and 7 of 16). 14 of 16 is out of a
# coin's reach (p < 0.3%).
ORDER_BLIND = pytest.mark.xfail(strict=True, reason="the built-in model alone ignores the order of the nouns")


@pytest.mark.parametrize(
    ("prompt", "subject", "obj"), [pytest.param(*r, marks=ORDER_BLIND) for r in RELATIONS]
)
def test_model_alone_puts_the_subject_on_the_side_its_relation_names(
    builtin, relation_probe, prompt, subject, obj
):
    sides = _sides(builtin, relation_probe, prompt, subject, obj, layout_strength=0.0, subject_strength=0.0)
    assert sum(s is True for s in sides) >= 14, sides


def test_subject_guidance_draws_both_of_two_objects(builtin):
    """At the model's defaults (fill-in off, as measured) subject guidance (latentgen.excite) gives each noun of "a circle and a
    star" a place: release 10 draws both kinds, judged right, in 36 and 37 of the 42 ordered pairs of
    kinds on seeds 0 and 1 (one U-Net batch per seed), where without it 32 and 35 (seed 2: 36 with and
    without). The bar, 70 of 84, is out of reach of the model without it."""
    import itertools

    from latentgen.pipeline import Job, Settings
    from latentgen.world.scene import KINDS

    assert resolve_model("builtin").defaults.subject_strength > 0
    prompts = [f"a {a} and a {b}" for a, b in itertools.permutations(KINDS, 2)]
    settings = Settings.of(GenerationRequest("(pairs)", fill_in=False).resolve(builtin.source))
    pipe, right = Pipeline(builtin), 0
    for seed in (0, 1):
        images, _ = pipe.sample([Job(p, "", seed) for p in prompts], settings)
        right += sum(judge_ok(im, parse_prompt(p)) for p, im in zip(prompts, images, strict=True))
    assert right >= 70, right


def test_text_states_carry_the_relation_the_u_net_ignores(text_order_probe):
    """benchmarks/text_order_probe.py on the shipped encoder: above/below is linearly readable from the
    second noun's state on held-out kind pairs (release 10: 1.000), so the order-blindness above is the
    U-Net's. The causal encoder's first noun has not seen the relation: chance (0.490), which a probe
    reading the wrong token (one after the relation) would not give."""
    report = text_order_probe.main(["--prompts", "800"])
    assert report["plain"]["second_noun"] >= 0.9, report
    assert 0.3 <= report["plain"]["first_noun"] <= 0.7, report


def test_inpaints_the_asked_object_and_keeps_the_rest(inpaint_demo, tmp_path):
    """benchmarks/inpaint_demo.py's first 8 cases, at the model's own inpainting defaults: release 10
    gets 7 right (45 of all 50 with layout guidance, 43 without; releases 8 and 9: 7 and 41; release 7:
    7 and 39); the unedited images are never accepted, so a model that ignored the prompt inside the
    mask would get none."""
    threads = str(torch.get_num_threads())
    summary = inpaint_demo.main(["--cases", "8", "--threads", threads, "--out", str(tmp_path)])
    defaults = resolve_model("builtin").defaults
    assert (summary["settings"]["steps"], summary["settings"]["guidance"]) == (
        defaults.inpaint_steps,
        defaults.inpaint_guidance,
    )
    assert summary["settings"]["resample"] == 3
    assert summary["kept_pixels_max_diff"] == 0 and summary["control_successes"] == 0
    assert summary["successes"] >= 6, [r["prompt"] for r in summary["results"] if not r["ok"]]


def test_different_prompts_give_different_pictures(builtin):
    pipe = Pipeline(builtin)
    a = pipe.generate(GenerationRequest("a red circle", seed=1))[0].image
    b = pipe.generate(GenerationRequest("a blue square", seed=1))[0].image
    assert not judge_ok(a, parse_prompt("a blue square")) or not judge_ok(b, parse_prompt("a red circle"))
    assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean() > 10


def test_warns_naming_words_it_never_saw(run_cli, tmp_path):
    code, _stdout, err = run_cli(
        "generate", "a dragon on a red circle", "--seed", 0, "--steps", 2, "--out", tmp_path / "d.png"
    )
    assert code == 0, err
    warning = [line for line in err.splitlines() if "never saw" in line]
    assert len(warning) == 1 and "dragon" in warning[0] and "--model" in warning[0]
    assert "circle" not in warning[0].split("never saw")[1].split(";")[0]


def test_count_guidance_draws_four_of_four(builtin):
    """At the model's defaults (fill-in off, as measured) count guidance (latentgen.layout) gives "four stars" four places: release
    10 draws the 21 four-object prompts of the eval right in 109 of 126 images on seeds 0-5 (one U-Net
    batch per seed), where without it 91. The bar, 100, is out of reach of the model without it."""
    from latentgen.pipeline import Job, Settings

    assert resolve_model("builtin").defaults.count_strength > 0
    prompts = [p for p in eval_prompts() if p.category == "counting" and p.spec.count == 4]
    assert len(prompts) == 21
    settings = Settings.of(GenerationRequest("(counts)", fill_in=False).resolve(builtin.source))
    pipe, right = Pipeline(builtin), 0
    for seed in range(6):
        images, _ = pipe.sample([Job(p.prompt, "", seed) for p in prompts], settings)
        right += sum(judge_ok(im, p.spec) for p, im in zip(prompts, images, strict=True))
    assert right >= 100, right
