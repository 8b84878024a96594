"""img2img, inpainting and outpainting: against diffusers' own pipelines, kept pixels, inputs, metadata."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from latentgen import (
    EditRequest,
    GenerationRequest,
    Pipeline,
    Sampler,
    UsageError,
    img2img,
    inpaint,
    load_model,
    resolve_model,
)
from latentgen.edit import EditMode, feather, fill_unknown, prepare_edit
from latentgen.metadata import read
from latentgen.samplers import build_scheduler, is_stochastic, noise_level, scheduler_state, step_back
from latentgen.tiny import reference_pipeline

PROMPT = "a red circle"


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def picture(width: int, height: int) -> np.ndarray:
    """A smooth RGB picture with some structure (what a VAE reconstructs reasonably)."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    arr = np.stack([200 * x + 30, 180 * y + 40, 120 + 100 * np.sin(6 * x * y)], axis=-1)
    return arr.clip(0, 255).astype(np.uint8)


def box_mask(width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """A uint8 mask: 255 inside ``box`` = (x0, y0, x1, y1), 0 elsewhere."""
    mask = np.zeros((height, width), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    return mask


def outside(width: int, height: int, box, margin: int) -> np.ndarray:
    """True where a pixel is farther than ``margin`` (along x or y) from ``box``."""
    x0, y0, x1, y1 = box
    near = np.zeros((height, width), bool)
    near[max(0, y0 - margin) : y1 + margin, max(0, x0 - margin) : x1 + margin] = True
    return ~near


@pytest.fixture()
def files(tmp_path):
    """A 40x32 source image and a mask over a box in it."""
    box = (10, 8, 26, 22)
    src, mask = tmp_path / "src.png", tmp_path / "mask.png"
    Image.fromarray(picture(40, 32)).save(src)
    Image.fromarray(box_mask(40, 32, box)).save(mask)
    return src, mask, box


@pytest.fixture(scope="session")
def inpaint_model_dir(tmp_path_factory):
    """A tiny model whose U-Net takes 9 channels (latents, mask, masked-image latents)."""
    from latentgen.tiny import write_model

    return write_model(tmp_path_factory.mktemp("models") / "tiny-inpaint", "tiny", 0, unet_in_channels=9)


@pytest.fixture(scope="session")
def inpaint_model(inpaint_model_dir):
    return load_model(inpaint_model_dir, device="cpu", dtype="fp32")


def diffusers_pipeline(cls, model, sampler: Sampler, karras: bool = False):
    return reference_pipeline(model, sampler, karras, cls=cls)


def generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


# --- against diffusers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampler", "karras", "strength"),
    [
        (Sampler.DDIM, False, 0.6),
        (Sampler.DPM_SOLVER, True, 0.75),
        (Sampler.EULER_A, False, 0.5),
        (Sampler.UNIPC, False, 1.0),
    ],
)
def test_img2img_matches_diffusers(tiny_model, files, sampler, karras, strength):
    from diffusers import StableDiffusionImg2ImgPipeline

    src, _, _ = files
    req = GenerationRequest(PROMPT, steps=5, sampler=sampler, karras=karras, seed=3, num_images=2)
    ours = img2img(Pipeline(tiny_model), req, src, strength=strength, batch_size=2)
    pipe = diffusers_pipeline(StableDiffusionImg2ImgPipeline, tiny_model, sampler, karras)
    theirs = pipe(
        [PROMPT] * 2,
        image=Image.open(src),
        strength=strength,
        num_inference_steps=5,
        guidance_scale=7.5,
        generator=generators(3, 4),
    ).images
    assert np.abs(pixels([g.image for g in ours]) - pixels(theirs)).max() <= 1
    assert [g.request.seed for g in ours] == [3, 4]
    assert ours[0].image.size == (40, 32)


@pytest.mark.parametrize(
    ("sampler", "strength"), [(Sampler.DDIM, 1.0), (Sampler.EULER_A, 0.7), (Sampler.DPM_SOLVER, 0.5)]
)
def test_nine_channel_inpaint_matches_diffusers(inpaint_model, files, sampler, strength):
    from diffusers import StableDiffusionInpaintPipeline

    src, mask, box = files
    pipe = Pipeline(inpaint_model)
    req = GenerationRequest(PROMPT, steps=5, sampler=sampler, seed=11)
    raw = inpaint(pipe, req, src, mask, strength=strength, keep_unmasked=False)[0].image
    theirs = diffusers_pipeline(StableDiffusionInpaintPipeline, inpaint_model, sampler)(
        PROMPT,
        image=Image.open(src),
        mask_image=Image.open(mask),
        strength=strength,
        height=32,
        width=40,
        num_inference_steps=5,
        guidance_scale=7.5,
        generator=generators(11),
    ).images[0]
    assert np.abs(pixels([raw]) - pixels([theirs])).max() <= 1

    # By default the kept part is pasted back: diffusers' pixels inside, the input's outside.
    kept = inpaint(pipe, req, src, mask, strength=strength, mask_blur=2)[0].image
    far = outside(40, 32, box, 2)
    x0, y0, x1, y1 = box
    assert np.array_equal(pixels([kept])[0][far], np.asarray(Image.open(src), np.int16)[far])
    assert np.array_equal(
        np.asarray(kept)[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2], np.asarray(raw)[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2]
    )


@pytest.mark.parametrize("nine_channels", [False, True])
def test_inpaint_batch_equals_singles(tiny_model, inpaint_model, files, nine_channels):
    src, mask, _ = files
    pipe = Pipeline(inpaint_model if nine_channels else tiny_model)
    req = GenerationRequest(PROMPT, steps=3, sampler=Sampler.EULER_A, seed=20, num_images=2)
    batch = inpaint(pipe, req, src, mask, strength=0.8, batch_size=2)
    singles = [
        inpaint(
            pipe, GenerationRequest(PROMPT, steps=3, sampler=Sampler.EULER_A, seed=s), src, mask, strength=0.8
        )[0]
        for s in (20, 21)
    ]
    assert np.abs(pixels([g.image for g in batch]) - pixels([g.image for g in singles])).max() <= 1
    assert batch[0].image.tobytes() != batch[1].image.tobytes()
    assert batch[0].edit.resample == (1 if nine_channels else 3)  # each batch resampled as its singles


# --- resampling (RePaint) ------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", list(Sampler))
def test_step_back_renoises_to_the_earlier_level_and_restores_the_scheduler(tiny_model, sampler):
    """After a step, latents distributed as level t1 go back to level t0's law; the step re-runs equal."""
    scheduler = build_scheduler(sampler, False, tiny_model.source.scheduler_config)
    scheduler.set_timesteps(8)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(1)  # as an edit at strength 0.875 does (DDIM goes by timestep)
    tw, t0, t1 = scheduler.timesteps[1:4]
    x0 = torch.full((1, 4, 96, 96), 0.7)
    x = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))

    def step(t, eps_seed):
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(eps_seed))
        seeded = {"generator": torch.Generator().manual_seed(3)} if is_stochastic(sampler) else {}
        scheduler.scale_model_input(x, t)
        return scheduler.step(eps, t, x, **seeded, return_dict=False)[0]

    step(tw, 0)  # a step before, so multistep samplers have a history to restore
    a0, s0 = noise_level(scheduler, t0)
    state = scheduler_state(scheduler)
    first = step(t0, 2)
    a1, s1 = noise_level(scheduler, t1)
    assert s1 / a1 < s0 / a0  # the step went down in noise
    at_t1 = a1 * x0 + s1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    back = step_back(scheduler, state, at_t1, t1, t0, generators(5))
    assert back.mean().item() == pytest.approx(a0 * 0.7, abs=4 * s0 / 192)
    assert back.std().item() == pytest.approx(s0, rel=0.02)
    assert torch.equal(step(t0, 2), first)  # the scheduler is where it was before the step
    step_back(scheduler, state, at_t1, t1, t0, generators(5))  # the same state, restored again
    assert torch.equal(step(t0, 2), first)


def test_resampling_repaints_differently_and_keeps_the_rest(tiny_model, files):
    src, mask, box = files
    pipe, before = Pipeline(tiny_model), np.asarray(Image.open(src), np.int16)
    req = GenerationRequest(PROMPT, steps=4, seed=5, sampler=Sampler.DPM_SOLVER)
    once, thrice = (inpaint(pipe, req, src, mask, mask_blur=2, resample=r)[0] for r in (1, 3))
    default = inpaint(pipe, req, src, mask, mask_blur=2)[0]
    assert (once.edit.resample, thrice.edit.resample, default.edit.resample) == (1, 3, 3)
    assert default.image.tobytes() == thrice.image.tobytes()
    far = outside(40, 32, box, 2)
    for gen in (once, thrice):
        assert np.abs(pixels([gen.image])[0][far] - before[far]).max() == 0
    x0, y0, x1, y1 = box
    inside = np.abs(pixels([once.image])[0] - pixels([thrice.image])[0])[y0:y1, x0:x1]
    assert inside.mean() > 2


def test_inpainting_unet_runs_each_step_once_unless_asked(inpaint_model, files):
    src, mask, _ = files
    pipe, req = Pipeline(inpaint_model), GenerationRequest(PROMPT, steps=3, seed=2)
    default, twice = (inpaint(pipe, req, src, mask, resample=r)[0] for r in (None, 2))
    assert (default.edit.resample, twice.edit.resample) == (1, 2)
    assert default.image.tobytes() != twice.image.tobytes()


def test_inpainting_takes_the_model_inpaint_defaults_unless_given(model_copy, files, run_cli):
    src, mask, _ = files
    cfg_path = model_copy / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(latentgen_default_steps=10, latentgen_default_guidance=5.0)
    cfg_path.write_text(json.dumps({**cfg, "latentgen_inpaint_steps": 20, "latentgen_inpaint_guidance": 3.0}))
    source = resolve_model(model_copy)

    def resolved(edit, **given):
        return prepare_edit(GenerationRequest(PROMPT, seed=1, **given), edit, source).request

    for edit in (EditRequest.inpaint(src, mask), EditRequest.inpaint(src, expand=(8, 0, 0, 0))):
        assert (resolved(edit).steps, resolved(edit).guidance) == (20, 3.0)
    given = resolved(EditRequest.inpaint(src, mask), steps=7, guidance=2.0)
    assert (given.steps, given.guidance) == (7, 2.0)
    img2img_req = resolved(EditRequest.img2img(src))
    assert (img2img_req.steps, img2img_req.guidance) == (10, 5.0)
    code, stdout, err = run_cli("info", "--model", model_copy, "--json")
    assert code == 0, err
    defaults = json.loads(stdout)["defaults"]
    assert (defaults["steps"], defaults["inpaint_steps"], defaults["inpaint_guidance"]) == (10, 20, 3.0)


def test_edit_records_from_before_resampling_replay_with_one_run_per_step():
    rec = {"mode": "inpaint", "image": "a.png", "mask": "m.png", "strength": 1.0}
    assert EditRequest.from_dict(rec).resample == 1
    assert EditRequest.from_dict({**rec, "resample": 3}).resample == 3
    assert EditRequest.from_dict({"mode": "img2img", "image": "a.png", "strength": 0.5}).resample is None


# --- what is kept ----------------------------------------------------------------------------------


@pytest.mark.parametrize("blur", [0, 4])
def test_four_channel_inpaint_keeps_pixels_outside_mask_and_blur_band(tiny_model, files, blur):
    src, mask, box = files
    gen = inpaint(
        Pipeline(tiny_model), GenerationRequest(PROMPT, steps=4, seed=5), src, mask, mask_blur=blur
    )[0]
    out, before = pixels([gen.image])[0], np.asarray(Image.open(src), np.int16)
    far = outside(40, 32, box, blur)
    assert np.abs(out[far] - before[far]).max() == 0
    x0, y0, x1, y1 = box
    assert np.abs(out[y0:y1, x0:x1] - before[y0:y1, x0:x1]).mean() > 10  # the masked part was repainted
    assert gen.edit.mask_blur == blur and gen.edit.strength == 1.0


def test_alpha_channel_is_the_mask_when_none_is_given(tiny_model, tmp_path):
    box = (8, 8, 24, 20)
    rgba = np.dstack([picture(32, 32), 255 - box_mask(32, 32, box)])  # the box is transparent
    src = tmp_path / "cutout.png"
    Image.fromarray(rgba).save(src)
    gen = inpaint(Pipeline(tiny_model), GenerationRequest(PROMPT, steps=3, seed=1), src, mask_blur=2)[0]
    out = np.asarray(gen.image, np.int16)
    far = outside(32, 32, box, 2)
    assert np.array_equal(out[far], rgba[..., :3].astype(np.int16)[far])
    assert gen.edit.mask is None and gen.edit.image_sha256


def test_invert_mask_repaints_the_black_part(tiny_model, files):
    src, mask, box = files
    gen = inpaint(
        Pipeline(tiny_model),
        GenerationRequest(PROMPT, steps=3, seed=2),
        src,
        mask,
        invert_mask=True,
        mask_blur=2,
    )[0]
    out, before = pixels([gen.image])[0], np.asarray(Image.open(src), np.int16)
    x0, y0, x1, y1 = box
    inner = (slice(y0 + 2, y1 - 2), slice(x0 + 2, x1 - 2))
    assert np.array_equal(out[inner], before[inner])  # white in the mask: now kept
    assert np.abs(out[:4] - before[:4]).mean() > 10  # black in the mask: now repainted


def test_outpaint_grows_the_canvas_and_keeps_the_old_pixels(tiny_model, tmp_path):
    src = tmp_path / "small.png"
    Image.fromarray(picture(32, 24)).save(src)
    pipe = Pipeline(tiny_model)
    gen = inpaint(pipe, GenerationRequest(PROMPT, steps=4, seed=9), src, expand=(8, 0, 16, 8), mask_blur=3)[0]
    assert gen.image.size == (32 + 8 + 16, 24 + 8)
    assert (gen.request.width, gen.request.height) == gen.image.size
    assert gen.edit.strength == 0.9 and gen.edit.expand == (8, 0, 16, 8)
    old = pixels([gen.image])[0][0:24, 8:40]
    band = 8 + 3  # the repainted overlap along each grown edge, plus the blur
    kept = (slice(0, 24 - band), slice(band, 32 - band))  # top was not grown
    assert np.array_equal(old[kept], picture(32, 24).astype(np.int16)[kept])


def test_sizes_off_the_vae_factor_are_padded_and_cropped_back(tiny_model, tmp_path, caplog):
    src = tmp_path / "odd.png"
    Image.fromarray(picture(30, 21)).save(src)
    mask = tmp_path / "odd-mask.png"
    box = (4, 4, 14, 12)
    Image.fromarray(box_mask(30, 21, box)).save(mask)
    pipe = Pipeline(tiny_model)
    with caplog.at_level(logging.WARNING, logger="latentgen"):
        gen = inpaint(pipe, GenerationRequest(PROMPT, steps=3, seed=4), src, mask, mask_blur=1)[0]
    assert "30x21 is not a multiple of 8" in caplog.text and "32x24" in caplog.text
    assert gen.image.size == (30, 21)
    far = outside(30, 21, box, 1)
    assert np.array_equal(pixels([gen.image])[0][far], picture(30, 21).astype(np.int16)[far])
    assert any("cropped back" in n for n in gen.notes)
    assert img2img(pipe, GenerationRequest(PROMPT, steps=2, seed=4), src)[0].image.size == (30, 21)


# --- input checks ---------------------------------------------------------------------------------


def test_mask_of_another_size_is_an_error_naming_both_sizes(tiny_model, files, tmp_path):
    src, _, _ = files
    small = tmp_path / "small-mask.png"
    Image.fromarray(box_mask(20, 16, (5, 5, 10, 10))).save(small)
    job = GenerationRequest(PROMPT, steps=2, seed=1)
    with pytest.raises(UsageError, match=r"mask .*small-mask.png is 20x16 but image .*src.png is 40x32"):
        prepare_edit(job, EditRequest.inpaint(src, small), tiny_model.source)
    resized = prepare_edit(job, EditRequest.inpaint(src, small, resize_mask=True), tiny_model.source)
    assert resized.mask.shape == (32, 40) and resized.mask[10:20, 10:20].all()


@pytest.mark.parametrize(("fill", "message"), [(0, "is all black"), (255, "is all white")])
def test_all_black_and_all_white_masks_warn(tiny_model, files, tmp_path, caplog, fill, message):
    src, _, _ = files
    mask = tmp_path / "flat.png"
    Image.new("L", (40, 32), fill).save(mask)
    with caplog.at_level(logging.WARNING, logger="latentgen"):
        gen = inpaint(Pipeline(tiny_model), GenerationRequest(PROMPT, steps=2, seed=1), src, mask)[0]
    assert message in caplog.text and str(mask) in caplog.text
    if fill == 0:
        assert gen.image.tobytes() == Image.open(src).convert("RGB").tobytes()


def test_bad_edit_requests_are_usage_errors(tiny_model, files, tmp_path):
    src, mask, _ = files
    source = tiny_model.source
    req = GenerationRequest(PROMPT, steps=4, seed=1)
    cases = [
        (EditRequest.img2img(src, strength=0), "strength 0 is invalid"),
        (EditRequest.img2img(src, strength=1.5), "strength 1.5 is invalid"),
        (EditRequest.img2img(src, strength=0.1), "leaves no step to run"),
        (EditRequest.inpaint(src, mask, mask_blur=-1), "mask blur -1 is invalid"),
        (EditRequest.inpaint(src, mask, expand=(1, 2, 3)), "expand (1, 2, 3) is invalid"),
        (EditRequest.inpaint(src), "nothing to repaint"),
        (EditRequest.inpaint(src, invert_mask=True, expand=(8, 0, 0, 0)), "--invert-mask needs a mask"),
        (EditRequest.inpaint(src, tmp_path / "nope.png"), "does not exist"),
        (EditRequest.inpaint(src, mask, resample=0), "resample 0 is invalid"),
        (EditRequest.inpaint(src, mask, resample=2.5), "resample 2.5 is invalid"),
        (EditRequest(EditMode.IMG2IMG, str(src), resample=2), "--resample are for inpainting"),
    ]
    for edit, message in cases:
        with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
            prepare_edit(req, edit, source)


def test_inpainting_model_is_refused_by_generate(inpaint_model):
    with pytest.raises(UsageError, match="is an inpainting model"):
        Pipeline(inpaint_model).generate(GenerationRequest(PROMPT, steps=1, seed=0))


def test_inpainting_model_does_img2img_with_a_full_mask(inpaint_model, files):
    src, _, _ = files
    gen = img2img(Pipeline(inpaint_model), GenerationRequest(PROMPT, steps=3, seed=1), src, strength=0.7)[0]
    assert gen.image.size == (40, 32) and np.asarray(gen.image).std() > 0


# --- helpers ---------------------------------------------------------------------------------------


def test_feather_is_exactly_zero_beyond_the_band_and_one_deep_inside():
    mask = box_mask(30, 20, (10, 5, 20, 15)).astype(np.float32) / 255
    weights = feather(mask, 3)
    assert (weights[outside(30, 20, (10, 5, 20, 15), 3)] == 0).all()
    assert (weights[8:12, 13:17] == 1).all()
    assert 0 < weights[5, 9] < 1 and 0 < weights[5, 10] < 1
    assert (feather(np.ones((8, 8), np.float32), 3) == 1).all()


def test_fill_unknown_extends_nearby_colours():
    arr = np.zeros((16, 16, 3), np.uint8)
    arr[:, :8] = (200, 0, 0)
    known = np.zeros((16, 16), bool)
    known[:, :8] = True
    filled = np.asarray(fill_unknown(Image.fromarray(arr), known))
    assert np.array_equal(filled[:, :8], arr[:, :8])
    assert (filled[:, 8:, 0] > 150).all() and (filled[:, 8:, 1:] == 0).all()


# --- command line ----------------------------------------------------------------------------------


def test_cli_inpaint_records_hashes_and_replay_reproduces_pixels(run_cli, tiny_model_dir, files, tmp_path):
    src, mask, _ = files
    first = tmp_path / "first.png"
    code, stdout, err = run_cli(
        "inpaint", PROMPT, "--image", src, "--mask", mask, "--model", tiny_model_dir,
        "--steps", 4, "--strength", 0.75, "--seed", 8, "--sampler", "euler-a", "--out", first, "--json",
    )  # fmt: skip
    assert code == 0, err
    rec = json.loads(stdout)
    edit = rec["edit"]
    assert edit["mode"] == "inpaint" and edit["strength"] == 0.75 and edit["resample"] == 3
    assert edit["image"] == str(src) and edit["mask"] == str(mask)
    assert len(edit["image_sha256"]) == 64 and len(edit["mask_sha256"]) == 64
    assert "Denoising strength: 0.75, Mask blur: 4" in Image.open(first).text["parameters"]

    again = tmp_path / "again.png"
    code, _, err = run_cli("generate", "--replay", first, "--out", again)
    assert code == 0, err
    assert Image.open(again).tobytes() == Image.open(first).tobytes()
    assert read(again)["edit"] == read(first)["edit"]

    Image.fromarray(picture(40, 32)[::-1].copy()).save(src)  # the source changes
    code, stdout, err = run_cli("generate", "--replay", first, "--out", tmp_path / "third.png")
    assert code == 2 and stdout == ""
    assert err.startswith(f"error: image {src} has changed since the image was made") and err.count("\n") == 1


def test_cli_img2img_equals_the_library_and_replays(run_cli, tiny_model, tiny_model_dir, files, tmp_path):
    src, _, _ = files
    out = tmp_path / "i2i.png"
    code, _, err = run_cli(
        "generate", PROMPT, "--init-image", src, "--strength", 0.6, "--model", tiny_model_dir,
        "--steps", 5, "--seed", 3, "--out", out,
    )  # fmt: skip
    assert code == 0, err
    lib = img2img(Pipeline(tiny_model), GenerationRequest(PROMPT, steps=5, seed=3), src, strength=0.6)[0]
    assert Image.open(out).tobytes() == lib.image.tobytes()
    assert read(out)["edit"]["strength"] == 0.6 and read(out)["request"]["width"] == 40
    stronger = tmp_path / "stronger.png"
    code, _, err = run_cli("generate", "--replay", out, "--strength", 0.9, "--out", stronger)
    assert code == 0, err
    assert read(stronger)["edit"]["strength"] == 0.9
    assert Image.open(stronger).tobytes() != Image.open(out).tobytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("inpaint", PROMPT, "--image", "{src}", "--mask", "{small}"), "is 16x16 but image"),
        (("inpaint", PROMPT, "--image", "{src}", "--mask", "{text}"), "is not an image file"),
        (("inpaint", PROMPT, "--image", "{src}"), "nothing to repaint"),
        (("inpaint", PROMPT, "--image", "{src}", "--expand", "1,2"), "give LEFT,TOP,RIGHT,BOTTOM"),
        (
            ("inpaint", PROMPT, "--image", "{src}", "--mask", "{mask}", "--strength", 2),
            "strength 2.0 is invalid",
        ),
        (
            ("inpaint", PROMPT, "--image", "{src}", "--mask", "{mask}", "--resample", 0),
            "resample 0 is invalid; use a whole number in 1..20",
        ),
        (("generate", PROMPT, "--strength", 0.5), "--strength is for img2img"),
        (("generate", PROMPT, "--init-image", "{src}", "--width", 64), "--width/--height do not apply"),
        (("generate", PROMPT, "--init-image", "{text}"), "is not an image file"),
    ],
)
def test_cli_bad_inputs_exit_2_before_loading(run_cli, model_copy, files, tmp_path, args, message):
    src, mask, _ = files
    small, text = tmp_path / "small.png", tmp_path / "notes.png"
    Image.new("L", (16, 16)).save(small)
    text.write_text("hello")
    # Damaged weights: the errors below must come before any weights are read.
    (model_copy / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"broken")
    names = {"src": src, "mask": mask, "small": small, "text": text}
    argv = [str(a).format(**names) for a in args]
    code, stdout, err = run_cli(*argv, "--model", model_copy, "--out", tmp_path / "x.png")
    assert code == 2, err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1
    assert stdout == "" and "Traceback" not in err


def test_inpaint_demo_runs_end_to_end(inpaint_demo, tiny_model_dir, tmp_path):
    """benchmarks/inpaint_demo.py (meant for the built-in model) on the tiny model, 2 cases."""
    threads = str(torch.get_num_threads())  # leave the session's setting as it is
    argv = ["--model", str(tiny_model_dir), "--cases", "2", "--steps", "2", "--threads", threads]
    summary = inpaint_demo.main([*argv, "--out", str(tmp_path)])
    assert summary["cases"] == 2 and len(summary["results"]) == 2
    assert summary["kept_pixels_max_diff"] == 0
    assert {"ok", "verdicts", "control_ok", "edit"} <= set(summary["results"][0])
    assert summary["by_edit"] == {"colour": {"cases": 2, "successes": summary["successes"]}}
    assert Image.open(tmp_path / "strip.png").size[0] > 3 * 64
    assert json.loads((tmp_path / "summary.json").read_text())["successes"] == summary["successes"]
