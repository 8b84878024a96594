"""Layout guidance: which words a relation places, the bias it adds, and what it leaves alone; and the
options of the three guidances (layout, count, and subject: latentgen.excite), which work alike."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from latentgen import GenerationRequest, Pipeline, load_model
from latentgen.layout import LayoutBias, _BiasedCrossAttention, bias_map, placements, token_placements
from latentgen.metadata import a1111_parameters, record, request_of

UP, DOWN = (0, -1), (0, 1)  # (axis, side): vertical axis, top end / bottom end
LEFT, RIGHT = (1, -1), (1, 1)


def placed(text: str) -> list[tuple[str, tuple[int, int]]]:
    return [(text[p.start : p.end], (p.axis, p.side)) for p in placements(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a red cat above a blue star", [("red", UP), ("cat", UP), ("blue", DOWN), ("star", DOWN)]),
        ("a cat below a star", [("cat", DOWN), ("star", UP)]),
        ("a cat under a star", [("cat", DOWN), ("star", UP)]),
        ("a cat to the left of a star", [("cat", LEFT), ("star", RIGHT)]),
        ("A cat on the left of a star", [("cat", LEFT), ("star", RIGHT)]),
        ("a cat left of a star", [("cat", LEFT), ("star", RIGHT)]),
        ("a cat to the right of a star", [("cat", RIGHT), ("star", LEFT)]),
        ("a cat next to a star", [("cat", LEFT), ("star", RIGHT)]),  # either side is true: reading order
        ("a cat beside a star", [("cat", LEFT), ("star", RIGHT)]),
        # the object ends at "on"/"in"/"at", a comma or "and"; the subject starts after a comma or "and"
        ("a cat above a star on a white background", [("cat", UP), ("star", DOWN)]),
        ("a heart, a cat above a star, at night", [("cat", UP), ("star", DOWN)]),
        ("a heart and a cat left of a star and a hat", [("cat", LEFT), ("star", RIGHT)]),
        # "wearing"/"with" join a phrase: the cat and its hat go up together
        ("a cat wearing a hat above a star", [("cat", UP), ("hat", UP), ("star", DOWN)]),
        # the first relation to claim a word keeps it
        ("a cat above a star left of a heart", [("cat", UP), ("star", DOWN), ("heart", RIGHT)]),
    ],
)
def test_relations_place_their_nouns(text, expected):
    assert placed(text) == expected


@pytest.mark.parametrize(
    "text",
    ["a red cat", "a cat and a star", "a cat on the left", "left of a star", "above"],
)
def test_prompts_without_a_placing_relation_place_nothing(text):
    assert placements(text) == []


def test_tokens_of_split_words_and_every_copy_are_placed(tiny_model):
    tok = tiny_model.tokenizer
    text = "a zebra above a star"  # "zebra" is not in the tiny vocabulary: several tokens
    ids = tok(text).input_ids
    tokens = token_placements(tok, text)
    up = [k for k, v in tokens.items() if v == UP]
    down = [k for k, v in tokens.items() if v == DOWN]
    assert len(up) > 1 and tok.decode([ids[k] for k in up]).replace(" ", "") == "zebra"
    assert [tok.decode([ids[k]]) for k in down] == ["star"]
    twice = token_placements(tok, text, copies=2)
    shift = len(ids) - 2  # the second copy starts after the first copy's tokens
    assert twice == {**tokens, **{k + shift: v for k, v in tokens.items()}}


def test_tokens_past_the_limit_are_left_out(tiny_model):
    tok = tiny_model.tokenizer
    filler = " ".join(["red"] * (tok.model_max_length - 4))
    tokens = token_placements(tok, f"{filler} cat above a star")
    assert tokens and max(tokens) < tok.model_max_length - 1
    assert set(tokens.values()) == {UP}  # the star fell off the end


def test_bias_map_points_each_placed_token_to_its_side():
    bias = bias_map({2: UP, 5: DOWN, 7: RIGHT}, length=10, height=4, width=6)
    assert bias.shape == (10, 4, 6)
    assert torch.all(bias[2, 0] == 1) and torch.all(bias[2, -1] == -1)  # top row: the subject's own
    assert torch.equal(bias[5], -bias[2])
    assert torch.all(bias[7][:, -1] == 1) and torch.all(bias[7][:, 0] == -1)
    assert torch.all(bias[[0, 1, 3, 4, 6, 8, 9]] == 0)
    assert bias.abs().max() == 1


@pytest.mark.parametrize(
    ("h", "w", "q", "grid"), [(16, 16, 64, (8, 8)), (15, 9, 12, (4, 3)), (15, 9, 135, (15, 9))]
)
def test_bias_is_pooled_to_each_layers_grid(h, w, q, grid):
    bias = torch.randn(4, 5, h, w)
    guide = LayoutBias(bias)
    level = guide.at(torch.zeros(4, q, 8))
    assert level.shape == (4, q, 5)
    expected = torch.nn.functional.adaptive_avg_pool2d(bias, grid).flatten(2).transpose(1, 2)
    assert torch.allclose(level, expected)
    assert guide.at(torch.zeros(4, q, 8, dtype=torch.float16)).dtype == torch.float16
    with pytest.raises(ValueError, match="cannot place"):
        guide.at(torch.zeros(4, q + 1, 8))
    with pytest.raises(ValueError, match="batch of 4"):
        guide.at(torch.zeros(3, q, 8))


def test_scores_get_the_bias_before_the_softmax_and_zero_rows_are_unbiased():
    torch.manual_seed(0)
    attn = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4)
    attn.set_processor(AttnProcessor2_0())
    hidden, text = torch.randn(3, 16, 8), torch.randn(3, 5, 6)
    bias = torch.zeros(3, 5, 4, 4)
    bias[2] = torch.randn(5, 4, 4) * 3
    wrapped = _BiasedCrossAttention(AttnProcessor2_0(), LayoutBias(bias))
    with torch.no_grad():
        ours = wrapped(attn, hidden, text)
        plain = attn(hidden, text)
        # by hand: per head, softmax(q kᵀ / √d + bias) v, then the output projection
        q = attn.to_q(hidden[2]).view(16, 2, 4).transpose(0, 1)
        k = attn.to_k(text[2]).view(5, 2, 4).transpose(0, 1)
        v = attn.to_v(text[2]).view(5, 2, 4).transpose(0, 1)
        b = bias[2].flatten(1).T  # [Q, T]
        probs = torch.softmax(q @ k.transpose(1, 2) / 2 + b, dim=-1)
        by_hand = attn.to_out[0]((probs @ v).transpose(0, 1).reshape(16, 8))
    assert torch.allclose(ours[:2], plain[:2], atol=1e-6)
    assert torch.allclose(ours[2], by_hand, atol=1e-5)
    assert not torch.allclose(ours[2], plain[2], atol=1e-3)


def req(prompt: str, layout: float, **kw) -> GenerationRequest:
    return GenerationRequest(prompt, steps=3, guidance=5.0, seed=4, layout_strength=layout, **kw)


def test_layout_changes_only_images_of_prompts_with_a_relation(tiny_model):
    pipe = Pipeline(tiny_model)
    processors = {k: type(v) for k, v in tiny_model.unet.attn_processors.items()}

    def image(prompt, layout):
        return np.asarray(pipe.generate(req(prompt, layout))[0].image, dtype=np.int16)

    assert np.array_equal(image("a red cat", 8.0), image("a red cat", 0.0))
    assert np.array_equal(image("a cat and a star", 8.0), image("a cat and a star", 0.0))
    on, off = image("a cat above a star", 8.0), image("a cat above a star", 0.0)
    assert np.abs(on - off).max() > 0
    assert np.array_equal(on, image("a cat above a star", 8.0))  # seeded: the same again
    assert np.abs(image("a cat below a star", 8.0) - on).max() > 0  # the relation word decides
    # the model is left as it was found
    assert {k: type(v) for k, v in tiny_model.unet.attn_processors.items()} == processors


def test_a_batch_of_mixed_prompts_equals_its_singles(tiny_model, batch_vs_singles):
    from latentgen.pipeline import Job, Settings

    pipe = Pipeline(tiny_model)
    prompts = ["a red cat", "a cat above a star", "a star left of a heart"]
    settings = Settings.of(req("x", 6.0).resolve(tiny_model.source))
    diff = batch_vs_singles(pipe, prompts, settings)
    assert max(diff) <= 1, diff
    together, _ = pipe.sample([Job(p, "", 4) for p in prompts], settings)
    plain = pipe.sample([Job(prompts[0], "", 4)], Settings.of(req("x", 0.0).resolve(tiny_model.source)))[0][0]
    assert np.abs(np.asarray(together[0], np.int16) - np.asarray(plain, np.int16)).max() <= 1


KINDS = pytest.mark.parametrize("kind", ["layout", "subject", "count"])


@KINDS
def test_default_strength_comes_from_the_model_and_is_recorded(tiny_model, tiny_model_dir, tmp_path, kind):
    field = f"{kind}_strength"
    default = getattr(GenerationRequest("a cat").resolve(tiny_model.source), field)
    assert default == 0.0  # off unless measured
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    cfg_path = folder / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, f"latentgen_default_{field}": 3.5}))
    model = load_model(folder, device="cpu", dtype="fp32")
    gen = Pipeline(model).generate(GenerationRequest("a cat above a star", steps=2, seed=1))[0]
    assert getattr(gen.request, field) == 3.5
    assert record(gen)["request"][field] == 3.5
    assert f"{kind.capitalize()} strength: 3.5" in a1111_parameters(gen)
    # a record from before the guidance existed has no strength: it was off, and a replay keeps it off
    old = {"request": {k: v for k, v in record(gen)["request"].items() if k != field}}
    assert getattr(request_of(old), field) == 0.0


@KINDS
@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), True, "4"])
def test_bad_strength_is_refused_naming_it(tiny_model, value, kind):
    from latentgen.errors import UsageError

    with pytest.raises(UsageError, match=rf"{kind} strength .* is invalid; use a number ≥ 0"):
        GenerationRequest("a cat", **{f"{kind}_strength": value}).resolve(tiny_model.source)


@KINDS
@pytest.mark.parametrize("value", [-2, "strong", True])
def test_bad_model_default_is_refused_naming_the_file(tiny_model_dir, tmp_path, value, run_cli, kind):
    from latentgen.errors import ModelLoadError

    key = f"latentgen_default_{kind}_strength"
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    cfg_path = folder / "scheduler" / "scheduler_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), key: value}))
    with pytest.raises(ModelLoadError, match=rf"scheduler_config.json: {key}"):
        load_model(folder, device="cpu", dtype="fp32")
    code, _, err = run_cli("generate", "a cat", "--model", folder, "--steps", 1, "--out", tmp_path / "o.png")
    assert code in (1, 2) and err.count("\n") == 1 and "Traceback" not in err


@KINDS
def test_cli_option_sets_strength_and_refuses_bad_values(tiny_model_dir, tmp_path, run_cli, kind):
    from latentgen.metadata import read

    out, option = tmp_path / "a.png", f"--{kind}-strength"
    opts = ("--model", tiny_model_dir, "--steps", 1, "--seed", 1)
    code, _, err = run_cli("generate", "a cat above a star", *opts, option, 2.5, "--out", out)
    assert code == 0, err
    assert read(out)["request"][f"{kind}_strength"] == 2.5
    code, _, err = run_cli(
        "generate", "a cat", "--model", tiny_model_dir, option, -1, "--out", tmp_path / "b.png"
    )
    assert code == 2 and f"{kind} strength -1.0 is invalid" in err and err.count("\n") == 1
    assert not (tmp_path / "b.png").exists()


@KINDS
def test_prompt_file_lines_and_batch_default_set_the_strength(run_cli, tiny_model_dir, tmp_path, kind):
    from latentgen.metadata import read

    field = f"{kind}_strength"
    f = tmp_path / "p.jsonl"
    f.write_text(
        f'{{"prompt": "a cat above a star", "{field}": 2}}\n'
        '{"prompt": "a cat above a star"}\n'
        f'{{"prompt": "a cat above a star", "{field}": "strong"}}\n'
    )
    out = tmp_path / "out"
    args = ("batch", f, "--model", tiny_model_dir, "--steps", 2, "--out", out, f"--{kind}-strength", 7)
    code, stdout, err = run_cli(*args)
    assert code == 1 and f"line 3: {field} 'strong' is not a number" in err
    strengths = sorted(read(p)["request"][field] for p in stdout.split())
    assert strengths == [2.0, 7.0]


def test_a_model_reading_prompts_twice_places_both_copies(tiny_model_dir, tmp_path):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    (folder / "latentgen.json").write_text(json.dumps({"prompt_repeat": 2}))
    model = load_model(folder, device="cpu", dtype="fp32")
    pipe, tok = Pipeline(model), model.tokenizer
    ids = tok(pipe.model_text("a cat above a star")).input_ids
    placed_tokens = pipe.placements("a cat above a star")
    assert sorted((tok.decode([ids[k]]), side) for k, side in placed_tokens.items()) == [
        ("cat", UP),
        ("cat", UP),
        ("star", DOWN),
        ("star", DOWN),
    ]


def test_layout_runs_in_fp16(tiny_model_dir):
    """The GPU path's dtype, on the CPU: the bias is cast to the half-precision scores."""
    model = load_model(tiny_model_dir, device="cpu", dtype="fp16")
    pipe = Pipeline(model)
    on = pipe.generate(req("a cat above a star", 6.0))[0].image
    off = pipe.generate(req("a cat above a star", 0.0))[0].image
    arr = np.asarray(on, dtype=np.int16)
    assert arr.std() > 0 and np.abs(arr - np.asarray(off, dtype=np.int16)).max() > 0


def test_the_log_says_where_the_nouns_go(tiny_model, guidance_log):
    from latentgen.layout import describe

    assert describe("a red cat wearing a hat above a big star on a white background") == (
        "red cat hat → top, big star → bottom"
    )
    assert describe("a cat next to a star") == "cat → left, star → right"
    assert describe("a red cat") == ""
    requests = [req("a cat left of a star", 4.0), req("a cat left of a star", 0.0), req("a red cat", 4.0)]
    assert guidance_log(Pipeline(tiny_model), requests) == ["layout guidance 4: cat → left, star → right"]
