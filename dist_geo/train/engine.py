"""The DeepSpeed engine around the network (backbone + GeM + FC), and the heads' step beside it.

The network is data parallel inside DeepSpeed (ZeRO stage 0, 1 or 2 from `train.zero_stage`).
The sharded margin heads are not: each rank holds different class rows, so averaging their
gradients across ranks (what DeepSpeed does) would be wrong. They keep their own torch
optimizers and are stepped by `step_head`, just before the engine steps the network.

Precision. The weights, optimizer states and batch-norm buffers stay fp32 in every mode;
`train.precision=bf16|fp16` runs the network's forward under autocast (DeepSpeed's
`torch_autocast` section), as `torch.autocast` + `GradScaler` training does. The parts that
need the range stay fp32 whatever autocast says: GeM and the L2 norms (model/pooling.py), the
heads' cosines, margins and softmax (model/partial_fc.py). Gradients are all-reduced in fp32
(`lower_precision_safe_modules: []`: DeepSpeed would otherwise reduce conv and linear gradients
in the autocast dtype). fp16 adds loss scaling: DeepSpeed's GradScaler (on the engine for ZeRO
0, on its optimizer for ZeRO 1/2) scales the loss in `engine.backward`, so the heads' gradients
carry the same scale; `step_head` unscales and steps the head optimizer through that same
GradScaler before the engine's step updates the scale, so a head step with inf/NaN gradients
is skipped exactly as the network's is (CosPlace's AMP: `scaler.step` per optimizer, then
`scaler.update()`).

DeepSpeed on CPU (measured with deepspeed 0.19.8, torch 2.14.1, see `prepare_deepspeed`):
- `DS_ACCELERATOR=cpu` makes it use gloo; `prepare_deepspeed` sets it before DeepSpeed is
  imported (this module imports DeepSpeed lazily for that reason).
- Its CPU communication backend JIT-compiles a shared-memory all-reduce op
  (`deepspeed_shm_comm`, about 30 s with g++/ninja, then cached in ~/.cache/torch_extensions or
  $TORCH_EXTENSIONS_DIR) on the first `initialize`. There is no config or env switch for it; the
  op is only built when `deepspeed.ops.__compatible_ops__` lists it as compatible, and DeepSpeed
  documents that dict as editable, so on CPU we mark it incompatible and all-reduces go through
  plain gloo. The engine then initialises in about 5 s instead of 35 s.
- `deepspeed.initialize` insists on a `LOCAL_RANK` variable and on a process group; a single
  process gets a one-rank gloo group on an in-memory store, so no port or MPI is needed.
- Torch optimizers are passed in (a config-defined Adam builds FusedAdam for CPU, about 45 s);
  ZeRO with SGD needs `zero_allow_untested_optimizer`.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from dist_geo.config import Config, ConfigError
from dist_geo.distributed import DistContext


AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def deepspeed_config(cfg: Config, ctx: DistContext) -> dict[str, Any]:
    """DeepSpeed's JSON config derived from `train.*` / `optim.*`, then `train.deepspeed_config`."""
    precision = cfg.train.precision
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.train.per_rank_batch(ctx.world_size),
        "gradient_accumulation_steps": 1,
        "train_batch_size": cfg.train.batch_size,
        "zero_optimization": {"stage": cfg.train.zero_stage},
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": cfg.optim.clip_grad_norm,
        "torch_autocast": {
            "enabled": precision in AUTOCAST_DTYPES,
            "dtype": AUTOCAST_DTYPES.get(precision, "float32"),
            "lower_precision_safe_modules": [],  # all-reduce every gradient in fp32
        },
        "steps_per_print": 2**31 - 1,  # our own logging reports progress
        "wall_clock_breakdown": False,
    }
    if cfg.train.deepspeed_config:
        path = Path(cfg.train.deepspeed_config)
        try:
            ds.update(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read the DeepSpeed config ({e})") from None
    return ds


def prepare_deepspeed(ctx: DistContext) -> None:
    """Everything DeepSpeed needs before `initialize` on this machine (see the module docstring)."""
    os.environ.setdefault("LOCAL_RANK", str(ctx.local_rank))
    if ctx.device.type == "cpu":  # else DeepSpeed probes for one and prints that it found none
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            ctx.backend, store=dist.HashStore(), rank=0, world_size=1
        )
    import deepspeed.ops  # lazy: after DS_ACCELERATOR is set (docstring)
    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)  # its INFO lines repeat on every rank
    if ctx.device.type == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def check_precision(precision: str, ctx: DistContext) -> None:
    """Autocast in `precision` must exist on this device (fp16 autocast is a GPU mode)."""
    if precision == "fp16" and ctx.device.type != "cuda":
        raise ConfigError(
            f"train.precision=fp16 is not supported on {ctx.device}; use bf16 or fp32"
        )
    if precision == "bf16" and ctx.device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.precision=bf16 is not supported on {ctx.device}; use fp16")


def build_engine(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: Config,
    ctx: DistContext,
) -> Any:
    """Wrap the network in a DeepSpeedEngine that owns its optimizer and per-step scheduler."""
    prepare_deepspeed(ctx)
    import deepspeed  # lazy: as in prepare_deepspeed

    check_precision(cfg.train.precision, ctx)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler,
        config=deepspeed_config(cfg, ctx), dist_init_required=False,
    )
    if ctx.world_size == 1 and cfg.train.zero_stage == 0:
        # An all-reduce over one rank is the identity, but ZeRO 0 would still copy every
        # gradient into one flat buffer and back each step (about 25 ms of a 250 ms ResNet-18
        # step on 2 CPU cores). The engine turns it off itself when it has no process group.
        engine.enable_backward_allreduce = False
    return engine


def grad_scaler(engine: Any) -> torch.amp.GradScaler | None:
    """DeepSpeed's fp16 GradScaler (ZeRO 0 keeps it on the engine, ZeRO 1/2 on their
    optimizer); None when no loss scaling is on."""
    return (getattr(engine, "torch_autocast_z0_gradscaler", None)
            or getattr(engine.optimizer, "torch_autocast_gradscaler", None))


def step_head(
    engine: Any, head: torch.nn.Module, optimizer: torch.optim.Optimizer, clip_grad_norm: float
) -> None:
    """Unscale, clip and apply the head's gradients; call before `engine.step()`."""
    scaler = grad_scaler(engine)
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(head.parameters(), clip_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)  # skipped when the unscaled gradients hold inf/NaN
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
