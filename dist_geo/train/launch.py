"""Launching training processes from Python: N local ranks under torchrun, waited for or followed.

`launch_local(cfg, nproc)` is what the demo and notebooks use to train with N processes on
this machine: it saves the config, runs `python -m torch.distributed.run --standalone
--nproc_per_node=N -m dist_geo.train.cli --config <yaml> --result <json>` (torchrun picks a
free port) and returns rank 0's result dict. The same command line, with `--nnodes`,
`--node_rank` and `--rdzv_endpoint`, is the multi-node launch (see launch/README.md).
`plan_local` decides how many processes on which device, from what the machine has.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dist_geo.config import Config, ConfigError, save_config
from dist_geo.errors import DistGeoError
from dist_geo.train.checkpoint import check_run_folder

CPU_PROCESSES = 2  # gloo ranks on a machine without GPUs: the data-parallel path, exercised


@dataclass(frozen=True)
class LocalPlan:
    """A local job: `nproc` ranks on `device`, each with `per_rank_batch` of the global batch."""

    nproc: int
    device: str
    per_rank_batch: int


def plan_local(cfg: Config, requested: int | None, gpus: int) -> LocalPlan:
    """One rank per GPU where there are GPUs (`requested` of them if given, never more),
    CPU_PROCESSES gloo ranks (or `requested`) where there are none or `train.device=cpu`.
    The global batch is the config's whatever the count, so the job trains the same model on
    any machine (the ranks split it: `per_rank_batch`, a ConfigError if it does not divide)."""
    device = cfg.train.device
    if device == "cuda" and not gpus:
        raise ConfigError("train.device=cuda but no CUDA device is visible")
    if device == "cpu" or not gpus:
        nproc = requested or CPU_PROCESSES
        return LocalPlan(nproc, "cpu", cfg.train.per_rank_batch(nproc))
    nproc = requested or gpus
    if nproc > gpus:
        raise ConfigError(f"{nproc} processes asked for but {gpus} GPU(s) visible: one process "
                          f"per GPU (or train.device=cpu for CPU processes)")
    return LocalPlan(nproc, "cuda", cfg.train.per_rank_batch(nproc))


def start_local(
    cfg: Config, nproc: int, threads_per_process: int | None = None,
    epoch_log: Path | None = None,
) -> subprocess.Popen:
    """Start `nproc` training processes on this machine under torchrun; do not wait.

    The config is saved to `<train.out>/launch_config.yaml`, rank 0's result goes to
    `<train.out>/result.json`, and with `epoch_log` rank 0 appends one JSON line per finished
    epoch to that file (what a Ray Tune trial follows). `threads_per_process` sets
    OMP_NUM_THREADS for the workers (default: torchrun's choice, 1 when nproc > 1). A
    `train.out` holding an earlier run is refused here already (CheckpointError), before any
    rank starts.
    """
    check_run_folder(cfg)
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
