"""``latentgen eval``: scoring and layout, checked with stand-in models whose answers we know."""

from __future__ import annotations

import json
import random

import pytest

from latentgen.evaluate import EvalConfig, run_eval
from latentgen.pipeline import Pipeline
from latentgen.world import CATEGORIES, parse_prompt, render_scene, scene_for_spec


def _renderer(prompt_of):
    """A stand-in for the sampler: draws, with the world's renderer, a scene for ``prompt_of(job)``."""

    def sample(self, jobs, settings, **kwargs):
        images = []
        for job in jobs:
            spec = parse_prompt(prompt_of(job))
            images.append(render_scene(scene_for_spec(spec, random.Random(job.seed))))
        return images, ()

    return sample


def test_perfect_model_scores_one_and_writes_geneval_layout(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(Pipeline, "sample", _renderer(lambda job: job.prompt))
    cfg = EvalConfig(images_per_prompt=2, prompts_per_category=3, steps=1, batch_size=5)
    scores = run_eval(tiny_model, tmp_path, cfg)
    assert set(scores["categories"]) == set(CATEGORIES)
    assert scores["overall"] == 1.0 and scores["overall_standard_error"] == 0.0
    assert scores["images"] == 2 * 3 * len(CATEGORIES)
    meta = json.loads((tmp_path / "00000" / "metadata.jsonl").read_text())
    assert meta["tag"] in CATEGORIES and meta["prompt"] and meta["include"][0]["class"]
    assert (tmp_path / "00000" / "samples" / "0001.png").is_file()
    assert (tmp_path / "contact_sheet.png").is_file()
    assert json.loads((tmp_path / "scores.json").read_text())["overall"] == 1.0


def test_model_that_ignores_the_prompt_scores_low(tiny_model, monkeypatch):
    monkeypatch.setattr(Pipeline, "sample", _renderer(lambda job: "a gray heart"))
    scores = run_eval(tiny_model, None, EvalConfig(images_per_prompt=1, prompts_per_category=5, steps=1))
    assert scores["overall"] < 0.3


def test_overall_standard_error_is_the_binomial_error_of_the_category_mean():
    from latentgen.evaluate import overall_standard_error

    # p = 1/2 over 2 images: variance 1/8; p = 1: none; mean of two categories halves the error
    assert overall_standard_error({"a": [True, False], "b": [True] * 4}) == pytest.approx(0.125**0.5 / 2)
    assert overall_standard_error({"a": [True] * 9 + [False]}) == pytest.approx((0.09 / 10) ** 0.5)


def test_eval_cli_validates_before_loading(run_cli, model_copy, tmp_path):
    (model_copy / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"broken")
    code, _, err = run_cli("eval", "--model", model_copy, "--steps", 0, "--out", tmp_path / "e")
    assert code == 2 and "steps 0 is invalid" in err


@pytest.mark.parametrize("flag", ["--images", "--limit", "--batch-size"])
def test_eval_cli_rejects_nonpositive_counts(run_cli, tiny_model_dir, tmp_path, flag):
    code, _, err = run_cli("eval", "--model", tiny_model_dir, flag, 0, "--out", tmp_path / "e")
    assert code == 2 and "must be 1 or more" in err


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_kind_probe_recovers_the_clean_latents_from_a_perfect_prediction(kind_probe, prediction):
    import torch

    g = torch.Generator().manual_seed(0)
    z, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    a = torch.tensor(0.3)
    noisy = a.sqrt() * z + (1 - a).sqrt() * eps
    perfect = {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * z, "sample": z}
    got = kind_probe.clean_prediction(perfect[prediction], noisy, a, prediction)
    assert torch.allclose(got, z, atol=1e-5)
    with pytest.raises(ValueError, match="flow"):
        kind_probe.clean_prediction(eps, noisy, a, "flow")


def _run_main(module, *args):
    """A benchmark's main() with these arguments, leaving torch's thread count as it was."""
    import torch

    threads = torch.get_num_threads()
    try:
        return module.main([str(a) for a in args])
    finally:
        torch.set_num_threads(threads)


def test_kind_probe_asks_every_kind_for_every_render(kind_probe, tiny_model_dir, tmp_path):
    rows = _run_main(
        kind_probe,
        "--model",
        tiny_model_dir,
        "--seeds",
        1,
        "--timesteps",
        "100,900",
        "--json",
        tmp_path / "k.json",
    )
    assert [r["t"] for r in rows] == [100, 900]
    assert all(r["total"] == 7 * 5 and 0 <= r["prompted"] <= 35 and 0 <= r["rendered"] <= 35 for r in rows)
    assert json.loads((tmp_path / "k.json").read_text())["rows"] == rows


@pytest.mark.parametrize("relation", ["above", "below", "left of", "right of"])
def test_relation_probe_reads_which_way_round_a_rendered_pair_is(relation_probe, relation):
    scene = scene_for_spec(parse_prompt(f"a big red circle {relation} a big blue square"), random.Random(3))
    from latentgen.world import read_image

    reading = read_image(render_scene(scene, 64))
    assert relation_probe.subject_side(reading, "circle", "square", relation) is True
    assert relation_probe.subject_side(reading, "square", "circle", relation) is False
    crossed = {"above": "left of", "below": "right of", "left of": "below", "right of": "above"}[relation]
    assert relation_probe.subject_side(reading, "circle", "square", crossed) == "wrong axis"
    assert relation_probe.subject_side(reading, "circle", "star", relation) == "missing"


def test_relation_probe_tells_an_order_blind_layout_from_a_swapped_one(relation_probe):
    # P = "A above B", Q = "B above A": Q's subject B above A (True) means A moved below: swapped
    assert relation_probe.same_layout(True, True) is False
    assert relation_probe.same_layout(False, False) is False
    # A above B in P, and in Q B is not above A: the same picture whatever the order of the words
    assert relation_probe.same_layout(True, False) is True
    assert relation_probe.same_layout(False, True) is True
    assert relation_probe.same_layout(True, "missing") is None
    assert relation_probe.same_layout("wrong axis", False) is None


def test_relation_probe_counts_every_image_it_asks_for(relation_probe, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    args = ["--model", tiny_model_dir, "--seeds", 2, "--kinds", "circle,square", "--json", out]
    rows = _run_main(relation_probe, *args, "--scenes", 2, "--timesteps", 500)
    # 4 relations x 1 pair of kinds x 2 word orders x 2 seeds
    assert sum(rows["all"][o] for o in relation_probe.OUTCOMES) == 16
    assert all(sum(rows[r][o] for o in relation_probe.OUTCOMES) == 4 for r in relation_probe.RELATIONS)
    record = json.loads(out.read_text())
    assert record["rows"]["all"]["swap_pairs"] == rows["all"]["swap_pairs"]
    (gap,) = record["error_gaps"]
    assert gap["t"] == 500 and gap["scenes"] == 2 and 0 <= gap["true_lower_than_swapped"] <= 2
    assert (
        gap["true"] > 0 and gap["swapped"] > 0 and gap["true"] != gap["swapped"]
    )  # the words reach the U-Net
    # the second noun's state sees the relation word before it (the first noun's could not)
    assert set(record["text_sides"]) == {"above / below", "left of / right of"}
    assert all(-1 <= c < 1 - 1e-6 for c in record["text_sides"].values()), record["text_sides"]
    # the end-of-text token has read the whole caption, so it sees the nouns' order and the relation
    assert set(record["text_end"]) == {"swapped nouns", "above / below"}
    assert all(-1 <= c < 1 - 1e-6 for c in record["text_end"].values()), record["text_end"]
    printed = capsys.readouterr().out
    assert "| all |" in printed and "| 500 |" in printed and "| above / below |" in printed
    assert "| swapped nouns |" in printed  # all four tables


def test_relation_probe_refuses_unknown_kinds(relation_probe, capsys):
    with pytest.raises(SystemExit) as exc:
        relation_probe.main(["--kinds", "circle,dragon"])
    assert exc.value.code == 2 and "--kinds 'circle,dragon'" in capsys.readouterr().err
