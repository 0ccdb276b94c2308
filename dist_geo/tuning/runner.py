"""Run a sweep with Ray Tune: shards once, Ray, the Tuner (or its restore), then the report.

    <out>/ray/          Tune's experiment folder (state, per-trial results, checkpoints)
    <out>/trials/<id>/  each trial's training folder (`train.out`)
    <out>/mlflow.db     the sweep's MLflow store (unless `tracking.uri` is set), artifacts beside

A sweep interrupted (Ctrl-C, a lost driver) resumes with `resume=True`: `Tuner.restore`
keeps the finished trials as they are and restarts the unfinished ones from their last
reported checkpoint (see trainable.py).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import ray
import ray._private.ray_constants as ray_constants
from ray import tune
from ray._raylet import AuthenticationMode, get_authentication_mode
from ray._raylet import Config as RayConfig
from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

from dist_geo.atomic import atomic_path
from dist_geo.config import ConfigError
from dist_geo.errors import DataError, DistGeoError
from dist_geo.shards.manifest import MANIFEST, shards_dir
from dist_geo.shards.writer import write_shards
from dist_geo.tuning import report
from dist_geo.tuning.sweep import Sweep, config_from_flat
from dist_geo.tuning.trainable import TrialSpec, run_trial

log = logging.getLogger(__name__)
EXPERIMENT = "ray"
LOOPBACK = "127.0.0.1"
PATH_KEYS = ("data.dataset", "data.shards", "model.weights", "train.deepspeed_config")


@dataclass(frozen=True)
class SweepResult:
    table: pd.DataFrame  # ranked, best first (also `<out>/results.csv`)
    complete: bool  # False: interrupted, resume it with `resume=True`


def run_sweep(
    sweep: Sweep, address: str | None = None, resume: bool = False, callbacks: Sequence = ()
) -> SweepResult:
    """Run (or resume) `sweep`; the report is written to its `out` even when interrupted."""
    # Every epoch checkpoints, so Tune's state is snapshotted often: expected, not a warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    out = sweep.out.resolve()
    experiment = out / EXPERIMENT
    _check_runnable(sweep, experiment, resume)
    scheduler, search = build_scheduler(sweep), build_search(sweep)  # their errors first
    sweep.base.update(absolute_paths(sweep.base))
    ensure_shards(sweep)
    out.mkdir(parents=True, exist_ok=True)
    parent = report.open_parent_run(sweep, out)
    init_ray(address)
    spec = TrialSpec(sweep, out, parent.tracking_uri, parent.experiment_id, parent.run_id)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=spec),
        {key: float(value) for key, value in sweep.resources.items()},
    )
    if resume:
        tuner = tune.Tuner.restore(
            str(experiment), trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=sweep.param_space(),
            tune_config=tune.TuneConfig(
                metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
                scheduler=scheduler, search_alg=search,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT, storage_path=str(out), callbacks=list(callbacks),
                checkpoint_config=checkpoint_config(sweep),
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
    results = tuner.fit()
    complete = results.num_terminated + results.num_errors == sweep.num_trials()
    if not complete:
        log.warning("sweep interrupted: resume it with `dist-geo tune %s --resume`", sweep.path)
    return SweepResult(report.finish(sweep, results, parent, out, complete), complete)


def checkpoint_config(sweep: Sweep):
    """Each trial's best checkpoint (Tune always keeps the latest too, for resume). PBT keeps
    them all: a trial clones another's checkpoint some results after it was made, and Tune
    deletes a checkpoint PBT saved twice (measured with ray 2.60: FileNotFoundError).
    """
    if sweep.scheduler["name"] == "pbt":
        return tune.CheckpointConfig()
    return tune.CheckpointConfig(
        num_to_keep=1, checkpoint_score_attribute=sweep.metric, checkpoint_score_order=sweep.mode
    )


def _trial_dirname(trial) -> str:
    return trial.trial_id  # Tune's default spells out every param: too long for some filesystems


def _check_runnable(sweep: Sweep, experiment: Path, resume: bool) -> None:
    if resume and not tune.Tuner.can_restore(str(experiment)):
        raise ConfigError(f"{sweep.path}: nothing to resume in {experiment}")
    if not resume and experiment.exists():
        raise ConfigError(
            f"{sweep.path}: {experiment} holds an earlier run of this sweep: pass --resume, "
            "or set another out"
        )


def absolute_paths(flat: dict) -> dict:
    """The config's relative paths made absolute: Tune runs each trial in its own folder."""
    return {key: str(Path(flat[key]).resolve()) for key in PATH_KEYS if flat[key]}


def ensure_shards(sweep: Sweep) -> Path:
    """Write the base config's shards once, before any trial, unless they are complete."""
    data_cfg = config_from_flat(sweep.base).data
    if not Path(data_cfg.dataset).is_dir():
        raise DataError(
            f"{sweep.path}: dataset folder {data_cfg.dataset} not found (`dist-geo demo` writes "
            "the synthetic world to runs/demo/world; or pass data.dataset=...)"
        )
    folder = shards_dir(data_cfg)
    if not (folder / MANIFEST).exists():
        log.info("writing the shards of %s into %s", data_cfg.dataset, folder)
        write_shards(data_cfg.dataset, folder, data_cfg)
    return folder


def init_ray(address: str | None) -> None:
    """Join `address` (a cluster, on its own terms), or start a local Ray on this machine's
    CPUs that no one else can reach: listening on 127.0.0.1 only, with Ray's token
    authentication, and no dashboard; Ray's own start-up lines at WARNING, as every
    library's (dist_geo/logs.py).

    Ray >= 2.52 authenticates every call with a token when `RAY_AUTH_MODE=token` (it writes
    one to ~/.ray/auth_token for a local cluster). Ray binds its servers (GCS, raylet, object
    manager, workers) to the node's address, which for a cluster node is its network address
    and, in Ray's single-machine mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, its default on
    macOS and Windows), the loopback one. Ray reads both settings once, when it is imported
    (ray 2.60): they are set in the environment, for the processes Ray starts, and refreshed
    in this already imported one.
    """
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    RayConfig.initialize("")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address=LOOPBACK,
             logging_level=logging.WARNING)
    node = ray.util.get_node_ip_address()
    if node != LOOPBACK or get_authentication_mode() != AuthenticationMode.TOKEN:
        ray.shutdown()
        raise DistGeoError(f"this Ray ({ray.__version__}) would not keep a local cluster on "
                           f"{LOOPBACK} with token authentication (it chose {node}); pass "
                           "--address of a cluster you secured instead")


class ResumableASHA(ASHAScheduler):
    """ASHA whose rungs survive `Tuner.restore`.

    Tune (ray 2.60) restores the search algorithm's state but not the scheduler's: a resumed
    sweep would judge its remaining trials only against each other. This one writes its state
    after every decision and reads it back when the restored sweep adds its first trial.
    """

    def __init__(self, state_file: str, **options):
        super().__init__(**options)
        self._state_file = state_file
        self._loaded = False

    def on_trial_add(self, tune_controller, trial) -> None:
        if not self._loaded and os.path.exists(self._state_file):
            self.restore(self._state_file)
        self._loaded = True
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        self._write()
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        self._write()

    def _write(self) -> None:
        with atomic_path(self._state_file) as tmp:
            self.save(str(tmp))


def build_scheduler(sweep: Sweep):
    options = {k: v for k, v in sweep.scheduler.items() if k != "name"}
    name = sweep.scheduler["name"]
    try:
        if name == "asha":
            options.setdefault("max_t", _max_epochs(sweep))
            state = sweep.out.resolve() / EXPERIMENT / "asha_state.pkl"
            return ResumableASHA(str(state), time_attr="training_iteration", **options)
        if name == "pbt":
            options.setdefault("perturbation_interval", 1)
            mutations = {key: domain.to_mutation() for key, domain in sweep.space.items()}
            return PopulationBasedTraining(
                time_attr="training_iteration", hyperparam_mutations=mutations, **options
            )
    except TypeError as e:
        raise ConfigError(f"{sweep.path}: scheduler {name}: {e}") from None
    return None


def _max_epochs(sweep: Sweep) -> int:
    domain = sweep.space.get("train.epochs_num")
    return int(max(domain.values)) if domain else int(sweep.base["train.epochs_num"])


def build_search(sweep: Sweep):
    seed = sweep.search.get("seed")
    if sweep.search["name"] == "optuna":
        from ray.tune.search.optuna import OptunaSearch  # optuna: only sweeps that search with it

        searcher = OptunaSearch(seed=seed)  # its default sampler is TPE
        limit = sweep.max_concurrent_trials
        return ConcurrencyLimiter(searcher, limit) if limit else searcher
    return BasicVariantGenerator(random_state=seed, max_concurrent=sweep.max_concurrent_trials)
