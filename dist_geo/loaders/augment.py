"""Training augmentations shared by the DALI and torch loaders: one set of constants, one order.

Both loaders apply, per sample, CosPlace's recipe on float images, in this order
(cfg.data.augment):
1. the decoded uint8 image to float 0..1;
2. colour jitter on the whole image, torchvision's ColorJitter: brightness, contrast and
   saturation factors in [max(0, 1-x), 1+x] (`jitter_range`), a hue shift in [-hue, hue] of a
   full turn, in a random order per sample, each clamping to 0..1 (contrast pivots on the
   image's mean grey level);
3. random resized crop to image_size: area scale in [crop_scale_min, 1], aspect ratio in
   CROP_RATIO, bilinear with antialiasing (torchvision's defaults);
4. horizontal flip with probability 0.5 when `hflip`;
5. night light with probability `night_light_p` when `night_light`: each channel of the RGB
   image (0..1) is scaled by NIGHT_LIGHT_GAINS, darker and toward blue, and the result is
   the image the normalisation sees (still in the 0..1 range, so no clipping is needed);
6. normalisation with the ImageNet mean and std, to float32 CHW.
The torch loader runs `torch_transform` (torchvision v2). The DALI loader runs the same formulas
as a DALI graph (dali_augment.py; DALI's own colour operators compute other ones), its random
draws from a seeded generator of the same distributions, with step 5 folded into
crop_mirror_normalize's per-sample mean and std: (x*g - m)/s == (x - m/g)/(s/g).
tests/loaders/test_dali_augment.py holds the two to each other.
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2

from dist_geo.config import AugmentConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_RATIO = (3 / 4, 4 / 3)
NIGHT_LIGHT_GAINS = (0.30, 0.38, 0.62)  # R, G, B: a dark, blue-tinted street at night
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # ColorJitter's fn_idx values
GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
PIXEL_MAX = 255.0  # the DALI graphs keep images in 0..PIXEL_MAX (torchvision's 0..1 x 255)


def jitter_range(strength: float) -> tuple[float, float]:
    """The factor range of a brightness/contrast/saturation jitter of `strength`."""
    return max(0.0, 1.0 - strength), 1.0 + strength


def flip_probability(aug: AugmentConfig) -> float:
    return 0.5 if aug.hflip else 0.0


def night_light_probability(aug: AugmentConfig) -> float:
    return aug.night_light_p if aug.night_light else 0.0


class NightLight(torch.nn.Module):
    """Per-channel gains toward dark blue on a float CHW image in 0..1 (augmentation step 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("gains", torch.tensor(NIGHT_LIGHT_GAINS).view(3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image * self.gains


def torch_transform(aug: AugmentConfig, image_size: int) -> v2.Compose:
    """Steps 1-6 as torchvision v2 transforms, from a uint8 CHW image tensor."""
    return v2.Compose([
        v2.ToDtype(torch.float32, scale=True),
        v2.ColorJitter(brightness=aug.brightness, contrast=aug.contrast,
                       saturation=aug.saturation, hue=aug.hue),
        v2.RandomResizedCrop(image_size, scale=(aug.crop_scale_min, 1.0), ratio=CROP_RATIO,
                             antialias=True),
        v2.RandomHorizontalFlip(flip_probability(aug)),
        v2.RandomApply([NightLight()], p=night_light_probability(aug)),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


__all__ = [
    "BRIGHTNESS", "CONTRAST", "CROP_RATIO", "GRAY", "HUE", "IMAGENET_MEAN", "IMAGENET_STD",
    "NIGHT_LIGHT_GAINS", "NightLight", "PIXEL_MAX", "SATURATION",
    "flip_probability", "jitter_range", "night_light_probability",
    "torch_transform",
]
