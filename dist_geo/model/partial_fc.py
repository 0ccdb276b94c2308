"""A margin classifier head sharded by class across ranks (model parallel), as insightface's
Partial FC (partial_fc_v2.py) does for millions of identities.

Layout. The group's C classes are cut into `world` contiguous ranges (`class_range`, the one
definition; checkpoints use it too). Rank r holds only the rows W_r = W[class_start:class_end]
of the class-weight matrix, a plain nn.Parameter that is NOT data-parallel: each rank updates
its own rows with its own optimizer.

Forward, on every rank, for local embeddings x_r [B, D] and labels y_r [B]:
1. All-gather: X = [x_0; ...; x_{w-1}] [N=wB, D] (autograd-aware, see step 5) and Y [N].
2. Local logits z = margin(cos(X, W_r), target mask) [N, C_r]: cosines of all N samples
   against this rank's classes only; the margin functions act entry by entry (margins.py), so
   a row whose class lives on another rank simply has no target here.
3. Distributed softmax CE (`_ShardedSoftmaxCE`): for each sample i the loss is
      l_i = log sum_c exp(z_ic) - z_i,y_i
          = M_i + log sum_r sum_{c in shard r} exp(z_ic - M_i) - z_i,y_i,  M_i = max_c z_ic.
   Each rank computes its local max, sum of exps and (if it holds y_i) target logit, and three
   all-reduces (MAX, SUM, SUM) give every rank the global M_i, sum-exp and z_i,y_i; the loss
   L = mean_i l_i over the GLOBAL batch is then identical on all ranks. No rank ever holds
   more than [N, C_r] logits.
4. Backward of the CE needs no communication: dL/dz_ic = (softmax_ic - [c = y_i]) / N, where
   softmax_ic = exp(z_ic - M_i) / sumexp_i uses the global normaliser saved in forward. So the
   grads of the rank's own rows W_r are exact: dW_r = dL/dW_r of the unsharded head.
5. The gathered X receives, on rank r, only the part of dL/dX that flows through shard r's
   columns; the functional all-gather's backward (`all_gather_single` of
   torch.distributed._functional_collectives, which replaces the deprecated
   torch.distributed.nn.functional.all_gather) sums these over ranks and hands rank r its
   own rows (a reduce-scatter), i.e. dL/dx_r exactly.

Gradient-scaling convention (what the trainer relies on). The backbone is data parallel: its
grads are AVERAGED over the `world` ranks by DDP/DeepSpeed. The unsharded gradient of the
global-batch loss is dL/dtheta = sum_r (dL/dx_r)(dx_r/dtheta), while averaging yields
(1/world) sum_r g_r. So the head multiplies the gradient reaching the local embeddings by
`world` (`_ScaleGrad`, identity in forward): after backward, x_r.grad = world * dL/dx_r, and
the averaged backbone grads equal the single-process grads of L on the global batch. The head's
own weight grads are NOT scaled (step 4) and must NOT be averaged across ranks (keep the head
out of DDP/DeepSpeed's gradient all-reduce). World size 1 is the plain dense head: scale 1,
and torch's fused `F.cross_entropy` instead of step 3. (Gradient accumulation by the engine
scales the whole loss; that is consistent.) Synchronised batch norm follows the same
convention (train/sync_batchnorm.py), so the backbone's statistics gradients are exact too.

Negative sampling (`sample_rate` < 1, training mode only), Partial FC v2: each rank keeps every
class of its shard that is a positive in the global batch and fills up to
int(sample_rate * C_r) columns with random other classes of its shard, drawn from a generator
seeded by (seed, rank, sample_step); labels are remapped to the sampled columns. The softmax is
then over positives + sampled negatives; only sampled rows get gradient. `sample_step` counts
training forwards: a trainer resuming mid-epoch sets it to the global step for exact resume.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F
from torch import nn

from dist_geo.config import LossConfig
from dist_geo.distributed import DistContext
from dist_geo.model.margins import margin_from_config

INIT_BLOCK = 4096  # classes per init generator: the init is independent of the world size
NORM_EPS = 1e-12  # F.normalize's default


def class_range(num_classes: int, rank: int, world: int) -> tuple[int, int]:
    """[class_start, class_end) of `rank`: contiguous, sizes differ by at most one (the first
    num_classes % world ranks hold one more). A rank may hold none when classes < world."""
    base, extra = divmod(num_classes, world)
    start = rank * base + min(rank, extra)
    return start, start + base + int(rank < extra)


def reslice(shards: list[torch.Tensor], new_world: int) -> list[torch.Tensor]:
    """Shards of one [C, ...] tensor re-cut for `new_world` ranks (checkpoint resume on a
    different world size)."""
    full = torch.cat(shards)
    return [full[slice(*class_range(len(full), r, new_world))].clone() for r in range(new_world)]


def init_rows(num_classes: int, in_features: int, start: int, end: int, seed: int) -> torch.Tensor:
    """Rows [start, end) of a xavier_uniform_ [num_classes, in_features] matrix (CosPlace's init),
    generated in blocks of INIT_BLOCK classes, each from a generator seeded by (seed, block):
    every rank gets the same rows whatever the world size, without building the full matrix."""
    bound = math.sqrt(6.0 / (num_classes + in_features))
    rows = torch.empty(end - start, in_features)
    for block in range(start // INIT_BLOCK, -(-end // INIT_BLOCK)):
        lo, hi = block * INIT_BLOCK, min((block + 1) * INIT_BLOCK, num_classes)
        generator = torch.Generator().manual_seed(hash((seed, block)) & (2**63 - 1))
        values = torch.empty(hi - lo, in_features).uniform_(-bound, bound, generator=generator)
        a, b = max(lo, start), min(hi, end)
        rows[a - start: b - start] = values[a - lo: b - lo]
    return rows


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by `scale` (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


class _RowCosine(torch.autograd.Function):
    """cos [N, C] of unit rows x [N, D] against the rows of `weight` [C, D]: x w_c / |w_c|.

    Memory: autograd through F.linear(x, F.normalize(weight)) keeps the normalised copy of the
    weight until backward, which then adds two more weight-sized buffers; with a rank's shard of
    a million classes that is gigabytes. Here the copy lives only while the cosines are
    computed (so they are the same numbers as before, bit for bit), and the weight's gradient
    is built in one buffer: dcos_ic/dw_c = (x_i - cos_ic w_c / |w_c|) / |w_c| (no norm term
    where F.normalize's eps clamps the norm).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        cos = F.linear(x, F.normalize(weight))
        norm = weight.norm(dim=1)
        ctx.save_for_backward(x, weight, norm.clamp_min(NORM_EPS).reciprocal(), cos,
                              norm > NORM_EPS)
        return cos

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, weight, inv_norm, cos, unclamped = ctx.saved_tensors
        g = grad * inv_norm
        grad_weight = g.t() @ x
        along = (g * cos).sum(dim=0) * inv_norm * unclamped  # no norm gradient where clamped
        grad_weight.addcmul_(weight, along[:, None], value=-1.0)
        return g @ weight, grad_weight


class _ShardedSoftmaxCE(torch.autograd.Function):
    """Mean softmax cross-entropy over class columns split across ranks (steps 3-4 above).

    `logits` [N, C_r] are this rank's columns; `target_col` [N] is the target's column here,
    or -1 when the target class lives on another rank.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target_col: torch.Tensor) -> torch.Tensor:
        n = logits.shape[0]
        if logits.shape[1]:
            row_max = logits.max(dim=1).values
        else:  # this rank holds no classes
            row_max = logits.new_full((n,), -math.inf)
        dist.all_reduce(row_max, dist.ReduceOp.MAX)
        exp = torch.exp(logits - row_max[:, None])
        sum_exp = exp.sum(dim=1)
        here = target_col >= 0
        target_logit = torch.zeros_like(row_max)
        target_logit[here] = logits[here, target_col[here]]
        dist.all_reduce(sum_exp, dist.ReduceOp.SUM)
        dist.all_reduce(target_logit, dist.ReduceOp.SUM)
        ctx.save_for_backward(exp.div_(sum_exp[:, None]), target_col)
        return (row_max + sum_exp.log() - target_logit).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        softmax, target_col = ctx.saved_tensors
        here = (target_col >= 0).nonzero(as_tuple=True)[0]
        grad_logits = softmax.clone()
        grad_logits[here, target_col[here]] -= 1.0
        return grad_logits * (grad / softmax.shape[0]), None


class ShardedMarginHead(nn.Module):
    """One group's margin classifier, this rank's class rows only (see the module docstring).

    forward(local_embeddings [B, D], local_labels [B]) -> scalar loss, the mean over the global
    batch of world*B samples, identical on all ranks. Every rank must pass the same B, call the
    heads in the same order and run backward (the gather's backward is a collective).
    """

    def __init__(
        self, in_features: int, num_classes: int, loss_cfg: LossConfig, ctx: DistContext,
        seed: int = 0,
    ):
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.rank, self.world_size = ctx.rank, ctx.world_size
        self.class_start, self.class_end = class_range(num_classes, ctx.rank, ctx.world_size)
        self.margin = margin_from_config(loss_cfg)
        self.sample_rate = loss_cfg.sample_rate
        self.seed = seed
        self.sample_step = 0
        self.weight = nn.Parameter(
            init_rows(num_classes, in_features, self.class_start, self.class_end, seed)
        )

    @property
    def num_local(self) -> int:
        return self.class_end - self.class_start

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, "
                f"classes=[{self.class_start}, {self.class_end}), sample_rate={self.sample_rate}")

    def _gather(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.world_size == 1:
            return embeddings, labels
        embeddings = funcol.all_gather_single(
            _ScaleGrad.apply(embeddings, self.world_size), 0, dist.group.WORLD)
        gathered = [torch.empty_like(labels) for _ in range(self.world_size)]
        dist.all_gather(gathered, labels)
        return embeddings, torch.cat(gathered)

    def _sample(self, target_col: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sampled class columns, sorted; target_col remapped to them)."""
        positives = torch.unique(target_col[target_col >= 0])
        num_sample = max(int(self.sample_rate * self.num_local), len(positives))
        generator = torch.Generator(device=self.weight.device)
        generator.manual_seed(hash((self.seed, self.rank, self.sample_step)) & (2**63 - 1))
        priority = torch.rand(self.num_local, generator=generator, device=self.weight.device)
        priority[positives] = 2.0  # above any random draw: positives are always kept
        index = torch.topk(priority, k=num_sample).indices.sort().values
        here = target_col >= 0
        remapped = torch.where(here, torch.searchsorted(index, target_col.clamp(min=0)), -1)
        return index, remapped

    def forward(self, local_embeddings: torch.Tensor, local_labels: torch.Tensor) -> torch.Tensor:
        embeddings, labels = self._gather(local_embeddings, local_labels)
        valid = ((labels >= 0) & (labels < self.num_classes)).all()
        if labels.is_cuda:  # checked on the device: reading it here would wait for the GPU
            torch._assert_async(valid, f"labels must be in [0, {self.num_classes})")
        elif not valid:
            raise ValueError(
                f"labels must be in [0, {self.num_classes}), got [{labels.min()}, {labels.max()}]"
            )
        here = (labels >= self.class_start) & (labels < self.class_end)
        target_col = torch.where(here, labels - self.class_start, -1)
        weight = self.weight
        if self.training and self.sample_rate < 1:
            index, target_col = self._sample(target_col)
            weight = weight[index]
            self.sample_step += 1
        # float32 whatever the engine's precision or autocast: s=64 logits need the range
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            cos = _RowCosine.apply(F.normalize(embeddings.float()), weight.float())
            target = torch.zeros_like(cos, dtype=torch.bool)
            rows = (target_col >= 0).nonzero(as_tuple=True)[0]
            target[rows, target_col[rows]] = True
            logits = self.margin(cos, target)
            if self.world_size == 1:  # every target is here: torch's fused softmax CE
                return F.cross_entropy(logits, target_col)
            return _ShardedSoftmaxCE.apply(logits, target_col)

    @torch.no_grad()
    def full_weight(self) -> torch.Tensor:
        """All ranks' rows [num_classes, D], on every rank (a collective: all ranks call it)."""
        if self.world_size == 1:
            return self.weight.detach().clone()
        rows = -(-self.num_classes // self.world_size)  # the largest shard
        padded = self.weight.new_zeros(rows, self.in_features)
        padded[: self.num_local] = self.weight
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded)
        ranges = [class_range(self.num_classes, r, self.world_size) for r in range(self.world_size)]
        return torch.cat([g[: end - start] for g, (start, end) in zip(gathered, ranges)])


def memory_bytes(head: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Bytes this rank holds for a head between steps: its parameters and, with `optimizer`,
    their optimizer state (Adam: exp_avg, exp_avg_sq, step), summed over the tensors
    themselves. Gradients are not counted: the trainer frees them after every step."""
    params = list(head.parameters())
    state = [optimizer.state.get(p, {}) for p in params] if optimizer is not None else []
    return sum(p.nbytes for p in params) + sum(
        v.nbytes for s in state for v in s.values() if torch.is_tensor(v))


def build_head(
    loss_cfg: LossConfig, in_features: int, num_classes: int, ctx: DistContext, seed: int = 0
) -> ShardedMarginHead:
    """This rank's shard of a group's head, on ctx.device. `seed` fixes the weight init (and
    the negative sampling); use the same seed on every rank and a different one per group."""
    return ShardedMarginHead(in_features, num_classes, loss_cfg, ctx, seed).to(ctx.device)
