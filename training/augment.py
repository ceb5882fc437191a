"""Training-time image augmentation for backbone fine-tuning: random resized crop + horizontal flip (PIL, seeded).

The crop follows torchvision's RandomResizedCrop (area fraction uniform in `scale`, aspect ratio log-uniform in
`ratio`, 10 attempts, then a centre crop within the ratio bounds), so the recipe is the standard ImageNet one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from model.image_io import to_rgb


@dataclass(frozen=True)
class AugmentConfig:
    """Random resized crop (area fraction `scale`, aspect `ratio`) followed by a horizontal flip with `flip_prob`."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"augmentation scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"augmentation ratio must satisfy 0 < low <= high, got {self.ratio}")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob}")


def random_resized_crop_box(width: int, height: int, cfg: AugmentConfig, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(left, top, crop width, crop height) of a random crop of a width x height image."""
    area = width * height
    log_low, log_high = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(cfg.scale[0], cfg.scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    # No sampled box fitted (very elongated image): the largest centred box within the ratio bounds.
    in_ratio = width / height
    if in_ratio < cfg.ratio[0]:
        w, h = width, int(round(width / cfg.ratio[0]))
    elif in_ratio > cfg.ratio[1]:
        w, h = int(round(height * cfg.ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def augment_image(
    image: Image.Image,
    size: int,
    cfg: AugmentConfig,
    rng: np.random.Generator,
    resample: Image.Resampling = Image.Resampling.BILINEAR,
) -> Image.Image:
    """A random resized crop of `image` scaled to size x size, mirrored with probability cfg.flip_prob."""
    image = to_rgb(image)
    left, top, w, h = random_resized_crop_box(image.width, image.height, cfg, rng)
    out = image.resize((size, size), resample, box=(left, top, left + w, top + h))
    if rng.random() < cfg.flip_prob:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out
