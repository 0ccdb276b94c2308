"""Margin logits: cosine similarities + target mask -> the logits a softmax CE is taken over.

Every function maps `cos` [N, C] (cosines between L2-normalised embeddings and L2-normalised
class weights) and `target` [N, C] (bool, True at (i, label_i)) to logits [N, C]. They act
entry by entry, so they work on ANY subset of the class columns: a rank holding only its shard
of classes passes its columns and a target mask that is all-False on rows whose class lives
elsewhere. That is what lets partial_fc.py shard the head.

Definitions, with their published parameters on the right (theta = arccos(cos), clamped to
[-1+EPS, 1-EPS] so the gradient stays finite):
- CosFace  (Wang et al. 2018): target s*(cos - m), others s*cos.                  s=30, m=0.4
- ArcFace  (Deng et al. 2019): target s*cos(theta + m) while theta + m <= pi, i.e.
  cos > cos(pi - m); beyond it s*(cos - m*sin(m)) keeps the target logit decreasing in theta
  (insightface's `th`/`mm` and pytorch-metric-learning's rule). easy_margin: cos(theta + m)
  only where cos > 0, cos elsewhere. Others s*cos.                                   s=64, m=0.5
- SphereFace (Liu et al. 2017), normalised-embedding form: target s*psi(theta) with
  psi(theta) = (-1)^k cos(m*theta) - 2k, k = floor(m*theta / pi): the multiplicative margin
  cos(m*theta) on [0, pi/m], continued so that psi decreases monotonically over [0, pi]; any
  real m >= 1 (m=1 is plain softmax). Others s*cos. For integer m and unit-norm embeddings this
  is pytorch-metric-learning's SphereFaceLoss(margin=m, scale=s); PML truncates m to an integer
  and scales by the embedding norm, we do neither.                                    s=30, m=1.5
- Circle loss (Sun et al. 2020), proxy/classification form with the class weights as proxies:
  target gamma*alpha_p*(cos - (1-m)), alpha_p = relu(1+m-cos); others
  gamma*alpha_n*(cos - m), alpha_n = relu(cos+m); alphas detached.                m=0.25, gamma=64
  Softmax CE over these equals PML's CircleLoss softplus(lse_n - logit_p) with one positive.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from dist_geo.config import ConfigError, LossConfig

EPS = 1e-7
MarginFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _with_targets(
    cos: torch.Tensor, target: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """`cos` with its target entries replaced by fn(their cosines), out of place (autograd)."""
    rows, cols = target.nonzero(as_tuple=True)
    return cos.index_put((rows, cols), fn(cos[rows, cols]))


def _angle(cos: torch.Tensor) -> torch.Tensor:
    return torch.acos(cos.clamp(-1 + EPS, 1 - EPS))


def cosface(cos: torch.Tensor, target: torch.Tensor, s: float, m: float) -> torch.Tensor:
    return s * (cos - m * target.to(cos.dtype))


def arcface(
    cos: torch.Tensor, target: torch.Tensor, s: float, m: float, easy_margin: bool = False
) -> torch.Tensor:
    def margin(c: torch.Tensor) -> torch.Tensor:
        with_margin = torch.cos(_angle(c) + m)
        if easy_margin:
            return torch.where(c > 0, with_margin, c)
        return torch.where(c > math.cos(math.pi - m), with_margin, c - m * math.sin(m))

    return s * _with_targets(cos, target, margin)


def sphereface(cos: torch.Tensor, target: torch.Tensor, s: float, m: float) -> torch.Tensor:
    def psi(c: torch.Tensor) -> torch.Tensor:
        theta = _angle(c)
        k = torch.floor(m * theta / math.pi).detach()
        return (1 - 2 * (k % 2)) * torch.cos(m * theta) - 2 * k

    return s * _with_targets(cos, target, psi)


def circle(cos: torch.Tensor, target: torch.Tensor, m: float, gamma: float) -> torch.Tensor:
    alpha_p = torch.relu(1 + m - cos.detach())
    alpha_n = torch.relu(cos.detach() + m)
    positive = gamma * alpha_p * (cos - (1 - m))
    negative = gamma * alpha_n * (cos - m)
    return torch.where(target, positive, negative)


def margin_from_config(loss_cfg: LossConfig) -> MarginFn:
    """The margin function `loss.name` selects, with `loss.s`, `loss.m` (and `loss.gamma`).

    The config's s/m defaults are CosFace's (30, 0.4); the other losses' published values
    (above) are set explicitly, e.g. `loss.name=arcface loss.s=64 loss.m=0.5`.
    """
    s, m = loss_cfg.s, loss_cfg.m
    if loss_cfg.name == "cosface":
        return functools.partial(cosface, s=s, m=m)
    if loss_cfg.name == "arcface":
        return functools.partial(arcface, s=s, m=m, easy_margin=loss_cfg.easy_margin)
    if loss_cfg.name == "sphereface":
        if m < 1:
            raise ConfigError(
                f"loss.m={m} is below 1: SphereFace multiplies the angle by m (published: 1.5)"
            )
        return functools.partial(sphereface, s=s, m=m)
    if loss_cfg.name == "circle":
        return functools.partial(circle, m=m, gamma=loss_cfg.gamma)
    raise ConfigError(f"loss.name={loss_cfg.name!r} is not one of cosface, arcface, sphereface, circle")
