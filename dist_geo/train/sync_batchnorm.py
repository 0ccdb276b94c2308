"""Batch norm over the GLOBAL batch when the batch is split across ranks.

CosPlace normalises each ResNet activation with the statistics of its batch of 32. Split over
W data-parallel ranks, plain BatchNorm would normalise each rank's 32/W images on their own:
another model, whose forward (and running statistics, which then also differ between ranks)
depends on the number of processes. Synchronised batch norm computes the statistics of the
whole global batch, so W ranks compute exactly what one process computes on the whole batch.

On GPUs (NCCL) this is torch's `SyncBatchNorm`. Torch refuses it on the CPU (its kernels are
CUDA-only), so for gloo `GlobalBatchNorm` does the same with one collective per layer each way,
as SyncBatchNorm does (on 2 CPU ranks each collective is a wait for the slower rank, ~2 ms):
- forward: each rank's count n_r, mean m_r and sum of squared deviations M2_r, all-gathered and
  combined (Chan et al.'s parallel variance, stable whatever the mean, unlike sum(x^2)/n - m^2):
      n = sum_r n_r,   mean = sum_r n_r m_r / n,   var = sum_r (M2_r + n_r (m_r - mean)^2) / n
- backward: every rank's outputs depend on every rank's inputs through (mean, var), so each rank
  all-reduces its gradients g_mean, g_var of the statistics, and input x_i gets
      dL/dx_i (through the statistics) = (G_mean + 2 G_var (x_i - mean)) / n     (G: the sums).
Training normalises with the biased variance and updates the running variance with the unbiased
one, as BatchNorm does. With the head's `world` gradient scale and the engine's average over
ranks (model/partial_fc.py), the network's gradients are those of one process on the global
batch. In eval mode, or alone, both are plain BatchNorm; their state dicts are BatchNorm's, so
checkpoints stay CosPlace's.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _GlobalMoments(torch.autograd.Function):
    """Per-channel mean and biased variance of x (N, C, H, W) over every rank's batch, and the
    global count (module docstring: one all-gather forward, one all-reduce backward)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        channels = x.shape[1]
        var_r, mean_r = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        n_r = x.numel() // channels
        local = torch.cat([x.new_tensor([n_r]), mean_r, var_r * n_r])
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, local)
        stats = torch.stack(gathered)
        counts, means, m2s = stats[:, :1], stats[:, 1:channels + 1], stats[:, channels + 1:]
        n = counts.sum()
        mean = (counts * means).sum(0) / n
        var = (m2s + counts * (means - mean).square()).sum(0) / n
        ctx.save_for_backward(x, mean, n)
        ctx.mark_non_differentiable(n)
        return mean, var, n

    @staticmethod
    def backward(ctx, grad_mean: torch.Tensor, grad_var: torch.Tensor, _) -> torch.Tensor:
        x, mean, n = ctx.saved_tensors
        grads = torch.cat([grad_mean, grad_var])
        dist.all_reduce(grads)
        g_mean, g_var = (g.view(1, -1, 1, 1) for g in grads.chunk(2))
        return (g_mean + 2 * g_var * (x - mean.view(1, -1, 1, 1))) / n


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics span all ranks (gloo or any backend)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        shape = (1, -1, 1, 1)
        local = x.float()
        mean, var, n = _GlobalMoments.apply(local)
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum or 1.0 / float(self.num_batches_tracked)  # None: average
            self.running_mean.lerp_(mean, momentum)
            self.running_var.lerp_(var * n / (n - 1), momentum)
        y = (local - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
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
