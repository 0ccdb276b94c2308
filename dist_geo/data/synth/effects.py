"""What makes a query harder than a database image: occluders, camera roll, sensor noise."""
from __future__ import annotations

import numpy as np
from PIL import Image


def occlude(img: np.ndarray, rng: np.random.Generator, night: bool) -> np.ndarray:
    """Draw a car- or person-like box in front of the scene (float RGB [H, W, 3], in place)."""
    h, w = img.shape[:2]
    body = rng.uniform(0.1, 0.9, 3) * (0.25 if night else 1.0)
    if rng.random() < 0.6:  # a car: body, darker window band, black tyres strip
        cw, ch = int(rng.uniform(0.3, 0.7) * w), int(rng.uniform(0.15, 0.3) * h)
        x0, y1 = int(rng.uniform(-0.2, 0.9) * w), int(rng.uniform(0.8, 1.05) * h)
        y0 = y1 - ch
        img[max(y0, 0):max(y1, 0), max(x0, 0):max(x0 + cw, 0)] = body
        img[max(y0, 0):max(y0 + ch // 3, 0), max(x0 + cw // 6, 0):max(x0 + cw * 5 // 6, 0)] = body * 0.3
        img[max(y1 - ch // 6, 0):max(y1, 0), max(x0, 0):max(x0 + cw, 0)] = 0.05
    else:  # a person: a tall narrow box and a head
        pw, ph = int(rng.uniform(0.07, 0.14) * w), int(rng.uniform(0.35, 0.6) * h)
        x0, y1 = int(rng.uniform(0.0, 0.9) * w), int(rng.uniform(0.85, 1.1) * h)
        img[max(y1 - ph, 0):y1, x0:x0 + pw] = body
        yy, xx = np.ogrid[:h, :w]
        head = (yy - (y1 - ph - pw * 0.5)) ** 2 + (xx - (x0 + pw / 2)) ** 2 < (pw * 0.45) ** 2
        img[head] = np.array([0.8, 0.6, 0.45]) * (0.25 if night else 1.0)
    return img


def roll_crop(img: np.ndarray, degrees: float, size: int) -> np.ndarray:
    """Rotate a uint8 image about its centre (camera roll) and keep the central size x size."""
    pil = Image.fromarray(img).rotate(degrees, resample=Image.BILINEAR)
    h, w = img.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return np.asarray(pil)[top:top + size, left:left + size]


def add_noise(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Gaussian sensor noise of `sigma` grey levels on a uint8 image."""
    noisy = img.astype(np.float32) + rng.normal(0.0, sigma, img.shape).astype(np.float32)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)
