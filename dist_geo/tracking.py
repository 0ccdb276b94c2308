"""MLflow tracking: the one module that talks to MLflow, for training runs, evaluations and
sweeps (a parent run per sweep, a nested child run per trial: dist_geo/tuning/).

A training run logs its config, per-step and per-epoch metrics and artifacts, on rank 0 only.

The store is `tracking.uri`: empty means an embedded one in the run's folder
(`sqlite:///<train.out>/mlflow.db`, artifacts in `<train.out>/mlartifacts`, browse it with
`mlflow ui --backend-store-uri sqlite:///<train.out>/mlflow.db`); an `http://host:port` URI
logs to a tracking server, which then decides where artifacts go. An explicit `MlflowClient`
is used rather than mlflow's global "active run", so a caller that has its own active run
(Ray Tune's MLflow integration, a notebook) is not disturbed.

Metric names cannot contain '@' (MLflow 3 refuses them): recalls are `val_recall_at_1`, ...
A resumed run passes the run id stored in the checkpoint and keeps logging into the same run.
mlflow itself is imported when a run is opened, not with this module: ranks, trials and runs
whose tracking is off never pay its import (about 2 s).
"""
from __future__ import annotations

import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib
import torch

from dist_geo.config import Config, flatten, save_config, to_dict
from dist_geo.distributed import DistContext

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def tracking_uri(cfg: Config) -> str:
    if cfg.tracking.uri:
        return cfg.tracking.uri
    return f"sqlite:///{Path(cfg.train.out).resolve() / 'mlflow.db'}"


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on a GPU, peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests the run under its parent


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient  # lazy: see the module docstring

    return MlflowClient(tracking_uri=uri)


def open_experiment(uri: str, name: str, artifact_location: Path | None = None) -> str:
    """The id of experiment `name` in the store at `uri`; created if new, its artifacts in
    `artifact_location` (default: the store's choice)."""
    client = _client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = artifact_location.as_uri() if artifact_location else None
    return client.create_experiment(name, artifact_location=location)


class MlflowRun:
    """One MLflow run, driven through an explicit client (never mlflow's global active run)."""

    def __init__(self, uri: str, run_id: str, tags: dict[str, str] | None = None):
        self.client = _client(uri)
        self.run_id = run_id
        self.tags = dict(tags or {})

    @classmethod
    def start(cls, uri: str, experiment_id: str, run_name: str = "",
              tags: dict[str, str] | None = None, parent_run_id: str = "") -> MlflowRun:
        """A new run; nested under `parent_run_id` in the UI when given."""
        tags = {**(tags or {}), **({PARENT_RUN_TAG: parent_run_id} if parent_run_id else {})}
        run = cls(uri, "", tags)
        run.run_id = run.client.create_run(experiment_id, run_name=run_name or None,
                                           tags=tags).info.run_id
        return run

    @classmethod
    def find(cls, uri: str, experiment_id: str, tags: dict[str, str],
             parent_run_id: str = "") -> MlflowRun | None:
        """The run of the experiment carrying all `tags` (and `parent_run_id`), if there is one:
        how a sweep or a trial finds its run again when it resumes."""
        run = cls(uri, "")
        tags = {**tags, **({PARENT_RUN_TAG: parent_run_id} if parent_run_id else {})}
        query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
        found = run.client.search_runs([experiment_id], query)
        if not found:
            return None
        run.run_id, run.tags = found[0].info.run_id, dict(found[0].data.tags)
        return run

    def resume(self) -> None:
        self.client.update_run(self.run_id, status="RUNNING")

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param  # lazy: see the module docstring

        batch = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(batch), 100):  # the REST API takes at most 100 params a call
            self.client.log_batch(self.run_id, params=batch[i:i + 100])

    def log_metrics(self, metrics: dict[str, float | None], step: int) -> None:
        """The finite values of `metrics` at `step` (None and NaN are left out)."""
        from mlflow.entities import Metric  # lazy: see the module docstring

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file or a whole folder (e.g. the best checkpoint)."""
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)
        self.tags[key] = value

    def delete_tag(self, key: str) -> None:
        self.client.delete_tag(self.run_id, key)
        self.tags.pop(key, None)

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, key)]

    def finish(self, status: str = "FINISHED") -> None:
        """End the run as FINISHED, FAILED or KILLED."""
        self.client.set_terminated(self.run_id, status=status)


class Tracker:
    """Logs a training run (or an evaluation) to one MLflow run on rank 0; every method is a
    no-op elsewhere or when tracking is disabled."""

    def __init__(self, cfg: Config, ctx: DistContext, run_id: str = ""):
        self.active = cfg.tracking.enabled and ctx.is_main
        self.run_id = run_id
        self.run: MlflowRun | None = None
        if not self.active:
            return
        uri = tracking_uri(cfg)
        embedded = uri.startswith("sqlite:///")
        if embedded:
            Path(cfg.train.out).mkdir(parents=True, exist_ok=True)
        if run_id:
            self.run = MlflowRun(uri, run_id)
            self.run.resume()
            return
        artifacts = Path(cfg.train.out).resolve() / "mlartifacts" if embedded else None
        experiment_id = open_experiment(uri, cfg.tracking.experiment, artifacts)
        self.run = MlflowRun.start(uri, experiment_id, run_name=cfg.tracking.run_name)
        self.run_id = self.run.run_id
        self.log_config(cfg)

    def log_config(self, cfg: Config) -> None:
        """Every config key as a flat param (`loss.s`, ...), and the YAML as an artifact."""
        if not self.run:
            return
        self.run.log_params(flatten(to_dict(cfg)))
        path = Path(cfg.train.out) / "config.yaml"
        save_config(cfg, path)
        self.run.log_artifacts(path)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.run:
            self.run.log_metrics(metrics, step)

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file or a whole folder (e.g. the best checkpoint)."""
        if self.run:
            self.run.log_artifacts(path, artifact_path)

    def log_loss_plot(self, out_dir: str | Path) -> None:
        """The whole run's loss curve (including epochs before a resume) as a PNG artifact."""
        history = self.run.metric_history("loss") if self.run else []
        if not history:
            return
        steps, values = zip(*sorted(history))
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, values)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        fig.tight_layout()
        path = Path(out_dir) / "loss_curve.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        self.log_artifacts(path, "plots")

    def finish(self, status: str = "FINISHED") -> None:
        if self.run:
            self.run.finish(status)


__all__ = ["MlflowRun", "PARENT_RUN_TAG", "Tracker", "open_experiment", "peak_memory_mb",
           "tracking_uri"]
