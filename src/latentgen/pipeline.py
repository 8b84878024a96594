"""The sampling pipeline, as numbered steps.

    validate → fill-in (the colours and background a prompt of the built-in model's world leaves
    open, drawn from each image's seed) → tokenize → encode prompt and negative prompt → seeded
    noise → sampler loop (U-Net + classifier-free guidance, optionally rescaled; cross-attention
    biased by layout guidance for prompts with a relation, and by count guidance for counted phrases
    like "three hearts"; before each step, subject guidance nudges the latents of prompts naming two
    things without a relation) → VAE decode → non-finite check → PIL images

:meth:`Pipeline.generate` serves one :class:`GenerationRequest`; :meth:`Pipeline.sample` is the one
sampling loop underneath, over a U-Net batch of :class:`Job` s that share :class:`Settings`. Batch
runs group compatible requests into one ``sample`` call; img2img and inpainting reuse it through the
``start`` and ``after_step`` hooks instead of copying the loop.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from latentgen.devices import dtype_name
from latentgen.errors import NonFiniteError, UsageError
from latentgen.excite import SubjectGuide, Subjects, recording_attention, subject_spans
from latentgen.layout import (
    WHOLE,
    LayoutBias,
    Region,
    bias_map,
    count_map,
    count_places,
    describe,
    describe_counts,
    layout_attention,
    token_counts,
    token_placements,
)
from latentgen.loader import Model
from latentgen.request import GenerationRequest
from latentgen.samplers import Sampler, build_scheduler, is_stochastic, scheduler_state, step_back
from latentgen.tokenizer import repeat_prompt, span_tokens

if TYPE_CHECKING:
    from latentgen.edit import EditRequest

log = logging.getLogger("latentgen")

# (step index within a batch, steps in that batch) → None; called after every sampler step.
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Settings:
    """What every image of one U-Net batch shares."""

    width: int
    height: int
    steps: int
    guidance: float
    sampler: Sampler
    karras: bool = False
    layout_strength: float = 0.0  # layout guidance (layout.py); 0: off
    subject_strength: float = 0.0  # subject guidance (excite.py); 0: off
    count_strength: float = 0.0  # count guidance (layout.py); 0: off
    guidance_rescale: float = 0.0  # φ: see rescale_guidance; 0: off
    fill_in: bool = False  # each job's prompt with its open colours drawn (drawn_prompt)

    @classmethod
    def of(cls, req: GenerationRequest) -> Settings:
        return cls(
            req.width,
            req.height,
            req.steps,
            req.guidance,
            req.sampler,
            req.karras,
            req.layout_strength,
            req.subject_strength,
            req.count_strength,
            req.guidance_rescale,
            req.fill_in,
        )


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
    Flawed", §3.4; diffusers' ``guidance_rescale``): scale each image's guided prediction to the
    standard deviation of its conditional one, and take ``phi`` of that and ``1 - phi`` of the guided.

    Classifier-free guidance widens the prediction's spread with its scale; the model then paints
    backgrounds more saturated than asked. Measured on the built-in model (48 images a colour, guidance
    4): "on a gray background" drew gray in 31 of 48 without, 48 with phi 0.7.
    """
    dims = tuple(range(1, guided.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1 - phi) * guided


@dataclass(frozen=True)
class Job:
    """One image to make: its prompt, negative prompt and noise seed."""

    prompt: str
    negative_prompt: str
    seed: int


@dataclass
class GeneratedImage:
    """A finished image and everything needed to reproduce it."""

    image: Image.Image
    request: GenerationRequest  # resolved, for exactly this image: num_images=1, its own seed
    index: int  # position within the request it came from
    model_name: str
    model_hash: str
    model_family: str
    dtype: str
    device: str
    notes: tuple[str, ...] = ()  # things that happened on the way, e.g. "decoded in fp32 after NaN"
    edit: EditRequest | None = None  # img2img / inpainting: the source image, mask and strength
    extra: dict = field(default_factory=dict)  # more for the metadata record, e.g. a batch's key


# Hooks for img2img and inpainting. ``before_noise`` gets the per-image CPU generators before the
# noise is drawn from them (img2img samples its VAE encoding from them first, as diffusers does);
# ``start`` turns the seeded noise into the starting latents and may shorten the timestep schedule;
# ``unet_input`` may add channels to the scaled U-Net input (9-channel inpainting U-Nets);
# ``after_step`` may rewrite the latents after each step.
BeforeNoiseFn = Callable[[list[torch.Generator]], None]
StartFn = Callable[[torch.Tensor, object, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
UNetInputFn = Callable[[torch.Tensor], torch.Tensor]
AfterStepFn = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


class Pipeline:
    """Generate images from a loaded :class:`~latentgen.loader.Model`. Load once, call many times."""

    def __init__(self, model: Model):
        self.model = model
        self._emb_cache: dict[str, torch.Tensor] = {}
        self._placement_cache: dict[str, dict[int, tuple[int, int]]] = {}
        self._count_cache: dict[str, list[tuple[tuple[int, ...], int]]] = {}

    # -- public API -------------------------------------------------------------------------------

    def generate(
        self, request: GenerationRequest, *, batch_size: int = 1, progress: ProgressFn | None = None
    ) -> list[GeneratedImage]:
        """All images of ``request`` (see :meth:`iter_generate`)."""
        return list(self.iter_generate(request, batch_size=batch_size, progress=progress))

    def iter_generate(
        self, request: GenerationRequest, *, batch_size: int = 1, progress: ProgressFn | None = None
    ) -> Iterator[GeneratedImage]:
        """Yield the images of ``request`` as each U-Net batch of up to ``batch_size`` finishes."""
        # 1. Validate (and fill defaults from the model).
        req = request.resolve(self.model.source)
        unet_channels = self.model.unet.config.in_channels
        if unet_channels != self.model.vae.config.latent_channels:
            raise UsageError(
                f"model {self.model.name} is an inpainting model (its U-Net takes {unet_channels} input "
                "channels); use it with `latentgen inpaint`"
            )
        self.warn_about_prompt(req.prompt)
        self.explain_guidance(req)
        settings = Settings.of(req)
        jobs = [Job(req.prompt, req.negative_prompt, req.seed + i) for i in range(req.num_images)]
        if req.fill_in:
            for job in jobs:
                drawn = drawn_prompt(job.prompt, job.seed)
                if drawn != job.prompt:
                    log.info("fill-in, seed %d: %s", job.seed, drawn)
        for start in range(0, len(jobs), max(1, batch_size)):
            chunk = jobs[start : start + batch_size]
            images, notes = self.sample(chunk, settings, progress=progress)
            for offset, (job, image) in enumerate(zip(chunk, images, strict=True)):
                yield self.wrap(image, replace(req, seed=job.seed, num_images=1), start + offset, notes)

    def sample(
        self,
        jobs: Sequence[Job],
        settings: Settings,
        *,
        progress: ProgressFn | None = None,
        start: StartFn | None = None,
        after_step: AfterStepFn | None = None,
        before_noise: BeforeNoiseFn | None = None,
        unet_input: UNetInputFn | None = None,
        resample: int = 1,
        region: Region = WHOLE,
    ) -> tuple[list[Image.Image], tuple[str, ...]]:
        """Run one U-Net batch: every job shares ``settings``. Returns PIL images and notes.

        ``region`` (left, top, right, bottom in [0, 1]): where count guidance may put its places;
        an inpainting job passes the box of its mask.

        ``resample`` > 1 runs every step but the last that many times, re-noising back to the step's
        start in between (RePaint): with ``after_step`` pinning the kept part of an image, the
        repainted part gets several tries to agree with it.
        """
        m = self.model
        if settings.fill_in:
            jobs = [replace(j, prompt=drawn_prompt(j.prompt, j.seed)) for j in jobs]
        with torch.inference_mode():
            # 2–3. Tokenize and encode; conditional and unconditional halves: [B, T, D] each.
            cond = torch.cat([self.encode(j.prompt) for j in jobs])
            do_cfg = settings.guidance > 1.0
            uncond = torch.cat([self.encode(j.negative_prompt) for j in jobs]) if do_cfg else None

            # 4. Timesteps from a fresh scheduler built from the model's own config.
            scheduler = build_scheduler(settings.sampler, settings.karras, m.source.scheduler_config)
            scheduler.set_timesteps(settings.steps, device=m.device)
            timesteps = scheduler.timesteps

            # 5. Seeded noise: one CPU generator per image, so a batch equals its singles.
            generators = [torch.Generator("cpu").manual_seed(j.seed) for j in jobs]
            if before_noise is not None:
                before_noise(generators)
            noise = self._noise(generators, settings)  # [B, C, h, w]
            if start is None:
                latents = noise * scheduler.init_noise_sigma
            else:
                latents, timesteps = start(noise, scheduler, timesteps)

            # 6. Sampler loop, CFG in one batched U-Net call; layout guidance biases the
            # conditional rows of prompts with a relation ("above", "left of"); subject guidance
            # moves the latents of prompts naming two or more things before each step. (Not for
            # an inpainting U-Net: its extra input channels are built for the CFG batch, and it
            # is unmeasured there.)
            text_emb = torch.cat([uncond, cond]) if do_cfg else cond  # [2B or B, T, D]
            first_row = len(jobs) if do_cfg else 0
            guide = self.layout_guide(jobs, settings, first_row=first_row, region=region)
            excite_guide = self.subject_guide(jobs, settings, len(timesteps)) if unet_input is None else None
            step_kwargs = {"generator": generators} if is_stochastic(settings.sampler) else {}

            def denoise(i: int, t, latents: torch.Tensor) -> torch.Tensor:
                model_in = torch.cat([latents, latents]) if do_cfg else latents
                model_in = scheduler.scale_model_input(model_in, t)
                if unet_input is not None:
                    model_in = unet_input(model_in)
                eps = m.unet(model_in, t, encoder_hidden_states=text_emb, return_dict=False)[0]
                if do_cfg:
                    eps_uncond, eps_cond = eps.chunk(2)
                    eps = eps_uncond + settings.guidance * (eps_cond - eps_uncond)
                    if settings.guidance_rescale:
                        eps = rescale_guidance(eps, eps_cond, settings.guidance_rescale)
                latents = scheduler.step(eps, t, latents, **step_kwargs, return_dict=False)[0]
                return latents if after_step is None else after_step(i, t, latents)

            def excite(i: int, t, latents: torch.Tensor) -> torch.Tensor:
                if excite_guide is None:
                    return latents
                # its extra pass runs the conditional rows only, with their share of the layout bias
                rows = guide.from_row(first_row) if guide is not None else contextlib.nullcontext()
                with rows:
                    return excite_guide.update(m.unet, scheduler, i, t, latents, cond)

            with recording_attention(m.unet, excite_guide), layout_attention(m.unet, guide):
                for i, t in enumerate(timesteps):
                    latents = excite(i, t, latents)
                    if i < len(timesteps) - 1:  # resampling: extra rounds, each stepped back
                        for _ in range(resample - 1):
                            state = scheduler_state(scheduler)
                            stepped = denoise(i, t, latents)
                            latents = step_back(scheduler, state, stepped, timesteps[i + 1], t, generators)
                    latents = denoise(i, t, latents)
                    if progress is not None:
                        progress(i + 1, len(timesteps))

            # 7–8. Decode, with a check for non-finite values.
            pixels, notes = self.decode(latents)  # [B, 3, H, W] in [-1, 1]
        return to_pil(pixels), notes

    def layout_guide(
        self, jobs: Sequence[Job], settings: Settings, first_row: int, region: Region = WHOLE
    ) -> LayoutBias | None:
        """The cross-attention bias of a U-Net batch whose rows ``first_row + j`` are ``jobs``' prompts
        (the rows before them, the unconditional half, get none): layout guidance's sides for the
        nouns a relation places, count guidance's places (inside ``region``) for counted phrases
        ("three hearts"). None when both are off or no prompt has anything to place."""
        placed = [self.placements(job.prompt) if settings.layout_strength > 0 else {} for job in jobs]
        counted = [self.counts(job.prompt) if settings.count_strength > 0 else [] for job in jobs]
        if not any(placed) and not any(counted):
            return None
        factor = self.model.source.vae_scale_factor
        h, w = settings.height // factor, settings.width // factor
        length = self.model.tokenizer.model_max_length
        bias = torch.zeros(first_row + len(jobs), length, h, w)
        for j, (job, tokens, found) in enumerate(zip(jobs, placed, counted, strict=True)):
            if tokens:
                bias[first_row + j] = bias_map(tokens, length, h, w) * settings.layout_strength
            if found:
                places, spacing = count_places([n for _, n in found], job.seed, region)
                for (ks, _), centres in zip(found, places, strict=True):
                    bias[first_row + j, list(ks)] = (
                        count_map(centres, spacing, h, w) * settings.count_strength
                    )
        return LayoutBias(bias.to(self.model.device))

    def subject_guide(self, jobs: Sequence[Job], settings: Settings, steps: int) -> SubjectGuide | None:
        """Subject guidance for a U-Net batch of ``jobs``, or None when it is off or no prompt names
        two subjects."""
        if settings.subject_strength <= 0:
            return None
        # A prompt that layout guidance places already has a side for each noun: measured on the
        # built-in model, subject guidance then changes no pixel by more than 1, so it is skipped.
        placed = settings.layout_strength > 0
        found = [
            Subjects((), 0) if placed and self.placements(job.prompt) else self.subjects(job.prompt)
            for job in jobs
        ]
        if not any(len(s.tokens) >= 2 for s in found):
            return None
        factor = self.model.source.vae_scale_factor
        h, w = settings.height // factor, settings.width // factor
        # The strength is the whole run's push: each of the schedule's steps moves by a share of it
        # (an img2img run that starts part-way takes only its steps' shares).
        return SubjectGuide(found, settings.subject_strength / settings.steps, steps, h, w)

    def subjects(self, prompt: str) -> Subjects:
        """The token indices of each subject ``prompt`` names, as the text encoder sees it."""
        copies = self.model.source.prompt_repeat
        kept = (prompt if copies == 1 else self._split(prompt)[0]).strip()
        tok = self.model.tokenizer
        tokens = [tuple(t) for t in span_tokens(tok, kept, subject_spans(kept), copies) if t]
        n_ids = len(tok(self.model_text(prompt), truncation=True).input_ids)
        return Subjects(tuple(tokens), n_ids - 1)

    def placements(self, prompt: str) -> dict[int, tuple[int, int]]:
        """Token index → (axis, side) for the words a relation in ``prompt`` places, as the text
        encoder sees the prompt (cut to its limit, repeated for a ``prompt_repeat`` model)."""
        return self._read_prompt(self._placement_cache, prompt, token_placements)

    def counts(self, prompt: str) -> list[tuple[tuple[int, ...], int]]:
        """(token indices, number) of every counted phrase of ``prompt`` ("three hearts") that no
        relation places, as the text encoder sees the prompt."""
        return self._read_prompt(self._count_cache, prompt, token_counts)

    def _read_prompt(self, cache: dict, prompt: str, read: Callable):
        """``read(tokenizer, prompt's own text, copies)``, cached per prompt in ``cache``."""
        found = cache.get(prompt)
        if found is None:
            copies = self.model.source.prompt_repeat
            kept = prompt if copies == 1 else self._split(prompt)[0]
            found = read(self.model.tokenizer, kept, copies)
            if len(cache) > 1024:
                cache.clear()
            cache[prompt] = found
        return found

    def encode(self, text: str) -> torch.Tensor:
        """Text embeddings ``[1, T, D]`` for one prompt, cached per pipeline."""
        emb = self._emb_cache.get(text)
        if emb is None:
            m = self.model
            ids = m.tokenizer(
                self.model_text(text),
                padding="max_length",
                max_length=m.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            mask = (
                ids.attention_mask.to(m.device)
                if getattr(m.text_encoder.config, "use_attention_mask", False)
                else None
            )
            emb = m.text_encoder(ids.input_ids.to(m.device), attention_mask=mask)[0].to(m.dtype)
            if len(self._emb_cache) > 1024:
                self._emb_cache.clear()
            self._emb_cache[text] = emb
        return emb

    def _room(self) -> int:
        """Tokens one copy of a prompt may use: the limit less BOS and EOS, shared by the copies."""
        return (self.model.tokenizer.model_max_length - 2) // self.model.source.prompt_repeat

    def _split(self, text: str) -> tuple[str, str]:
        """``text`` as (the part the text encoder sees in each copy, the part beyond it or '')."""
        tok, room = self.model.tokenizer, self._room()
        ids = tok(text, truncation=False, add_special_tokens=False).input_ids
        if len(ids) <= room:
            return text, ""
        return tok.decode(ids[:room]).strip(), tok.decode(ids[room:]).strip()

    def model_text(self, text: str) -> str:
        """What the text encoder is given for ``text``: the prompt itself, or for a model trained with
        ``prompt_repeat`` the prompt cut to one copy's share of the tokens and repeated."""
        times = self.model.source.prompt_repeat
        return text if times == 1 else repeat_prompt(self._split(text)[0], times)

    def dropped_text(self, text: str) -> str:
        """The part of ``text`` the text encoder cannot see (beyond its token limit), or ''."""
        return self._split(text)[1]

    def warn_about_prompt(self, prompt: str) -> None:
        dropped = self.dropped_text(prompt)
        if dropped:
            times = self.model.source.prompt_repeat
            log.warning(
                "prompt is longer than the text encoder's %d tokens%s; dropped: %r",
                self._room() + 2,
                f" (it reads each prompt {times} times)" if times > 1 else "",
                dropped,
            )
        vocab = self.model.source.vocabulary
        if vocab:
            known = set(vocab)
            unknown = [w for w in re.findall(r"[a-z0-9']+", prompt.lower()) if w not in known]
            if unknown:
                log.warning(
                    "model %s never saw the word(s) %s; it knows only its small world "
                    "(see `latentgen info --model %s`); use --model for a real checkpoint",
                    self.model.name,
                    ", ".join(dict.fromkeys(unknown)),
                    self.model.name,
                )

    def explain_guidance(self, req: GenerationRequest) -> None:
        """Log (info) where layout guidance will put the prompt's nouns, or else which nouns subject
        guidance will give a place each, and how many places count guidance gives counted phrases."""
        where = describe(req.prompt) if req.layout_strength > 0 else ""
        if where:
            log.info("layout guidance %g: %s", req.layout_strength, where)
        elif req.subject_strength > 0:
            names = [req.prompt[a:b] for a, b in subject_spans(req.prompt)]
            if len(names) >= 2:
                log.info("subject guidance %g: %s get a place each", req.subject_strength, ", ".join(names))
        places = describe_counts(req.prompt) if req.count_strength > 0 else ""
        if places:
            log.info("count guidance %g: %s", req.count_strength, places)

    def decode(self, latents: torch.Tensor) -> tuple[torch.Tensor, tuple[str, ...]]:
        """VAE-decode ``latents [B, C, h, w]`` to pixels ``[B, 3, H, W]``; retry in fp32 on NaN/inf."""
        m = self.model
        if not torch.isfinite(latents).all():
            raise NonFiniteError(
                f"the U-Net produced non-finite latents in {dtype_name(m.dtype)}; "
                "try --dtype fp32 (or another sampler or fewer guidance)"
            )
        pixels = self._vae_decode(latents, m.vae.dtype)
        if torch.isfinite(pixels).all():
            return pixels, ()
        if m.vae.dtype == torch.float32:
            raise NonFiniteError(
                "the VAE decoded non-finite pixels even in fp32; the VAE weights may be broken"
            )
        note = f"VAE decode in {dtype_name(m.vae.dtype)} gave non-finite pixels; decoded again in fp32"
        log.warning(note)
        vae_dtype = m.vae.dtype
        m.vae.to(torch.float32)
        try:
            pixels = self._vae_decode(latents, torch.float32)
        finally:
            m.vae.to(vae_dtype)
        if not torch.isfinite(pixels).all():
            raise NonFiniteError(
                "the VAE decoded non-finite pixels in fp16 and again in fp32; try --dtype fp32 "
                "or a VAE with fixed fp16 weights"
            )
        return pixels, (note,)

    # -- helpers ----------------------------------------------------------------------------------

    def _vae_decode(self, latents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        vae = self.model.vae
        z = latents.to(dtype) / vae.config.scaling_factor
        if vae.config.get("shift_factor"):
            z = z + vae.config.shift_factor
        return vae.decode(z, return_dict=False)[0]

    def _noise(self, generators: list[torch.Generator], s: Settings) -> torch.Tensor:
        m = self.model
        f = m.source.vae_scale_factor
        shape = (1, m.vae.config.latent_channels, s.height // f, s.width // f)
        # Drawn on the CPU in the model dtype, exactly as diffusers' randn_tensor does.
        noise = [torch.randn(shape, generator=g, device="cpu", dtype=m.dtype) for g in generators]
        return torch.cat(noise).to(m.device)

    def wrap(self, image, req, index, notes, edit=None, extra=None) -> GeneratedImage:
        """A finished image with this pipeline's model facts, ready for metadata and writing. With
        ``req.fill_in`` its record also carries the prompt as drawn, when that differs."""
        m = self.model
        drawn = drawn_prompt(req.prompt, req.seed) if req.fill_in else req.prompt
        if drawn != req.prompt:
            extra = {**(extra or {}), "drawn_prompt": drawn}
        return GeneratedImage(
            image=image,
            request=req,
            index=index,
            model_name=m.name,
            model_hash=m.content_hash,
            model_family=m.source.family,
            dtype=dtype_name(m.dtype),
            device=str(m.device),
            notes=notes,
            edit=edit,
            extra=extra or {},
        )


@functools.lru_cache(maxsize=1024)
def drawn_prompt(prompt: str, seed: int) -> str:
    """``prompt`` with the colours and background it leaves open drawn for the image seeded ``seed``
    (:func:`latentgen.world.fill.fill_in`); unchanged outside the world's language. Cached: the log
    line, the sampler and the image's record each ask for the same image's prompt."""
    from latentgen.world.fill import fill_in  # the world's grammar and palette, only when asked

    return fill_in(prompt, seed)


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """``[B, 3, H, W]`` in [-1, 1] → RGB PIL images (rounded as diffusers does)."""
    arr = (pixels / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
    arr = (arr * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]
