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
  all-reduces its per-channel sums of g and g x^ (g = dL/dy, x^ the normalised input; the
  bias's and the weight's gradients), and input x_i gets BatchNorm's gradient over the
  global batch:
      dL/dx_i = weight invstd (g_i - sum(g) / n - x^_i sum(g x^) / n).
Training normalises with the biased variance and updates the running variance with the unbiased
one, as BatchNorm does. With the head's `world` gradient scale and the engine's average over
ranks (model/partial_fc.py), the network's gradients are those of one process on the global
batch. In eval mode, or alone, both are plain BatchNorm; their state dicts are BatchNorm's, so
checkpoints stay CosPlace's. On the CPU both directions run in ATen's batch-norm kernels, so
they round as torch's own BatchNorm does (against float64, both within 1e-5 here).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _global_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of x (N, C, H, W) over every rank's batch, and the
    global count: one all-gather of each rank's (n_r, m_r, M2_r), combined as Chan et al.'s."""
    channels = x.shape[1]
    # batch norm's own statistics kernel (biased variance): on the CPU a tenth of var_mean's
    # time on channels-last activations.
    mean_r, var_r = torch.batch_norm_update_stats(x, None, None, 0.0)
    n_r = x.numel() // channels
    local = torch.cat([x.new_tensor([n_r]), mean_r, var_r * n_r])
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    stats = torch.stack(gathered)
    counts, means, m2s = stats[:, :1], stats[:, 1:channels + 1], stats[:, channels + 1:]
    n = counts.sum()
    mean = (counts * means).sum(0) / n
    return mean, (m2s + counts * (means - mean).square()).sum(0) / n, n


class _GlobalBatchNorm(torch.autograd.Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias with the global statistics, and its
    gradients (module docstring), each direction one fused ATen batch-norm kernel and one
    per-channel correction: on the CPU the same maths in separate elementwise ops took about
    a sixth of a ResNet-18 step (demo, 2 ranks)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, var, n = _global_moments(x)
        # Eval-mode batch norm normalises with the statistics it is given: the global ones.
        y = torch.native_batch_norm(x, weight, bias, mean, var, False, 0.0, eps)[0]
        ctx.save_for_backward(x, weight, mean, var, n)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var, n)
        return y, mean, var, n

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor, *_) -> tuple[torch.Tensor, torch.Tensor,
                                                         torch.Tensor, None]:
        x, weight, mean, var, n = ctx.saved_tensors
        # With the statistics held constant: dx = a g (a = weight * invstd), and this rank's
        # sums over its images of g x^ (the weight's gradient) and of g (the bias's).
        dx, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_y, x, weight, mean, var, None, None, False, ctx.eps, [True, True, True])
        # Through the statistics every input moves every output: with the sums over all ranks,
        #     dx_i = a (g_i - sum(g) / n - x^_i sum(g x^) / n),    x^_i = (x_i - mean) invstd,
        # which adds x_i k1 + k0 per channel to the a g above.
        sums = torch.cat([grad_bias, grad_weight])
        dist.all_reduce(sums)
        sum_g, sum_gx = sums.chunk(2)
        invstd = torch.rsqrt(var + ctx.eps)
        a = weight * invstd
        k1 = -a * invstd * sum_gx / n
        k0 = -a * sum_g / n - mean * k1
        shape = (1, -1, 1, 1)
        dx.addcmul_(x, k1.view(shape)).add_(k0.view(shape))
        return dx, grad_weight, grad_bias, None


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics span all ranks (gloo or any backend)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        weight = self.weight if self.affine else x.new_ones(channels, dtype=torch.float32)
        bias = self.bias if self.affine else x.new_zeros(channels, dtype=torch.float32)
        y, mean, var, n = _GlobalBatchNorm.apply(x.float(), weight, bias, self.eps)
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum or 1.0 / float(self.num_batches_tracked)  # None: average
            self.running_mean.lerp_(mean, momentum)
            self.running_var.lerp_(var * n / (n - 1), momentum)
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
