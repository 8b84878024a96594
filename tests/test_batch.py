"""``latentgen batch``: prompt files, equality with generate, resume after kill -9, several processes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentgen import GenerationRequest
from latentgen.batch import item_key, read_manifest
from latentgen.prompts_file import read_prompt_file


def pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.png") if p.name != "grid.png")


def check_folder(out: Path, expected: int) -> dict:
    """Every expected image exactly once, every PNG decodes, no temp or empty file, manifest agrees."""
    files = pngs(out)
    assert len(files) == expected
    for p in files:
        assert p.stat().st_size > 0
        with Image.open(p) as im:
            im.load()
    leftovers = [
        p for p in out.rglob("*") if p.name.endswith(".tmp") or (p.is_file() and p.stat().st_size == 0)
    ]
    assert leftovers == []
    records = read_manifest(out)
    done = {r["file"] for r in records.values() if r["status"] == "done"}
    assert done == {p.relative_to(out).as_posix() for p in files}
    return records


# --- prompt files ----------------------------------------------------------------------------------


def test_txt_with_bom_crlf_comments(tmp_path):
    f = tmp_path / "p.txt"
    f.write_bytes(b"\xef\xbb\xbf# a comment\r\na red circle\r\n\r\n  a blue star  \r\n\xff\xfe bad\n")
    lines, errors = read_prompt_file(f)
    assert [(ln.line, ln.fields["prompt"]) for ln in lines] == [(2, "a red circle"), (4, "a blue star")]
    assert [e.line for e in errors] == [5] and "not valid UTF-8" in errors[0].message


def test_jsonl_fields_and_bad_lines(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(
        "\n".join(
            [
                '{"prompt": "a cat", "seed": 3, "steps": 2, "negative": "a hat", "name": "kitty"}',
                "{not json",
                '{"prompt": "a cat", "colour": "red"}',
                '{"prompt": "a cat", "steps": "many"}',
                '["a list"]',
                '{"prompt": "two stars", "guidance": "2.5", "num_images": 2.0}',
                '{"tag": "single_object", "include": [{"class": "star", "count": 1}], "prompt": "a star"}',
            ]
        )
    )
    lines, errors = read_prompt_file(f)
    assert [ln.line for ln in lines] == [1, 6, 7]
    assert lines[0].fields == {"prompt": "a cat", "seed": 3, "steps": 2, "negative": "a hat", "name": "kitty"}
    assert lines[1].fields["guidance"] == 2.5 and lines[1].fields["num_images"] == 2
    assert lines[2].raw["tag"] == "single_object"
    messages = {e.line: e.message for e in errors}
    assert "bad JSON" in messages[2]
    assert "unknown field(s) 'colour'" in messages[3]
    assert "steps 'many' is not an integer" in messages[4]
    assert "expected a JSON object" in messages[5]


def test_csv(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text('prompt,seed,steps\n"a red circle, big",4,2\na hat,x,2\n')
    lines, errors = read_prompt_file(f)
    assert lines[0].fields == {"prompt": "a red circle, big", "seed": 4, "steps": 2}
    assert errors[0].line == 3 and "seed 'x'" in errors[0].message


def test_missing_file_is_usage_error(run_cli, tiny_model_dir, tmp_path):
    code, _, err = run_cli("batch", tmp_path / "nope.txt", "--model", tiny_model_dir)
    assert code == 2 and "does not exist" in err


# --- running ---------------------------------------------------------------------------------------


def test_batch_equals_generate_and_reports_bad_lines(run_cli, tiny_model_dir, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a red circle", "seed": 5}\n{"prompt": "x", "width": 30}\n{"prompt": "a hat"}\n')
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        "batch",
        f,
        "--model",
        tiny_model_dir,
        "--steps",
        3,
        "--seed",
        9,
        "-N",
        2,
        "--out",
        out,
        "--batch-size",
        1,
    )
    assert code == 1  # line 2 was bad; the others still ran
    assert "line 2: width 30 is not a multiple of 8" in err
    written = [Path(p) for p in stdout.split()]
    assert len(written) == 4
    records = check_folder(out, 4)
    by_line = sorted((r["line"], r["request"]["seed"], r["file"]) for r in records.values())
    assert [(ln, s) for ln, s, _ in by_line] == [(1, 5), (1, 6), (3, 9), (3, 10)]
    for line, seed, name in by_line:
        prompt = "a red circle" if line == 1 else "a hat"
        single = tmp_path / f"single-{line}-{seed}.png"
        code, _, e = run_cli(
            "generate", prompt, "--model", tiny_model_dir, "--steps", 3, "--seed", seed, "--out", single
        )
        assert code == 0, e
        assert np.array_equal(np.asarray(Image.open(single)), np.asarray(Image.open(out / name)))


def test_batched_unet_calls_and_resume(run_cli, tiny_model_dir, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a red circle\na blue star\nthree hearts\n")
    out = tmp_path / "out"
    args = (
        "batch",
        f,
        "--model",
        tiny_model_dir,
        "--steps",
        2,
        "-N",
        2,
        "--batch-size",
        4,
        "--out",
        out,
        "--grid",
    )
    code, stdout, err = run_cli(*args)
    assert code == 0, err
    check_folder(out, 6)
    assert (out / "grid.png").is_file()
    victim = pngs(out)[2]
    before = victim.read_bytes()
    victim.unlink()
    code, stdout, err = run_cli(*args)
    assert code == 0, err
    assert stdout.split() == [str(victim)]  # only the missing one is made again
    assert "1 made, 5 already done" in err
    assert victim.read_bytes() == before
    check_folder(out, 6)


def test_unsafe_names_stay_inside_out(run_cli, tiny_model_dir, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "../../etc/passwd \u0000 " + "x" * 300, "name": "../../evil"}) + "\n")
    out = tmp_path / "out"
    code, stdout, err = run_cli("batch", f, "--model", tiny_model_dir, "--steps", 1, "--out", out)
    assert code == 0, err
    (path,) = pngs(out)
    assert path.parent == out and len(path.name) < 80 and ".." not in path.name


def test_geneval_layout(run_cli, tiny_model_dir, tmp_path):
    f = tmp_path / "evaluation_metadata.jsonl"
    meta = [
        {"tag": "single_object", "include": [{"class": "star", "count": 1}], "prompt": "a star"},
        {"tag": "counting", "include": [{"class": "heart", "count": 3}], "prompt": "three hearts"},
    ]
    f.write_text("\n".join(json.dumps(m) for m in meta) + "\n")
    out = tmp_path / "out"
    code, _, err = run_cli(
        "batch", f, "--model", tiny_model_dir, "--steps", 1, "-N", 2, "--layout", "geneval", "--out", out
    )
    assert code == 0, err
    for i, m in enumerate(meta):
        assert json.loads((out / f"{i:05d}" / "metadata.jsonl").read_text()) == m
        assert (out / f"{i:05d}" / "samples" / "0001.png").is_file()
    check_folder(out, 4)


# --- processes: kill -9, Ctrl-C, two ranks ------------------------------------------------------------


def _start(args, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "latentgen", "batch", *map(str, args), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def _wait_for_records(out: Path, n: int, proc, timeout=60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        shard = out / "manifest.jsonl"
        if shard.exists() and shard.read_text().count("\n") >= n:
            return
        time.sleep(0.02)


def test_kill_9_at_several_points_then_resume(tiny_model_dir, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text(
        "\n".join(f"{c} {k}" for c in ("a red", "a blue", "a green") for k in ("circle", "star", "hat"))
    )
    out = tmp_path / "out"
    args = [f, "--model", tiny_model_dir, "--steps", 6, "-N", 2, "--batch-size", 2, "--out", out]
    for n in (1, 5, 11):
        proc = _start(args)
        _wait_for_records(out, n, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert 0 < len(pngs(out)) < 18  # the kills landed mid-run
    proc = _start(args)
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
    check_folder(out, 18)


def test_ctrl_c_stops_after_current_batch(tiny_model_dir, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("\n".join(f"a red circle {i}" for i in range(30)))
    out = tmp_path / "out"
    proc = _start([f, "--model", tiny_model_dir, "--steps", 10, "--batch-size", 2, "--out", out])
    _wait_for_records(out, 2, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    made = len(pngs(out))
    assert 0 < made < 30 and made % 2 == 0  # whole batches only
    check_folder(out, made)


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="no torchrun",
)
def test_two_processes_split_the_lines(tiny_model_dir, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("\n".join(f"prompt number {i}" for i in range(7)))
    out = tmp_path / "out"
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    proc = subprocess.run(
        [
            torchrun,
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "-m",
            "latentgen",
            "batch",
            str(f),
            "--model",
            str(tiny_model_dir),
            "--steps",
            "1",
            "-N",
            "2",
            "--out",
            str(out),
            "-q",
            "--grid",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.glob("manifest*.jsonl")) == [
        "manifest.rank0.jsonl",
        "manifest.rank1.jsonl",
    ]
    per_shard = [
        [json.loads(x)["line"] for x in (out / f"manifest.rank{r}.jsonl").read_text().splitlines()]
        for r in (0, 1)
    ]
    assert per_shard[0] and per_shard[1]
    assert not set(per_shard[0]) & set(per_shard[1])  # no line done twice
    assert sorted(per_shard[0] + per_shard[1]) == sorted(list(range(1, 8)) * 2)
    check_folder(out, 14)
    assert (out / "grid.png").is_file()


@pytest.mark.parametrize(("option", "on"), [("guidance_rescale", 0.7), ("fill_in", True)])
def test_keys_of_runs_from_before_an_option_are_unchanged_while_it_is_off(tiny_model, option, on):
    """A run started before guidance rescale or fill-in existed resumes: off, they stay out of the key."""
    from dataclasses import replace

    req = GenerationRequest("a cat", seed=1).resolve(tiny_model.source)
    before = {k: v for k, v in req.to_dict().items() if k not in ("guidance_rescale", "fill_in")}
    old_key = hashlib.sha256(
        json.dumps({"request": before, "model": "h", "dtype": "fp32"}, sort_keys=True).encode()
    ).hexdigest()[:20]
    assert item_key(req, "h", "fp32") == old_key
    assert item_key(replace(req, **{option: on}), "h", "fp32") != old_key
