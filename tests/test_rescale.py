"""Guidance rescale (--guidance-rescale): against diffusers' guidance_rescale, defaults, records, bad values."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from latentgen import GenerationRequest, Pipeline, Sampler, load_model
from latentgen.metadata import a1111_parameters, record, request_of
from latentgen.pipeline import rescale_guidance
from latentgen.tiny import reference_pipeline


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def reference(model, sampler: Sampler, rescale: float, seeds: list[int]) -> np.ndarray:
    pipe = reference_pipeline(model, sampler, False)
    out = pipe(
        ["a red circle"] * len(seeds),
        num_inference_steps=5,
        guidance_scale=7.5,
        guidance_rescale=rescale,
        width=32,
        height=32,
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
        output_type="pil",
    )
    return pixels(out.images)


@pytest.mark.parametrize("sampler", [Sampler.DDIM, Sampler.EULER_A, Sampler.DPM_SOLVER])
def test_matches_diffusers_guidance_rescale(tiny_model, sampler):
    req = GenerationRequest(
        "a red circle", steps=5, guidance=7.5, sampler=sampler, seed=3, num_images=2, guidance_rescale=0.7
    )
    ours = pixels([g.image for g in Pipeline(tiny_model).generate(req, batch_size=2)])
    theirs = reference(tiny_model, sampler, 0.7, [3, 4])
    assert np.abs(ours - theirs).max() <= 1
    # and the option does something: diffusers without it draws another picture
    assert np.abs(theirs - reference(tiny_model, sampler, 0.0, [3, 4])).max() > 8


def test_rescale_formula():
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(2, 4, 8, 8, generator=g)
    guided = 3 * torch.randn(2, 4, 8, 8, generator=g) + 1
    full = rescale_guidance(guided, cond, 1.0)
    for i in range(2):  # each image on its own: the spread of its conditional prediction
        assert torch.allclose(full[i].std(), cond[i].std(), atol=1e-5)
        assert torch.allclose(full[i] / guided[i], (cond[i].std() / guided[i].std()).expand(4, 8, 8))
    half = rescale_guidance(guided, cond, 0.5)
    assert torch.allclose(half, (full + guided) / 2, atol=1e-6)
    assert torch.equal(rescale_guidance(guided, cond, 0.0), guided)


def test_off_by_default_and_zero_changes_nothing(tiny_model):
    assert GenerationRequest("a cat").resolve(tiny_model.source).guidance_rescale == 0.0
    pipe = Pipeline(tiny_model)
    plain = pipe.generate(GenerationRequest("a cat", steps=3, seed=5))[0]
    zero = pipe.generate(GenerationRequest("a cat", steps=3, seed=5, guidance_rescale=0))[0]
    assert np.array_equal(np.asarray(plain.image), np.asarray(zero.image))
    # without classifier-free guidance there is nothing to rescale
    no_cfg = [
        pipe.generate(GenerationRequest("a cat", steps=3, seed=5, guidance=1, guidance_rescale=r))[0].image
        for r in (0.0, 1.0)
    ]
    assert np.array_equal(np.asarray(no_cfg[0]), np.asarray(no_cfg[1]))


def test_model_default_is_used_and_recorded(tiny_model_dir, tmp_path):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    cfg_path = folder / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "latentgen_default_guidance_rescale": 0.6}))
    model = load_model(folder, device="cpu", dtype="fp32")
    gen = Pipeline(model).generate(GenerationRequest("a cat", steps=2, seed=1))[0]
    assert gen.request.guidance_rescale == 0.6
    assert record(gen)["request"]["guidance_rescale"] == 0.6
    assert "Rescale CFG: 0.6" in a1111_parameters(gen)
    # a record from before the option existed had it off, and replays with it off
    old = {"request": {k: v for k, v in record(gen)["request"].items() if k != "guidance_rescale"}}
    assert request_of(old).guidance_rescale == 0.0


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), True, "0.7"])
def test_bad_rescale_is_refused_naming_it(tiny_model, value):
    from latentgen.errors import UsageError

    with pytest.raises(UsageError, match=r"guidance rescale .* is invalid; use a number from 0 to 1"):
        GenerationRequest("a cat", guidance_rescale=value).resolve(tiny_model.source)


@pytest.mark.parametrize("value", [2, -1, "much", True])
def test_bad_model_default_is_refused_naming_the_file(tiny_model_dir, tmp_path, value, run_cli):
    from latentgen.errors import ModelLoadError

    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    cfg_path = folder / "scheduler" / "scheduler_config.json"
    cfg_path.write_text(
        json.dumps({**json.loads(cfg_path.read_text()), "latentgen_default_guidance_rescale": value})
    )
    with pytest.raises(ModelLoadError, match=r"scheduler_config.json: latentgen_default_guidance_rescale"):
        load_model(folder, device="cpu", dtype="fp32")
    code, _, err = run_cli("generate", "a cat", "--model", folder, "--steps", 1, "--out", tmp_path / "o.png")
    assert code in (1, 2) and err.count("\n") == 1 and "Traceback" not in err


def test_cli_option_sets_rescale_and_refuses_bad_values(tiny_model_dir, tmp_path, run_cli):
    from latentgen.metadata import read

    out = tmp_path / "a.png"
    opts = ("--model", tiny_model_dir, "--steps", 1, "--seed", 1)
    code, _, err = run_cli("generate", "a cat", *opts, "--guidance-rescale", 0.7, "--out", out)
    assert code == 0, err
    assert read(out)["request"]["guidance_rescale"] == 0.7
    code, _, err = run_cli("generate", "a cat", *opts, "--guidance-rescale", 1.2, "--out", tmp_path / "b.png")
    assert code == 2 and "guidance rescale 1.2 is invalid" in err and err.count("\n") == 1
    assert not (tmp_path / "b.png").exists()


def test_prompt_file_lines_and_batch_default_set_rescale(run_cli, tiny_model_dir, tmp_path):
    from latentgen.metadata import read

    f = tmp_path / "p.jsonl"
    f.write_text(
        '{"prompt": "a cat", "guidance_rescale": 0.3}\n'
        '{"prompt": "a cat"}\n'
        '{"prompt": "a cat", "guidance_rescale": "lots"}\n'
    )
    out = tmp_path / "out"
    args = ("batch", f, "--model", tiny_model_dir, "--steps", 2, "--out", out, "--guidance-rescale", 0.5)
    code, stdout, err = run_cli(*args)
    assert code == 1 and "line 3: guidance_rescale 'lots' is not a number" in err
    assert sorted(read(p)["request"]["guidance_rescale"] for p in stdout.split()) == [0.3, 0.5]
