"""Query pre-processing for night queries (`eval.night_preprocess`).

Night photos are dark and low in contrast; a day-trained model sees them better once their
histogram looks more like daytime. Applied to query images only (the database is daytime),
on the uint8 image before normalisation, with torchvision's own operators.
"""
from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as F

NIGHT_PREPROCESS = ("none", "brightness", "contrast", "equalize")
TARGET_MEAN = 0.45  # a typical daytime street image's mean intensity, in [0, 1]
MAX_BRIGHTNESS_GAIN = 4.0  # beyond this only noise is amplified


def preprocess_night(image: torch.Tensor, method: str) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [3, H, W], brightened / contrast-stretched / equalised."""
    if method == "none":
        return image
    if method == "brightness":
        mean = image.float().mean().item() / 255.0
        gain = min(max(TARGET_MEAN / max(mean, 1e-3), 1.0), MAX_BRIGHTNESS_GAIN)
        return F.adjust_brightness(image, gain)
    if method == "contrast":
        return F.autocontrast(image)
    if method == "equalize":
        return F.equalize(image)
    known = ", ".join(NIGHT_PREPROCESS)
    raise ValueError(f"unknown night pre-processing {method!r} (known: {known})")
