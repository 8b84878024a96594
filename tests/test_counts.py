"""Count guidance (latentgen.layout): which phrases a number counts, where their places go, the bias
it adds, and what it leaves alone. Its options (model default, CLI, prompt files, metadata) are tested
with the other guidances' in test_layout.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latentgen import GenerationRequest, Pipeline
from latentgen.layout import count_map, count_places, counts, describe_counts, token_counts


def counted(text: str) -> list[tuple[str, int]]:
    return [(text[c.start : c.end], c.number) for c in counts(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("three red hearts", [("three red hearts", 3)]),
        ("Four small stars on a blue background", [("Four small stars", 4)]),
        ("2 cats", [("2 cats", 2)]),
        ("ten hats", [("ten hats", 10)]),
        # a phrase ends at "and", a comma, "with"/"wearing", "on"/"in"/"at" and another number
        ("two cats and three stars", [("two cats", 2), ("three stars", 3)]),
        ("a heart, two cats, at night", [("two cats", 2)]),
        ("three cats wearing hats", [("three cats", 3)]),
        ("two circles two squares", [("two circles", 2), ("two squares", 2)]),
        # a counted phrase a relation places is left to layout guidance; the other one is not
        ("two cats above a dog", []),
        ("a dog and three stars left of a cat", []),
        ("two hearts and a cat above a star", [("two hearts", 2)]),
    ],
)
def test_numbers_count_their_noun_phrases(text, expected):
    assert counted(text) == expected


@pytest.mark.parametrize(
    "text", ["a cat", "one cat", "a 4k photo of a cat", "eleven cats", "two", "cats two"]
)
def test_prompts_without_a_count_count_nothing(text):
    assert counts(text) == []


def test_the_log_names_each_count():
    assert describe_counts("two cats and three stars") == "two cats → 2 places, three stars → 3 places"
    assert describe_counts("a cat") == ""


@pytest.mark.parametrize("numbers", [[2], [3], [4], [5], [2, 3], [4, 4, 1], [10]])
def test_places_are_apart_inside_the_picture_and_fixed_by_the_seed(numbers):
    places, spacing = count_places(numbers, seed=7)
    assert [len(p) for p in places] == numbers
    flat = [xy for p in places for xy in p]
    assert all(0.1 <= v <= 0.9 for xy in flat for v in xy)
    nearest = min(math.dist(a, b) for i, a in enumerate(flat) for b in flat[i + 1 :]) if len(flat) > 1 else 1
    assert nearest > 0.7 * spacing  # a place's peak never sits inside another's
    assert count_places(numbers, seed=7) == (places, spacing)


def test_seeds_pick_the_cells():
    def cells(numbers, seed):
        return tuple(tuple(round(v, 1) for v in xy) for p in count_places(numbers, seed)[0] for xy in p)

    assert {cells([3], seed) for seed in range(40)} == {  # three of the four cells of a 2 x 2 grid
        ((0.3, 0.3), (0.7, 0.3), (0.3, 0.7)),
        ((0.3, 0.3), (0.7, 0.3), (0.7, 0.7)),
        ((0.3, 0.3), (0.3, 0.7), (0.7, 0.7)),
        ((0.7, 0.3), (0.3, 0.7), (0.7, 0.7)),
    }
    assert len({cells([2], seed) for seed in range(60)}) == 6  # side by side, stacked, diagonal
    assert len({cells([2, 3], seed) for seed in range(20)}) > 10  # five of the nine cells of 3 x 3


def test_count_map_peaks_at_the_places_and_pushes_away_elsewhere():
    bias = count_map([(0.25, 0.25), (0.75, 0.75)], spacing=0.4, height=16, width=16)
    assert bias.shape == (16, 16) and bias.max() <= 1 and bias.min() == -1
    # the four cells around each place are half a cell from it on both axes: 1 - 2 d / (REACH x spacing)
    near = 1 - 2 * math.hypot(1 / 32, 1 / 32) / (0.625 * 0.4)
    assert torch.allclose(bias[3:5, 3:5], torch.tensor(near)) and torch.allclose(
        bias[11:13, 11:13], torch.tensor(near)
    )
    assert bias[12, 3] == -1 and bias[3, 12] == -1  # the empty corners
    assert torch.equal(bias, bias.T)  # the figure is symmetric about the diagonal, and so is the map


def test_tokens_of_every_counted_phrase_and_copy(tiny_model):
    tok = tiny_model.tokenizer
    text = "two red cats and three stars"
    ids = tok(text).input_ids
    found = token_counts(tok, text)
    assert [(tok.decode([ids[k] for k in ks]), n) for ks, n in found] == [
        ("two red cats", 2),
        ("three stars", 3),
    ]
    twice = token_counts(tok, text, copies=2)
    shift = len(ids) - 2
    assert twice == [(ks + tuple(k + shift for k in ks), n) for ks, n in found]


def req(prompt: str, count: float, seed: int = 4) -> GenerationRequest:
    return GenerationRequest(
        prompt,
        steps=3,
        guidance=5.0,
        seed=seed,
        count_strength=count,
        layout_strength=0.0,
        subject_strength=0.0,
    )


def test_count_guidance_changes_only_images_of_counted_prompts(tiny_model):
    pipe = Pipeline(tiny_model)

    def image(prompt, count, seed=4):
        return np.asarray(pipe.generate(req(prompt, count, seed))[0].image, dtype=np.int16)

    for prompt in ("a red cat", "a cat and a star", "a cat above a star"):
        assert np.array_equal(image(prompt, 5.0), image(prompt, 0.0)), prompt
    on, off = image("three cats", 5.0), image("three cats", 0.0)
    assert np.abs(on - off).max() > 0
    assert np.array_equal(on, image("three cats", 5.0))  # seeded: the same again
    assert np.abs(image("four cats", 5.0) - on).max() > 0  # the number decides


def test_the_bias_holds_each_counted_phrases_map_scaled_by_the_strength(tiny_model):
    from latentgen.pipeline import Job, Settings

    pipe = Pipeline(tiny_model)
    settings = Settings.of(req("x", 2.5).resolve(tiny_model.source))
    jobs = [Job("a red cat", "", 0), Job("two cats and three stars", "", 9)]
    guide = pipe.layout_guide(jobs, settings, first_row=2)
    h = settings.height // tiny_model.source.vae_scale_factor
    assert guide.bias.shape[0] == 4 and torch.all(guide.bias[:3] == 0)  # uncond rows, and the plain prompt
    places, spacing = count_places([2, 3], seed=9)
    (cats, _), (stars, _) = pipe.counts("two cats and three stars")
    assert torch.allclose(
        guide.bias[3, list(cats)], 2.5 * count_map(places[0], spacing, h, h).expand(len(cats), h, h)
    )
    assert torch.allclose(
        guide.bias[3, list(stars)], 2.5 * count_map(places[1], spacing, h, h).expand(len(stars), h, h)
    )
    others = [k for k in range(guide.bias.shape[1]) if k not in cats + stars]
    assert torch.all(guide.bias[3, others] == 0)
    assert pipe.layout_guide(jobs[:1], settings, first_row=1) is None  # nothing to place: no bias at all


def test_a_batch_of_mixed_prompts_and_seeds_equals_its_singles(tiny_model):
    from latentgen.pipeline import Job, Settings

    pipe = Pipeline(tiny_model)
    settings = Settings.of(req("x", 4.0).resolve(tiny_model.source))
    jobs = [
        Job("a red cat", "", 3),
        Job("three cats", "", 3),
        Job("three cats", "", 8),
        Job("two stars", "", 1),
    ]
    together, _ = pipe.sample(jobs, settings)
    for job, image in zip(jobs, together, strict=True):
        alone = pipe.sample([job], settings)[0][0]
        assert np.abs(np.asarray(image, np.int16) - np.asarray(alone, np.int16)).max() <= 1, job


def test_the_log_says_how_many_places(tiny_model, guidance_log):
    requests = [req("three red cats", 3.0), req("three red cats", 0.0), req("a red cat", 3.0)]
    assert guidance_log(Pipeline(tiny_model), requests) == ["count guidance 3: three red cats → 3 places"]


def test_places_keep_inside_a_region():
    region = (0.5, 0.0, 1.0, 0.5)  # the top right quarter
    places, spacing = count_places([2, 2], seed=3, region=region)
    whole, whole_spacing = count_places([2, 2], seed=3)
    assert spacing == whole_spacing / 2
    for (x, y), (wx, wy) in zip(
        [xy for p in places for xy in p], [xy for p in whole for xy in p], strict=True
    ):
        assert (x, y) == pytest.approx((0.5 + wx / 2, wy / 2))  # the same figure, scaled into it


def test_an_inpainting_mask_gives_the_places_its_box(tiny_model, tmp_path, monkeypatch):
    from PIL import Image

    import latentgen.edit as edit
    from latentgen.edit import mask_region

    mask = np.zeros((32, 64), np.float32)
    mask[8:16, 40:56] = 1
    assert mask_region(mask) == (40 / 64, 8 / 32, 56 / 64, 16 / 32)
    assert mask_region(None) == (0, 0, 1, 1) and mask_region(np.zeros((4, 4))) == (0, 0, 1, 1)

    # an inpainting run hands its mask's box to the sampler
    seen = []
    original = Pipeline.layout_guide
    monkeypatch.setattr(
        Pipeline,
        "layout_guide",
        lambda self, *a, region, **k: seen.append(region) or original(self, *a, region=region, **k),
    )
    Image.new("RGB", (16, 16), "white").save(tmp_path / "in.png")
    m = np.zeros((16, 16), np.uint8)
    m[:8, 8:] = 255
    Image.fromarray(m).save(tmp_path / "mask.png")
    request = req("two cats", 3.0).resolve(tiny_model.source)
    edit.inpaint(Pipeline(tiny_model), request, tmp_path / "in.png", tmp_path / "mask.png")
    assert seen == [(0.5, 0.0, 1.0, 0.5)]
