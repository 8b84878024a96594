"""Model loading: what loads, what is refused, and that the message names the file and the fix."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from latentgen import (
    ModelLoadError,
    ModelNotFoundError,
    UnsafeCheckpointError,
    UsageError,
    load_model,
    resolve_model,
)
from latentgen.loader import model_hash


def test_saved_model_loads_and_reports(tiny_model_dir):
    model = load_model(tiny_model_dir, device="cpu", dtype="fp32")
    assert model.source.vae_scale_factor == 8
    assert model.source.default_size == 32
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert set(model.params) == {"unet", "vae", "text encoder"}
    assert model.params["unet"] == sum(p.numel() for p in model.unet.parameters())
    text = model.describe()
    assert "fp32 on cpu" in text and "parameters" in text
    assert len(model.content_hash) == 64


def test_hash_is_stable_and_follows_content(model_copy):
    h1 = model_hash(model_copy)
    assert model_hash(model_copy) == h1
    cfg = model_copy / "scheduler" / "scheduler_config.json"
    cfg.write_text(cfg.read_text().replace("0.012", "0.0121"))
    assert model_hash(model_copy) != h1


def _pickle_only(model_dir, marker):
    """Replace the U-Net's safetensors with a pickle whose payload would create ``marker``."""

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (model_dir / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with open(model_dir / "unet" / "diffusion_pytorch_model.bin", "wb") as f:
        pickle.dump(Payload(), f)


def test_pickle_only_folder_is_refused_and_never_unpickled(model_copy, tmp_path):
    marker = tmp_path / "pwned"
    _pickle_only(model_copy, marker)
    with pytest.raises(UnsafeCheckpointError, match=r"only pickled weights \(diffusion_pytorch_model.bin\)"):
        load_model(model_copy, device="cpu")
    assert not marker.exists()
    assert UnsafeCheckpointError.exit_code == 3


def test_truncated_safetensors_is_named(model_copy):
    f = model_copy / "vae" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match=r"vae/diffusion_pytorch_model.safetensors is truncated"):
        load_model(model_copy, device="cpu")


def test_lfs_pointer_is_named(model_copy):
    f = model_copy / "text_encoder" / "model.safetensors"
    f.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(ModelLoadError, match="git-lfs pointer"):
        load_model(model_copy, device="cpu")


def test_missing_part_is_named(model_copy):
    import shutil

    shutil.rmtree(model_copy / "tokenizer")
    with pytest.raises(ModelLoadError, match="missing its tokenizer/ part"):
        resolve_model(model_copy)


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        resolve_model(tmp_path)


def test_unknown_name_and_missing_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        resolve_model("someone/some-model")


def test_repo_id_resolves_from_local_hf_cache(tiny_model_dir, tmp_path, monkeypatch):
    """A snapshot laid out as huggingface_hub caches it loads with no network."""
    import shutil

    import huggingface_hub.constants as hc

    hub = tmp_path / "hub"
    repo = hub / "models--acme--tiny"
    commit = "0" * 40
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(hub))
    source = resolve_model("acme/tiny")
    assert source.path == repo / "snapshots" / commit
    assert load_model(source, device="cpu").source.name == "acme/tiny"


def test_builtin_missing_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr("latentgen.loader.BUILTIN_DIR", tmp_path / "nothing")
    with pytest.raises(ModelNotFoundError, match="built-in model is not installed"):
        resolve_model("builtin")


def test_single_file_is_not_a_folder(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"\x00" * 16)
    with pytest.raises(UsageError, match="single file"):
        resolve_model(f)


def test_sampler_defaults_come_from_scheduler_config(model_copy):
    cfg_path = model_copy / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(latentgen_default_steps=12, latentgen_default_guidance=3.0, latentgen_default_sampler="ddim")
    cfg_path.write_text(json.dumps(cfg))
    d = resolve_model(model_copy).defaults
    assert (d.steps, d.guidance, d.sampler.value) == (12, 3.0, "ddim")
    assert (d.inpaint_steps, d.inpaint_guidance) == (None, None)  # inpainting: the same as generate
