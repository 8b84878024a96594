"""Subject guidance (latentgen.excite): which words are subjects, the neglect loss, the recording
processor, and what the pipeline does with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from latentgen import GenerationRequest, Pipeline, load_model
from latentgen.excite import (
    Subjects,
    _Recorder,
    _RecordingCrossAttention,
    neglect_loss,
    subject_spans,
)
from latentgen.pipeline import Job, Settings


def words(text: str) -> list[str]:
    return [text[a:b] for a, b in subject_spans(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a circle and a square", ["circle", "square"]),
        ("one circle and one heart", ["circle", "heart"]),
        ("a red circle and a blue star", ["red circle", "blue star"]),
        ("a star above a heart", ["star", "heart"]),
        ("a cat next to a dog", ["cat", "dog"]),
        ("a star to the left of a big heart", ["star", "big heart"]),
        ("a cat, a dog and a hat", ["cat", "dog", "hat"]),
        ("a photo of a cat and a dog", ["cat", "dog"]),
        ("a cat with a star", ["cat", "star"]),
        # scenery is not a subject; what is worn belongs to its wearer
        ("a circle on a red background", ["circle"]),
        ("a small blue star in the top left corner", ["small blue star"]),
        ("a cat at the bottom and a star in the middle", ["cat", "star"]),
        ("a cat wearing a hat", ["cat"]),
        ("a red cat wearing a blue hat above a dog on a white background", ["red cat", "dog"]),
        ("two red circles", ["two red circles"]),
        ("and, the", []),
        ("", []),
    ],
)
def test_subjects_are_the_head_nouns(text, expected):
    assert words(text) == expected


def test_subject_tokens_cover_split_words_and_every_copy(tiny_model_dir, tmp_path):
    import json
    import shutil

    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    (folder / "latentgen.json").write_text(json.dumps({"prompt_repeat": 2}))
    model = load_model(folder, device="cpu", dtype="fp32")
    pipe, tok = Pipeline(model), model.tokenizer
    text = "a cat and a zebrafish"  # not in the tiny vocabulary: several tokens
    ids = tok(pipe.model_text(text)).input_ids
    subj = pipe.subjects(text)
    assert len(subj.tokens) == 2
    cat, fish = subj.tokens
    assert [tok.decode([ids[k]]) for k in cat] == ["cat", "cat"]  # both copies
    assert len(fish) > 2 and "".join(tok.decode([ids[k]]) for k in fish[: len(fish) // 2]) == "zebrafish"
    assert ids[subj.end] == tok.eos_token_id


def _maps(shares: list[list[float]], q: int = 16, t: int = 8) -> torch.Tensor:
    """One image's attention [1, q, t]: word tokens 1..len(shares) get the given per-cell shares."""
    att = torch.full((1, q, t), 1e-9)
    for k, per_cell in enumerate(shares, start=1):
        att[0, :, k] = torch.tensor(per_cell)
    return att


def test_neglect_loss_is_high_when_a_subject_has_no_place_and_low_when_each_has_one():
    q = 16  # a 4×4 grid: the latent grid 8×8 halved once
    apart = [[1.0] * 8 + [0.0] * 8, [0.0] * 8 + [1.0] * 8]  # each subject owns half the picture
    one_only = [[1.0] * q, [0.0] * q]
    subj = [Subjects(((1,), (2,)), end=3)]
    low = neglect_loss([_maps(apart)], subj, 8, 8)
    high = neglect_loss([_maps(one_only)], subj, 8, 8)
    assert low < 0.05 and high > 0.95
    # the mean of the layers is read; a one-subject image adds nothing
    assert torch.isclose(neglect_loss([_maps(apart), _maps(apart)], subj, 8, 8), low)
    single = [Subjects(((1,),), end=3)]
    assert neglect_loss([_maps(one_only)], single, 8, 8) == 0
    # two images: the sum of their losses
    two = neglect_loss([torch.cat([_maps(apart), _maps(one_only)])], subj * 2, 8, 8)
    assert torch.isclose(two, low + high)


def test_recording_processor_equals_the_plain_one_and_keeps_the_finest_grid():
    torch.manual_seed(0)
    attn = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4)
    attn.set_processor(AttnProcessor2_0())
    text = torch.randn(3, 5, 6)
    rec = _Recorder()
    wrapped = _RecordingCrossAttention(AttnProcessor2_0(), rec)
    with torch.no_grad():
        coarse, fine = torch.randn(3, 4, 8), torch.randn(3, 16, 8)
        assert torch.allclose(wrapped(attn, fine, text), attn(fine, text))  # not recording: no change
        assert rec.maps == []
        rec.on = True
        out = wrapped(attn, coarse, text)
        assert torch.allclose(out, attn(coarse, text), atol=1e-6)
        assert rec.grid == 4 and len(rec.maps) == 1
        out = wrapped(attn, fine, text)
        assert torch.allclose(out, attn(fine, text), atol=1e-6)
        assert rec.grid == 16 and len(rec.maps) == 1  # a finer grid replaces the coarser maps
        wrapped(attn, coarse, text)
        assert len(rec.maps) == 1
        # the kept map is the head mean of softmax(q kᵀ / √d)
        q = attn.to_q(fine[1]).view(16, 2, 4).transpose(0, 1)
        k = attn.to_k(text[1]).view(5, 2, 4).transpose(0, 1)
        by_hand = torch.softmax(q @ k.transpose(1, 2) / 2, dim=-1).mean(0)
        assert torch.allclose(rec.maps[0][1], by_hand, atol=1e-6)
        assert torch.allclose(rec.maps[0].sum(-1), torch.ones(3, 16))


def req(prompt: str, strength: float, **kw) -> GenerationRequest:
    kw = {"steps": 3, "guidance": 5.0, "seed": 4, "layout_strength": 0.0, **kw}
    return GenerationRequest(prompt, subject_strength=strength, **kw)


def test_an_update_lowers_the_neglect_loss(tiny_model):
    """The step goes down the gradient: the same pass on the moved latents reads a lower loss."""
    from latentgen.samplers import Sampler, build_scheduler

    pipe = Pipeline(tiny_model)
    settings = Settings.of(req("a cat and a star", 1.0, sampler="ddim").resolve(tiny_model.source))
    guide = pipe.subject_guide([Job("a cat and a star", "", 0)], settings, steps=3)
    scheduler = build_scheduler(Sampler.DDIM, False, tiny_model.source.scheduler_config)
    scheduler.set_timesteps(3)
    t = scheduler.timesteps[0]
    f, channels = tiny_model.source.vae_scale_factor, tiny_model.unet.config.in_channels
    shape = (1, channels, settings.height // f, settings.width // f)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    cond = pipe.encode("a cat and a star")
    from latentgen.excite import recording_attention

    with recording_attention(tiny_model.unet, guide):
        moved = guide.update(tiny_model.unet, scheduler, 0, t, latents, cond)
        before = guide.last_loss
        guide.update(tiny_model.unet, scheduler, 0, t, moved, cond)
        after = guide.last_loss
    assert 0 < before < 1 and after < before
    assert not torch.equal(moved, latents)


@pytest.mark.parametrize("steps", [3, 10, 50])
def test_the_strength_is_shared_out_over_the_schedules_steps(tiny_model, steps):
    """So 10 and 50 steps push alike; an img2img run that starts part-way gets only its steps' share."""
    pipe = Pipeline(tiny_model)
    settings = Settings.of(req("x", 600.0, steps=steps).resolve(tiny_model.source))
    guide = pipe.subject_guide([Job("a cat and a star", "", 0)], settings, steps=steps // 2)
    assert guide.step_size == pytest.approx(600.0 / steps) and guide.steps == steps // 2


def test_only_images_naming_two_subjects_change(tiny_model):
    pipe = Pipeline(tiny_model)
    processors = {k: type(v) for k, v in tiny_model.unet.attn_processors.items()}

    def image(prompt, strength, **kw):
        return np.asarray(pipe.generate(req(prompt, strength, **kw))[0].image, dtype=np.int16)

    for one in ("a red cat", "a cat wearing a hat", "two stars on a red background"):
        assert np.array_equal(image(one, 80.0), image(one, 0.0)), one
    on, off = image("a cat and a star", 80.0), image("a cat and a star", 0.0)
    assert np.abs(on - off).max() > 0
    assert np.array_equal(on, image("a cat and a star", 80.0))  # seeded: the same again
    # a prompt layout guidance places is left to it; without layout guidance it is guided
    placed = image("a cat above a star", 80.0, layout_strength=6.0)
    assert np.array_equal(placed, image("a cat above a star", 0.0, layout_strength=6.0))
    assert np.abs(image("a cat above a star", 80.0) - image("a cat above a star", 0.0)).max() > 0
    assert {k: type(v) for k, v in tiny_model.unet.attn_processors.items()} == processors


def test_a_batch_of_mixed_prompts_equals_its_singles(tiny_model, batch_vs_singles):
    """Rows guided, placed by layout guidance, and neither, in one U-Net batch: the extra pass sees
    only the conditional rows, with their share of the layout bias."""
    prompts = ["a red cat", "a cat and a star", "a star left of a heart"]
    settings = Settings.of(req("x", 80.0, layout_strength=6.0).resolve(tiny_model.source))
    diff = batch_vs_singles(Pipeline(tiny_model), prompts, settings)
    assert max(diff) <= 1, diff


def test_runs_in_fp16(tiny_model_dir):
    """The GPU path's dtype, on the CPU: the loss is taken in fp32 from half-precision maps."""
    model = load_model(tiny_model_dir, device="cpu", dtype="fp16")
    pipe = Pipeline(model)
    on = np.asarray(pipe.generate(req("a cat and a star", 80.0))[0].image, dtype=np.int16)
    off = np.asarray(pipe.generate(req("a cat and a star", 0.0))[0].image, dtype=np.int16)
    assert on.std() > 0 and np.abs(on - off).max() > 0


def test_the_log_names_the_subjects(tiny_model, guidance_log):
    said = guidance_log(
        Pipeline(tiny_model),
        [
            req("a red cat and a star", 80.0),
            req("a red cat and a star", 0.0),
            req("a cat wearing a hat", 80.0),
            req("a cat above a star", 80.0, layout_strength=4.0),  # layout guidance's to place
        ],
    )
    assert said == [
        "subject guidance 80: red cat, star get a place each",
        "layout guidance 4: cat → top, star → bottom",
    ]
