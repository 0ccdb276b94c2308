"""ColorJitter as one compiled function per image (numba, run by DALI's `NumbaFunction`): the
jitter of DALI's CPU pipelines.

DALI's arithmetic operators make one full pass over the image per operation, none fused, and
the conditionals that give each sample its own order of the jitters add their own cost: on
a CPU, where the loader takes its time from the training step, the operator graph of three
jitters cost about 24 ms per batch of 32 96 px images, the same formulas as loops here about
1 ms (on 2 cores; `dist-geo bench loader` compares the two pipelines: README, Training
speed). On a GPU the operator graph (dali_augment.py) stays: it runs beside the step, and a
numba CUDA kernel would need the CUDA toolkit's numba support.

The formulas are dali_augment.py's (torchvision's, on 0..PIXEL_MAX floats), each a loop over
the pixels in float32, in the sample's own order: brightness, contrast (its mean grey
accumulated in float64), saturation and hue (the closed form of `adjust_hue`). The uint8
image is read directly: the cast to float is the first loop's load.
"""
from __future__ import annotations

from functools import cache

import numpy as np
from numba import njit
from nvidia.dali import types
from nvidia.dali.plugin.numba import NumbaFunction

from dist_geo.loaders.augment import BRIGHTNESS, CONTRAST, GRAY, PIXEL_MAX, SATURATION

# float32 constants: a float64 literal would turn numba's float32 arithmetic into float64
R_W, G_W, B_W = (np.float32(w) for w in GRAY)
TOP = np.float32(PIXEL_MAX)
ZERO, ONE, TWO, FOUR, SIX = (np.float32(v) for v in (0, 1, 2, 4, 6))
HUE_OFFSETS = (np.float32(11), np.float32(9), np.float32(7))  # k's offset for R, G, B


@njit
def _load(out, x):
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            for c in range(3):
                out[i, j, c] = np.float32(x[i, j, c])


@njit
def _brightness(out, b):
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            for c in range(3):
                out[i, j, c] = min(out[i, j, c] * b, TOP)


@njit
def _contrast(out, c_):
    total = 0.0  # float64: the image's mean grey without float32 accumulation error
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            total += R_W * out[i, j, 0] + G_W * out[i, j, 1] + B_W * out[i, j, 2]
    offset = np.float32(total / (out.shape[0] * out.shape[1])) * (ONE - c_)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            for c in range(3):
                out[i, j, c] = min(max(out[i, j, c] * c_ + offset, ZERO), TOP)


@njit
def _saturation(out, s):
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            gray = (R_W * out[i, j, 0] + G_W * out[i, j, 1] + B_W * out[i, j, 2]) * (ONE - s)
            for c in range(3):
                out[i, j, c] = min(max(out[i, j, c] * s + gray, ZERO), TOP)


@njit
def _hue(out, h):
    """dali_augment.adjust_hue's closed form, pixel by pixel."""
    shift = h * SIX
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            r, g, b = out[i, j, 0], out[i, j, 1], out[i, j, 2]
            vmax = max(max(r, g), b)
            chroma = vmax - min(min(r, g), b)
            if r == vmax:  # torchvision's tie order: R, then G, then B
                num = g - b
            elif g == vmax:
                num = b - r + chroma * TWO
            else:
                num = r - g + chroma * FOUR
            hue6 = num / chroma if chroma != ZERO else num  # C = 0: grey, stays vmax
            for c in range(3):
                k = hue6 + shift + HUE_OFFSETS[c]
                k = k - np.floor(k / SIX) * SIX
                out[i, j, c] = vmax - chroma * max(min(min(k, FOUR - k), ONE), ZERO)


def _jitter(out, x, factors, order):
    """DALI's per-sample call: `out` (H, W, 3) float32 is uint8 `x` after the jitters of
    `order` (augment.py's BRIGHTNESS.. ids), with `factors` [b, c, s, h]."""
    _load(out, x)
    for k in range(order.shape[0]):
        op = order[k]
        if op == BRIGHTNESS:
            _brightness(out, factors[op])
        elif op == CONTRAST:
            _contrast(out, factors[op])
        elif op == SATURATION:
            _saturation(out, factors[op])
        else:
            _hue(out, factors[op])


def _same_shape(outs, ins):
    """DALI's shape call: each output image has its input image's shape."""
    for sample in range(len(outs[0])):
        for d in range(3):
            outs[0][sample][d] = ins[0][sample][d]


@cache
def fused_jitter() -> NumbaFunction:
    """The DALI operator of `_jitter`, called as op(uint8 HWC images, factors, order),
    compiled with DALI's wrappers when it is made: about 3 s, so once per process. Not cached
    on disk: numba's cache is keyed on this file alone and would keep the constants imported
    from augment.py as they were when it was written."""
    return NumbaFunction(run_fn=_jitter, setup_fn=_same_shape, out_types=[types.FLOAT],
                         in_types=[types.UINT8, types.FLOAT, types.INT32],
                         outs_ndim=[3], ins_ndim=[3, 1, 1])


__all__ = ["fused_jitter"]
