"""The aggregation layers of CosPlace: L2 normalisation and generalised-mean (GeM) pooling.

They keep CosPlace's parameter names (GeM's `p`) so released state dicts load unchanged. Both
compute in fp32 even under autocast: x^p of post-ReLU activations and sums of squares overflow
or lose the small values in fp16/bf16, and the descriptor's unit norm is what the margin heads
and the search rely on. Their output is fp32 (the last Linear then runs in the autocast dtype).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class L2Norm(nn.Module):
    """Unit-length vectors along `dim` (channels for feature maps and descriptors)."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.normalize(x.float(), p=2.0, dim=self.dim)


class GeM(nn.Module):
    """Generalised mean over the spatial positions, (mean x^p)^(1/p), with a learnable `p`.

    p=1 is average pooling and p→∞ max pooling; CosPlace starts from p=3. Activations are
    clamped at `eps` so that the fractional power stays defined.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x, p = x.float(), self.p.float()
            pooled = F.avg_pool2d(x.clamp(min=self.eps).pow(p), (x.size(-2), x.size(-1)))
            return pooled.pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4f}, eps={self.eps}"
