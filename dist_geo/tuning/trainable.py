"""One Ray Tune trial = one real dist-geo training, in-process or data-parallel.

The trial trains into `<sweep out>/trials/<trial id>` with `dist_geo.train.train`: in the
trial's own process (`workers_per_trial: 1`), or as `workers_per_trial` data-parallel ranks
started by our launcher (subprocesses on this machine, `dist_geo.train.launch.start_local`),
whose rank 0 appends every finished epoch to `epochs.jsonl` for the trial to follow. At every epoch
end it reports the epoch's metrics and the epoch's checkpoint folder to Tune, which is what
ASHA reads to stop weak trials and what PBT copies to clone strong ones. A data-parallel trial
that Tune stops takes its ranks down with it. A trial that Tune hands a checkpoint (PBT exploit, or a restored
sweep) copies it into its own `checkpoints/last` and trains on with `train.resume=true`.

Each trial is also a nested MLflow child run of the sweep's parent run: its swept params, its
full config and per-epoch metrics, logged as they come. The training's own MLflow tracking is
switched off inside trials so that the sweep's store holds exactly one run per trial, found
again by its `tune.trial_id` tag when the trial resumes. The driver closes the child runs when
the sweep ends (report.close_child_runs): a trial that Tune stops (ASHA, PBT, the last
epoch) exits at its report and cannot be relied upon to run anything after it.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from dist_geo.config import Config, save_config
from dist_geo.distributed import single_process
from dist_geo.tracking import MlflowRun
from dist_geo.train.launch import finished_result, start_local
from dist_geo.train.trainer import EpochHook, train
from dist_geo.tuning.sweep import Sweep

TRIAL_TAG = "tune.trial_id"
STOPPED_EARLY_TAG = "tune.stopped_early"


@dataclass(frozen=True)
class TrialSpec:
    """What every trial needs from the driver (pickled to the Ray workers)."""

    sweep: Sweep
    out: Path  # the sweep's output folder, absolute
    tracking_uri: str
    experiment_id: str
    parent_run_id: str


def trial_dir(out: Path, trial_id: str) -> Path:
    return out / "trials" / trial_id


def run_trial(params: dict[str, Any], spec: TrialSpec) -> None:
    """The Tune function trainable (bound to `spec` with `tune.with_parameters`)."""
    context = tune.get_context()
    out = trial_dir(spec.out, context.get_trial_id())
    resume = _restore_checkpoint(out)
    # The trial's folder is Tune's: a trial restarted without a checkpoint starts over.
    cfg = spec.sweep.trial_config(params, {
        "train.out": str(out), "train.resume": resume, "train.overwrite": True,
        "tracking.enabled": False})
    child = open_child_run(spec, context.get_trial_id(), context.get_trial_name(), params, cfg)

    def on_epoch_end(epoch: int, metrics: dict, checkpoint_dir: Path) -> None:
        scalars = {**_scalars(metrics), "epoch": epoch}
        child.log_metrics(scalars, step=epoch)
        tune.report(scalars, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

    if spec.sweep.workers_per_trial == 1:
        train(cfg, single_process(cfg.train.device), on_epoch_end=on_epoch_end)
    else:
        train_data_parallel(cfg, spec.sweep.workers_per_trial, on_epoch_end)


def train_data_parallel(cfg: Config, workers: int, on_epoch_end: EpochHook) -> None:
    """`workers` local ranks (start_local); their epochs are handed to `on_epoch_end` as rank 0
    writes them. Each epoch keeps its own checkpoint folder (`epoch_NNN`): `last` moves on while
    Tune copies the reported one."""
    cfg.train.keep_epoch_checkpoints = True
    epochs = Path(cfg.train.out) / "epochs.jsonl"
    epochs.unlink(missing_ok=True)
    process = start_local(cfg, workers, epoch_log=epochs)
    reported = 0
    try:
        while True:
            finished = process.poll() is not None
            lines = epochs.read_text().split("\n")[:-1] if epochs.exists() else []  # whole lines
            for line in lines[reported:]:
                entry = json.loads(line)
                on_epoch_end(entry["epoch"], entry["metrics"], Path(entry["checkpoint"]))
            reported = len(lines)
            if finished:
                break
            time.sleep(1.0)
    finally:  # Tune stopping the trial (ASHA, PBT) ends here too
        if process.poll() is None:
            process.terminate()
            process.wait()
    finished_result(cfg, process, workers)


def _restore_checkpoint(out: Path) -> bool:
    """Copy the checkpoint Tune hands this trial (if any) to where `train.resume` looks."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return False
    last = out / "checkpoints" / "last"
    with tempfile.TemporaryDirectory(dir=out.parent) as staging:
        checkpoint.to_directory(staging)
        if last.exists():
            shutil.rmtree(last)
        last.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staging, last)
    return True


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics dict (Tune and MLflow take nothing else)."""
    return {
        key: float(value) for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def find_child_run(tracking_uri: str, experiment_id: str, parent_run_id: str,
                   trial_id: str) -> MlflowRun | None:
    return MlflowRun.find(tracking_uri, experiment_id, {TRIAL_TAG: trial_id}, parent_run_id)


def open_child_run(spec: TrialSpec, trial_id: str, trial_name: str, params: dict[str, Any],
                   cfg: Config) -> MlflowRun:
    """The trial's nested run: found again when the trial resumes, else created with the
    swept params and the trial's whole config."""
    run = find_child_run(spec.tracking_uri, spec.experiment_id, spec.parent_run_id, trial_id)
    if run:
        run.resume()
        if STOPPED_EARLY_TAG in run.tags:  # closed once, now resumed
            run.delete_tag(STOPPED_EARLY_TAG)
        return run
    run = MlflowRun.start(spec.tracking_uri, spec.experiment_id, run_name=trial_name,
                          tags={TRIAL_TAG: trial_id, "tune.sweep": spec.sweep.name},
                          parent_run_id=spec.parent_run_id)
    run.log_params(spec.sweep.trial_overrides(params))
    with tempfile.TemporaryDirectory() as tmp:
        save_config(cfg, Path(tmp) / "config.yaml")
        run.log_artifacts(Path(tmp) / "config.yaml")
    return run
