"""The pipeline against diffusers' own StableDiffusionPipeline, seeds, batches, dtypes, NaN handling."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from latentgen import GenerationRequest, NonFiniteError, Pipeline, Sampler, load_model
from latentgen.tiny import reference_pipeline


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def reference(model, sampler: Sampler, karras: bool, prompt, negative, steps, guidance, size, seeds):
    """diffusers' StableDiffusionPipeline on the same components, scheduler and CPU generators."""
    pipe = reference_pipeline(model, sampler, karras)
    out = pipe(
        [prompt] * len(seeds),
        negative_prompt=[negative] * len(seeds) if negative else None,
        num_inference_steps=steps,
        guidance_scale=guidance,
        width=size,
        height=size,
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
        output_type="pil",
    )
    return out.images


@pytest.mark.parametrize(
    ("sampler", "karras"),
    [
        (Sampler.DDIM, False),
        (Sampler.DPM_SOLVER, False),
        (Sampler.DPM_SOLVER, True),
        (Sampler.EULER, False),
        (Sampler.EULER_A, False),
        (Sampler.UNIPC, False),
    ],
)
def test_matches_diffusers_pipeline(tiny_model, sampler, karras):
    req = GenerationRequest("a red circle", steps=6, guidance=7.5, sampler=sampler, karras=karras, seed=7)
    ours = Pipeline(tiny_model).generate(req)
    theirs = reference(tiny_model, sampler, karras, "a red circle", "", 6, 7.5, 32, [7])
    diff = np.abs(pixels([g.image for g in ours]) - pixels(theirs))
    assert diff.max() <= 1
    assert pixels(theirs).std() > 0  # a real picture, not a constant


def test_negative_prompt_and_batch_match_diffusers(tiny_model):
    req = GenerationRequest(
        "a blue star",
        negative_prompt="a red heart",
        steps=5,
        guidance=5.0,
        sampler=Sampler.DDIM,
        seed=3,
        num_images=2,
    )
    ours = Pipeline(tiny_model).generate(req, batch_size=2)
    theirs = reference(tiny_model, Sampler.DDIM, False, "a blue star", "a red heart", 5, 5.0, 32, [3, 4])
    assert np.abs(pixels([g.image for g in ours]) - pixels(theirs)).max() <= 1


def test_guidance_at_most_one_skips_unconditional_half(tiny_model, monkeypatch):
    batch_sizes = []
    unet = tiny_model.unet
    original = unet.forward

    def spy(sample, *args, **kwargs):
        batch_sizes.append(sample.shape[0])
        return original(sample, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", spy)
    ours = Pipeline(tiny_model).generate(GenerationRequest("a cat", steps=3, guidance=1.0, seed=1))
    assert batch_sizes == [1, 1, 1]
    monkeypatch.setattr(unet, "forward", original)
    theirs = reference(tiny_model, Sampler.DPM_SOLVER, False, "a cat", "", 3, 1.0, 32, [1])
    assert np.abs(pixels([ours[0].image]) - pixels(theirs)).max() <= 1


def test_same_seed_same_pixels_and_n_images_equal_singles(tiny_model):
    pipe = Pipeline(tiny_model)
    run = pipe.generate(GenerationRequest("a hat", steps=4, seed=11, num_images=3))
    singles = [pipe.generate(GenerationRequest("a hat", steps=4, seed=11 + i))[0] for i in range(3)]
    assert [g.request.seed for g in run] == [11, 12, 13]
    assert [g.image.tobytes() for g in run] == [g.image.tobytes() for g in singles]
    again = pipe.generate(GenerationRequest("a hat", steps=4, seed=11, num_images=3))
    assert [g.image.tobytes() for g in again] == [g.image.tobytes() for g in run]
    different = pipe.generate(GenerationRequest("a hat", steps=4, seed=12))[0]
    assert different.image.tobytes() != run[0].image.tobytes()
    batched = pipe.generate(GenerationRequest("a hat", steps=4, seed=11, num_images=3), batch_size=3)
    assert np.abs(pixels([g.image for g in batched]) - pixels([g.image for g in run])).max() <= 1


def test_missing_seed_is_picked_and_recorded(tiny_model):
    gen = Pipeline(tiny_model).generate(GenerationRequest("a cat", steps=2))[0]
    assert isinstance(gen.request.seed, int)
    again = Pipeline(tiny_model).generate(GenerationRequest("a cat", steps=2, seed=gen.request.seed))[0]
    assert again.image.tobytes() == gen.image.tobytes()


def test_fp16_path_runs_on_cpu(tiny_model_dir):
    model = load_model(tiny_model_dir, device="cpu", dtype="fp16")
    assert model.unet.dtype == torch.float16 and model.text_encoder.dtype == torch.float16
    gen = Pipeline(model).generate(GenerationRequest("a red circle", steps=3, seed=5))[0]
    assert gen.dtype == "fp16"
    arr = np.asarray(gen.image)
    assert arr.shape == (32, 32, 3) and arr.std() > 0


def _nan_decode_in(model, monkeypatch, dtypes):
    """Make the VAE decode return NaN whenever it runs in one of ``dtypes``."""
    vae = model.vae
    original = vae.decode

    def decode(z, *args, **kwargs):
        out = original(z, *args, **kwargs)
        if z.dtype in dtypes:
            return (torch.full_like(out[0], float("nan")),)
        return out

    monkeypatch.setattr(vae, "decode", decode)


def test_non_finite_fp16_decode_is_retried_in_fp32(tiny_model_dir, monkeypatch, caplog):
    model = load_model(tiny_model_dir, device="cpu", dtype="fp16")
    _nan_decode_in(model, monkeypatch, {torch.float16})
    with caplog.at_level(logging.WARNING, logger="latentgen"):
        gen = Pipeline(model).generate(GenerationRequest("a star", steps=2, seed=1))[0]
    assert "decoded again in fp32" in caplog.text
    assert gen.notes and "fp32" in gen.notes[0]
    assert np.asarray(gen.image).std() > 0
    assert model.vae.dtype == torch.float16  # restored after the retry


def test_non_finite_everywhere_is_a_clear_error(tiny_model_dir, monkeypatch):
    model = load_model(tiny_model_dir, device="cpu", dtype="fp16")
    _nan_decode_in(model, monkeypatch, {torch.float16, torch.float32})
    with pytest.raises(NonFiniteError, match="in fp16 and again in fp32"):
        Pipeline(model).generate(GenerationRequest("a star", steps=2, seed=1))


def test_long_prompt_warns_naming_dropped_text(tiny_model, caplog):
    prompt = " ".join(["red circle"] * 40) + " purple heart"
    with caplog.at_level(logging.WARNING, logger="latentgen"):
        Pipeline(tiny_model).generate(GenerationRequest(prompt, steps=1, seed=0))
    assert "dropped" in caplog.text and "purple heart" in caplog.text


def _repeat_model(tiny_model_dir, tmp_path, value):
    import json
    import shutil

    folder = shutil.copytree(tiny_model_dir, tmp_path / "repeat")
    (folder / "latentgen.json").write_text(json.dumps({"prompt_repeat": value}))
    return folder


def test_prompt_repeat_model_reads_each_prompt_twice(tiny_model_dir, tiny_model, tmp_path):
    """A model exported with prompt_repeat=2 draws what the same weights draw from the doubled text."""
    model = load_model(_repeat_model(tiny_model_dir, tmp_path, 2), device="cpu", dtype="fp32")
    assert model.source.prompt_repeat == 2 and tiny_model.source.prompt_repeat == 1
    req = GenerationRequest("a red circle", negative_prompt="a blue star", steps=3, guidance=5.0, seed=3)
    (ours,) = Pipeline(model).generate(req)
    (doubled,) = Pipeline(tiny_model).generate(
        GenerationRequest(
            "a red circle a red circle",
            negative_prompt="a blue star a blue star",
            steps=3,
            guidance=5.0,
            seed=3,
        )
    )
    (once,) = Pipeline(tiny_model).generate(req)
    assert np.array_equal(pixels([ours.image]), pixels([doubled.image]))
    assert not np.array_equal(pixels([ours.image]), pixels([once.image]))
    assert Pipeline(model).model_text("") == ""  # the unconditional text is never repeated


def test_prompt_repeat_cuts_a_long_prompt_to_equal_copies(tiny_model_dir, tmp_path, caplog):
    model = load_model(_repeat_model(tiny_model_dir, tmp_path, 2), device="cpu", dtype="fp32")
    pipe, tok = Pipeline(model), model.tokenizer
    room = (tok.model_max_length - 2) // 2
    prompt = " ".join(f"{c} circle" for c in ["red", "blue"] * room)  # 2 × room words
    ids = tok(pipe.model_text(prompt), add_special_tokens=False).input_ids
    assert len(ids) == 2 * room and ids[:room] == ids[room:]
    assert tok.decode(ids[:room]).split() == prompt.split()[:room]
    with caplog.at_level(logging.WARNING, logger="latentgen"):
        pipe.generate(GenerationRequest(prompt, steps=1, seed=0))
    assert f"text encoder's {room + 2} tokens (it reads each prompt 2 times)" in caplog.text
    assert "dropped" in caplog.text and " ".join(prompt.split()[room:]) in caplog.text


@pytest.mark.parametrize("value", [0, "2", 1.5, True])
def test_bad_prompt_repeat_is_refused_naming_it(tiny_model_dir, tmp_path, value, run_cli):
    from latentgen.errors import ModelLoadError

    folder = _repeat_model(tiny_model_dir, tmp_path, value)
    with pytest.raises(ModelLoadError, match=r"latentgen.json: prompt_repeat .* must be a whole number"):
        load_model(folder, device="cpu", dtype="fp32")
    code, _, err = run_cli(
        "generate", "a red circle", "--model", folder, "--steps", 1, "--out", tmp_path / "o.png"
    )
    assert code in (1, 2) and err.count("\n") == 1 and "prompt_repeat" in err and "Traceback" not in err
