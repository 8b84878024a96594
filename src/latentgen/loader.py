"""Model loading, in one place: resolve a name → check the files → load → report what was loaded.

Two phases, so that user input can be validated against a model before any weights are read:

- :func:`resolve_model` finds the model folder and reads its small JSON configs (VAE factor, default
  size, scheduler config, sampler defaults, token limit). Cheap: no tensors are touched.
- :func:`load_model` checks every weights file (safetensors only, not truncated, not a git-lfs
  pointer), loads the components onto a device and dtype, and reports family, parameters, dtype and
  device.

Names a user may give: ``builtin`` (the model shipped inside this package), a local folder in
diffusers layout, or a Hugging Face repo id (``org/name``) looked up in the local Hugging Face cache.
Nothing touches the network unless ``allow_download`` is set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from latentgen.devices import dtype_name, resolve_device, resolve_dtype
from latentgen.errors import ModelLoadError, ModelNotFoundError, UnsafeCheckpointError, UsageError
from latentgen.request import is_nonnegative, is_rescale
from latentgen.samplers import Sampler

log = logging.getLogger("latentgen")

BUILTIN = "builtin"
BUILTIN_DIR = Path(__file__).parent / "models" / "builtin"
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
# The parts of a Stable Diffusion-style diffusers folder that hold weights.
WEIGHT_PARTS = ("unet", "vae", "text_encoder")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelDefaults:
    """Sampling defaults of a model: its scheduler config may carry its own (``latentgen_default_*``)."""

    steps: int = 20
    guidance: float = 7.5
    sampler: Sampler = Sampler.DPM_SOLVER
    # Inpainting may want others (the built-in model: more steps, less guidance); None: the above.
    inpaint_steps: int | None = None
    inpaint_guidance: float | None = None
    layout_strength: float = 0.0  # layout guidance (latentgen.layout); on only where measured
    subject_strength: float = 0.0  # subject guidance (latentgen.excite); on only where measured
    count_strength: float = 0.0  # count guidance (latentgen.layout); on only where measured
    guidance_rescale: float = 0.0  # φ of guidance rescale (GenerationRequest); on only where measured
    fill_in: bool = False  # draw the colours a prompt leaves open (latentgen.world.fill); world models


@dataclass
class ModelSource:
    """A model found on disk, with its configs read but no weights loaded."""

    name: str  # as the user gave it: "builtin", a path or a repo id
    path: Path  # the diffusers folder
    family: str  # "builtin", "sd1", "sd2", "sdxl" or "custom"
    vae_scale_factor: int  # pixels per latent cell, e.g. 8
    default_size: int  # default width/height in pixels
    max_tokens: int  # the text encoder's token limit, BOS/EOS included
    scheduler_config: dict[str, Any]
    defaults: ModelDefaults
    extra: dict[str, Any] = field(default_factory=dict)  # latentgen.json, if the folder has one
    inpainting_unet: bool = False  # its U-Net also takes a mask and the masked image's latents

    @property
    def vocabulary(self) -> list[str] | None:
        """The words the model was trained on, when it says (the built-in model does)."""
        return self.extra.get("vocabulary")

    @property
    def prompt_repeat(self) -> int:
        """How many times the text encoder reads each prompt (latentgen.json ``prompt_repeat``; 1 for
        any other model). Checked when the folder is read."""
        return self.extra.get("prompt_repeat", 1)


@dataclass
class Model:
    """A loaded model: its components on one device, ready for :class:`latentgen.Pipeline`."""

    source: ModelSource
    unet: Any  # diffusers UNet2DConditionModel
    vae: Any  # diffusers AutoencoderKL
    text_encoder: Any  # transformers CLIPTextModel
    tokenizer: Any  # transformers CLIPTokenizer
    device: torch.device
    dtype: torch.dtype  # of the U-Net and text encoder
    params: dict[str, int]  # parameter count per component
    content_hash: str  # sha256 over the model's files (see :func:`model_hash`)

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def short_hash(self) -> str:
        """The 10-hex-digit hash AUTOMATIC1111 shows as ``Model hash``."""
        return self.content_hash[:10]

    def describe(self) -> str:
        total = sum(self.params.values())
        parts = ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in self.params.items())
        vae_note = "" if self.vae.dtype == self.dtype else f", VAE in {dtype_name(self.vae.dtype)}"
        return (
            f"loaded {self.name} ({self.source.family}): {total / 1e6:.1f}M parameters ({parts}), "
            f"{dtype_name(self.dtype)} on {self.device}{vae_note}"
        )


# --- phase 1: resolve ----------------------------------------------------------------------------


def resolve_model(name: str | os.PathLike = BUILTIN, *, allow_download: bool = False) -> ModelSource:
    """Find ``name`` on disk and read its configs. Raises :class:`ModelNotFoundError` if absent."""
    text = str(name)
    if text == BUILTIN:
        if not (BUILTIN_DIR / "model_index.json").is_file():
            raise ModelNotFoundError(
                "the built-in model is not installed in this copy of latentgen "
                "(train it with `make train-builtin`); pass --model PATH to use another model"
            )
        path = BUILTIN_DIR
    elif Path(text).expanduser().exists():
        path = Path(text).expanduser().resolve()
        text = str(path)  # recorded in image metadata: must work from any folder
    elif _REPO_ID.match(text):
        path = _from_hf_cache(text, allow_download)
    else:
        raise ModelNotFoundError(
            f"model {text!r} not found: give a diffusers folder, a Hugging Face repo id "
            "(org/name) in the local cache, or 'builtin'"
        )
    return _read_folder(text, path)


def _from_hf_cache(repo_id: str, allow_download: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                repo_id,
                local_files_only=not allow_download,
                # Never fetch pickled weights: we would refuse them anyway.
                allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"],
            )
        )
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(
            f"model {repo_id!r} is not in the local Hugging Face cache; download it once with "
            "--allow-download (or `hf download`), or pass a local folder"
        ) from None
    except Exception as exc:  # network errors, missing repos, auth: all one line for the user
        raise ModelNotFoundError(f"could not fetch model {repo_id!r}: {exc}".splitlines()[0]) from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"model file {path} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"model file {path} is not valid JSON ({exc})") from None


def _read_folder(name: str, path: Path) -> ModelSource:
    if path.is_file():
        raise UsageError(
            f"model {name!r} is a single file; latentgen loads diffusers folders "
            "(model_index.json with unet/, vae/, text_encoder/, tokenizer/, scheduler/) for now"
        )
    index_path = path / "model_index.json"
    if not index_path.is_file():
        raise ModelLoadError(
            f"{path} is not a diffusers model folder: it has no model_index.json "
            "(expected model_index.json with unet/, vae/, text_encoder/, tokenizer/, scheduler/)"
        )
    index = _read_json(index_path)
    if "text_encoder_2" in index and index.get("text_encoder_2", [None])[0]:
        raise ModelLoadError(f"{path} is a Stable Diffusion XL model; SDXL is not supported yet")
    for part in (*WEIGHT_PARTS, "tokenizer", "scheduler"):
        if not (path / part).is_dir():
            raise ModelLoadError(f"model folder {path} is missing its {part}/ part")

    vae_cfg = _read_json(path / "vae" / "config.json")
    unet_cfg = _read_json(path / "unet" / "config.json")
    te_cfg = _read_json(path / "text_encoder" / "config.json")
    sched_cfg = _read_json(path / "scheduler" / "scheduler_config.json")
    extra = _read_json(path / "latentgen.json") if (path / "latentgen.json").is_file() else {}
    repeat = extra.get("prompt_repeat", 1)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
        raise ModelLoadError(
            f"{path / 'latentgen.json'}: prompt_repeat {repeat!r} must be a whole number, 1 or more; "
            "re-export the model or remove the key"
        )

    strengths = {}
    for kind in ("layout", "subject", "count"):
        key = f"latentgen_default_{kind}_strength"
        value = sched_cfg.get(key, 0.0)
        if not is_nonnegative(value):
            raise ModelLoadError(
                f"{path / 'scheduler' / 'scheduler_config.json'}: {key} {value!r} must be "
                "a number, 0 or more; re-export the model or remove the key"
            )
        strengths[f"{kind}_strength"] = float(value)
    rescale = sched_cfg.get("latentgen_default_guidance_rescale", 0.0)
    if not is_rescale(rescale):
        raise ModelLoadError(
            f"{path / 'scheduler' / 'scheduler_config.json'}: latentgen_default_guidance_rescale {rescale!r} "
            "must be a number from 0 to 1; re-export the model or remove the key"
        )
    fill_in = sched_cfg.get("latentgen_default_fill_in", False)
    if not isinstance(fill_in, bool):
        raise ModelLoadError(
            f"{path / 'scheduler' / 'scheduler_config.json'}: latentgen_default_fill_in {fill_in!r} "
            "must be true or false; re-export the model or remove the key"
        )
    vae_factor = 2 ** (len(vae_cfg.get("block_out_channels", [0, 0, 0, 0])) - 1)
    sample = unet_cfg.get("sample_size", 64)
    sample = sample[0] if isinstance(sample, list | tuple) else sample
    defaults = ModelDefaults(
        steps=int(sched_cfg.get("latentgen_default_steps", ModelDefaults.steps)),
        guidance=float(sched_cfg.get("latentgen_default_guidance", ModelDefaults.guidance)),
        sampler=Sampler(sched_cfg.get("latentgen_default_sampler", ModelDefaults.sampler.value)),
        inpaint_steps=_optional(int, sched_cfg.get("latentgen_inpaint_steps")),
        inpaint_guidance=_optional(float, sched_cfg.get("latentgen_inpaint_guidance")),
        guidance_rescale=float(rescale),
        fill_in=fill_in,
        **strengths,
    )
    return ModelSource(
        name=name,
        path=path,
        family=extra.get("family") or _guess_family(unet_cfg),
        vae_scale_factor=vae_factor,
        default_size=int(sample) * vae_factor,
        max_tokens=int(te_cfg.get("max_position_embeddings", 77)),
        scheduler_config=sched_cfg,
        defaults=defaults,
        extra=extra,
        inpainting_unet=unet_cfg.get("in_channels", 4) == 2 * vae_cfg.get("latent_channels", 4) + 1,
    )


def _optional(kind, value):
    return None if value is None else kind(value)


def _guess_family(unet_cfg: dict[str, Any]) -> str:
    return {768: "sd1", 1024: "sd2"}.get(unet_cfg.get("cross_attention_dim"), "custom")


# --- phase 2: load -------------------------------------------------------------------------------


def load_model(
    model: str | os.PathLike | ModelSource = BUILTIN,
    *,
    device: str = "auto",
    dtype: str = "auto",
    allow_download: bool = False,
) -> Model:
    """Load a model's components onto ``device`` in ``dtype`` (``auto``: see :mod:`latentgen.devices`)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    source = model if isinstance(model, ModelSource) else resolve_model(model, allow_download=allow_download)
    quiet_libraries()
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    variants = {part: _check_weights(source.path / part) for part in WEIGHT_PARTS}

    try:
        unet = UNet2DConditionModel.from_pretrained(
            source.path / "unet", use_safetensors=True, variant=variants["unet"]
        )
        vae = AutoencoderKL.from_pretrained(
            source.path / "vae", use_safetensors=True, variant=variants["vae"]
        )
        text_encoder = CLIPTextModel.from_pretrained(
            source.path / "text_encoder", use_safetensors=True, variant=variants["text_encoder"]
        )
        tokenizer = CLIPTokenizer.from_pretrained(source.path / "tokenizer")
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"could not load model {source.name!r} from {source.path}: {first}") from exc

    # fp16 VAEs overflow in SD 1.x/XL; configs mark that with force_upcast, and then the VAE stays fp32.
    vae_dtype = (
        torch.float32 if torch_dtype == torch.float16 and vae.config.get("force_upcast") else torch_dtype
    )
    for module, mdtype in ((unet, torch_dtype), (vae, vae_dtype), (text_encoder, torch_dtype)):
        module.to(device=torch_device, dtype=mdtype)
        module.eval()
        module.requires_grad_(False)

    loaded = Model(
        source=source,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        device=torch_device,
        dtype=torch_dtype,
        params={
            "unet": _count(unet),
            "vae": _count(vae),
            "text encoder": _count(text_encoder),
        },
        content_hash=model_hash(source.path),
    )
    log.info(loaded.describe())
    return loaded


def quiet_libraries() -> None:
    """Silence diffusers'/transformers' own progress bars and info chatter (they use their own loggers)."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    for lib in (dlog, tlog):
        lib.set_verbosity_error()
        lib.disable_progress_bar()


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_weights(part_dir: Path) -> str | None:
    """Check a component folder's weights; return the diffusers ``variant`` to load (``None`` or "fp16")."""
    files = sorted(p for p in part_dir.iterdir() if p.is_file())
    safe = [p for p in files if p.name.endswith(".safetensors")]
    if not safe:
        pickles = [p.name for p in files if p.name.endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise UnsafeCheckpointError(
                f"{part_dir} holds only pickled weights ({', '.join(pickles)}); loading them could run "
                "arbitrary code, so latentgen loads .safetensors only. Convert them once in a trusted "
                "environment (e.g. diffusers' save_pretrained(..., safe_serialization=True))"
            )
        raise ModelLoadError(f"{part_dir} has no weights file (*.safetensors)")
    for p in safe:
        check_safetensors_file(p)
    plain = [p for p in safe if not re.search(r"\.\w+\.safetensors$", p.name) or "-of-" in p.name]
    if plain:
        return None
    variants = {p.name.split(".")[-2] for p in safe}
    return "fp16" if "fp16" in variants else sorted(variants)[0]


def check_safetensors_file(path: Path) -> None:
    """Refuse a git-lfs pointer, a truncated file or a corrupt header, naming the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if head.startswith(b"version "):
            raise ModelLoadError(
                f"{path} is a git-lfs pointer, not weights; run `git lfs pull` in that repository"
            )
        if len(head) < 8:
            raise ModelLoadError(f"{path} is truncated ({size} bytes); download or copy it again")
        header_len = int.from_bytes(head, "little")
        if header_len <= 0 or 8 + header_len > size:
            raise ModelLoadError(f"{path} is truncated or not a safetensors file; download or copy it again")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ModelLoadError(
                f"{path} has a corrupt safetensors header; download or copy it again"
            ) from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise ModelLoadError(
            f"{path} is truncated ({size} bytes, its header needs {8 + header_len + end}); "
            "download or copy it again"
        )


# --- content hash --------------------------------------------------------------------------------

_HASH_CACHE = Path(os.environ.get("LATENTGEN_CACHE", Path.home() / ".cache" / "latentgen")) / "hashes.json"


def model_hash(folder: Path) -> str:
    """sha256 over (relative path, sha256 of content) of every config and weights file in ``folder``.

    File digests are cached by (path, size, mtime), so a multi-GB model is read in full only once.
    """
    cache = _load_hash_cache()
    lines = []
    changed = False
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or not p.name.endswith((".json", ".txt", ".safetensors")) or ".cache" in p.parts:
            continue
        st = p.stat()
        key = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        digest = cache.get(key)
        if digest is None:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(chunk)
            digest = cache[key] = h.hexdigest()
            changed = True
        lines.append(f"{p.relative_to(folder).as_posix()} {digest}\n")
    if changed:
        _save_hash_cache(cache)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _load_hash_cache() -> dict[str, str]:
    try:
        return json.loads(_HASH_CACHE.read_text())
    except (OSError, ValueError):
        return {}


def _save_hash_cache(cache: dict[str, str]) -> None:
    try:
        _HASH_CACHE.parent.mkdir(parents=True, exist_ok=True)
        tmp = _HASH_CACHE.with_name(f".{_HASH_CACHE.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, _HASH_CACHE)
    except OSError as exc:  # a read-only home must not stop generation
        log.debug("could not write hash cache %s: %s", _HASH_CACHE, exc)
