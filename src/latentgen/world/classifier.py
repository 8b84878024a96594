"""The judge's shape reader: a small CNN that names the kind of one segmented blob.

Its input is the blob's alpha map (how much of the blob's colour each pixel holds, 0 elsewhere),
cropped to a square around the blob and resized to ``crop`` x ``crop``: colour-free and scale-free,
so the same weights read small and big, clean and blurred, right- and wrong-coloured objects.

Weights ship as ``judge.safetensors`` with ``judge.json`` (the config that rebuilds the network),
loaded in one place (``load_weights``). Training uses the torch module ``KindClassifier``; the judge
runs the same network in single-threaded numpy (``predict``): a few crops per image are far too small
a job for a thread pool, and on a busy machine torch's or BLAS's pool made each call 10-100x slower.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.numpy import load_file
from safetensors.torch import save_file
from torch import nn

from ..errors import ModelLoadError
from .scene import KINDS
from .segment import Blob, Segmentation, dilate

WEIGHTS_PATH = Path(__file__).with_name("judge.safetensors")
CONFIG_PATH = Path(__file__).with_name("judge.json")
CROP_PADDING = 1.2  # the crop's side is this times the blob's longer side (plus CROP_MARGIN pixels)
CROP_MARGIN = 2.0


@dataclass
class ClassifierConfig:
    """Everything needed to rebuild the network; saved next to its weights."""

    kinds: list[str] = field(default_factory=lambda: list(KINDS))  # output classes, in order
    crop: int = 24  # input side, pixels
    channels: list[int] = field(default_factory=lambda: [16, 32, 48])  # conv widths; each halves the side
    hidden: int = 64  # width of the fully connected layer


class KindClassifier(nn.Module):
    """[B, 1, crop, crop] alpha crops -> [B, len(kinds)] logits. Conv3x3-ReLU-MaxPool2 blocks, then an MLP."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = 1
        for channels in config.channels:
            layers += [nn.Conv2d(width, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            width = channels
        self.features = nn.Sequential(*layers)
        side = config.crop // 2 ** len(config.channels)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(width * side * side, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, len(config.kinds)),
        )

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(crops))


@dataclass(frozen=True)
class ClassifierWeights:
    """A trained classifier as plain arrays: its config and its state dict (name -> float32 array)."""

    config: ClassifierConfig
    tensors: dict[str, np.ndarray]


def blob_alpha(segmentation: Segmentation, blob: Blob) -> np.ndarray:
    """How much of ``blob``'s colour each pixel holds, [H, W] in [0, 1], zero outside the blob.

    The blob's mask is widened by one pixel (faint edge pixels) but never into another blob.
    """
    others = np.zeros_like(blob.mask)
    for other in segmentation.blobs:
        if other is not blob:
            others |= other.mask
    region = dilate(blob.mask) & ~others
    background = segmentation.background_rgb
    direction = blob.rgb - background
    alpha = ((segmentation.pixels - background) @ direction) / max(float(direction @ direction), 1e-6)
    return np.where(region, alpha.clip(0, 1), 0.0).astype(np.float32)


def blob_crop(segmentation: Segmentation, blob: Blob, crop: int) -> np.ndarray:
    """The blob's alpha map in a square around it, resized to [crop, crop] (bilinear)."""
    h, w = blob.mask.shape
    x0, y0, x1, y1 = blob.box
    cx, cy = (x0 + x1) / 2 * w, (y0 + y1) / 2 * h
    half = (max((x1 - x0) * w, (y1 - y0) * h) * CROP_PADDING + CROP_MARGIN) / 2
    alpha = Image.fromarray(blob_alpha(segmentation, blob), mode="F")
    extent = (cx - half, cy - half, cx + half, cy + half)
    resized = alpha.transform((crop, crop), Image.Transform.EXTENT, extent, Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def predict(weights: ClassifierWeights, crops: np.ndarray) -> np.ndarray:
    """``KindClassifier``'s forward pass in numpy: [B, crop, crop] crops -> [B, len(kinds)] logits."""
    t = weights.tensors
    x = crops[:, None].astype(np.float32)  # [B, 1, S, S]
    for i in range(len(weights.config.channels)):
        conv = f"features.{3 * i}"  # each block is Conv2d, ReLU, MaxPool2d
        x = _max_pool2(np.maximum(_conv3x3(x, t[f"{conv}.weight"], t[f"{conv}.bias"]), 0))
    x = x.reshape(len(x), -1)  # [B, C * s * s], channel-major like nn.Flatten
    x = np.maximum(_einsum("bi,oi->bo", x, t["head.1.weight"]) + t["head.1.bias"], 0)
    return _einsum("bi,oi->bo", x, t["head.3.weight"]) + t["head.3.bias"]


def classify(weights: ClassifierWeights, segmentation: Segmentation) -> list[str]:
    """The kind of every blob of ``segmentation``, in order."""
    if not segmentation.blobs:
        return []
    crops = np.stack([blob_crop(segmentation, b, weights.config.crop) for b in segmentation.blobs])
    return [weights.config.kinds[i] for i in predict(weights, crops).argmax(-1)]


def save_classifier(model: KindClassifier, weights: Path = WEIGHTS_PATH, config: Path = CONFIG_PATH) -> None:
    """Write the weights (safetensors) and the config (json) that rebuilds the network."""
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(weights))
    config.write_text(json.dumps(asdict(model.config), indent=2) + "\n")


@lru_cache(maxsize=4)
def load_weights(weights: Path = WEIGHTS_PATH, config: Path = CONFIG_PATH) -> ClassifierWeights:
    """The classifier's config and arrays (cached). Raises ModelLoadError naming a missing or bad file."""
    for path in (weights, config):
        if not path.is_file():
            raise ModelLoadError(f"judge file {path} is missing; run scripts/train_judge.py to make it")
    try:
        classifier_config = ClassifierConfig(**json.loads(config.read_text()))
        tensors = load_file(str(weights))
    except (OSError, ValueError, TypeError, SafetensorError) as error:
        raise ModelLoadError(f"cannot read judge files {weights} / {config}: {error}") from error
    expected = KindClassifier(classifier_config).state_dict()
    wrong = [k for k, v in expected.items() if k not in tensors or tuple(tensors[k].shape) != tuple(v.shape)]
    if wrong or len(tensors) != len(expected):
        raise ModelLoadError(
            f"judge weights {weights} do not fit {config}: mismatched {wrong or 'tensor count'}"
        )
    return ClassifierWeights(classifier_config, {k: v.astype(np.float32) for k, v in tensors.items()})


def load_classifier(weights: Path = WEIGHTS_PATH, config: Path = CONFIG_PATH) -> KindClassifier:
    """The classifier as a torch module in eval mode (for training and tests), from ``load_weights``."""
    loaded = load_weights(weights, config)
    model = KindClassifier(loaded.config)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in loaded.tensors.items()})
    return model.eval()


def _conv3x3(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Convolution, kernel 3, padding 1: x [B, C, S, S], weight [O, C, 3, 3] -> [B, O, S, S]."""
    b, c, s, _ = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = np.stack([padded[:, :, dy : dy + s, dx : dx + s] for dy in range(3) for dx in range(3)], axis=2)
    out = _einsum("ok,bks->bos", weight.reshape(len(weight), c * 9), patches.reshape(b, c * 9, s * s))
    return out.reshape(b, len(weight), s, s) + bias[None, :, None, None]


def _einsum(subscripts: str, *operands: np.ndarray) -> np.ndarray:
    """``np.einsum`` without BLAS: these products are small, and BLAS threads stall on a busy machine."""
    return np.einsum(subscripts, *operands, optimize=False)


def _max_pool2(x: np.ndarray) -> np.ndarray:
    """2x2 max pooling, stride 2: [B, C, S, S] -> [B, C, S/2, S/2]."""
    b, c, s, _ = x.shape
    return x.reshape(b, c, s // 2, 2, s // 2, 2).max(axis=(3, 5))
