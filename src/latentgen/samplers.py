"""Samplers: our names, their diffusers scheduler classes, and how to build one for a model.

A sampler is always built from the model's own scheduler config (its noise schedule, prediction type,
timestep spacing), with only the solver-specific settings overridden, so the same name means the same
maths on every model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch

from latentgen.errors import UsageError


class Sampler(str, Enum):
    DDIM = "ddim"
    DPM_SOLVER = "dpm-solver"  # DPM-Solver++ 2M multistep
    EULER = "euler"
    EULER_A = "euler-a"
    UNIPC = "unipc"

    @classmethod
    def parse(cls, value: str | Sampler) -> Sampler:
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(s.value for s in cls)
            raise UsageError(f"unknown sampler {value!r}; choose one of: {names}") from None


@dataclass(frozen=True)
class _Spec:
    class_name: str  # diffusers scheduler class
    a1111_name: str  # the name AUTOMATIC1111 writes in its "Sampler:" field
    karras: bool  # whether the scheduler supports Karras sigmas
    stochastic: bool = False  # whether each step draws fresh noise (then it needs the generators)
    overrides: tuple[tuple[str, Any], ...] = ()


_SPECS: dict[Sampler, _Spec] = {
    Sampler.DDIM: _Spec("DDIMScheduler", "DDIM", karras=False),
    Sampler.DPM_SOLVER: _Spec(
        "DPMSolverMultistepScheduler",
        "DPM++ 2M",
        karras=True,
        overrides=(("algorithm_type", "dpmsolver++"), ("solver_order", 2)),
    ),
    Sampler.EULER: _Spec("EulerDiscreteScheduler", "Euler", karras=True),
    Sampler.EULER_A: _Spec("EulerAncestralDiscreteScheduler", "Euler a", karras=False, stochastic=True),
    Sampler.UNIPC: _Spec("UniPCMultistepScheduler", "UniPC", karras=True),
}


def supports_karras(sampler: Sampler) -> bool:
    return _SPECS[sampler].karras


def is_stochastic(sampler: Sampler) -> bool:
    return _SPECS[sampler].stochastic


def a1111_name(sampler: Sampler, karras: bool) -> str:
    """The sampler as AUTOMATIC1111 names it, e.g. ``DPM++ 2M Karras``."""
    return _SPECS[sampler].a1111_name + (" Karras" if karras else "")


def check_sampler(sampler: Sampler, karras: bool) -> None:
    if karras and not supports_karras(sampler):
        ok = ", ".join(s.value for s in Sampler if supports_karras(s))
        raise UsageError(f"--karras does not apply to sampler {sampler.value!r}; it works with: {ok}")


def scheduler_kwargs(sampler: Sampler, karras: bool) -> dict[str, Any]:
    """The settings this sampler forces on top of the model's scheduler config."""
    spec = _SPECS[sampler]
    kwargs = dict(spec.overrides)
    if spec.karras:
        # Always set, so a model config that enables Karras sigmas does not leak into a plain run.
        kwargs["use_karras_sigmas"] = karras
    return kwargs


def build_scheduler(sampler: Sampler, karras: bool, scheduler_config: dict[str, Any]):
    """A fresh diffusers scheduler for ``sampler`` from the model's scheduler config."""
    import diffusers

    check_sampler(sampler, karras)
    cls = getattr(diffusers, _SPECS[sampler].class_name)
    return cls.from_config(scheduler_config, **scheduler_kwargs(sampler, karras))


# --- stepping back (resampling, as in RePaint) ------------------------------------------------------


def scheduler_state(scheduler) -> dict[str, Any]:
    """A snapshot of a diffusers scheduler's mutable state (step index, multistep history...)."""
    return _copy_lists(vars(scheduler))


def restore_scheduler(scheduler, state: dict[str, Any]) -> None:
    """Put ``scheduler`` back as it was when :func:`scheduler_state` took ``state``."""
    for key in set(vars(scheduler)) - set(state):
        delattr(scheduler, key)
    vars(scheduler).update(_copy_lists(state))  # copies again: the state may be restored twice


def _copy_lists(d: dict[str, Any]) -> dict[str, Any]:
    # Schedulers reassign their tensors but edit their history lists in place.
    return {k: list(v) if isinstance(v, list) else v for k, v in d.items()}


def noise_level(scheduler, t: torch.Tensor, device: torch.device | str = "cpu") -> tuple[float, float]:
    """``(a, s)`` such that latents at timestep ``t`` are ``a * x0 + s * noise`` for this scheduler.

    Read off the scheduler's own ``add_noise``, so it holds for variance-preserving latents (DDIM,
    DPM-Solver: a = sqrt(alpha_bar)) and variance-exploding ones (Euler: a = 1, s = sigma) alike, and
    follows the scheduler's step index where its ``add_noise`` does. ``device``: the latents' (some
    schedulers move their tables to the device ``add_noise`` is called with).
    """
    one, zero = torch.ones(1, device=device), torch.zeros(1, device=device)
    t = t.reshape(1).to(device)
    return float(scheduler.add_noise(one, zero, t)), float(scheduler.add_noise(zero, one, t))


def step_back(
    scheduler,
    state: dict[str, Any],
    latents: torch.Tensor,
    t_after: torch.Tensor,
    t_before: torch.Tensor,
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """Undo one sampler step by re-noising: latents at ``t_after`` → a fresh draw at ``t_before``.

    The scheduler goes back to ``state`` (taken before the step), so the step can run again. Given
    ``x0``, latents at ``t_after`` are ``a1 x0 + s1 n``; the result, ``(a0 / a1) x + sqrt(s0² -
    (a0 / a1)² s1²) n'``, is then ``a0 x0 + s0 n''``: the forward process from one level to the
    other. ``n'`` is drawn from each image's generator, so a batch equals its singles.
    """
    a_after, s_after = noise_level(scheduler, t_after, latents.device)
    restore_scheduler(scheduler, state)
    a_before, s_before = noise_level(scheduler, t_before, latents.device)
    ratio = a_before / a_after
    extra = max(s_before**2 - (ratio * s_after) ** 2, 0.0) ** 0.5
    fresh = torch.cat(
        [torch.randn(latents.shape[1:], generator=g, device="cpu")[None] for g in generators]
    ).to(device=latents.device, dtype=latents.dtype)
    return ratio * latents + extra * fresh
