"""The run folder shared by both training stages: checkpoints, resume, logging, schedule, Ctrl-C.

A run folder holds::

    checkpoint/state.safetensors   model weights, EMA, optimiser tensors, RNG states   (no pickle)
    checkpoint/state.json          config, step, optimiser hyper-parameters, elapsed time
    train.log                      what the console showed

Calling a ``train_*`` function again on the same folder resumes from ``checkpoint/`` and reaches the
same weights, bit for bit, as a run that was never interrupted (same machine, same thread count).
A checkpoint is written to ``checkpoint.tmp/`` and swapped in by renames, so a kill at any moment
leaves the previous one whole.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from latentgen.errors import UsageError

log = logging.getLogger("latentgen.train")

# Config fields a resumed run may change: they touch neither the weights nor the data ("vae" is
# read once, by a new U-Net run, which keeps a copy). "threads" may change float rounding, so a
# resume is bitwise exact only with the same thread count.
RUNTIME_FIELDS = frozenset(
    {"run_dir", "vae", "log_every", "eval_every", "sample_every", "checkpoint_minutes", "threads"}
)


@dataclass
class Checkpoint:
    step: int
    config: dict[str, Any]  # the training config, as JSON
    tensors: dict[str, torch.Tensor]  # "model.<part>.*", "ema.*", "optim.*", "rng.*", "extra.*"
    meta: dict[str, Any]  # everything else of state.json


def config_to_json(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON values (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_json(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config dataclass from :func:`config_to_json` output (lists back to tuples)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names})


def check_resume(ckpt: Checkpoint | None, cfg: Any) -> None:
    """Refuse to resume a run with a config that would change what it trains."""
    if ckpt is None:
        return
    new = config_to_json(cfg)
    # A field added after the checkpoint was written ran at its default, so only a new value changes it.
    old = {**config_to_json(type(cfg)()), **ckpt.config}
    changed = sorted(k for k in set(new) | set(old) if k not in RUNTIME_FIELDS and new.get(k) != old.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in changed)
        raise UsageError(
            f"run folder {cfg.run_dir} holds a run with another config ({diffs}); "
            "resume with the same settings or use a new run folder"
        )


def check_norm_groups(channels: tuple[int, ...], groups: int) -> None:
    """GroupNorm needs ``groups`` to divide every block's channel count."""
    if any(c % groups for c in channels):
        raise UsageError(f"norm_num_groups={groups} must divide every block_out_channels entry {channels}")


# --- checkpoints -----------------------------------------------------------------------------------


def save_checkpoint(
    run_dir: Path,
    *,
    step: int,
    cfg: Any,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write the whole training state to ``run_dir/checkpoint`` atomically."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        tensors.update({f"model.{name}.{k}": v for k, v in module.state_dict().items()})
    optim_tensors, optim_rest = _split_optimizer(optimizer.state_dict())
    tensors.update(optim_tensors)
    tensors.update(extra_tensors or {})
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.data"] = generator.get_state()
    # safetensors refuses shared or strided storage; small models, so copying is cheap.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    state = {"step": step, "config": config_to_json(cfg), "optimizer": optim_rest, **(meta or {})}

    final, tmp, old = run_dir / "checkpoint", run_dir / "checkpoint.tmp", run_dir / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The run's last checkpoint, or None for a new run."""
    folder = run_dir / "checkpoint"
    if not folder.is_dir() and (run_dir / "checkpoint.old").is_dir():
        folder = run_dir / "checkpoint.old"  # killed between the two renames of save_checkpoint
    if not (folder / "state.json").is_file():
        return None
    try:
        meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        tensors = load_file(str(folder / "state.safetensors"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"checkpoint {folder} is unreadable ({exc}); remove it to start over") from None
    return Checkpoint(step=meta.pop("step"), config=meta.pop("config"), tensors=tensors, meta=meta)


def restore(
    ckpt: Checkpoint,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
) -> None:
    """Load a checkpoint's weights (and optimiser and RNG states, when given) in place."""
    for name, module in modules.items():
        prefix = f"model.{name}."
        module.load_state_dict({k[len(prefix) :]: v for k, v in ckpt.tensors.items() if k.startswith(prefix)})
    if optimizer is not None:
        optimizer.load_state_dict(_join_optimizer(ckpt.tensors, ckpt.meta["optimizer"]))
    if generator is not None:
        torch.set_rng_state(ckpt.tensors["rng.torch"])
        generator.set_state(ckpt.tensors["rng.data"])


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimiser state dict as tensors (``optim.<param>.<name>``) plus JSON for the rest."""
    tensors, rest = {}, {}
    for idx, param_state in state["state"].items():
        for name, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                rest.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "state": rest}


def _join_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in rest["state"].items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


# --- the loop's helpers ----------------------------------------------------------------------------


def lr_at(step: int, base_lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * base_lr`` at ``max_steps``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class Progress:
    """Logs running means of the losses with steps/s and ETA every ``every`` steps."""

    def __init__(self, step: int, max_steps: int, batch_size: int, every: int):
        self.max_steps, self.batch_size, self.every = max_steps, batch_size, every
        self.sums: dict[str, float] = {}
        self.count = 0
        self.t0, self.step0 = time.monotonic(), step

    def update(self, step: int, lr: float, **values: float) -> None:
        """Record step ``step`` (1-based: steps done so far) and log if it is time."""
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1
        if step % self.every and step != self.max_steps:
            return
        dt = time.monotonic() - self.t0
        rate = (step - self.step0) / dt if dt > 0 else float("nan")
        eta = (self.max_steps - step) / rate if rate > 0 else float("nan")
        means = " ".join(f"{k} {s / self.count:.4f}" for k, s in self.sums.items())
        log.info(
            "step %d/%d  %s  lr %.2e | %.2f steps/s, %.0f img/s, %.2f s/step | ETA %s",
            step,
            self.max_steps,
            means,
            lr,
            rate,
            rate * self.batch_size,
            1 / rate if rate > 0 else float("nan"),
            format_duration(eta),
        )
        self.sums, self.count = {}, 0
        self.t0, self.step0 = time.monotonic(), step


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@contextmanager
def run_context(run_dir: Path, threads: int) -> Iterator[threading.Event]:
    """Set up a run: its folder, ``train.log``, thread count, and Ctrl-C / SIGTERM as a stop request.

    Yields an event the loop polls after each step: once set, the loop checkpoints and raises
    ``KeyboardInterrupt``. A second Ctrl-C stops at once (the last checkpoint still stands).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.FileHandler(run_dir / "train.log", encoding="utf-8")]
    if not log.hasHandlers():  # nobody (e.g. the CLI) set up logging: show progress on stderr
        handlers.append(logging.StreamHandler(sys.stderr))
    for h in handlers:
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(h)
    old_level, old_threads = log.level, torch.get_num_threads()
    log.setLevel(logging.INFO)
    if threads:
        torch.set_num_threads(threads)

    stop = threading.Event()

    def request_stop(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        log.warning("stopping: saving a checkpoint after this step (Ctrl-C again to abort)")

    in_main = threading.current_thread() is threading.main_thread()
    old_handlers = (
        {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    )
    try:
        yield stop
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        torch.set_num_threads(old_threads)
        log.setLevel(old_level)
        for h in handlers:
            log.removeHandler(h)
            h.close()


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON through a temporary file, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
