"""Launching training processes from Python: N local ranks, waited for or followed.

`launch_local(cfg, nproc)` is what the demo and notebooks use to train with N processes on
this machine: it saves the config, starts N ranks of `python -m dist_geo.train.cli --config
<yaml> --result <json>` meeting at a store on 127.0.0.1 (local_ranks.py: torchrun's own store
would listen on every interface) and returns rank 0's result dict. Several machines are
torchrun's (`--nnodes`, `--node_rank`, `--rdzv_endpoint`, see launch/README.md).
`plan_local` decides how many processes on which device, from what the machine has.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dist_geo.config import Config, ConfigError, save_config
from dist_geo.errors import DistGeoError
from dist_geo.signals import StopSignals
from dist_geo.train.checkpoint import check_run_folder
from dist_geo.train.local_ranks import POLL_S, LocalRanks

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
) -> LocalRanks:
    """Start `nproc` training processes on this machine; do not wait.

    The config is saved to `<train.out>/launch_config.yaml`, rank 0's result goes to
    `<train.out>/result.json`, and with `epoch_log` rank 0 appends one JSON line per finished
    epoch to that file (what a Ray Tune trial follows). `threads_per_process` sets
    OMP_NUM_THREADS for the workers (default: 1 when nproc > 1, as torchrun's). A `train.out`
    holding an earlier run is refused here already (CheckpointError), before any rank starts.
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
    command = [sys.executable, "-m", "dist_geo.train.cli",
               "--config", str(config_path), "--result", str(result_path)]
    if epoch_log is not None:
        command += ["--epoch-log", str(epoch_log)]
    return LocalRanks(command, nproc, env)


def finished_result(cfg: Config, process: LocalRanks, nproc: int) -> dict[str, Any]:
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
    A SIGTERM or SIGINT to this process is passed on to the ranks, which save and stop.
    Returns the dict `train` returned on rank 0; raises DistGeoError if the job failed.
    """
    ranks = start_local(cfg, nproc, threads_per_process)
    with StopSignals() as stop:
        relayed = False
        while ranks.poll() is None:
            if stop.requested and not relayed:
                ranks.terminate()
                relayed = True
            time.sleep(POLL_S)
    return finished_result(cfg, ranks, nproc)
