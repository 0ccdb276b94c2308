"""MLflow tracking: the one module that talks to MLflow, for training runs, evaluations and
sweeps (a parent run per sweep, a nested child run per trial: dist_geo/tuning/).

A training run logs its config, per-step and per-epoch metrics and artifacts, on rank 0 only.
It is named after what it trains (`default_run_name`) and tagged with what a person asks of a
run later: world size, global batch, device, precision, dist-geo version, git commit and the
command line (`run_tags`); its description (the UI's "Description" box) is its results table.

The store is `tracking.uri`: empty means an embedded one in the run's folder
(`<train.out>/mlflow.db`, artifacts in `<train.out>/mlartifacts`); an `http://host:port` URI
logs to a tracking server, which then decides where artifacts go. An embedded store records
its artifacts as `mlflow-artifacts:/<run id>/artifacts` (the scheme of a server that serves
artifacts, `PROXIED_ROOT`) rather than as absolute paths, so the run folder can be moved or
copied anywhere: `ui_command` serves the store with `--artifacts-destination` pointing at the
folder's `mlartifacts`, wherever it now is. MLflow's client cannot write such artifacts without
a server, so `MlflowRun` writes them into that folder itself (`_local_repository`).

MLflow 3's UI opens experiments on its GenAI pages (traces), where training runs do not show.
`run_link` is the UI's address of one run in its machine-learning view: the
`#/experiments/<id>/runs/<run id>` route with `workflowType=machine_learning` (MLflow 3.17's UI
keeps that choice per browser, GenAI by default; the query parameter sets it). Earlier MLflow 3
UIs chose the view from the experiment's `mlflow.experimentKind` tag, which experiments get too.

An explicit `MlflowClient` is used rather than mlflow's global "active run", so a caller that
has its own active run (Ray Tune's MLflow integration, a notebook) is not disturbed.
Metric names cannot contain '@' (MLflow 3 refuses them): recalls are `val_recall_at_1`, ...
A resumed run passes the run id stored in the checkpoint and keeps logging into the same run.
mlflow itself is imported when a run is opened, not with this module: ranks, trials and runs
whose tracking is off never pay its import (about 2 s).
"""
from __future__ import annotations

import math
import resource
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from dist_geo import __version__
from dist_geo.config import Config, flatten, save_config, to_dict
from dist_geo.distributed import DistContext

PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests the run under its parent
RUN_NOTE_TAG = "mlflow.note.content"  # MLflow's own tag: the run's description (markdown)
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own tags: the UI shows the commit
GIT_BRANCH_TAG = "mlflow.source.git.branch"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # earlier MLflow 3 UIs: which view an experiment
MACHINE_LEARNING = "custom_model_development"  # opens in (the runs table, not GenAI traces)
KIND_TAG = "dist_geo.kind"  # training or evaluation
PROXIED_ROOT = "mlflow-artifacts:/"
ARTIFACTS = "mlartifacts"
UI_HOST, UI_PORT = "127.0.0.1", 5000


def embedded_folder(uri: str) -> Path | None:
    """The folder of an embedded (sqlite) store, None for a tracking server."""
    return Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else None


def store_uri(folder: str | Path) -> str:
    """The embedded store of a run folder."""
    return f"sqlite:///{Path(folder).resolve() / 'mlflow.db'}"


def tracking_uri(cfg: Config) -> str:
    return cfg.tracking.uri or store_uri(cfg.train.out)


def ui_command(uri: str) -> str:
    """The command that serves `uri`'s UI at `UI_HOST:UI_PORT` (nothing for a server)."""
    folder = embedded_folder(uri)
    if folder is None:
        return ""
    return (f"mlflow ui --backend-store-uri {uri} --artifacts-destination {folder / ARTIFACTS} "
            f"--host {UI_HOST} --port {UI_PORT}")


def run_link(uri: str, experiment_id: str, run_id: str) -> str:
    """The UI's page of one run: on the tracking server, or on `ui_command`'s."""
    base = uri.rstrip("/") if embedded_folder(uri) is None else f"http://{UI_HOST}:{UI_PORT}"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def browse_hint(uri: str, link: str) -> str:
    """One line telling a person how to look at a run: its link, and the command serving
    the UI when the store is embedded."""
    command = ui_command(uri)
    return f"{command}   # then open {link}" if command else f"open {link}"


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on a GPU, peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient  # lazy: see the module docstring

    return MlflowClient(tracking_uri=uri)


def open_experiment(uri: str, name: str) -> str:
    """The id of experiment `name` in the store at `uri`, created if new (artifacts as the
    module docstring says), marked as a machine-learning experiment."""
    client = _client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = PROXIED_ROOT if embedded_folder(uri) else None
        return client.create_experiment(name, artifact_location=location,
                                        tags={EXPERIMENT_KIND_TAG: MACHINE_LEARNING})
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MACHINE_LEARNING)
    return experiment.experiment_id


def source_tags() -> dict[str, str]:
    """MLflow's own context tags (user, source), the command line, the dist-geo version, and
    the git commit of dist-geo's checkout when it is one (not of whatever script started us)."""
    from mlflow.tracking.context.registry import resolve_tags  # lazy: see the module docstring
    from mlflow.utils.git_utils import get_git_branch, get_git_commit

    tags = {k: v for k, v in resolve_tags().items() if not k.startswith("mlflow.source.git")}
    package = str(Path(__file__).parent)
    git = {GIT_COMMIT_TAG: get_git_commit(package), GIT_BRANCH_TAG: get_git_branch(package)}
    return {**tags, **{k: v for k, v in git.items() if v},
            "dist_geo.version": __version__,
            "dist_geo.command": shlex.join([Path(sys.orig_argv[0]).name, *sys.orig_argv[1:]])}


def run_tags(cfg: Config, ctx: DistContext) -> dict[str, str]:
    """What identifies a training run besides its config (which is logged as params)."""
    device = ctx.device.type
    if device == "cuda":
        device = f"cuda ({torch.cuda.get_device_name(ctx.device)})"
    return {**source_tags(), KIND_TAG: "training", "dist_geo.world_size": str(ctx.world_size),
            "dist_geo.global_batch": str(cfg.train.batch_size), "dist_geo.device": device,
            "dist_geo.precision": cfg.train.precision}


def default_run_name(cfg: Config, ctx: DistContext, when: datetime | None = None) -> str:
    """e.g. "resnet18 cosface, 4 groups, 4x175 steps, 2 x cpu, 2026-11-22 13:28"."""
    when = when or datetime.now()
    return (f"{cfg.model.backbone} {cfg.loss.name}, {cfg.data.groups_num} groups, "
            f"{cfg.train.epochs_num}x{cfg.train.iterations_per_epoch} steps, "
            f"{ctx.world_size} x {ctx.device.type}, {when:%Y-%m-%d %H:%M}")


class MlflowRun:
    """One MLflow run, driven through an explicit client (never mlflow's global active run)."""

    def __init__(self, uri: str, run_id: str, tags: dict[str, str] | None = None):
        self.uri = uri
        self.client = _client(uri)
        self.run_id = run_id
        self.tags = dict(tags or {})
        self._repository: Any = None

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

    @property
    def experiment_id(self) -> str:
        return self.client.get_run(self.run_id).info.experiment_id

    @property
    def link(self) -> str:
        return run_link(self.uri, self.experiment_id, self.run_id)

    @property
    def browse_hint(self) -> str:
        return browse_hint(self.uri, self.link)

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

    def _local_repository(self) -> Any:
        """The run's artifact folder of an embedded store (module docstring), None where
        MLflow's client resolves the artifact root itself."""
        if self._repository is None:
            root = self.client.get_run(self.run_id).info.artifact_uri
            folder = embedded_folder(self.uri)
            self._repository = False
            if folder is not None and root.startswith(PROXIED_ROOT):
                from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

                self._repository = LocalArtifactRepository(
                    str(folder / ARTIFACTS / urlparse(root).path.lstrip("/")))
        return self._repository or None

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file or a whole folder (e.g. the best checkpoint)."""
        path = Path(path)
        repository = self._local_repository()
        if repository is not None:
            log = repository.log_artifacts if path.is_dir() else repository.log_artifact
            log(str(path), artifact_path)
        elif path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def list_artifacts(self, path: str | None = None) -> list[str]:
        """The artifact paths under `path` (one level, as the UI's tree shows them)."""
        repository = self._local_repository()
        files = (repository.list_artifacts(path) if repository is not None
                 else self.client.list_artifacts(self.run_id, path))
        return [f.path for f in files]

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)
        self.tags[key] = value

    def delete_tag(self, key: str) -> None:
        self.client.delete_tag(self.run_id, key)
        self.tags.pop(key, None)

    def set_description(self, markdown: str) -> None:
        """The run's description in the UI (markdown: a results table reads as a table)."""
        self.set_tag(RUN_NOTE_TAG, markdown)

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, key)]

    def finish(self, status: str = "FINISHED") -> None:
        """End the run as FINISHED, FAILED or KILLED."""
        self.client.set_terminated(self.run_id, status=status)


def open_evaluation_run(uri: str, experiment: str, name: str, tags: dict[str, str],
                        parent_run_id: str = "") -> MlflowRun:
    """A new run for one evaluation: a child of the training run `parent_run_id` (in its
    experiment) when the store holds it, else a run of `experiment`. The training run itself
    is only read, never reopened: its metrics, status and end time stay as training left them."""
    from mlflow.exceptions import MlflowException  # lazy: see the module docstring

    tags = {**source_tags(), KIND_TAG: "evaluation", **tags}
    if parent_run_id:
        try:
            experiment_id = MlflowRun(uri, parent_run_id).experiment_id
        except MlflowException:  # not in this store
            parent_run_id = ""
    if not parent_run_id:
        experiment_id = open_experiment(uri, experiment)
    return MlflowRun.start(uri, experiment_id, name, tags, parent_run_id)


class Tracker:
    """Logs a training run to one MLflow run on rank 0; every method is a no-op elsewhere or
    when tracking is disabled."""

    def __init__(self, cfg: Config, ctx: DistContext, run_id: str = ""):
        self.active = cfg.tracking.enabled and ctx.is_main
        self.run_id = run_id
        self.run: MlflowRun | None = None
        if not self.active:
            return
        uri = tracking_uri(cfg)
        if embedded_folder(uri):
            Path(cfg.train.out).mkdir(parents=True, exist_ok=True)
        if run_id:
            self.run = MlflowRun(uri, run_id)
            self.run.resume()
            return
        experiment_id = open_experiment(uri, cfg.tracking.experiment)
        self.run = MlflowRun.start(uri, experiment_id,
                                   run_name=cfg.tracking.run_name or default_run_name(cfg, ctx),
                                   tags=run_tags(cfg, ctx))
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

    def set_description(self, markdown: str) -> None:
        if self.run:
            self.run.set_description(markdown)

    def history(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of metric `key` over the whole run, epochs before a resume included."""
        return sorted(self.run.metric_history(key)) if self.run else []

    def finish(self, status: str = "FINISHED") -> None:
        if self.run:
            self.run.finish(status)


__all__ = ["KIND_TAG", "MlflowRun", "browse_hint", "PARENT_RUN_TAG", "Tracker", "default_run_name",
           "embedded_folder", "open_evaluation_run", "open_experiment", "peak_memory_mb",
           "run_link", "run_tags", "source_tags", "store_uri", "tracking_uri", "ui_command"]
