"""Who am I in the job: rank, world size, local rank, device and communication backend.

This is the one module that reads the launcher's environment (`RANK`, `WORLD_SIZE`,
`LOCAL_RANK`, `MASTER_ADDR`, ... as set by torchrun, the deepspeed launcher or Slurm through
our scripts). Everything else receives a `DistContext`. A single process is the plain case of
the same code: world size 1, no process group needed.
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


def init_distributed(device: str = "auto", timeout_s: int = 1800) -> DistContext:
    """Join the process group the launcher described (if any) and pick this rank's device.

    Safe to call twice: an existing process group is reused. Sets `DS_ACCELERATOR=cpu` when
    no GPU will be used, before DeepSpeed is imported anywhere, so DeepSpeed talks gloo.
    """
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = choose_device(device, local_rank)
    if dev.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    else:
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s)
        )
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def single_process(device: str = "cpu") -> DistContext:
    """A world of one, for tests, tools and evaluation outside a launcher."""
    return DistContext(rank=0, world_size=1, local_rank=0, device=choose_device(device))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
