"""Shared fixtures: tiny models built in code under fixed seeds; nothing is fetched."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Tiny models gain nothing from more threads, and a busy machine makes them far slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random model saved in diffusers layout (read-only for tests: copy before changing it)."""
    from latentgen.tiny import write_model

    return write_model(tmp_path_factory.mktemp("models") / "tiny", "tiny", seed=0)


@pytest.fixture()
def model_copy(tiny_model_dir, tmp_path):
    """A private copy of the tiny model that a test may damage."""
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from latentgen import load_model

    return load_model(tiny_model_dir, device="cpu", dtype="fp32")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep the model-hash cache out of the user's home."""
    mp = pytest.MonkeyPatch()
    mp.setattr("latentgen.loader._HASH_CACHE", tmp_path_factory.mktemp("cache") / "hashes.json")
    yield
    mp.undo()


@pytest.fixture()
def run_cli(monkeypatch, capsys):
    """Run the console entry point in-process: returns (exit code, stdout, stderr)."""
    from latentgen.cli import main

    def run(*args: str):
        monkeypatch.setattr(sys, "argv", ["latentgen", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def batch_vs_singles():
    """``(pipe, prompts, settings, seed) → [max pixel difference]``: each prompt's image from one U-Net
    batch of all the prompts against the same prompt sampled alone."""
    import numpy as np

    from latentgen.pipeline import Job

    def diffs(pipe, prompts, settings, seed=4) -> list[int]:
        together, _ = pipe.sample([Job(p, "", seed) for p in prompts], settings)
        alone = [pipe.sample([Job(p, "", seed)], settings)[0][0] for p in prompts]
        pairs = zip(together, alone, strict=True)
        return [int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()) for a, b in pairs]

    return diffs


@pytest.fixture()
def guidance_log(caplog):
    """``(pipe, requests) → [message]``: the info lines with "guidance" in them that generating each
    request logs, in order."""
    import logging

    def said(pipe, requests) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="latentgen"):
            for request in requests:
                pipe.generate(request)
        return [r.getMessage() for r in caplog.records if "guidance" in r.getMessage()]

    return said


def _benchmark(name: str):
    """benchmarks/NAME.py as a module (the benchmarks folder is not a package)."""
    import importlib.util

    path = Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def inpaint_demo():
    return _benchmark("inpaint_demo")


@pytest.fixture(scope="session")
def kind_probe():
    return _benchmark("kind_probe")


@pytest.fixture(scope="session")
def relation_probe():
    return _benchmark("relation_probe")


@pytest.fixture(scope="session")
def text_order_probe():
    return _benchmark("text_order_probe")
