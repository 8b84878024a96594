"""Grounding: a training loss that ties each object's words to the place the object was drawn.

The built-in model reads its prompts as bags of words: asked for "a red circle above a blue square"
and "a blue square above a red circle" with the same seed, it draws the same picture
(``benchmarks/relation_probe.py``). The diffusion loss alone has not taught it which noun goes
where in 113k steps. This loss does so directly, as TokenCompose (Wang et al., 2024) did for
Stable Diffusion: the U-Net's cross-attention from every latent position to a word that names an
object (its kind, number, size and colour words) should fall inside that object's box.

For a grounded word with attention ``A[n]`` over the ``n`` positions of one attention layer
(averaged over heads) and the box's coverage ``M[n]`` of each position (0..1)::

    loss = 1 - sum(A * M) / sum(A)

averaged over the grounded words of the batch and the cross-attention layers. The world knows its
boxes, and ``latentgen.world.word_objects`` which words describe which objects, so the targets come
free with the renders.

Training only: :func:`capture_cross_attention` swaps the U-Net's cross-attention processors for
ones that compute attention explicitly (no fused kernel) and keep the maps; the export never sees
them.
"""

from __future__ import annotations

import torch

MAX_OBJECTS = 4  # the world's largest scene: a count of four


class _CaptureProcessor:
    """Plain cross-attention, keeping the attention probabilities of each call while ``active``."""

    def __init__(self, maps: list[torch.Tensor], switch: dict[str, bool]) -> None:
        self.maps, self.switch = maps, switch

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        # [B, N, C] in, as Transformer2DModel calls its blocks' attn2; checked in capture_cross_attention
        batch, positions, _ = hidden_states.shape
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        mask = attn.prepare_attention_mask(attention_mask, encoder_hidden_states.shape[1], batch)
        probs = attn.get_attention_scores(query, key, mask)  # [B * heads, N, L]
        if self.switch["active"]:
            self.maps.append(probs.view(batch, attn.heads, positions, -1).mean(dim=1))  # [B, N, L]
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


def capture_cross_attention(unet) -> tuple[list[torch.Tensor], dict[str, bool]]:
    """Make ``unet``'s cross-attention layers record their maps; returns ``(maps, switch)``.

    While ``switch["active"]`` is True each forward pass appends one ``[B, N, L]`` map per
    cross-attention layer to ``maps`` (clear it between steps). Raises ValueError if the U-Net has no
    cross-attention, or cross-attention of a kind this processor does not reproduce.
    """
    maps: list[torch.Tensor] = []
    switch = {"active": False}
    processor = _CaptureProcessor(maps, switch)
    processors = dict(unet.attn_processors)
    cross = [name for name in processors if name.endswith("attn2.processor")]
    if not cross:
        raise ValueError("this U-Net has no cross-attention layers to ground")
    modules = dict(unet.named_modules())
    for name in cross:
        attn = modules[name.removesuffix(".processor")]
        if (
            attn.spatial_norm is not None
            or attn.group_norm is not None
            or attn.norm_cross is not None
            or attn.residual_connection
        ):
            raise ValueError(f"{name}: cross-attention with extra norms or a residual is not supported")
        processors[name] = processor
    unet.set_attn_processor(processors)
    return maps, switch


def box_coverage(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """How much of each cell of a ``size``×``size`` grid each box covers, 0..1.

    ``boxes``: ``[..., 4]`` as ``(x0, y0, x1, y1)`` canvas fractions (NaN rows cover nothing).
    Returns ``[..., size * size]``, cells in row-major order (as a U-Net flattens its positions).
    """
    edges = torch.arange(size + 1, dtype=boxes.dtype, device=boxes.device) / size
    lo, hi = edges[:-1], edges[1:]
    x0, y0, x1, y1 = (boxes[..., i, None] for i in range(4))
    ox = ((torch.minimum(x1, hi) - torch.maximum(x0, lo)).clamp(min=0) * size).nan_to_num(0.0)
    oy = ((torch.minimum(y1, hi) - torch.maximum(y0, lo)).clamp(min=0) * size).nan_to_num(0.0)
    return (oy[..., :, None] * ox[..., None, :]).flatten(-2)


def object_bits(token_objects: torch.Tensor, objects: int) -> torch.Tensor:
    """``[..., objects]`` 0/1: which of the objects each token names, from its bit mask."""
    return (token_objects[..., None].long() >> torch.arange(objects)) & 1


def word_masks(token_objects: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Per token, the cells its objects cover: ``[B, L, size * size]``.

    ``token_objects``: ``[B, L]`` bit masks over the objects (0: the token names none);
    ``boxes``: ``[B, K, 4]``. A token naming several objects (a count) gets their union.
    """
    bits = object_bits(token_objects, boxes.shape[1])  # [B, L, K]
    cover = box_coverage(boxes, size)  # [B, K, N]
    return (bits[..., None].to(cover.dtype) * cover[:, None]).amax(dim=2)


def grounding_loss(
    maps: list[torch.Tensor], token_objects: torch.Tensor, boxes: torch.Tensor
) -> torch.Tensor:
    """Mean over layers and grounded tokens of ``1 - (attention inside the token's boxes)``.

    ``maps``: ``[B, N, L]`` per layer (N a square number); ``token_objects``: ``[B, L]``;
    ``boxes``: ``[B, K, 4]``. Zero (with a gradient path) when no token of the batch is grounded.
    """
    grounded = token_objects != 0  # [B, L]
    if not maps:
        raise ValueError("no cross-attention maps were recorded")
    if not grounded.any():
        return sum(m.sum() for m in maps) * 0.0
    losses = []
    for attention in maps:
        size = round(attention.shape[1] ** 0.5)
        masks = word_masks(token_objects, boxes, size).to(attention.dtype)  # [B, L, N]
        attention = attention.transpose(1, 2)  # [B, L, N]
        inside = (attention * masks).sum(-1) / attention.sum(-1).clamp(min=1e-8)
        losses.append((1 - inside)[grounded].mean())
    return torch.stack(losses).mean()


def place_loss(places: torch.Tensor, token_objects: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each grounded word's predicted place against where its objects are.

    The text-side counterpart of :func:`grounding_loss`: a linear head reads each token's final
    text-encoder state (what the U-Net attends to) and predicts the centre ``(x, y)`` of the objects
    the word names (their mean for a count), in canvas fractions. CLIP's encoder is causal, so only
    words after the relation ("a red circle above a blue *square*") can know their side; the loss
    makes them carry it, so that two captions with swapped nouns differ in the text the U-Net reads.

    ``places``: ``[B, L, 2]``; ``token_objects``: ``[B, L]`` bit masks; ``boxes``: ``[B, K, 4]`` as
    ``(x0, y0, x1, y1)`` (NaN rows: no object). Zero (with a gradient path) when nothing is grounded.
    """
    return _centre_error(places, object_bits(token_objects, boxes.shape[1]), boxes)


def end_place_loss(
    places: torch.Tensor, token_kinds: torch.Tensor, token_objects: torch.Tensor, boxes: torch.Tensor
) -> torch.Tensor:
    """Mean squared error of the end-of-text token's map of where each named kind is.

    A causal text encoder's end-of-text token is the only one that has read the whole caption; a
    linear head on it predicts, for every kind of object, the centre ``(x, y)`` of the objects of
    that kind (their mean for a count), in canvas fractions. Only kinds the caption names count. The
    target is the same for "a red circle above a blue square" and "a blue square below a red circle"
    and mirrored for "a red circle below a blue square": the layout, not the order of the words.

    ``places``: ``[B, kinds, 2]``; ``token_kinds``: ``[B, L]`` the kind each token names (-1: none);
    ``token_objects``: ``[B, L]`` bit masks; ``boxes``: ``[B, K, 4]`` (NaN rows: no object). Zero
    (with a gradient path) when no caption names a kind.
    """
    bits = object_bits(token_objects, boxes.shape[1]).to(places.dtype)  # [B, L, K]
    kinds = torch.nn.functional.one_hot(token_kinds.clamp(min=0), places.shape[1]).to(places.dtype)
    kinds = kinds * (token_kinds >= 0)[..., None]  # [B, L, kinds]
    return _centre_error(places, kinds.transpose(1, 2) @ bits > 0, boxes)  # kinds' objects [B, kinds, K]


def _centre_error(places: torch.Tensor, members: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each slot's predicted ``(x, y)`` (``places``: ``[B, S, 2]``) against the
    mean centre of its objects (``members``: ``[B, S, K]``, 0/1); slots with no objects are not scored.
    Zero (with a gradient path) when no slot has any."""
    members = members.to(places.dtype)
    count = members.sum(-1)  # [B, S]
    named = count > 0
    if not named.any():
        return places.sum() * 0.0
    centres = torch.stack(((boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2), -1)
    target = (members @ centres.nan_to_num(0.0).to(places.dtype)) / count.clamp(min=1)[..., None]
    return (places - target).pow(2).sum(-1)[named].mean()


def kind_targets(kinds: torch.Tensor, boxes: torch.Tensor, size: int, num_kinds: int) -> torch.Tensor:
    """Per cell of a ``size``×``size`` grid, how much of it each kind of object covers, and the rest
    (the background) last: ``[B, num_kinds + 1, size * size]``, each cell summing to 1.

    ``kinds``: ``[B, K]`` the index of each object's kind (-1: no object); ``boxes``: ``[B, K, 4]``.
    Boxes that overlap (a hat worn on a cat) share their cells in proportion.
    """
    cover = box_coverage(boxes, size) * (kinds >= 0)[..., None]  # [B, K, N]
    which = torch.nn.functional.one_hot(kinds.clamp(min=0).long(), num_kinds).to(cover.dtype)  # [B, K, kinds]
    per_kind = which.transpose(1, 2) @ cover  # [B, kinds, N]
    total = per_kind.sum(1, keepdim=True)
    per_kind = per_kind / total.clamp(min=1.0)
    return torch.cat([per_kind, (1 - total).clamp(min=0.0)], dim=1)


def kind_loss(logits: torch.Tensor, kinds: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a per-cell kind map against where the objects of each kind are.

    The U-Net's counterpart of the place losses: a head on the features of one level of the U-Net
    predicts, at every position, which kind of object (or the background) the clean image has there
    (:func:`kind_targets`). From a noisy latent and the text, that means knowing which kind the
    caption names and where it will be drawn, the step the U-Net learns last (REPA, Yu et al., 2024,
    found that tying a diffusion model's features to an image's semantics speeds its training; the
    world hands us those semantics exactly).

    ``logits``: ``[B, kinds + 1, h, w]`` with h = w (the background last); ``kinds``: ``[B, K]``;
    ``boxes``: ``[B, K, 4]`` (NaN rows: no object).
    """
    classes, size = logits.shape[1:3]
    return _soft_cross_entropy(logits, kind_targets(kinds, boxes, size, classes - 1))


def colour_targets(
    colours: torch.Tensor, backgrounds: torch.Tensor, boxes: torch.Tensor, size: int, num_colours: int
) -> torch.Tensor:
    """Per cell of a ``size``×``size`` grid, how much of it is each colour: the objects' colours by
    how much of the cell their boxes cover, the background's colour for the rest:
    ``[B, num_colours, size * size]``, each cell summing to 1.

    ``colours``: ``[B, K]`` each object's colour index (-1: no object); ``backgrounds``: ``[B]``.
    """
    objects = kind_targets(colours, boxes, size, num_colours)  # colours as kinds; the background's share last
    background = torch.nn.functional.one_hot(backgrounds.long(), num_colours).to(objects.dtype)
    return objects[:, :-1] + objects[:, -1:] * background[..., None]


def colour_loss(
    logits: torch.Tensor, colours: torch.Tensor, backgrounds: torch.Tensor, boxes: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of a per-cell colour map against the colours of the clean image
    (:func:`colour_targets`): the kind loss's twin, so that each colour word lands on the object it
    names and the background's colour word on the rest.

    ``logits``: ``[B, colours, h, w]`` with h = w; ``colours``: ``[B, K]``; ``backgrounds``: ``[B]``;
    ``boxes``: ``[B, K, 4]`` (NaN rows: no object).
    """
    classes, size = logits.shape[1:3]
    return _soft_cross_entropy(logits, colour_targets(colours, backgrounds, boxes, size, classes))


def _soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over cells of the cross-entropy of ``logits`` ``[B, classes, h, w]`` against the
    distributions ``target`` ``[B, classes, h * w]``."""
    log_probs = torch.log_softmax(logits.flatten(2), dim=1)
    return -(target.to(log_probs.dtype) * log_probs).sum(1).mean()
