"""Fill-in (--fill-in): the open colours and background drawn as the world draws them, per image seed."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest

from latentgen import GenerationRequest, Pipeline, load_model
from latentgen.errors import ModelLoadError, UsageError
from latentgen.metadata import a1111_parameters, record, request_of
from latentgen.world import parse_prompt
from latentgen.world.fill import fill_in
from latentgen.world.palette import contrasts

OPEN = [
    "a cat wearing a hat",
    "a cat",
    "three hearts",
    "a big star above a small square",
    "a red circle and a triangle",
    "a heart in the top left corner",
    "two small blue cats on a white background",
]


@pytest.mark.parametrize("prompt", OPEN)
def test_names_every_colour_and_keeps_what_the_prompt_names(prompt):
    asked = parse_prompt(prompt)
    for seed in range(40):
        drawn = parse_prompt(fill_in(prompt, seed))
        assert drawn.background is not None
        assert all(o.colour is not None for o in drawn.objects)
        if asked.background is not None:
            assert drawn.background == asked.background
        assert drawn.count == asked.count and drawn.relation == asked.relation
        for a, d in zip(asked.objects, drawn.objects, strict=True):
            assert (d.kind, d.size, d.position) == (a.kind, a.size, a.position)
            assert a.colour is None or d.colour == a.colour
            assert contrasts(d.colour, drawn.background)  # as the world draws every object


def test_a_worn_hat_never_takes_the_cats_colour():
    """The misses it is for: the world draws the hat in a colour that stands out from the cat's."""
    colours = set()
    for seed in range(200):
        cat, hat = parse_prompt(fill_in("a cat wearing a hat", seed)).objects
        assert contrasts(cat.colour, hat.colour), (seed, cat.colour, hat.colour)
        colours.add((cat.colour, hat.colour))
    assert len(colours) > 20  # drawn, not fixed


def test_same_seed_same_prompt_and_articles_agree():
    assert fill_in("a cat", 7) == fill_in("a cat", 7)
    drawn = {fill_in("a cat", seed) for seed in range(100)}
    assert len(drawn) > 10
    assert any(d.startswith("an orange cat") for d in drawn)  # the one colour that takes "an"
    for text in drawn:
        assert not re.search(r"\ba [aeiou]", text) and not re.search(r"\ban [^aeiou ]", text), text


@pytest.mark.parametrize(
    "prompt",
    [
        "a red cat wearing a blue hat on a white background",  # nothing left open
        "a photo of a dog",  # outside the world's language
        "cat hat",  # the world's words, not its grammar
        "a small cat wearing a hat",  # a scene the world does not draw
    ],
)
def test_leaves_prompts_it_cannot_or_need_not_fill_alone(prompt):
    assert fill_in(prompt, 3) == prompt


# --- in the pipeline -------------------------------------------------------------------------------


def pixels(gen) -> np.ndarray:
    return np.asarray(gen.image, dtype=np.int16)


def test_image_is_the_drawn_prompts_image(tiny_model):
    pipe = Pipeline(tiny_model)
    req = GenerationRequest("a cat wearing a hat", steps=3, seed=11, num_images=2, fill_in=True)
    made = pipe.generate(req)
    for i, gen in enumerate(made):
        drawn = fill_in("a cat wearing a hat", 11 + i)
        assert record(gen)["drawn_prompt"] == drawn
        alone = pipe.generate(GenerationRequest(drawn, steps=3, seed=11 + i, fill_in=False))[0]
        assert np.array_equal(pixels(gen), pixels(alone))
    plain = pipe.generate(replace(req, fill_in=False))
    assert not np.array_equal(pixels(made[0]), pixels(plain[0]))
    assert "drawn_prompt" not in record(plain[0])


def test_generate_says_what_it_drew(tiny_model, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="latentgen"):
        Pipeline(tiny_model).generate(GenerationRequest("a cat", steps=1, seed=5, num_images=2, fill_in=True))
        Pipeline(tiny_model).generate(
            GenerationRequest("a red cat on a white background", steps=1, fill_in=True)
        )
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fill-in")]
    assert said == [f"fill-in, seed 5: {fill_in('a cat', 5)}", f"fill-in, seed 6: {fill_in('a cat', 6)}"]


def test_off_for_other_models_and_on_where_the_model_says(tiny_model_dir, tmp_path):
    plain = load_model(tiny_model_dir, device="cpu", dtype="fp32")
    assert GenerationRequest("a cat").resolve(plain.source).fill_in is False
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    cfg_path = folder / "scheduler" / "scheduler_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "latentgen_default_fill_in": True}))
    model = load_model(folder, device="cpu", dtype="fp32")
    gen = Pipeline(model).generate(GenerationRequest("a cat", steps=2, seed=4))[0]
    assert gen.request.fill_in is True
    assert record(gen)["drawn_prompt"] == fill_in("a cat", 4)
    assert f"Prompt as drawn: {fill_in('a cat', 4)}" in a1111_parameters(gen)
    # replaying the record draws the same prompt; a record from before the option had it off
    assert request_of(record(gen)) == gen.request
    old = {"request": {k: v for k, v in record(gen)["request"].items() if k != "fill_in"}}
    assert request_of(old).fill_in is False


def test_the_builtin_model_fills_in_by_default():
    from latentgen.loader import resolve_model

    assert resolve_model("builtin").defaults.fill_in is True


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_bad_model_default_is_refused_naming_the_file(tiny_model_dir, tmp_path, value, run_cli):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    cfg_path = folder / "scheduler" / "scheduler_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "latentgen_default_fill_in": value}))
    with pytest.raises(
        ModelLoadError, match=r"scheduler_config.json: latentgen_default_fill_in .* true or false"
    ):
        load_model(folder, device="cpu", dtype="fp32")
    code, _, err = run_cli("generate", "a cat", "--model", folder, "--steps", 1, "--out", tmp_path / "o.png")
    assert code in (1, 2) and err.count("\n") == 1 and "Traceback" not in err


def test_bad_request_value_is_refused(tiny_model):
    with pytest.raises(UsageError, match=r"fill_in 'yes' is invalid; use true or false"):
        GenerationRequest("a cat", fill_in="yes").resolve(tiny_model.source)


def test_cli_switches_it_on_and_off(tiny_model_dir, tmp_path, run_cli):
    from latentgen.metadata import read

    opts = ("--model", tiny_model_dir, "--steps", 1, "--seed", 2)
    code, _, err = run_cli("generate", "a cat wearing a hat", *opts, "--fill-in", "--out", tmp_path / "a.png")
    assert code == 0, err
    rec = read(tmp_path / "a.png")
    assert rec["request"]["fill_in"] is True and rec["drawn_prompt"] == fill_in("a cat wearing a hat", 2)
    code, _, err = run_cli("generate", "a cat wearing a hat", *opts, "--out", tmp_path / "b.png")
    assert code == 0, err
    assert read(tmp_path / "b.png")["request"]["fill_in"] is False


def test_edits_refuse_it_and_keep_it_off(tiny_model_dir, tmp_path, run_cli):
    from PIL import Image

    from latentgen.metadata import read

    src = tmp_path / "src.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(src)
    opts = ("--model", tiny_model_dir, "--steps", 2, "--seed", 1)
    code, _, err = run_cli(
        "generate", "a cat", *opts, "--init-image", src, "--fill-in", "--out", tmp_path / "x.png"
    )
    assert code == 2 and "--fill-in is for text to image" in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()
    code, _, err = run_cli("generate", "a cat", *opts, "--init-image", src, "--out", tmp_path / "y.png")
    assert code == 0, err
    assert read(tmp_path / "y.png")["request"]["fill_in"] is False


def test_batch_default(run_cli, tiny_model_dir, tmp_path):
    from latentgen.metadata import read

    f = tmp_path / "p.txt"
    f.write_text("a cat\nthree hearts\n")
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        "batch", f, "--model", tiny_model_dir, "--steps", 2, "--out", out, "--fill-in"
    )
    assert code == 0, err
    recs = [read(p) for p in stdout.split()]
    assert [r["drawn_prompt"] for r in recs] == [fill_in("a cat", 0), fill_in("three hearts", 0)]


def test_eval_draws_the_prompts_and_judges_them_as_written(tiny_model, tmp_path, monkeypatch):
    from PIL import Image

    import latentgen.world
    from latentgen.evaluate import EvalConfig, run_eval

    judged = []
    monkeypatch.setattr(
        latentgen.world, "judge", lambda image, spec: (judged.append(spec), {"objects": True})[1]
    )
    cfg = EvalConfig(images_per_prompt=1, steps=2, prompts_per_category=1, fill_in=True, batch_size=1)
    scores = run_eval(tiny_model, tmp_path, cfg)
    assert scores["settings"]["fill_in"] is True
    pipe = Pipeline(tiny_model)
    folders = sorted(tmp_path.glob("0*"))
    assert len(folders) == len(judged) == 6
    for folder, spec in zip(folders, judged, strict=True):
        written = json.loads((folder / "metadata.jsonl").read_text())["prompt"]
        assert spec == parse_prompt(written)  # judged against the prompt as written ...
        alone = pipe.generate(GenerationRequest(fill_in(written, 0), steps=2, seed=0, fill_in=False))[0]
        made = np.asarray(Image.open(folder / "samples" / "0000.png"), dtype=np.int16)
        assert np.array_equal(made, pixels(alone))  # ... drawn as filled in
