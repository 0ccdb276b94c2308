"""Who am I in the job: rank, world size, local rank, device and communication backend.

This is the one module that reads the launcher's environment (`RANK`, `WORLD_SIZE`,
`LOCAL_RANK`, `MASTER_ADDR`, torchrun's elastic restart count, ... as set by torchrun, the
deepspeed launcher or Slurm through our scripts) and the one that knows which backend a device
takes (`DistContext.backend`). Everything else receives a `DistContext`. A single process is
the plain case of the same code: world size 1, no process group needed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()


def choose_device(requested: str, local_rank: int = 0) -> torch.device:
    """`auto` takes this rank's GPU when one is visible, else the CPU."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda was asked for but no CUDA device is visible")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def elastic_restart_count() -> int:
    """How many times torchrun's elastic agent restarted this worker group (0 on a first start)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))


def _join_elastic_group(ctx: DistContext, timeout: timedelta) -> None:
    """Join the process group at the store the launcher serves (torchrun's agent, or our
    local launcher, dist_geo/train/local_ranks.py), through keys private to this restart.

    torchrun's agent keeps one store for the whole job; after a restart (`--max-restarts`)
    a plain `env://` init can read the previous attempt's gloo addresses from it and fail
    with "Gloo connectFullMesh failed ... Connection refused" (measured with torch 2.14.1,
    both --standalone and c10d rendezvous). Prefixing the keys with the restart count avoids it.
    """
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          ctx.world_size, is_master=False, timeout=timeout)
    dist.init_process_group(
        ctx.backend, store=dist.PrefixStore(f"restart_{elastic_restart_count()}", store),
        rank=ctx.rank, world_size=ctx.world_size, timeout=timeout,
    )


def init_distributed(device: str = "auto", timeout_s: int = 1800) -> DistContext:
    """Join the process group the launcher described (if any) and pick this rank's device.

    Safe to call twice: an existing process group is reused. When the launcher serves the
    store (TORCHELASTIC_USE_AGENT_STORE: torchrun's agent, our local launcher) the group is
    joined through keys private to the restart (`_join_elastic_group`), else `env://`.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    ctx = DistContext(rank=int(os.environ.get("RANK", 0)),
                      world_size=int(os.environ.get("WORLD_SIZE", 1)),
                      local_rank=local_rank, device=choose_device(device, local_rank))
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)
    if ctx.is_distributed and not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            _join_elastic_group(ctx, timeout)
        else:
            dist.init_process_group(ctx.backend, rank=ctx.rank, world_size=ctx.world_size,
                                    timeout=timeout)
    return ctx


def single_process(device: str = "cpu") -> DistContext:
    """A world of one, for tests, tools and evaluation outside a launcher."""
    return DistContext(rank=0, world_size=1, local_rank=0, device=choose_device(device))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
