"""MLflow tracking of a run: config, per-step and per-epoch metrics, artifacts. Rank 0 only.

The store is `tracking.uri`: empty means an embedded one in the run's folder
(`sqlite:///<train.out>/mlflow.db`, artifacts in `<train.out>/mlartifacts`, browse it with
`mlflow ui --backend-store-uri sqlite:///<train.out>/mlflow.db`); an `http://host:port` URI
logs to a tracking server, which then decides where artifacts go. An explicit `MlflowClient`
is used rather than mlflow's global "active run", so a caller that has its own active run
(Ray Tune's MLflow integration, a notebook) is not disturbed.

Metric names cannot contain '@' (MLflow 3 refuses them): recalls are `val_recall_at_1`, ...
A resumed run passes the run id stored in the checkpoint and keeps logging into the same run.
"""
from __future__ import annotations

import math
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from dist_geo.config import Config, flatten, save_config, to_dict
from dist_geo.distributed import DistContext


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


class Tracker:
    """Logs to one MLflow run on rank 0; every method is a no-op elsewhere or when disabled."""

    def __init__(self, cfg: Config, ctx: DistContext, run_id: str = ""):
        self.active = cfg.tracking.enabled and ctx.is_main
        self.run_id = run_id
        self.client: Any = None
        if not self.active:
            return
        from mlflow.tracking import MlflowClient

        uri = tracking_uri(cfg)
        if uri.startswith("sqlite:///"):
            Path(cfg.train.out).mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=uri)
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name(cfg.tracking.experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            artifacts = None
            if uri.startswith("sqlite:///"):
                artifacts = (Path(cfg.train.out).resolve() / "mlartifacts").as_uri()
            experiment_id = self.client.create_experiment(
                cfg.tracking.experiment, artifact_location=artifacts
            )
        run = self.client.create_run(experiment_id, run_name=cfg.tracking.run_name or None)
        self.run_id = run.info.run_id
        self.log_config(cfg)

    def log_config(self, cfg: Config) -> None:
        """Every config key as a flat param (`loss.s`, ...), and the YAML as an artifact."""
        if not self.active:
            return
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in flatten(to_dict(cfg)).items()]
        for i in range(0, len(params), 100):  # the REST API takes at most 100 params a call
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        path = Path(cfg.train.out) / "config.yaml"
        save_config(cfg, path)
        self.client.log_artifact(self.run_id, str(path))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.active:
            return
        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file or a whole folder (e.g. the best checkpoint)."""
        if not self.active:
            return
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        if not self.active:
            return []
        return [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, key)]

    def log_loss_plot(self, out_dir: str | Path) -> None:
        """The whole run's loss curve (including epochs before a resume) as a PNG artifact."""
        history = self.metric_history("loss")
        if not history:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

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
        if self.active:
            self.client.set_terminated(self.run_id, status=status)
