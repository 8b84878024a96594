"""The judge: agrees with the renderer's ground truth, rejects what an image does not show, reads
blurred and noisy images, and loads only its shipped safetensors weights."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from latentgen.errors import ModelLoadError, UsageError
from latentgen.world import (
    ObjectSpec,
    Spec,
    judge,
    judge_ok,
    parse_prompt,
    read_image,
    render_sample,
    render_scene,
    scene_for_spec,
    validation,
)
from latentgen.world.classifier import CONFIG_PATH, WEIGHTS_PATH, load_classifier, load_weights, predict
from latentgen.world.degrade import MILD, Degradation, degrade

FRESH_SEED = validation.VALIDATION_SEED + 100  # neither the training nor the benchmark seed


def _rates(table: validation.Table) -> dict[str, float]:
    return {
        f"{group}/{check}": tally.rate for group, checks in table.items() for check, tally in checks.items()
    }


def _assert_all_at_least(table: validation.Table, floor: float) -> None:
    rates = _rates(table)
    assert rates, "nothing measured"
    low = {k: round(v, 3) for k, v in rates.items() if v < floor}
    assert not low, low


def test_judge_agrees_with_ground_truth_on_fresh_renders():
    _assert_all_at_least(validation.agreement(100, FRESH_SEED), 0.95)


def test_judge_rejects_mismatched_pairs():
    _assert_all_at_least(validation.mismatched_pairs(100, FRESH_SEED, same_layout=True), 0.95)


def test_judge_rejects_scenes_with_one_attribute_changed():
    _assert_all_at_least(validation.hard_negatives(60, FRESH_SEED), 0.95)


def test_judge_is_robust_to_mild_blur_noise_and_colour_shift():
    _assert_all_at_least(validation.agreement(100, FRESH_SEED, degradation=MILD), 0.95)


def test_judge_accepts_renders_of_eval_prompts():
    _assert_all_at_least(validation.eval_prompt_renders(1, FRESH_SEED), 0.95)


def test_judge_accepts_every_caption():
    _assert_all_at_least(validation.caption_agreement(60, FRESH_SEED), 0.95)


def test_judge_reports_only_the_checks_the_spec_asks_for():
    image = render_sample(FRESH_SEED, 0).image
    assert set(judge(image, Spec((ObjectSpec("circle"),)))) == {"objects"}
    assert set(judge(image, Spec((ObjectSpec("circle", "red", "big"),)))) == {"objects", "colors", "sizes"}
    assert set(judge(image, Spec((ObjectSpec("heart"),), count=3))) == {"objects", "count"}
    two = Spec((ObjectSpec("star"), ObjectSpec("heart")), relation="above", background="blue")
    assert set(judge(image, two)) == {"objects", "position", "background"}


def test_cat_wearing_a_hat():
    rng = random.Random(0)
    wearing = parse_prompt("a cat wearing a hat")
    worn = render_scene(scene_for_spec(wearing, rng))
    assert judge_ok(worn, wearing)
    beside = render_scene(scene_for_spec(parse_prompt("a cat next to a hat"), rng))
    assert judge(beside, wearing) == {"objects": True, "position": False}


def test_judge_reads_a_simple_scene():
    rng = random.Random(1)
    spec = parse_prompt("a red circle above a blue square on a white background")
    image = render_scene(scene_for_spec(spec, rng))
    assert judge_ok(image, spec)
    assert not judge_ok(image, parse_prompt("a red circle below a blue square"))
    assert not judge_ok(image, parse_prompt("a blue circle above a red square"))
    assert not judge_ok(image, parse_prompt("a red star above a blue square"))
    assert not judge_ok(image, parse_prompt("two red circles"))


def test_judge_reads_any_size_and_mode():
    sample = render_sample(FRESH_SEED, 3)
    expected = read_image(sample.image)
    assert read_image(render_scene(sample.scene, size=128)).objects.__len__() == len(expected.objects)
    assert read_image(sample.image.convert("RGBA")) == expected


def test_blank_and_noise_images_show_nothing_asked_for():
    blank = Image.new("RGB", (64, 64), (40, 85, 225))
    assert read_image(blank).objects == ()
    assert read_image(blank).background == "blue"
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert not judge_ok(noise, parse_prompt("a red circle"))


def test_cluttered_images_pass_no_prompt():
    """Blurry colour noise on a plain frame (what an untrained model draws) segments into many blobs;
    among them the classifier finds some kind or other. The world never holds more than four
    objects, so such an image must fail every check instead of passing "a circle and a square"."""
    rng = np.random.default_rng(0)
    kinds = ["circle", "square", "triangle", "star", "heart", "cat", "hat"]
    for i in range(4):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        pixels = np.full((64, 64, 3), 128, np.uint8)
        pixels[4:60, 4:60] = np.asarray(Image.fromarray(coarse).resize((56, 56), Image.Resampling.BICUBIC))
        image = Image.fromarray(pixels)
        assert len(read_image(image).objects) > 4  # premise: it really is cluttered
        for a, b in zip(kinds, kinds[1:] + kinds[:1], strict=True):
            assert not any(judge(image, parse_prompt(f"a {a} and a {b}")).values()), (i, a, b)
            assert not any(judge(image, parse_prompt(f"a {a}")).values()), (i, a)


def test_degrade_is_deterministic_and_changes_pixels():
    image = render_sample(FRESH_SEED, 1).image
    strength = Degradation(warp=1.0, blur=1.0, jitter=10.0, noise=8.0)
    a = degrade(image, strength, np.random.default_rng(5))
    b = degrade(image, strength, np.random.default_rng(5))
    assert a.tobytes() == b.tobytes() != image.tobytes()
    assert degrade(image, Degradation(), np.random.default_rng(5)).tobytes() == image.tobytes()


def test_bad_spec_is_a_usage_error():
    image = render_sample(FRESH_SEED, 0).image
    with pytest.raises(UsageError):
        judge(image, Spec((ObjectSpec("dragon"),)))
    with pytest.raises(UsageError):
        judge(image, Spec((ObjectSpec("circle", "mauve"),)))
    with pytest.raises(UsageError):
        judge(image, Spec((ObjectSpec("circle"),), relation="above"))


def test_shipped_weights_are_small_safetensors_with_their_config():
    assert WEIGHTS_PATH.stat().st_size < 1_000_000
    with safe_open(str(WEIGHTS_PATH), framework="pt") as f:
        assert all(f.get_tensor(k).dtype.is_floating_point for k in f.keys())  # noqa: SIM118
    model = load_classifier()
    assert model.config.kinds == ["circle", "square", "triangle", "star", "heart", "cat", "hat"]
    assert CONFIG_PATH.is_file()


def test_numpy_inference_matches_the_torch_module():
    crops = np.random.default_rng(0).random((5, 24, 24), dtype=np.float32)
    with torch.no_grad():
        reference = load_classifier()(torch.from_numpy(crops)[:, None]).numpy()
    np.testing.assert_allclose(predict(load_weights(), crops), reference, atol=1e-4)


def test_missing_or_broken_weights_raise_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="missing"):
        load_classifier(tmp_path / "judge.safetensors", CONFIG_PATH)
    broken = tmp_path / "judge.safetensors"
    broken.write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(ModelLoadError, match="judge.safetensors"):
        load_classifier(broken, CONFIG_PATH)


@pytest.mark.slow
def test_full_validation_meets_the_bar():
    n = 1000
    _assert_all_at_least(validation.agreement(n), 0.98)
    _assert_all_at_least(validation.mismatched_pairs(n), 0.98)
    _assert_all_at_least(validation.mismatched_pairs(n, same_layout=True), 0.98)
    _assert_all_at_least(validation.hard_negatives(n), 0.98)
    _assert_all_at_least(validation.eval_prompt_renders(3), 0.98)


@pytest.mark.slow
def test_training_learns_and_round_trips(tmp_path):
    from latentgen.world.classifier import save_classifier
    from latentgen.world.judge_training import TrainConfig, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train(TrainConfig(seed=11, images=1000, epochs=10, batch_size=64))
    finally:
        torch.set_num_threads(threads)
    save_classifier(model, tmp_path / "w.safetensors", tmp_path / "w.json")
    weights = load_weights(tmp_path / "w.safetensors", tmp_path / "w.json")
    crops = np.random.default_rng(1).random((4, 24, 24), dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(
            predict(weights, crops), model(torch.from_numpy(crops)[:, None]), atol=1e-4
        )
    accuracy = validation.kind_accuracy(100, FRESH_SEED, weights=weights)
    assert accuracy["all"]["correct"].rate > 0.9
