"""Samplers: our names, their diffusers scheduler classes, and how to build one for a model.

A sampler is always built from the model's own scheduler config (its noise schedule, prediction type,
timestep spacing), with only the solver-specific settings overridden, so the same name means the same
maths on every model.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

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
