"""What a user asks for: :class:`GenerationRequest`, and its validation against a model.

Validation runs before any weights are loaded (it needs only a :class:`~latentgen.loader.ModelSource`)
and every error names the value and the fix.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass, replace
from typing import Any

from latentgen.errors import UsageError
from latentgen.samplers import Sampler, check_sampler

SEED_LIMIT = 2**64  # torch.Generator.manual_seed accepts [0, 2^64)
MAX_SIDE = 8192  # pixels; beyond this no model of ours makes sense and memory explodes


@dataclass(frozen=True)
class GenerationRequest:
    """One text-to-image request. ``None`` fields take the model's defaults when resolved.

    Image ``i`` (0-based) of the request starts from noise drawn by a CPU ``torch.Generator`` seeded
    ``seed + i``: a request for N images equals N requests for one image with seeds S..S+N-1.
    """

    prompt: str
    negative_prompt: str = ""
    steps: int | None = None  # sampler steps; default from the model
    guidance: float | None = None  # classifier-free guidance scale; ≤ 1 disables CFG
    sampler: Sampler | None = None
    karras: bool = False  # Karras sigmas (dpm-solver, euler, unipc)
    seed: int | None = None  # None: pick one at random, recorded in the image's metadata
    width: int | None = None  # pixels; default from the model
    height: int | None = None
    num_images: int = 1
    layout_strength: float | None = None  # layout guidance (latentgen.layout); 0: off; default: the model's
    subject_strength: float | None = None  # subject guidance (latentgen.excite); 0: off; default: the model's
    count_strength: float | None = None  # count guidance (latentgen.layout); 0: off; default: the model's
    # Guidance rescale φ in [0, 1] (Lin et al. 2023, diffusers' guidance_rescale): the guided prediction
    # is pulled φ of the way towards the conditional one's spread; 0: off; default: the model's
    guidance_rescale: float | None = None
    # Fill in the colours and background the prompt leaves open, drawn from the image's seed as the
    # built-in model's world draws them (latentgen.world.fill); prompts outside the world's language
    # are left as they are. Text to image only. Default: the model's (on for the built-in model).
    fill_in: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sampler"] = self.sampler.value if self.sampler else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenerationRequest:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"unknown request field(s): {', '.join(unknown)}")
        d = dict(d)
        if d.get("sampler") is not None:
            d["sampler"] = Sampler.parse(d["sampler"])
        return cls(**d)

    def resolve(self, source) -> GenerationRequest:
        """Fill defaults from ``source`` (a ModelSource), pick a seed if none, and validate."""
        req = replace(
            self,
            steps=self.steps if self.steps is not None else source.defaults.steps,
            guidance=self.guidance if self.guidance is not None else source.defaults.guidance,
            guidance_rescale=(
                self.guidance_rescale
                if self.guidance_rescale is not None
                else source.defaults.guidance_rescale
            ),
            sampler=Sampler.parse(self.sampler) if self.sampler is not None else source.defaults.sampler,
            width=self.width if self.width is not None else source.default_size,
            height=self.height if self.height is not None else source.default_size,
            seed=self.seed if self.seed is not None else random_seed(),
            layout_strength=(
                self.layout_strength if self.layout_strength is not None else source.defaults.layout_strength
            ),
            subject_strength=(
                self.subject_strength
                if self.subject_strength is not None
                else source.defaults.subject_strength
            ),
            count_strength=(
                self.count_strength if self.count_strength is not None else source.defaults.count_strength
            ),
            fill_in=self.fill_in if self.fill_in is not None else source.defaults.fill_in,
        )
        validate(req, source.vae_scale_factor)
        return req


def random_seed() -> int:
    # 2^32 keeps picked seeds short to type; any seed in [0, 2^64) is accepted.
    return secrets.randbelow(2**32)


def nearest_multiple(value: int, factor: int) -> int:
    return max(factor, int(round(value / factor)) * factor)


def is_nonnegative(value: Any) -> bool:
    """A finite real number ≥ 0 (not a bool): what guidance and the layout and subject strengths must be."""
    return not isinstance(value, bool) and isinstance(value, int | float) and 0 <= value < math.inf


def is_rescale(value: Any) -> bool:
    """A real number in [0, 1] (not a bool): what a guidance rescale must be."""
    return is_nonnegative(value) and value <= 1


def validate(req: GenerationRequest, vae_factor: int) -> None:
    """Raise :class:`UsageError` naming the first invalid field of a resolved request."""
    if not isinstance(req.prompt, str) or not req.prompt.strip():
        raise UsageError('the prompt is empty; give a text prompt, e.g. latentgen generate "a red circle"')
    if not isinstance(req.negative_prompt, str):
        raise UsageError(f"negative prompt must be text, got {req.negative_prompt!r}")
    _int("steps", req.steps, minimum=1, hint="use at least 1 (20 is typical)")
    _int("num_images", req.num_images, minimum=1, hint="ask for at least 1 image")
    g = req.guidance
    if not is_nonnegative(g):
        raise UsageError(f"guidance {g!r} is invalid; use a number ≥ 0 (7.5 is typical, ≤ 1 disables CFG)")
    if not is_rescale(req.guidance_rescale):
        raise UsageError(
            f"guidance rescale {req.guidance_rescale!r} is invalid; "
            "use a number from 0 to 1 (0 turns it off, 0.7 is typical)"
        )
    strengths = (
        ("layout", req.layout_strength),
        ("subject", req.subject_strength),
        ("count", req.count_strength),
    )
    for name, value in strengths:
        if not is_nonnegative(value):
            raise UsageError(
                f"{name} strength {value!r} is invalid; use a number ≥ 0 (0 turns {name} guidance off)"
            )
    if not isinstance(req.fill_in, bool):
        raise UsageError(f"fill_in {req.fill_in!r} is invalid; use true or false")
    seed = req.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise UsageError(f"seed {seed!r} is out of range; use an integer in [0, 2^64)")
    if seed + req.num_images - 1 >= SEED_LIMIT:
        raise UsageError(
            f"seed {seed} with {req.num_images} images runs past 2^64-1 (image i uses seed+i); use a smaller seed"
        )
    for name, side in (("width", req.width), ("height", req.height)):
        _int(name, side, minimum=1, hint=f"use a positive multiple of {vae_factor}")
        if side > MAX_SIDE:
            raise UsageError(f"{name} {side} is too large; use at most {MAX_SIDE}")
        if side % vae_factor:
            raise UsageError(
                f"{name} {side} is not a multiple of {vae_factor} (this model's VAE factor); "
                f"nearest valid {name}: {nearest_multiple(side, vae_factor)}"
            )
    check_sampler(req.sampler, req.karras)


def _int(name: str, value: Any, minimum: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{name} {value!r} is invalid; {hint}")
