"""Launching training processes: local multi-process runs from Python, elastic restarts.

`launch_local(cfg, nproc)` is what the demo and notebooks use to train with N processes on
this machine: it saves the config, runs `python -m torch.distributed.run --standalone
--nproc_per_node=N -m dist_geo.train.cli --config <yaml> --result <json>` (torchrun picks a
free port) and returns rank 0's result dict. The same command line, with `--nnodes`,
`--node_rank` and `--rdzv_endpoint`, is the multi-node launch (see launch/README.md).

This module and dist_geo/distributed.py are the only ones reading the launcher's environment.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist

from dist_geo.config import Config, save_config
from dist_geo.distributed import choose_device
from dist_geo.errors import DistGeoError


def elastic_restart_count() -> int:
    """How many times torchrun's elastic agent restarted this worker group (0 on a first start)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))


def join_elastic_group(device: str, timeout_s: int = 1800) -> None:
    """Under torchrun, join the process group through keys private to this restart.

    torchrun's agent keeps one store for the whole job; after a restart (`--max-restarts`)
    a plain `env://` init can read the previous attempt's gloo addresses from it and fail
    with "Gloo connectFullMesh failed ... Connection refused" (measured with torch 2.14.1,
    both --standalone and c10d rendezvous). Prefixing the keys with the restart count avoids
    it. `init_distributed` then reuses this group. A no-op outside torchrun or for one rank.
    """
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if (world_size == 1 or dist.is_initialized()
            or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"):
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if choose_device(device, local_rank).type == "cuda" else "gloo"
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          world_size, is_master=False, timeout=timeout)
    dist.init_process_group(
        backend, store=dist.PrefixStore(f"restart_{elastic_restart_count()}", store),
        rank=rank, world_size=world_size, timeout=timeout,
    )


def start_local(
    cfg: Config, nproc: int, threads_per_process: int | None = None,
    epoch_log: Path | None = None,
) -> subprocess.Popen:
    """Start `nproc` training processes on this machine under torchrun; do not wait.

    The config is saved to `<train.out>/launch_config.yaml`, rank 0's result goes to
    `<train.out>/result.json`, and with `epoch_log` rank 0 appends one JSON line per finished
    epoch to that file (what a Ray Tune trial follows). `threads_per_process` sets
    OMP_NUM_THREADS for the workers (default: torchrun's choice, 1 when nproc > 1).
    """
    out = Path(cfg.train.out)
    out.mkdir(parents=True, exist_ok=True)
    config_path, result_path = out / "launch_config.yaml", out / "result.json"
    save_config(cfg, config_path)
    result_path.unlink(missing_ok=True)
    env = dict(os.environ)
    if threads_per_process:
        env["OMP_NUM_THREADS"] = str(threads_per_process)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", "-m", "dist_geo.train.cli",
        "--config", str(config_path), "--result", str(result_path),
    ]
    if epoch_log is not None:
        command += ["--epoch-log", str(epoch_log)]
    return subprocess.Popen(command, env=env)


def finished_result(cfg: Config, process: subprocess.Popen, nproc: int) -> dict[str, Any]:
    """Rank 0's result of a finished `start_local` job; DistGeoError if the job failed."""
    result_path = Path(cfg.train.out) / "result.json"
    if process.returncode != 0 or not result_path.exists():
        raise DistGeoError(f"{cfg.train.out}: training with {nproc} processes failed "
                           f"(exit code {process.returncode})")
    return json.loads(result_path.read_text())


def launch_local(
    cfg: Config, nproc: int = 1, threads_per_process: int | None = None
) -> dict[str, Any]:
    """Train `cfg` with `nproc` processes on this machine (gloo on CPU, one GPU each with GPUs).

    Blocks until training ends; the processes' output goes to this process's stdout/stderr.
    Returns the dict `train` returned on rank 0; raises DistGeoError if the job failed.
    """
    process = start_local(cfg, nproc, threads_per_process)
    process.wait()
    return finished_result(cfg, process, nproc)
