"""Training the judge's shape classifier on the world's own ground truth.

1. Render training samples (their own world seed, never used for validation), spoil most of them
   (warp, blur, colour shift, noise, up to ``degrade.STRONG``), segment them exactly as the judge
   does, and label each blob with the kind of the scene object it overlaps most.
2. Train ``KindClassifier`` on the blobs' alpha crops, with random scale, shift, rotation and
   stroke-weight changes on every batch.

Run it through ``scripts/train_judge.py``; call ``torch.set_num_threads(1)`` first on a shared machine.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .classifier import ClassifierConfig, KindClassifier, blob_crop
from .degrade import STRONG, degrade, random_degradation
from .render import render_sample
from .scene import Box, Scene
from .segment import Blob, Segmentation, segment

logger = logging.getLogger(__name__)

TRAIN_SEED = 1  # world seed of the training renders; validation uses other seeds
MIN_IOU = 0.3  # a blob is labelled only if it overlaps a scene object at least this much


@dataclass
class TrainConfig:
    """How to train the classifier; the defaults take about 75 s on one CPU thread."""

    seed: int = TRAIN_SEED
    images: int = 8000  # rendered samples; about two blobs each
    degraded_fraction: float = 0.7  # share of samples blurred / noised / colour-shifted
    epochs: int = 12
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    scale: float = 0.12  # crops are zoomed by up to +/- this fraction...
    shift: float = 0.08  # ...shifted by up to this fraction of their side...
    rotate: float = 8.0  # ...rotated by up to this many degrees...
    gamma: float = 0.4  # ...and their alpha raised to a power in [1 - gamma, 1 + gamma]


def match_blobs(scene: Scene, segmentation: Segmentation) -> list[tuple[Blob, int]]:
    """Pairs (blob, index of the scene object it overlaps most), for blobs overlapping one enough."""
    pairs = []
    for blob in segmentation.blobs:
        overlaps = [_iou(blob.box, obj.box) for obj in scene.objects]
        best = int(np.argmax(overlaps))
        if overlaps[best] >= MIN_IOU:
            pairs.append((blob, best))
    return pairs


def build_dataset(config: TrainConfig, classifier: ClassifierConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha crops [N, 1, crop, crop] of the training renders' blobs and their kind indices [N]."""
    rng = np.random.default_rng(config.seed)
    crops, labels = [], []
    for index in range(config.images):
        sample = render_sample(config.seed, index)
        image = sample.image
        if rng.random() < config.degraded_fraction:
            image = degrade(image, random_degradation(rng, STRONG), rng)
        segmentation = segment(np.asarray(image))
        for blob, obj in match_blobs(sample.scene, segmentation):
            crops.append(blob_crop(segmentation, blob, classifier.crop))
            labels.append(classifier.kinds.index(sample.scene.objects[obj].kind))
    return torch.from_numpy(np.stack(crops))[:, None], torch.tensor(labels)


def augment(crops: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Randomly zoom, shift, rotate and thicken/thin a batch of crops [B, 1, S, S]."""
    b = crops.shape[0]

    def uniform(amount: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator) * 2 - 1) * amount

    scale, angle = 1 + uniform(config.scale), uniform(math.radians(config.rotate))
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [
            torch.stack([cos, -sin, uniform(config.shift)], -1),
            torch.stack([sin, cos, uniform(config.shift)], -1),
        ],
        1,
    )  # [B, 2, 3]
    grid = F.affine_grid(theta, list(crops.shape), align_corners=False)
    moved = F.grid_sample(crops, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gamma = (1 + uniform(config.gamma)).view(b, 1, 1, 1)
    return moved.clamp(0, 1) ** gamma


def train(config: TrainConfig, classifier: ClassifierConfig | None = None) -> KindClassifier:
    """Build the dataset and train a fresh classifier on it (deterministic for a given config)."""
    classifier = classifier or ClassifierConfig()
    torch.manual_seed(config.seed)
    start = time.monotonic()
    crops, labels = build_dataset(config, classifier)
    logger.info(
        "dataset: %d crops from %d renders in %.0fs", len(labels), config.images, time.monotonic() - start
    )
    model = KindClassifier(classifier)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(labels) / config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=steps)
    generator = torch.Generator().manual_seed(config.seed)
    for epoch in range(config.epochs):
        order = torch.randperm(len(labels), generator=generator)
        total, correct = 0.0, 0
        for batch in order.split(config.batch_size):
            logits = model(augment(crops[batch], config, generator))
            loss = F.cross_entropy(logits, labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(batch)
            correct += int((logits.argmax(-1) == labels[batch]).sum())
        logger.info(
            "epoch %d: loss %.4f, train accuracy %.4f (%.0fs)",
            epoch + 1,
            total / len(labels),
            correct / len(labels),
            time.monotonic() - start,
        )
    return model.eval()


def _iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
