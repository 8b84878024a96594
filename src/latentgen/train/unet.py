"""Stage 2: train the U-Net and the text encoder, from scratch, on latents of the trained VAE.

- Text: a ``CLIPTokenizer`` built so that every training word is one token, and a small
  ``CLIPTextModel`` trained jointly with the U-Net. Its last hidden state ``[B, L, D]`` is what the
  U-Net cross-attends to, exactly as a Stable Diffusion pipeline uses it.
- Images: encoded once through the VAE; the posterior mean and std of every image are cached in the
  run folder and a fresh latent ``mean + std * noise`` is drawn per step (a free augmentation).
- Each step picks a random caption of each image and blanks ~10% of them to ``""`` so the model
  also learns the unconditional prediction that classifier-free guidance needs. No flips: captions
  say "left" and "right".
- Loss: MSE of the U-Net's v-prediction (SD 2's target; ε-prediction as SD 1.x is an option) under
  the DDPM ``scaled_linear`` schedule of Stable Diffusion (1000 steps); min-SNR-γ weighting optional.
- An EMA of the weights is kept; sample grids and the export use it.

Run folder: ``checkpoint/``, ``tokenizer/``, ``vae/`` (the VAE the latents came from),
``data.safetensors`` (cached latents and tokens), ``vocabulary.json``, ``samples/``, ``train.log``.

    from latentgen.train import UNetTrainConfig, train_unet
    train_unet(UNetTrainConfig(run_dir="runs/unet", vae="runs/vae"))   # run again to resume
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from latentgen.errors import LatentgenError, UsageError
from latentgen.tokenizer import repeat_prompt
from latentgen.train.data import (
    WORLD,
    ImageCaptions,
    caption_words,
    layout_weights,
    load_data,
    world_vocabulary,
)
from latentgen.train.run import (
    Progress,
    check_norm_groups,
    check_resume,
    format_duration,
    load_checkpoint,
    lr_at,
    restore,
    run_context,
    save_checkpoint,
)

log = logging.getLogger("latentgen.train")


@dataclass
class UNetTrainConfig:
    run_dir: str = "runs/unet"  # checkpoints, cached latents, samples, train.log; rerun to resume
    vae: str = "runs/vae"  # a finished VAE run folder, or any diffusers AutoencoderKL folder
    # Start from a trained model instead of random weights: a diffusers folder made by export_model
    # (or "builtin"). Its U-Net, text encoder, VAE and tokenizer are used (``vae`` is then ignored);
    # the model config must be the one it was trained with. The optimiser and schedule start afresh.
    # This is how training continues past a finished run, e.g. in a later session on a new machine.
    init_from: str = ""
    # Start only the text encoder from a model folder made by export_model (or "builtin"); the U-Net
    # starts from random weights. Not with init_from, which starts both. With release 10's text kept
    # fixed, a U-Net from nothing scored 1.6 times a run's whose text started from nothing after 6,000
    # steps, the kinds no sooner (benchmarks/builtin_training.md, eighth shorter-recipe measurement).
    text_from: str = ""
    # Train the U-Net alone, the text encoder kept as it starts (as Stable Diffusion keeps CLIP's).
    freeze_text: bool = False
    # data
    data: str = "world"  # "world" (the built-in renderer) or a folder of name.png + name.txt pairs
    num_images: int = 50_000  # images encoded once and cached (8 KB of posterior each at 16×16×4)
    data_seed: int = 0  # world stream to render
    # World layouts' relative weights, e.g. "single=0.15,count=0.25,pair=0.45,wearing=0.15" (a layout
    # left out is never drawn); "" = the world's own mix (layout.LAYOUT_WEIGHTS). For a later cycle
    # that works on the categories a model is weakest at. The curriculum layouts (layout.EXTRA_LAYOUTS:
    # "centred", "big", "small") may be named too; as stages before the world's mix they saved about
    # half the steps to a given eval score early on, not more (benchmarks/builtin_training.md, the
    # fifth to seventh shorter-recipe measurements).
    layout_mix: str = ""
    resolution: int = 64
    # text encoder: a CLIP text transformer trained from scratch on the tokenizer's vocabulary
    # context length, BOS and EOS included (tokenizer model_max_length too). The world's longest
    # caption is 18 tokens; every token costs text-encoder and cross-attention time on every step.
    max_tokens: int = 24
    # The text encoder reads each caption this many times, space-separated (repeat_prompt; exported as
    # latentgen.json prompt_repeat, which the pipeline then applies to every prompt). The encoder is
    # causal: only in a second copy has a noun read the relation after it ("a red circle above ...":
    # the circle's side). max_tokens must then hold the copies (2 × 16 words + BOS/EOS = 34 for the
    # world). An init model with fewer positions grows them (copies of its last, padding, row).
    # Not combined with the grounding and place losses (their token positions are one copy's).
    # Tried at 2 for 8,000 steps from release 10: the first noun's state then says its side (probe
    # 1.000), the U-Net still ignores it (order right 0.51); eval 0.817 (benchmarks/builtin_training.md).
    prompt_repeat: int = 1
    text_hidden: int = 256  # also the U-Net's cross_attention_dim
    text_layers: int = 4
    text_heads: int = 4
    text_mlp: int = 512
    # U-Net; latents are resolution / VAE factor a side: 16×16, 8×8, 4×4, 2×2 (factor-4 VAE), 12.7M
    # parameters. The 16×16 level draws the objects' outlines: 64 channels there instead of 32 cost
    # 11% more time a step (it has no attention, see below).
    block_out_channels: tuple[int, ...] = (64, 64, 128, 192)
    # Self- and cross-attention at each level (1) or plain res-blocks only (0). Measured (batch 32,
    # 1 thread): attention over the 256 positions of the 16×16 level cost 30% of a training step;
    # the 8×8, 4×4 and 2×2 levels still see the whole canvas and the text. Empty: every level.
    attention: tuple[int, ...] = (0, 1, 1, 1)
    layers_per_block: int = 1
    # Transformer layers (self-attention, cross-attention, feed-forward) in each level's attention
    # blocks; the 2×2 entry also sets the middle block's. Empty: one at every level. A run with
    # init_from may ask for more than its init model has: the extra layers start as the identity
    # (their output projections zero), so the grown U-Net first draws exactly what the old one did.
    # Release 10 is release 9 grown to 1,2,2,2 (+4.5M parameters) and trained one cycle: 0.832 ->
    # 0.859 on `latentgen eval` (benchmarks/builtin_training.md).
    transformer_layers: tuple[int, ...] = ()
    attention_heads: int = 4  # passed as diffusers' `attention_head_dim`, which means heads here
    norm_num_groups: int = 8  # 4-24 channels a group, as SD's 10-40 (32 groups would leave 1-6)
    # The text also reaches every res-block through the timestep embedding, attention-pooled
    # (diffusers' addition_embed_type="text"; any SD pipeline runs it: it needs only the text
    # embeddings): a direct path for global facts (background, colours, counts). +15% time a step.
    # Both were on in the measured v-prediction run; neither has been measured on its own.
    pooled_text: bool = True
    scale_shift: bool = True  # the embedding scales and shifts res-block features, not only shifts
    # diffusion
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085  # scaled_linear betas, as Stable Diffusion
    beta_end: float = 0.012
    uncond_prob: float = 0.1  # captions replaced by "" for classifier-free guidance
    # What the U-Net predicts: "v_prediction" (as SD 2) or "epsilon" (as SD 1.x). Measured here: with
    # v and its plain MSE, sample grids showed every prompted background colour right after 1k steps;
    # with epsilon (min-SNR-γ or not) 1 in 8 after 2k, the model ignoring its text at high noise.
    # The ε loss weighs the clean image's error at high noise by SNR ≈ 0; the v loss by SNR + 1.
    prediction_type: str = "v_prediction"
    snr_gamma: float = 0.0  # min-SNR-γ: the clean latents' error weighs min(SNR, γ); 0 = plain MSE
    # Share of training timesteps drawn from the noisier half [T/2, T) (uniform within each half;
    # 0.5 = uniform over all T). Measured on a recipe-3 model at step 8k: fed a noised render and
    # another prompt, its prediction of the clean image kept the render's kind at t <= 400 and was a
    # blob at t >= 600, whatever kind the prompt named: kinds are decided at high noise, and there
    # the v-loss weighs least.
    high_noise_share: float = 0.5
    # Weight of the grounding loss (latentgen.train.grounding; world data only): cross-attention from
    # an object's words should fall inside its box. 0 = off (every release so far trained without).
    # The loss is 0..1 against a diffusion loss of ~0.1. Tried at 0.1 for 2,500 steps on release 8:
    # attention inside the boxes 13% -> 39%, word order still ignored (benchmarks/builtin_training.md).
    ground_weight: float = 0.0
    # Weight of the order loss (world data only; see order_loss): for a caption that states a
    # direction ("a red circle above a blue square"), the U-Net, asked again with the two objects
    # swapped (a false caption of the same image), should denoise at least `order_margin` worse
    # (relative). Only at timesteps >= order_min_t, where the picture no longer shows the layout and
    # the text must decide it. 0 = off. Costs a second U-Net pass for those samples (+37% a step).
    # Tried at 0.2 for 2,500 steps on release 8: the gap stayed 0 (benchmarks/builtin_training.md).
    order_weight: float = 0.0
    order_margin: float = 0.2
    order_min_t: int = 500
    # Weight of the place loss (latentgen.train.grounding.place_loss; world data only): a linear head
    # on the text encoder's output predicts, from each word naming an object, that object's centre,
    # so that words after a relation carry their side into the text the U-Net reads. The head is
    # training-only (the export leaves it out). 0 = off. Tried at 1 with ground_weight=0.1 for 5,174
    # steps on release 9: the U-Net began to tell swapped nouns apart, but order right stayed 0.50.
    place_weight: float = 0.0
    # Weight of the end-of-text place loss (grounding.end_place_loss; world data only): a linear head
    # on the end-of-text token's state, the one token of a causal encoder that has read the whole
    # caption, predicts where each kind the caption names is, so that token carries the layout (it
    # carries the nouns' order but hardly the relation: benchmarks/relation_probe.py). Training-only
    # head, as place_weight's. 0 = off. Tried at 1 for 3,500 steps on release 9: the head stayed at
    # the order-blind floor (benchmarks/builtin_training.md).
    end_place_weight: float = 0.0
    # Weight of the kind loss (grounding.kind_loss; world data only): a small head on the features of
    # the U-Net's down path at its first level with cross-attention (8×8 in the recipe's U-Net)
    # predicts, per position, the kind of object the clean image has there, or the background. A
    # dense signal for the step every run from nothing learns last: which kind goes where. Training-
    # only head (the export leaves it out). 0 = off. Tried from nothing for 6,000 steps: 0.1 scored
    # six times the run without it, 1.0 drew more kinds right but lost the colours
    # (benchmarks/builtin_training.md, ninth shorter-recipe measurement).
    kind_weight: float = 0.0
    # Weight of the colour loss (grounding.colour_loss; world data only): the kind loss's twin, a
    # second head on the same features predicting the colour the clean image has at each position
    # (the object's there, else the background's), so that each colour word is tied to its object.
    # Training-only head. 0 = off. Tried at 0.1 beside kind_weight=0.1 from nothing for 12,000 steps:
    # the backgrounds and colour attribution came back, the kinds at half the kind loss's pace
    # (tenth shorter-recipe measurement). Switched on only in a second 6,000-step cycle (init_from the
    # kind loss's first), it kept the kinds' pace as well: 0.608 after 12,000 steps against 0.329
    # (eleventh; benchmarks/builtin_training.md).
    colour_weight: float = 0.0
    # optimisation (AdamW, one optimiser for the U-Net and the text encoder)
    batch_size: int = 32
    max_steps: int = 15_000
    lr: float = 5e-4
    warmup_steps: int = 500
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * this
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # EMA half-life ~700 steps; warmed up as min(decay, (1+t)/(10+t))
    seed: int = 0  # initial weights, batches, captions, noise, timesteps
    # bookkeeping (may change when resuming)
    log_every: int = 50  # steps between progress lines
    sample_every: int = 2_000  # steps between sample grids in samples/ (EMA weights); 0 = never
    checkpoint_minutes: float = 5.0
    threads: int = 0  # torch CPU threads; 0 keeps torch's default

    @classmethod
    def tiny(cls, **overrides) -> UNetTrainConfig:
        """A seconds-long config for tests (pair it with a ``VAETrainConfig.tiny()`` VAE)."""
        tiny = cls(
            num_images=16,
            resolution=16,
            max_tokens=16,
            text_hidden=16,
            text_layers=1,
            text_heads=2,
            text_mlp=32,
            block_out_channels=(8, 16),
            attention=(),
            attention_heads=2,
            norm_num_groups=4,
            batch_size=4,
            max_steps=4,
            warmup_steps=2,
            log_every=1,
            sample_every=0,
        )
        return replace(tiny, **overrides)


# --- model builders (the export rebuilds the models with these) -----------------------------------


def build_text_encoder(cfg: UNetTrainConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_mlp,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_tokens,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def unet_levels(cfg: UNetTrainConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(attention, transformer_layers)`` per level, defaults filled in; raises UsageError if they do
    not fit ``block_out_channels`` (checked before a run renders anything, and by build_unet)."""
    check_norm_groups(cfg.block_out_channels, cfg.norm_num_groups)
    n = len(cfg.block_out_channels)
    attention = cfg.attention or (1,) * n
    if len(attention) != n or not any(attention):
        raise UsageError(
            f"attention={attention} needs one 0/1 entry per block_out_channels entry ({n}) and at least one 1"
        )
    layers = cfg.transformer_layers or (1,) * n
    if len(layers) != n or min(layers) < 1:
        raise UsageError(
            f"transformer_layers={layers} needs one entry of 1 or more per block_out_channels entry ({n}), "
            "e.g. " + ",".join(["1"] * n)
        )
    return attention, layers


def build_unet(cfg: UNetTrainConfig, latent_channels: int, latent_size: int):
    from diffusers import UNet2DConditionModel

    attention, layers = unet_levels(cfg)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        # a plain int when uniform, so configs of models without grown levels stay as they were
        transformer_layers_per_block=layers[0] if len(set(layers)) == 1 else layers,
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.attention_heads,
        norm_num_groups=cfg.norm_num_groups,
        addition_embed_type="text" if cfg.pooled_text else None,
        addition_embed_type_num_heads=cfg.attention_heads,
        resnet_time_scale_shift="scale_shift" if cfg.scale_shift else "default",
    )


# losses that read what world renders know (objects, boxes, kinds, colours, captions' words)
_WORLD_LOSSES = (
    "ground_weight",
    "order_weight",
    "place_weight",
    "end_place_weight",
    "kind_weight",
    "colour_weight",
)


def _dense_head(channels: int, classes: int) -> torch.nn.Module:
    """A per-position classifier on ``channels`` features: two 1×1 convolutions."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, channels, 1), torch.nn.SiLU(), torch.nn.Conv2d(channels, classes, 1)
    )


def _capture_head_features(unet) -> tuple[list[torch.Tensor], int]:
    """Keep the features of ``unet``'s down path at its first level with cross-attention (the output
    of that level's last transformer) in a list, one ``[B, C, h, w]`` per forward pass; returns the
    list and C. The kind and colour losses pop them; a second pass (the order loss) replaces them, unused."""
    # unet_levels has made sure some level has cross-attention
    level = next(i for i, b in enumerate(unet.down_blocks) if getattr(b, "attentions", None))
    features: list[torch.Tensor] = []

    def keep(_module, _inputs, output) -> None:
        features.clear()  # only the latest pass
        features.append(output[0] if isinstance(output, tuple) else output.sample)

    unet.down_blocks[level].attentions[-1].register_forward_hook(keep)
    return features, unet.config.block_out_channels[level]


def noise_schedule_config(cfg: UNetTrainConfig) -> dict:
    """The training noise schedule; the exported scheduler shares it."""
    return {
        "num_train_timesteps": cfg.num_train_timesteps,
        "beta_start": cfg.beta_start,
        "beta_end": cfg.beta_end,
        "beta_schedule": "scaled_linear",
        "prediction_type": cfg.prediction_type,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    }


def build_tokenizer(words: list[str], out_dir: Path, max_tokens: int):
    """A CLIP tokenizer with every word of ``words`` one token; raises if any is not."""
    from latentgen.tokenizer import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(words, out_dir, model_max_length=max_tokens)
    split = [w for w in words if len(tokenizer(w, add_special_tokens=False)["input_ids"]) != 1]
    if split:
        raise LatentgenError(f"tokenizer splits {len(split)} vocabulary words into pieces, e.g. {split[:5]}")
    return tokenizer


class EMA:
    """Exponential moving average of parameters, keyed ``<part>.<param name>``."""

    def __init__(self, modules: dict[str, torch.nn.Module], decay: float):
        self.decay = decay
        params = {f"{name}.{k}": p for name, m in modules.items() for k, p in m.named_parameters()}
        self.params = {k: p for k, p in params.items() if p.requires_grad}  # frozen ones never move
        self.shadow = {k: p.detach().clone() for k, p in params.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Blend in the current weights after optimiser step ``step`` (1-based)."""
        decay = min(self.decay, (1 + step) / (10 + step))
        for k, p in self.params.items():
            self.shadow[k].lerp_(p, 1 - decay)

    def copy_to(self, modules: dict[str, torch.nn.Module]) -> None:
        """Overwrite the parameters of ``modules`` (e.g. copies of the trained ones) with the EMA."""
        with torch.no_grad():
            for name, m in modules.items():
                for k, p in m.named_parameters():
                    p.copy_(self.shadow[f"{name}.{k}"])


# --- data: latents and tokens, computed once and cached in the run folder -------------------------


@dataclass
class LatentCaptions:
    latent_mean: torch.Tensor  # [N, C, h, w] posterior mean, VAE scale (not yet scaled)
    latent_std: torch.Tensor  # [N, C, h, w] posterior std
    # [U, L] token ids of the distinct captions (and of their swapped versions, see swap_rows); row 0
    # is the empty caption ""
    tokens: torch.Tensor
    caption_ids: torch.Tensor  # [T] rows of `tokens`, the captions of image i at caption_start[i]...
    caption_start: torch.Tensor  # [N + 1]
    sample_prompts: list[str]  # held-out captions for the sample grids
    # For the grounding loss (world data only; None for a folder, or a run cached before it existed):
    boxes: torch.Tensor | None = None  # [N, K, 4] objects' boxes, canvas fractions, NaN rows: none
    token_objects: torch.Tensor | None = None  # [T, L] int16: per caption entry and token, objects named
    # For the order loss (world data only): [U] row of `tokens` holding each row's caption with its
    # two objects swapped around its direction (latentgen.world.swap_subjects), -1 if it has none
    swap_rows: torch.Tensor | None = None
    kinds: torch.Tensor | None = None  # [N, K] int8: each object's index in KINDS, -1: none (kind loss)
    # for the colour loss: [N, K] int8 each object's index in COLOUR_NAMES (-1: none), [N] the background's
    colours: torch.Tensor | None = None
    backgrounds: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.latent_mean)

    def save(self, path: Path) -> None:
        tensors = {k: v.contiguous() for k, v in vars(self).items() if torch.is_tensor(v)}  # Nones left out
        save_file(tensors, str(path), metadata={"sample_prompts": json.dumps(self.sample_prompts)})

    @classmethod
    def load(cls, path: Path) -> LatentCaptions:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            prompts = json.loads(f.metadata()["sample_prompts"])
        return cls(**load_file(str(path)), sample_prompts=prompts)


@torch.no_grad()
def encode_dataset(
    train: ImageCaptions,
    sample_prompts: list[str],
    vae,
    tokenizer,
    max_tokens: int,
    batch_size: int = 64,
    prompt_repeat: int = 1,
) -> LatentCaptions:
    """Encode the training images through ``vae`` and tokenize every caption (``prompt_repeat``
    times over, see :func:`latentgen.tokenizer.repeat_prompt`)."""
    means, stds = [], []
    for start in range(0, len(train), batch_size):
        posterior = vae.encode(
            train.pixels(torch.arange(start, min(start + batch_size, len(train))))
        ).latent_dist
        # contiguous: the encoder may hand back channels-last views, and a batch in another memory
        # format than after a resume (cache read from disk) would change the float rounding.
        means.append(posterior.mean.contiguous())
        stds.append(posterior.std.contiguous())

    captions = {c for caps in train.captions for c in caps} - {""}
    swapped = {}
    if train.word_objects is not None:  # world data: each caption's false twin, for the order loss
        from latentgen.world import swap_subjects

        swapped = {c: s for c in captions if (s := swap_subjects(c)) is not None}
    distinct = [""] + sorted(captions | set(swapped.values()))
    row = {c: i for i, c in enumerate(distinct)}
    read = distinct if prompt_repeat == 1 else [repeat_prompt(c, prompt_repeat) for c in distinct]
    enc = tokenizer(read, padding="max_length", max_length=max_tokens, truncation=True)
    lengths = [len(ids) for ids in tokenizer(distinct)["input_ids"]]  # one copy's, for token_objects
    read_lengths = lengths if read is distinct else [len(ids) for ids in tokenizer(read)["input_ids"]]
    too_long = [c for c, n in zip(read, read_lengths, strict=True) if n > max_tokens]
    if too_long:
        log.warning(
            "%d captions exceed %d tokens and are cut, e.g. %r", len(too_long), max_tokens, too_long[0]
        )
    caption_ids = [row[c] for caps in train.captions for c in caps]
    counts = torch.tensor([len(caps) for caps in train.captions])
    token_objects = swap_rows = None
    if train.word_objects is not None:
        token_objects = _token_objects(train, lengths, row, max_tokens)
        swap_rows = torch.tensor([row[swapped[c]] if c in swapped else -1 for c in distinct])
    return LatentCaptions(
        latent_mean=torch.cat(means),
        latent_std=torch.cat(stds),
        tokens=torch.tensor(enc["input_ids"], dtype=torch.long),
        caption_ids=torch.tensor(caption_ids, dtype=torch.long),
        caption_start=torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
        sample_prompts=sample_prompts,
        boxes=train.boxes,
        token_objects=token_objects,
        swap_rows=swap_rows,
        kinds=train.kinds,
        colours=train.colours,
        backgrounds=train.backgrounds,
    )


def _token_kinds(tokenizer) -> torch.Tensor:
    """Per token id, the index in KINDS of the kind it names (singular or plural), else -1."""
    from latentgen.world.scene import KINDS, PLURALS

    table = torch.full((len(tokenizer),), -1, dtype=torch.long)
    for i, kind in enumerate(KINDS):
        for word in (kind, PLURALS[kind]):
            ids = tokenizer(word, add_special_tokens=False).input_ids
            if len(ids) == 1:
                table[ids[0]] = i
    return table


def _token_objects(
    train: ImageCaptions, lengths: list[int], row: dict[str, int], max_tokens: int
) -> torch.Tensor:
    """``[T, L]`` int16: for every (image, caption) entry, the objects each token names (bit masks).

    The world's tokenizer makes every word one token after BOS, so word ``i`` is token ``i + 1``;
    ``lengths`` are the captions' unpadded token counts (BOS and EOS included). A caption whose
    tokens do not line up with its words (a word split in two, or cut at ``max_tokens``) is left
    ungrounded, all 0.
    """
    from latentgen.world.captions import words

    out = torch.zeros(sum(len(c) for c in train.captions), max_tokens, dtype=torch.int16)
    misaligned, entry = 0, 0
    for caps, masks in zip(train.captions, train.word_objects, strict=True):
        for caption, mask in zip(caps, masks, strict=True):
            n = len(words(caption))
            if len(mask) == n and lengths[row[caption]] == n + 2 <= max_tokens:
                out[entry, 1 : n + 1] = torch.tensor(mask, dtype=torch.int16)
            else:
                misaligned += 1
            entry += 1
    if misaligned:
        log.warning("%d captions are not one token per word and get no grounding targets", misaligned)
    return out


def draw_batch(
    data: LatentCaptions, batch_size: int, uncond_prob: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random images, one random caption each (blanked with ``uncond_prob``), a latent drawn from each
    image's posterior. Returns token ids ``[B, L]``, unscaled latents ``[B, C, h, w]``, the images'
    indices ``[B]`` and their caption entries ``[B]`` (-1 where the caption was blanked)."""
    index = torch.randint(len(data), (batch_size,), generator=gen)
    first = data.caption_start[index]
    count = data.caption_start[index + 1] - first
    pick = first + (torch.rand(batch_size, generator=gen) * count).long().clamp_max(count - 1)
    blank = torch.rand(batch_size, generator=gen) < uncond_prob
    rows = torch.where(blank, 0, data.caption_ids[pick])  # row 0 is ""
    eps = torch.randn(data.latent_mean[index].shape, generator=gen)
    latents = data.latent_mean[index] + data.latent_std[index] * eps
    return data.tokens[rows], latents, index, torch.where(blank, -1, pick)


def sample_timesteps(
    n: int, num_timesteps: int, high_noise_share: float, gen: torch.Generator
) -> torch.Tensor:
    """``n`` training timesteps: a ``high_noise_share`` of them uniform in the noisier half
    ``[T/2, T)``, the rest uniform in ``[0, T/2)``. Returns ``[n]`` long."""
    if high_noise_share == 0.5:  # plain uniform; same random stream as runs made before this option
        return torch.randint(num_timesteps, (n,), generator=gen)
    half = num_timesteps // 2
    high = torch.rand(n, generator=gen) < high_noise_share
    offset = torch.randint(half, (n,), generator=gen)
    return torch.where(high, num_timesteps - half + offset, offset)


def diffusion_errors(
    pred: torch.Tensor,
    latents: torch.Tensor,
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    snr_gamma: float,
) -> torch.Tensor:
    """Per sample ``[B]``: MSE of the U-Net's prediction (of the noise, or of v), weighted by
    min-SNR-γ if γ > 0.

    ``pred``, ``latents``, ``noise``: ``[B, C, h, w]``; ``alphas_cumprod``: ``[B]``, of each sample's
    timestep. min-SNR-γ weighs every timestep as min(SNR, γ) in terms of the clean latents' error.
    """
    a, s = alphas_cumprod.sqrt()[:, None, None, None], (1 - alphas_cumprod).sqrt()[:, None, None, None]
    target = noise if prediction_type == "epsilon" else a * noise - s * latents  # v = √ᾱ ε − √(1−ᾱ) x0
    mse = (pred - target).pow(2).mean(dim=(1, 2, 3))  # [B]
    if snr_gamma > 0:
        snr = alphas_cumprod / (1 - alphas_cumprod)
        mse = mse * snr.clamp(max=snr_gamma) / (snr if prediction_type == "epsilon" else snr + 1)
    return mse


def order_loss(true_errors: torch.Tensor, swapped_errors: torch.Tensor, margin: float) -> torch.Tensor:
    """Hinge on how much worse the U-Net denoises an image under its caption's false, swapped twin.

    Per sample, ``gap = (swapped - true) / true`` (the true error detached as the scale); the loss is
    ``mean(relu(margin - gap))``: 0 once the swapped caption's error is ``margin`` (relative) above the
    true one's. A model blind to word order has gap 0 and loss ``margin``.
    """
    gap = (swapped_errors - true_errors) / true_errors.detach().clamp(min=1e-8)
    return torch.relu(margin - gap).mean()


def _vocabulary(cfg: UNetTrainConfig, train: ImageCaptions) -> list[str]:
    """The words to make single tokens: the world's own list, or every word of a folder's captions."""
    if cfg.data == WORLD:
        return sorted({w.lower() for w in world_vocabulary()})
    return caption_words(train.captions)


def _load_vae(path: Path):
    from diffusers import AutoencoderKL

    folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
    if not (folder / "config.json").is_file():
        raise UsageError(f"no finished VAE in {path} (expected {path}/vae/ from train_vae, or a VAE folder)")
    return AutoencoderKL.from_pretrained(folder, use_safetensors=True).eval().requires_grad_(False)


def _init_folder(name: str, field: str = "init_from") -> Path:
    from latentgen.loader import BUILTIN_DIR

    folder = BUILTIN_DIR if name == "builtin" else Path(name)
    parts = ("unet", "text_encoder", "vae", "tokenizer")
    missing = [p for p in parts if not (folder / p).is_dir()]
    if missing:
        raise UsageError(
            f"{field} {name!r} is not a model folder made by `latentgen train export` "
            f"(missing {', '.join(missing)}/)"
        )
    return folder


def _check_same_tokenizer(tokenizer, folder: Path, field: str = "init_from") -> None:
    from transformers import CLIPTokenizer

    theirs = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    if theirs.get_vocab() != tokenizer.get_vocab() or theirs.model_max_length > tokenizer.model_max_length:
        raise UsageError(
            f"{field} {str(folder)!r} was trained with another vocabulary or more max_tokens "
            f"({theirs.model_max_length}); continue it with the data it was trained with and "
            f"max_tokens of {theirs.model_max_length} or more"
        )


# The weights whose zeros make a diffusers BasicTransformerBlock the identity: each of its three
# sub-layers adds its output (these projections) to the residual stream.
_GROWN_ZERO = ("attn1.to_out.0.", "attn2.to_out.0.", "ff.net.2.")


_TRANSFORMER_LAYER = re.compile(r"^(.*\.transformer_blocks\.)(\d+)\.")  # groups: block, layer index


def _grown_layers(missing: list[str], state: dict[str, torch.Tensor]) -> set[str]:
    """Prefixes ``….transformer_blocks.<i>.`` of ``missing`` that are whole layers the init lacks, in
    attention blocks it has (its layer 0 is there)."""
    present = {m.group(0) for k in state if (m := _TRANSFORMER_LAYER.match(k))}
    grown = set()
    for key in missing:
        m = _TRANSFORMER_LAYER.match(key)
        if m and m.group(0) not in present and f"{m.group(1)}0." in present:
            grown.add(m.group(0))
    return grown


_POSITIONS = "embeddings.position_embedding.weight"


def _grow_positions(state: dict[str, torch.Tensor], text_encoder) -> None:
    """Give an init text encoder with fewer positions than ``text_encoder`` (a larger max_tokens) the
    missing rows, as copies of its last row: positions past the longest caption have only ever held
    padding, so a longer text starts out read as the padding was."""
    key = next((k for k in state if k.endswith(_POSITIONS)), None)
    ours = text_encoder.state_dict().get(key) if key is not None else None
    if ours is None:
        return  # nothing to grow, or a layout load_state_dict will refuse by name
    want, have = ours.shape[0], state[key].shape[0]
    if want > have:
        extra = state[key][-1:].expand(want - have, -1)
        state[key] = torch.cat([state[key], extra])
        log.info("grew the text encoder's positions from %d to %d (copies of the last)", have, want)


def _load_init_weights(modules: dict[str, torch.nn.Module], folder: Path) -> None:
    """Load ``folder``'s U-Net and text encoder (safetensors only) into the freshly built modules.

    U-Net transformer layers this config has beyond the init model's (``transformer_layers``) are
    the only weights allowed to be missing; they are set to the identity.
    """
    for name, module in modules.items():
        files = sorted((folder / name).glob("*.safetensors"))
        if len(files) != 1:
            raise UsageError(f"expected one .safetensors file in {folder / name}, found {len(files)}")
        state = {k: v.float() for k, v in load_file(str(files[0])).items()}
        if name == "text_encoder":
            _grow_positions(state, module)
        try:
            missing, unexpected = module.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatch
            raise UsageError(
                f"{files[0]} does not fit this config's {name} ({str(e).splitlines()[-1].strip()}); "
                "use the model config it was trained with"
            ) from None
        grown = _grown_layers(missing, state) if name == "unet" else set()
        missing = [k for k in missing if not any(k.startswith(p) for p in grown)]
        if grown:
            with torch.no_grad():
                for key, param in module.named_parameters():
                    if any(key.startswith(p + z) for p in grown for z in _GROWN_ZERO):
                        param.zero_()
            log.info("grew %d transformer layers beyond %s's, as the identity", len(grown), folder)
        if missing or unexpected:
            raise UsageError(
                f"{files[0]} does not fit this config's {name} ({len(missing)} weights missing, "
                f"{len(unexpected)} unexpected, e.g. {(missing + unexpected)[0]}); "
                "use the model config it was trained with"
            )
    log.info("initialised the %s from %s", " and ".join(n.replace("_", " ") for n in modules), folder)


# --- sampling, for the grids ----------------------------------------------------------------------


@torch.no_grad()
def generate(
    unet, text_encoder, tokenizer, vae, prompts: list[str], *, steps: int, guidance: float, seed: int, cfg
) -> torch.Tensor:
    """Images for ``prompts`` with DDIM and classifier-free guidance: pixels ``[B, 3, H, W]`` in [-1, 1]."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(noise_schedule_config(cfg))
    scheduler.set_timesteps(steps)
    texts = [""] * len(prompts) + [repeat_prompt(p, cfg.prompt_repeat) for p in prompts]
    ids = tokenizer(texts, padding="max_length", max_length=cfg.max_tokens,
                    truncation=True, return_tensors="pt").input_ids  # fmt: skip
    text_emb = text_encoder(ids)[0]  # [2B, L, D]: uncond then cond
    c, s = unet.config.in_channels, unet.config.sample_size
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(len(prompts), c, s, s, generator=gen) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = unet(torch.cat([latents, latents]), t, encoder_hidden_states=text_emb).sample
        uncond, cond = eps.chunk(2)
        latents = scheduler.step(uncond + guidance * (cond - uncond), t, latents).prev_sample
    return vae.decode(latents / vae.config.scaling_factor).sample.clamp(-1, 1)


def save_grid(pixels: torch.Tensor, prompts: list[str], path: Path) -> None:
    """One row of images as a PNG, with the prompts in a .txt beside it."""
    b, _, h, w = pixels.shape
    row = (
        ((pixels + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(2, 0, 3, 1).reshape(h, b * w, 3)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(row.numpy()).save(path)
    path.with_suffix(".txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")


# --- the training run -----------------------------------------------------------------------------


def train_unet(cfg: UNetTrainConfig, *, stop_at: int | None = None) -> Path:
    """Train (or resume) the U-Net and text encoder in ``cfg.run_dir``; returns the run folder.

    ``stop_at`` ends this call early at that step with a checkpoint, as an interruption would.
    Export the result with :func:`latentgen.train.export_model`.
    """
    from diffusers import DDPMScheduler
    from transformers import CLIPTokenizer

    if cfg.prediction_type not in ("epsilon", "v_prediction"):
        raise UsageError(f"prediction_type {cfg.prediction_type!r} must be 'epsilon' or 'v_prediction'")
    if not 0.0 <= cfg.high_noise_share <= 1.0:
        raise UsageError(
            f"high_noise_share {cfg.high_noise_share} must be in [0, 1] (0.5 = uniform timesteps)"
        )
    for name in _WORLD_LOSSES:
        value = getattr(cfg, name)
        if value < 0 or (value > 0 and cfg.data != WORLD):
            raise UsageError(
                f"{name} {value} needs data 'world' (whose renders know their objects and captions) "
                "and a value of 0 or more; use 0 for other data"
            )
    if cfg.prompt_repeat < 1:
        raise UsageError(f"prompt_repeat {cfg.prompt_repeat} must be 1 or more (1 = each caption once)")
    if cfg.prompt_repeat > 1:
        # these two read words at their token positions in a single copy; the order loss (whole
        # swapped captions) and the end-of-text loss (the first EOS) work on repeated text as well
        losses = [n for n in ("ground_weight", "place_weight") if getattr(cfg, n) > 0]
        if losses:
            raise UsageError(
                f"prompt_repeat {cfg.prompt_repeat} cannot be combined with {', '.join(losses)} "
                "(their token positions are a single copy's); set them to 0 or prompt_repeat=1"
            )
    if cfg.freeze_text and (cfg.place_weight > 0 or cfg.end_place_weight > 0):
        raise UsageError(
            "freeze_text cannot be combined with place_weight or end_place_weight, which train the text "
            "encoder; set them to 0 or freeze_text=false"
        )
    if cfg.init_from and cfg.text_from:
        raise UsageError(
            f"text_from {cfg.text_from!r} cannot be combined with init_from, which starts the text "
            "encoder too; leave one of them empty"
        )
    if cfg.layout_mix:  # a typo here should fail now, not after the VAE is loaded
        layout_weights(cfg.data, cfg.layout_mix)
    unet_levels(cfg)  # likewise a wrong attention or transformer_layers, not after the rendering
    run_dir = Path(cfg.run_dir)
    # the folders a new run starts from (init_from, text_from); a resumed run needs only its checkpoint
    init = text_init = None
    with run_context(run_dir, cfg.threads) as stop:
        ckpt = load_checkpoint(run_dir)
        check_resume(ckpt, cfg)

        # 1. tokenizer, VAE and cached data: made by a new run, reused by a resumed one
        if ckpt is None:
            t_data = time.monotonic()
            init = _init_folder(cfg.init_from) if cfg.init_from else None
            text_init = _init_folder(cfg.text_from, "text_from") if cfg.text_from else None
            if init is not None:  # read (and check) it before hours of rendering, not after
                from latentgen.loader import resolve_model

                init_training = resolve_model(str(init)).extra.get("training", {})
            vae_source = init if init is not None else Path(cfg.vae)
            log.info(
                "new U-Net run %s: preparing %s data and encoding it once through the VAE of %s",
                run_dir,
                cfg.data,
                vae_source,
            )
            train = load_data(
                cfg.data, cfg.num_images, cfg.data_seed, cfg.resolution, layout_mix=cfg.layout_mix
            )
            held_out = load_data(cfg.data, 8, cfg.data_seed, cfg.resolution, held_out=True)
            vocabulary = _vocabulary(cfg, train)
            tokenizer = build_tokenizer(vocabulary, run_dir / "tokenizer", cfg.max_tokens)
            for field, folder in (("init_from", init), ("text_from", text_init)):
                if folder is not None:
                    _check_same_tokenizer(tokenizer, folder, field)
            vae = _load_vae(vae_source)
            shutil.rmtree(run_dir / "vae", ignore_errors=True)
            vae.save_pretrained(run_dir / "vae", safe_serialization=True)
            (run_dir / "vocabulary.json").write_text(json.dumps(vocabulary) + "\n", encoding="utf-8")
            if init is not None:  # the lineage, so an export can say how far training went in all
                lineage = {"init_from": str(init), **init_training}
                (run_dir / "init_from.json").write_text(json.dumps(lineage) + "\n", encoding="utf-8")
            prompts = [caps[0] for caps in held_out.captions]
            data = encode_dataset(
                train, prompts, vae, tokenizer, cfg.max_tokens, prompt_repeat=cfg.prompt_repeat
            )
            del train
            data.save(run_dir / "data.safetensors")
            log.info(
                "U-Net data: %d images, %d captions (%d distinct), vocabulary %d words, latents %s (%.1fs)",
                len(data),
                len(data.caption_ids),
                data.caption_ids.unique().numel(),
                len(vocabulary),
                "×".join(map(str, data.latent_mean.shape[1:])),
                time.monotonic() - t_data,
            )
        else:
            tokenizer = CLIPTokenizer.from_pretrained(run_dir / "tokenizer")
            vae = _load_vae(run_dir)
            data = LatentCaptions.load(run_dir / "data.safetensors")
        scale = vae.config.scaling_factor
        latent_channels, latent_size = data.latent_mean.shape[1], data.latent_mean.shape[-1]

        # 2. models, optimiser, EMA, RNG: from the seed, or from the checkpoint
        torch.manual_seed(cfg.seed)
        text_encoder = build_text_encoder(cfg, tokenizer)
        unet = build_unet(cfg, latent_channels, latent_size)
        modules = {"unet": unet, "text_encoder": text_encoder}
        if init is not None:
            _load_init_weights(modules, init)
        if text_init is not None:  # set for a new run only, as init
            _load_init_weights({"text_encoder": text_encoder}, text_init)
        if cfg.freeze_text:
            text_encoder.requires_grad_(False)
        if cfg.ground_weight > 0:
            from latentgen.train.grounding import capture_cross_attention, grounding_loss

            attention_maps, capturing = capture_cross_attention(unet)
        if cfg.place_weight > 0:
            from latentgen.train.grounding import place_loss

            modules["place_head"] = torch.nn.Linear(cfg.text_hidden, 2)  # checkpointed, not exported
        if cfg.end_place_weight > 0:
            from latentgen.train.grounding import end_place_loss
            from latentgen.world.scene import KINDS

            token_kind = _token_kinds(tokenizer)  # [vocabulary] -> kind index or -1
            modules["end_place_head"] = torch.nn.Linear(cfg.text_hidden, 2 * len(KINDS))  # likewise
        dense_heads = cfg.kind_weight > 0 or cfg.colour_weight > 0
        if dense_heads:
            from latentgen.train.grounding import colour_loss, kind_loss
            from latentgen.world import COLOUR_NAMES, KINDS

            head_features, channels = _capture_head_features(unet)
            if cfg.kind_weight > 0:  # likewise checkpointed, not exported
                modules["kind_head"] = _dense_head(channels, len(KINDS) + 1)  # and the background
            if cfg.colour_weight > 0:
                modules["colour_head"] = _dense_head(channels, len(COLOUR_NAMES))
        params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        ema = EMA(modules, cfg.ema_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        noise_scheduler = DDPMScheduler.from_config(noise_schedule_config(cfg))
        alphas_cumprod = noise_scheduler.alphas_cumprod  # [T]
        step, elapsed = 0, 0.0
        if ckpt is not None:
            restore(ckpt, modules, optimizer, gen)
            ema.shadow = {k: ckpt.tensors[f"ema.{k}"].clone() for k in ema.shadow}
            step, elapsed = ckpt.step, ckpt.meta.get("elapsed_s", 0.0)
            log.info("resuming %s from step %d", run_dir, step)
        else:
            sizes = ", ".join(
                f"{k} {sum(p.numel() for p in m.parameters()) / 1e6:.2f}M" for k, m in modules.items()
            )
            log.info("U-Net run %s: %s parameters", run_dir, sizes)

        def checkpoint() -> None:
            save_checkpoint(
                run_dir,
                step=step,
                cfg=cfg,
                modules=modules,
                optimizer=optimizer,
                generator=gen,
                extra_tensors={f"ema.{k}": v for k, v in ema.shadow.items()},
                meta={"elapsed_s": elapsed + time.monotonic() - t_start},
            )

        def sample() -> None:
            ema_modules = {k: copy.deepcopy(m).eval() for k, m in modules.items()}
            ema.copy_to(ema_modules)
            prompts = data.sample_prompts
            pixels = generate(ema_modules["unet"], ema_modules["text_encoder"], tokenizer, vae, prompts,
                              steps=25, guidance=5.0, seed=0, cfg=cfg)  # fmt: skip
            save_grid(pixels, prompts, run_dir / "samples" / f"step_{step:07d}.png")

        # 3. the loop
        t_start = t_saved = time.monotonic()
        if ckpt is None:
            checkpoint()  # step 0: later calls resume with the cached data instead of remaking it
        start_step = step
        end = min(cfg.max_steps, stop_at if stop_at is not None else cfg.max_steps)
        progress = Progress(step, cfg.max_steps, cfg.batch_size, cfg.log_every)
        unet.train()
        text_encoder.train()
        world_losses = any(getattr(cfg, name) > 0 for name in _WORLD_LOSSES)  # each needs the boxes
        while step < end:
            lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            input_ids, latents, index, entries = draw_batch(data, cfg.batch_size, cfg.uncond_prob, gen)
            latents = latents * scale  # [B, C, h, w], unit variance
            noise = torch.randn(latents.shape, generator=gen)
            timesteps = sample_timesteps(cfg.batch_size, cfg.num_train_timesteps, cfg.high_noise_share, gen)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)

            text_emb = text_encoder(input_ids)[0]  # [B, L, D]
            boxes = data.boxes[index] if world_losses else None  # [B, K, 4], gathered once a step
            if cfg.ground_weight > 0:
                attention_maps.clear()
                capturing["active"] = True
            pred = unet(noisy, timesteps, encoder_hidden_states=text_emb).sample
            errors = diffusion_errors(
                pred, latents, noise, alphas_cumprod[timesteps], cfg.prediction_type, cfg.snr_gamma
            )
            loss = errors.mean()
            logged = {"loss": loss.item()}
            if cfg.ground_weight > 0 or cfg.place_weight > 0 or cfg.end_place_weight > 0:
                # per token, the objects it names
                named = torch.where((entries >= 0)[:, None], data.token_objects[entries.clamp(min=0)], 0)
            if cfg.ground_weight > 0:
                capturing["active"] = False
                ground = grounding_loss(attention_maps, named, boxes)
                attention_maps.clear()
                logged["ground"] = ground.item()
                loss = loss + cfg.ground_weight * ground
            if cfg.place_weight > 0:
                place = place_loss(modules["place_head"](text_emb), named, boxes)
                logged["place"] = place.item()
                loss = loss + cfg.place_weight * place
            if cfg.end_place_weight > 0:
                eos = (input_ids == tokenizer.eos_token_id).int().argmax(-1)  # the first EOS
                state = text_emb[torch.arange(len(eos)), eos]  # [B, D]
                places = modules["end_place_head"](state).view(len(eos), len(KINDS), 2)
                kinds = token_kind[input_ids]
                end_place = end_place_loss(places, kinds, named, boxes)
                logged["end_place"] = end_place.item()
                loss = loss + cfg.end_place_weight * end_place
            if dense_heads:
                features = head_features.pop()
            if cfg.kind_weight > 0:  # blanked captions too: the head then reads the kinds off the picture
                kind = kind_loss(modules["kind_head"](features), data.kinds[index], boxes)
                logged["kind"] = kind.item()
                loss = loss + cfg.kind_weight * kind
            if cfg.colour_weight > 0:
                colour = colour_loss(
                    modules["colour_head"](features), data.colours[index], data.backgrounds[index],
                    boxes,
                )  # fmt: skip
                logged["colour"] = colour.item()
                loss = loss + cfg.colour_weight * colour
            if cfg.order_weight > 0:
                rows = data.caption_ids[entries.clamp(min=0)]
                swap = torch.where((entries >= 0) & (timesteps >= cfg.order_min_t), data.swap_rows[rows], -1)
                has = swap >= 0
                if has.any():
                    swapped_emb = text_encoder(data.tokens[swap[has]])[0]
                    swapped_pred = unet(noisy[has], timesteps[has], encoder_hidden_states=swapped_emb).sample
                    swapped_errors = diffusion_errors(
                        swapped_pred, latents[has], noise[has], alphas_cumprod[timesteps[has]],
                        cfg.prediction_type, cfg.snr_gamma,
                    )  # fmt: skip
                    order = order_loss(errors[has], swapped_errors, cfg.order_margin)
                    loss = loss + cfg.order_weight * order * has.float().mean()
                    logged["order"] = order.item()
            if not math.isfinite(loss.item()):
                raise LatentgenError(
                    f"U-Net loss is {loss.item()} at step {step}; lower the learning rate (lr)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            step += 1
            ema.update(step)

            progress.update(step, lr, **logged)
            if cfg.sample_every and step % cfg.sample_every == 0:
                sample()
            if stop.is_set():
                checkpoint()
                raise KeyboardInterrupt
            if time.monotonic() - t_saved > cfg.checkpoint_minutes * 60:
                checkpoint()
                t_saved = time.monotonic()
        if step > start_step:
            checkpoint()
        if step == cfg.max_steps and step > start_step:
            if cfg.sample_every and step % cfg.sample_every:
                sample()
            log.info(
                "U-Net done in %s; export with export_model(%r, OUT_DIR)",
                format_duration(elapsed + time.monotonic() - t_start),
                str(run_dir),
            )
        return run_dir
