"""Margin heads (world size 1) against pytorch-metric-learning and dense references, to 1e-5.

Our head normalises its weights; PML's losses take W [D, C] and normalise it themselves
(CosineSimilarity), so PML gets W = our weights transposed. Where the definitions differ
(SphereFace with a non-integer margin: PML truncates m to an int and scales by the embedding
norm) the test uses a dense reference written here instead.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, reducers

from dist_geo.config import ConfigError, LossConfig
from dist_geo.distributed import single_process
from dist_geo.model.partial_fc import build_head

torch.set_num_threads(1)
B, D, C = 12, 16, 10


def head_and_batch(name: str, **loss_kw):
    torch.manual_seed(0)
    head = build_head(LossConfig(name=name, **loss_kw), D, C, single_process())
    labels = torch.randint(0, C, (B,))
    embeddings = torch.randn(B, D)
    # three samples pointing away from their class, so ArcFace's theta + m > pi branch is used
    with torch.no_grad():
        embeddings[:3] = -head.weight[labels[:3]] + 0.01 * torch.randn(3, D)
    return head, embeddings.requires_grad_(), labels


def ours(head, embeddings, labels):
    loss = head(embeddings, labels)
    (grad,) = torch.autograd.grad(loss, embeddings)
    return loss, grad


def pml(loss_fn, embeddings, labels, **kw):
    loss = loss_fn(embeddings, labels, **kw)
    (grad,) = torch.autograd.grad(loss, embeddings)
    return loss, grad


def assert_same(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-5)


def with_weight(loss_fn, head):
    loss_fn.W.data = head.weight.detach().t().clone()
    return loss_fn


def test_cosface_matches_pml():
    head, x, y = head_and_batch("cosface")  # config defaults: s=30, m=0.4
    ref = with_weight(losses.CosFaceLoss(C, D, margin=0.4, scale=30), head)
    assert_same(ours(head, x, y), pml(ref, x, y))


@pytest.mark.parametrize("m", [0.5, 0.2])
def test_arcface_matches_pml_including_threshold_branch(m):
    head, x, y = head_and_batch("arcface", s=64.0, m=m)
    cos = F.normalize(x.detach()) @ F.normalize(head.weight.detach()).t()
    assert (cos[torch.arange(B), y] < math.cos(math.pi - m)).sum() == 3
    ref = with_weight(losses.ArcFaceLoss(C, D, margin=np.degrees(m), scale=64), head)
    assert_same(ours(head, x, y), pml(ref, x, y))


def test_arcface_easy_margin_matches_dense_reference():
    head, x, y = head_and_batch("arcface", s=64.0, m=0.5, easy_margin=True)
    s, m = 64.0, 0.5
    cos = F.normalize(x) @ F.normalize(head.weight.detach()).t()
    sin = (1 - cos**2).clamp(min=0).sqrt()
    phi = torch.where(cos > 0, cos * math.cos(m) - sin * math.sin(m), cos)
    onehot = F.one_hot(y, C).bool()
    ref = F.cross_entropy(s * torch.where(onehot, phi, cos), y)
    (ref_grad,) = torch.autograd.grad(ref, x)
    assert_same(ours(head, x, y), (ref, ref_grad))


@pytest.mark.parametrize("m", [2, 4])
def test_sphereface_integer_margin_matches_pml(m):
    head, x, y = head_and_batch("sphereface", s=30.0, m=m)
    ref = with_weight(losses.SphereFaceLoss(C, D, margin=m, scale=30), head)
    x_unit = F.normalize(x)  # PML scales logits by the embedding norm: unit vectors match ours
    (ref_grad,) = torch.autograd.grad(ref(x_unit, y), x)
    loss, grad = ours(head, x, y)
    torch.testing.assert_close(loss, ref(x_unit, y), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


def test_sphereface_fractional_margin_matches_dense_reference():
    head, x, y = head_and_batch("sphereface", s=30.0, m=1.5)  # published values
    s, m = 30.0, 1.5
    cos = F.normalize(x) @ F.normalize(head.weight.detach()).t()
    theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    # psi on [0, pi/m] is cos(m theta); on (pi/m, pi] (k=1 for 1 <= m < 2) -cos(m theta) - 2
    psi = torch.where(theta <= math.pi / m, torch.cos(m * theta), -torch.cos(m * theta) - 2)
    onehot = F.one_hot(y, C).bool()
    assert (onehot & (theta > math.pi / m)).any()  # both branches are exercised
    ref = F.cross_entropy(s * torch.where(onehot, psi, cos), y)
    (ref_grad,) = torch.autograd.grad(ref, x)
    assert_same(ours(head, x, y), (ref, ref_grad))


@pytest.mark.parametrize("reducer", [reducers.MeanReducer(), None])
def test_circle_matches_pml_with_class_weights_as_proxies(reducer):
    """PML's CircleLoss with ref_emb = class weights, ref_labels = arange(C): each anchor has one
    positive (its proxy), so softplus(lse_n - logit_p) is our softmax CE. PML's default reducer
    (AvgNonZero) drops anchors whose loss is exactly 0; here none is, so both reducers agree."""
    head, x, y = head_and_batch("circle", m=0.25, gamma=64.0)  # published values
    kw = {"reducer": reducer} if reducer is not None else {}
    ref = losses.CircleLoss(m=0.25, gamma=64, **kw)
    proxies = head.weight.detach().clone()
    assert_same(ours(head, x, y), pml(ref, x, y, ref_emb=proxies, ref_labels=torch.arange(C)))


def test_overrides_and_bad_sphereface_margin():
    head, x, y = head_and_batch("cosface", s=10.0, m=0.1)
    ref = with_weight(losses.CosFaceLoss(C, D, margin=0.1, scale=10), head)
    assert_same(ours(head, x, y), pml(ref, x, y))
    with pytest.raises(ConfigError, match="SphereFace"):
        build_head(LossConfig(name="sphereface", m=0.5), D, C, single_process())
