"""The command line: outputs, metadata, replay, validation messages and exit codes, safe writes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from latentgen.metadata import read


def arr(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_generate_writes_png_with_metadata(run_cli, tiny_model_dir, tmp_path):
    out = tmp_path / "cat.png"
    code, stdout, err = run_cli(
        "generate",
        "a cat wearing a hat",
        "--model",
        tiny_model_dir,
        "--seed",
        42,
        "--steps",
        3,
        "--out",
        out,
        "--negative",
        "a red circle",
    )
    assert code == 0, err
    assert stdout.strip() == str(out)
    assert "loaded" in err
    params = Image.open(out).text["parameters"].splitlines()
    assert params[0] == "a cat wearing a hat"
    assert params[1] == "Negative prompt: a red circle"
    assert params[2].startswith(
        "Steps: 3, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 42, Size: 32x32, Model hash: "
    )
    rec = read(out)
    assert rec["request"]["prompt"] == "a cat wearing a hat"
    assert rec["request"]["seed"] == 42 and rec["request"]["sampler"] == "dpm-solver"
    assert rec["model"]["name"] == str(tiny_model_dir)
    assert rec["dtype"] == "fp32" and rec["device"] == "cpu"
    assert {"torch", "diffusers", "transformers", "latentgen"} <= set(rec["versions"])


def test_num_images_equal_single_runs_and_json(run_cli, tiny_model_dir, tmp_path):
    code, stdout, err = run_cli(
        "generate",
        "two stars",
        "--model",
        tiny_model_dir,
        "--seed",
        5,
        "--steps",
        3,
        "-N",
        3,
        "--out",
        tmp_path / "many",
        "--json",
    )
    assert code == 0, err
    records = [json.loads(line) for line in stdout.splitlines()]
    assert [r["request"]["seed"] for r in records] == [5, 6, 7]
    for r in records:
        single = tmp_path / f"single-{r['request']['seed']}.png"
        code, _, err = run_cli(
            "generate",
            "two stars",
            "--model",
            tiny_model_dir,
            "--seed",
            r["request"]["seed"],
            "--steps",
            3,
            "--out",
            single,
        )
        assert code == 0, err
        assert arr(single).tobytes() == arr(r["path"]).tobytes()


def test_info_and_replay_reproduce_pixels(run_cli, tiny_model_dir, tmp_path):
    first = tmp_path / "a.png"
    code, _, err = run_cli(
        "generate",
        "a blue heart",
        "--model",
        tiny_model_dir,
        "--steps",
        4,
        "--sampler",
        "euler-a",
        "--guidance",
        4,
        "--out",
        first,
    )
    assert code == 0, err
    code, stdout, _ = run_cli("info", first)
    assert code == 0 and stdout.startswith("a blue heart\nSteps: 4, Sampler: Euler a, CFG scale: 4")
    again = tmp_path / "b.png"
    code, _, err = run_cli("generate", "--replay", first, "--out", again)
    assert code == 0, err
    assert arr(again).tobytes() == arr(first).tobytes()
    assert read(again)["request"] == read(first)["request"]


def test_default_out_is_a_folder_and_never_overwrites(run_cli, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ("generate", "a red circle", "--model", tiny_model_dir, "--seed", 1, "--steps", 1)
    code1, out1, _ = run_cli(*args)
    code2, out2, _ = run_cli(*args)
    assert code1 == code2 == 0
    p1, p2 = (tmp_path / out1.strip()), (tmp_path / out2.strip())
    assert p1.parent.name == "outputs" and p1.name == "a-red-circle-1.png"
    assert p2.name == "a-red-circle-1-2.png"
    assert p1.read_bytes() and p2.read_bytes()


def test_existing_file_is_kept_without_overwrite(run_cli, tiny_model_dir, tmp_path):
    target = tmp_path / "mine.png"
    target.write_bytes(b"precious")
    code, stdout, err = run_cli("generate", "a cat", "--model", tiny_model_dir, "--steps", 1, "--out", target)
    assert code == 2 and stdout == ""
    assert err.strip() == f"error: {target} already exists; pass --overwrite or choose another --out"
    assert target.read_bytes() == b"precious"
    code, _, err = run_cli(
        "generate", "a cat", "--model", tiny_model_dir, "--steps", 1, "--out", target, "--overwrite"
    )
    assert code == 0, err
    assert Image.open(target).size == (32, 32)


def test_failed_write_leaves_no_file(run_cli, tiny_model_dir, tmp_path, monkeypatch):
    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    code, _, err = run_cli(
        "generate", "a cat", "--model", tiny_model_dir, "--steps", 1, "--out", tmp_path / "x.png"
    )
    assert code == 1
    assert "No space left on device" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--width", 30),
            "width 30 is not a multiple of 8 (this model's VAE factor); nearest valid width: 32",
        ),
        (("--height", 0), "height 0 is invalid; use a positive multiple of 8"),
        (("--steps", 0), "steps 0 is invalid"),
        (("--guidance", -1), "guidance -1.0 is invalid; use a number ≥ 0"),
        (("--seed", -1), "seed -1 is out of range; use an integer in [0, 2^64)"),
        (("--seed", 2**64), f"seed {2**64} is out of range"),
        (("--seed", 2**64 - 1, "-N", 2), "runs past 2^64-1"),
        (
            ("--sampler", "plms"),
            "unknown sampler 'plms'; choose one of: ddim, dpm-solver, euler, euler-a, unipc",
        ),
        (("--sampler", "ddim", "--karras"), "--karras does not apply to sampler 'ddim'"),
        (("-N", 2, "--out", "one.png"), "names one file but 2 images were asked for"),
        (("--out", "x.jpg"), "latentgen writes PNG"),
        (("--device", "cuda"), "this machine has no CUDA GPU"),
        (("--dtype", "fp8"), "unknown dtype 'fp8'"),
    ],
)
def test_usage_errors_exit_2_before_loading(run_cli, model_copy, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    # Damaged weights: any error below must come from validation, before weights are read.
    (model_copy / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"broken")
    code, stdout, err = run_cli("generate", "a cat", "--model", model_copy, *args)
    assert code == 2, err
    assert message in err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert stdout == ""


def test_empty_prompt_and_missing_model(run_cli, tiny_model_dir, tmp_path):
    code, _, err = run_cli("generate", "  ", "--model", tiny_model_dir)
    assert code == 2 and "the prompt is empty" in err
    code, _, err = run_cli("generate", "a cat", "--model", tmp_path / "missing")
    assert code == 2 and "not found" in err and str(tmp_path / "missing") in err


def test_runtime_errors_exit_1_and_unsafe_exit_3(run_cli, model_copy, tmp_path):
    f = model_copy / "vae" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:50])
    code, _, err = run_cli("generate", "a cat", "--model", model_copy, "--out", tmp_path / "x.png")
    assert code == 1 and "is truncated" in err and "Traceback" not in err
    f.unlink()
    (model_copy / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04N.")
    code, _, err = run_cli("generate", "a cat", "--model", model_copy, "--out", tmp_path / "x.png")
    assert code == 3 and "only pickled weights" in err
    assert not (tmp_path / "x.png").exists()


def test_ctrl_c_exits_130(run_cli, tiny_model_dir, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr("latentgen.pipeline.Pipeline.iter_generate", interrupted)
    code, _, err = run_cli("generate", "a cat", "--model", tiny_model_dir, "--out", tmp_path / "x.png")
    assert code == 130 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


def test_info_refuses_foreign_images(run_cli, tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    code, _, err = run_cli("info", plain)
    assert code == 2 and "carries no latentgen metadata" in err
    (tmp_path / "text.png").write_text("not an image")
    code, _, err = run_cli("info", tmp_path / "text.png")
    assert code == 2 and "is not a readable image" in err


def test_console_script_usage_error_has_no_traceback(tiny_model_dir, tmp_path):
    """The installed entry point, end to end in its own process."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "latentgen",
            "generate",
            "a cat",
            "--model",
            str(tiny_model_dir),
            "--width",
            "33",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "nearest valid width: 32" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "latentgen", "generate", "--bogus"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "No such option" in proc.stderr
