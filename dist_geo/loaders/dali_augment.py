"""The torch loader's augmentation (augment.py's `torch_transform`) as a DALI graph, the same on
CPU operators and on GPU ones: the images of both loaders follow one distribution.

DALI's own operators do not compute torchvision's augmentation: `color_twist`, `hsv` and
`brightness_contrast` centre contrast on mid-grey instead of the image's mean grey, work in YIQ
(hue is a rotation of the IQ plane), apply all jitters as one matrix in a fixed order and clamp
once or never; `decoders.image_random_crop` draws its box with a slightly different algorithm.
So each step here is torchvision's formula, written with DALI operators on float32 images in
0..255 (torchvision's 0..1 times 255: the formulas are scale-invariant but for the clamp bound,
and the decoder's own float output costs more than a cast):

    brightness   min(b * x, 255)                     (b x >= 0: the lower clamp cannot bind)
    contrast     clamp(c * x + (1 - c) * mean(gray(x)), 0, 255)    gray = .2989 R + .587 G + .114 B
    saturation   clamp(s * x + (1 - s) * gray(x), 0, 255)
    hue          HSV hue shift, the closed form of _rgb2hsv / _hsv2rgb (skipped when hue = 0)

one after the other on the whole decoded image, in each sample's own random order (ColorJitter
draws `randperm(4)` per call; here DALI conditionals send each sample down its own branch; on
the CPU, fused_jitter.py computes the same as compiled loops, 20 times cheaper), then
RandomResizedCrop (torchvision's box algorithm from the image's real shape, a slice, a bilinear
antialiased resize in float), flip, night light and Normalize (one crop_mirror_normalize:
(x * g - m) / s == (x - m / g) / (s / g)). What still differs from torchvision: the outermost
1-2 rows and columns of the resize (DALI repeats the edge pixel where torchvision drops the
taps outside the crop and renormalises) and float rounding (~1e-7).

Every random number comes from `ParamSource`, one seeded numpy generator drawn batch after
batch in the external source, so a seed fixes the images and the parameter stream does not
depend on the images. Replayed batches (`start_batch`) decode a small stand-in JPEG instead of
their images: the stream continues exactly where it would have, at a fraction of the cost. An
image whose header promises more than `max_pixels` is never decoded either: the stand-in takes
its place (dist_geo/shards/dali_check.py) and `augment` flags it, for the loader to leave out.
"""
from __future__ import annotations

import numpy as np
import nvidia.dali.math as dmath
from nvidia.dali import fn, types

from dist_geo.config import AugmentConfig
from dist_geo.loaders.augment import (
    BRIGHTNESS, CONTRAST, CROP_RATIO, GRAY, HUE, IMAGENET_MEAN, IMAGENET_STD, NIGHT_LIGHT_GAINS,
    PIXEL_MAX, SATURATION, flip_probability, jitter_range, night_light_probability,
)
from dist_geo.shards.dali_check import guard_decoding

ATTEMPTS = 10  # RandomResizedCrop's tries before its centre-crop fallback


def jitter_ranges(aug: AugmentConfig) -> dict[int, tuple[float, float]]:
    """The factor range of each jitter ColorJitter applies (a jitter of strength 0 is off)."""
    ranges = {op: jitter_range(x) for op, x in
              ((BRIGHTNESS, aug.brightness), (CONTRAST, aug.contrast), (SATURATION, aug.saturation))
              if x > 0}
    if aug.hue > 0:
        ranges[HUE] = (-aug.hue, aug.hue)
    return ranges


class ParamSource:
    """The random draws of one batch per call, with torchvision's distributions, vectorised;
    `draws(source)` makes them the per-sample inputs of a pipeline, by name:

    replay: True for the first `start_batch` batches (not decoded); crop: per attempt
    sqrt(scale / ratio) and sqrt(scale * ratio), the box's height and width over sqrt(H W)
    (scale uniform in [crop_scale_min, 1], log ratio uniform); offset: (top, left) as fractions
    of the free range; mirror; mean and std of the normalisation with the night-light gains
    folded in; factors [b, c, s, h] uniform in their ranges and order, the enabled jitters in
    a uniform random order (argsort of uniforms, like randperm), when a jitter is on. The
    draws, and so the stream of a seed, are the same whatever is output.
    """

    def __init__(self, aug: AugmentConfig, batch_size: int, seed: int, start_batch: int = 0):
        self.aug, self.batch_size, self.start_batch = aug, batch_size, start_batch
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.ranges = jitter_ranges(aug)
        self.ops = np.array(sorted(self.ranges))
        self.names = (("replay", "crop", "offset", "mirror", "mean", "std")
                      + ("factors", "order") * (len(self.ops) > 0))
        self.batches = 0

    def __call__(self) -> tuple[np.ndarray, ...]:
        n, rng = self.batch_size, self.rng
        replay = np.full(n, self.batches < self.start_batch)
        self.batches += 1
        perm = np.argsort(rng.random((n, 4)), axis=1)
        order = perm[np.isin(perm, self.ops)].reshape(n, len(self.ops)).astype(np.int32)
        factors = np.tile(np.array([1.0, 1.0, 1.0, 0.0], np.float32), (n, 1))
        for op, (lo, hi) in self.ranges.items():
            factors[:, op] = rng.uniform(lo, hi, n)
        scale = rng.uniform(self.aug.crop_scale_min, 1.0, (n, 1, ATTEMPTS))
        ratio = np.exp(rng.uniform(*np.log(CROP_RATIO), (n, 1, ATTEMPTS)))
        crop = np.sqrt(scale * np.concatenate([1 / ratio, ratio], axis=1))  # (n, 2, ATTEMPTS)
        offset = rng.random((n, 2), dtype=np.float32)
        mirror = (rng.random(n) < flip_probability(self.aug)).astype(np.int32)
        night = rng.random(n) < night_light_probability(self.aug)
        gains = np.where(night[:, None], np.array(NIGHT_LIGHT_GAINS), 1.0)
        mean = (PIXEL_MAX * np.array(IMAGENET_MEAN) / gains).astype(np.float32)
        std = (PIXEL_MAX * np.array(IMAGENET_STD) / gains).astype(np.float32)
        drawn = dict(replay=replay, crop=crop, offset=offset, mirror=mirror, mean=mean, std=std,
                     factors=factors, order=order)
        return tuple(drawn[name] for name in self.names)


def draws(source: ParamSource) -> dict:
    """The per-sample draws of `source` in a pipeline (an external source), by name."""
    nodes = fn.external_source(source=source, num_outputs=len(source.names), batch=True)
    return dict(zip(source.names, nodes))


def crop_box(jpegs, crop, offset):
    """RandomResizedCrop's box (float32 anchor [top, left] and shape [h, w]) of each image.

    Attempt k: h = round(sqrt(H W) crop[0, k]), w = round(sqrt(H W) crop[1, k]), accepted when
    h <= H and w <= W; the first accepted one is placed at top = floor(offset[0] (H - h + 1)),
    left likewise (randint); when none is, the centre crop of the largest box of allowed
    aspect: h = min(H, round(W / min ratio)), w = min(W, round(H max ratio)). round(x) is
    floor(x + 0.5) (Python rounds exact .5 ties to even: a measure-zero difference; W * 4/3
    and H * 4/3 are never within 1/6 of a tie).
    """
    hw64 = fn.peek_image_shape(jpegs, dtype=types.FLOAT64, adjust_orientation=False)[0:2]
    # The (2, ATTEMPTS) sizes in float64 as torchvision computes them; the rest in float32,
    # which holds these integers exactly and is what DALI's reductions and slice take.
    size = fn.cast(dmath.floor(dmath.sqrt(hw64[0] * hw64[1]) * crop + 0.5), dtype=types.FLOAT)
    hw = fn.cast(hw64, dtype=types.FLOAT)
    rejected = fn.reductions.sum((size > fn.reshape(hw, shape=[2, 1])) * float(ATTEMPTS), axes=0)
    key = rejected + types.Constant(np.arange(ATTEMPTS, dtype=np.float32))
    first = fn.reductions.min(key)  # the first accepted attempt, >= ATTEMPTS if none is
    chosen = fn.reductions.sum(size * (key == first), axes=1)
    fallback = first >= ATTEMPTS
    largest = dmath.min(hw, dmath.floor(hw[::-1] * types.Constant(
        np.float32([1 / CROP_RATIO[0], CROP_RATIO[1]])) + 0.5))
    shape = chosen + fallback * (largest - chosen)
    free = hw - shape
    start = dmath.min(dmath.floor(offset * (free + 1.0)), free)  # float32 may round u (n+1) up
    start = start + fallback * (dmath.floor(free * 0.5) - start)
    return start, shape


def _gray(x):
    return fn.coord_transform(x, M=list(GRAY))  # (H, W, 1)


def _clamp(y):
    return dmath.min(dmath.max(y, 0.0), PIXEL_MAX)  # (cheaper than dmath.clamp on the CPU)


def adjust_brightness(x, b):
    return dmath.min(x * b, PIXEL_MAX)


def adjust_contrast(x, c):
    return _clamp(x * c + fn.reductions.mean(_gray(x)) * (1.0 - c))


def adjust_saturation(x, s):
    return _clamp(x * s + _gray(x) * (1.0 - s))


def adjust_hue(x, h):
    """torchvision's adjust_hue (HSV hue + h turns) in closed form.

    A hue shift keeps each pixel's max, min and chroma C = max - min; with 6H the hue in
    sextants, channel n of the result is max - C * clamp(min(k, 4 - k), 0, 1) with
    k = (6H + 6h + n) mod 6, n = 5, 3, 1 for R, G, B (continuous in H, so float rounding at
    sextant edges cannot jump). 6H is _rgb2hsv's: (g - b) / C where max = R, 2 + (b - r) / C
    where max = G (and not R), 4 + (r - g) / C otherwise.
    """
    r, g, b = x[:, :, 0], x[:, :, 1], x[:, :, 2]
    vmax = dmath.max(dmath.max(r, g), b)
    chroma = vmax - dmath.min(dmath.min(r, g), b)
    is_r = r == vmax
    is_g = (g == vmax) & (r != vmax)  # torchvision's tie order: R, then G, then B
    base = r - g + chroma * 4.0
    num = base + is_r * (g - b - base) + is_g * (b - r + chroma * 2.0 - base)
    hue6 = num / (chroma + (chroma == 0.0))  # C = 0: a grey pixel, which stays max
    k = fn.expand_dims(hue6, axes=[2]) + (h * 6.0 + types.Constant(np.float32([11, 9, 7])))
    k = k - dmath.floor(k * (1.0 / 6.0)) * 6.0
    tri = dmath.max(dmath.min(dmath.min(k, 4.0 - k), 1.0), 0.0)
    out = fn.expand_dims(vmax, axes=[2]) - fn.expand_dims(chroma, axes=[2]) * tri
    return fn.reshape(out, layout="HWC")  # both branches of a conditional need the layout


ADJUST = {BRIGHTNESS: adjust_brightness, CONTRAST: adjust_contrast,
          SATURATION: adjust_saturation, HUE: adjust_hue}


def _apply_one(x, op, ops, factors):
    """x after the jitter `op` (a per-sample id) names, among `ops` (a DALI conditional per
    alternative: each sample runs one branch)."""
    if len(ops) == 1:
        return ADJUST[ops[0]](x, factors[ops[0]])
    if op == ops[0]:
        x = ADJUST[ops[0]](x, factors[ops[0]])
    else:
        x = _apply_one(x, op, ops[1:], factors)
    return x


def color_jitter(x, params: dict, aug: AugmentConfig, fused: bool):
    """ColorJitter of the uint8 images `x`, as float32: the enabled jitters one after the
    other, in each sample's own order. fused: one compiled loop per jitter (fused_jitter.py,
    the CPU's); else DALI's operators, which run on the GPU."""
    ops = sorted(jitter_ranges(aug))
    if not ops:
        return fn.cast(x, dtype=types.FLOAT)
    if fused:  # numba (LLVM) is loaded by the CPU's pipelines alone
        from dist_geo.loaders.fused_jitter import fused_jitter
        return fused_jitter()(x, params["factors"], params["order"])
    x = fn.cast(x, dtype=types.FLOAT)
    if len(ops) == 1:
        return ADJUST[ops[0]](x, params["factors"][ops[0]])
    for slot in range(len(ops)):
        x = _apply_one(x, params["order"][slot], ops, params["factors"])
    return x


def augment(jpegs, params: dict, aug: AugmentConfig, image_size: int, gpu: bool,
            max_pixels: int):
    """The augmented float32 CHW images of the encoded `jpegs`, and per sample whether its
    header promised more than `max_pixels` (that image is not decoded). `params`: the draws
    of a ParamSource (`draws`); the pipeline needs `enable_conditionals=True`."""
    jpegs, too_big, _ = guard_decoding(jpegs, max_pixels, skip=params["replay"])
    x = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB,
                          adjust_orientation=False)  # as torchvision's decode_image
    x = color_jitter(x, params, aug, fused=not gpu)
    start, shape = crop_box(jpegs, params["crop"], params["offset"])
    x = fn.slice(x, start, shape, axis_names="HW", normalized_anchor=False,
                 normalized_shape=False)
    x = fn.resize(x, size=[image_size, image_size], interp_type=types.INTERP_LINEAR,
                  antialias=True)
    images = fn.crop_mirror_normalize(x, dtype=types.FLOAT, output_layout="CHW",
                                      mean=params["mean"], std=params["std"],
                                      mirror=params["mirror"])
    return images, too_big


__all__ = ["ParamSource", "augment", "color_jitter", "crop_box", "draws", "jitter_ranges"]
