"""Batch norm over the GLOBAL batch when the batch is split across ranks.

CosPlace normalises each ResNet activation with the statistics of its batch of 32. Split over
W data-parallel ranks, plain BatchNorm would normalise each rank's 32/W images on their own:
another model, whose forward (and running statistics, which then also differ between ranks)
depends on the number of processes. Synchronised batch norm computes the statistics of the
whole global batch, so W ranks compute exactly what one process computes on the whole batch.

On GPUs (NCCL) this is torch's `SyncBatchNorm`. Torch refuses it on the CPU (its kernels are
CUDA-only), so for gloo `GlobalBatchNorm` does the same with two all-reduces per layer:
    mean = sum_r sum(x_r) / n,    var = sum_r sum((x_r - mean)^2) / n    (n = global count)
normalising with the biased variance and updating the running variance with the unbiased one,
as BatchNorm does. The all-reduce is differentiable (its backward is the all-reduce of the
gradients), so each rank's backward includes its share of the statistics' gradients: with the
head's `world` gradient scale and the engine's average over ranks (model/partial_fc.py), the
network's gradients are those of one process on the global batch. In eval mode, or alone,
both are plain BatchNorm; their state dicts are BatchNorm's, so checkpoints stay CosPlace's.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the backward sums the gradients over ranks too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics span all ranks (gloo or any backend)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        shape = (1, -1, 1, 1)
        local = x.float()
        count = local.new_tensor([local.numel() / local.shape[1]])
        sums = _AllReduceSum.apply(torch.cat([local.sum((0, 2, 3)), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = local - mean.view(shape)
        var = _AllReduceSum.apply(centred.square().sum((0, 2, 3))) / n
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum or 1.0 / float(self.num_batches_tracked)  # None: average
            self.running_mean.lerp_(mean, momentum)
            self.running_var.lerp_(var * n / (n - 1), momentum)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def _replace(module: nn.Module, make: type[nn.BatchNorm2d]) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and type(child) is not make:
            new = make(child.num_features, child.eps, child.momentum, child.affine,
                       child.track_running_stats).to(child.weight.device)
            new.load_state_dict(child.state_dict())
            new.requires_grad_(child.weight.requires_grad)
            new.train(child.training)
            setattr(module, name, new)
        else:
            _replace(child, make)
    return module


def synchronise_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with every BatchNorm2d synchronised over the process group (in place)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _replace(model, GlobalBatchNorm)


__all__ = ["GlobalBatchNorm", "synchronise_batchnorm"]
