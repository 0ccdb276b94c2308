"""Acceptance: a 4-trial ASHA sweep on the tiny world, interrupted and resumed, in MLflow,
whose best_config.yaml trains as is.

One Ray session (2 CPUs, trials one at a time so that ASHA's decisions do not depend on which
trial finishes first). Half the grid has 1-dimensional descriptors, whose recall is far below
the others' (grid order: cosface/16, arcface/16, cosface/1, arcface/1): ASHA must stop the
third early, and the fourth too after the resume (the rungs survive it). A callback interrupts the sweep (SIGINT, as Ctrl-C) when
three trials have completed; the resumed sweep must run the last one and leave the others'
checkpoints untouched.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")
from mlflow.tracking import MlflowClient  # noqa: E402
from ray import tune  # noqa: E402

from dist_geo.cli import main as dist_geo_main  # noqa: E402
from dist_geo.tracking import MlflowRun  # noqa: E402
from dist_geo.tuning.runner import run_sweep  # noqa: E402
from dist_geo.tuning.sweep import load_sweep  # noqa: E402

EPOCHS = 3


class InterruptAfter(tune.Callback):
    """Ctrl-C once `count` trials have completed (once per test: the marker survives restore)."""

    def __init__(self, count: int, marker: Path):
        self.count, self.marker, self.seen = count, marker, 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.seen += 1
        if self.seen >= self.count and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture
def sweep_file(tiny_world: Path, tmp_path: Path) -> Path:
    sweep = {
        "name": "acceptance",
        "base": {
            "data": {
                "dataset": str(tiny_world), "shards": str(tmp_path / "shards"), "loader": "torch",
                "image_size": 32, "num_workers": 0, "M": 10, "alpha": 30, "N": 5, "L": 2,
                "groups_num": 2, "min_images_per_class": 3, "shard_size": 16,
            },
            "model": {"backbone": "resnet18", "fc_output_dim": 16},
            "train": {"epochs_num": EPOCHS, "iterations_per_epoch": 2, "batch_size": 4,
                      "device": "cpu", "test": False},
            "eval": {"batch_size": 64},
        },
        "space": {
            "model.fc_output_dim": {"grid": [16, 1]},
            "loss": {"grid": [{"loss.name": "cosface", "loss.s": 30, "loss.m": 0.4},
                              {"loss": {"name": "arcface", "s": 64, "m": 0.5}}]},
        },
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        "max_concurrent_trials": 1,
        "out": str(tmp_path / "sweep"),
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_asha_sweep_interrupted_resumed_tracked_and_best_config_trains(
    sweep_file: Path, tmp_path: Path, local_ray
):
    sweep = load_sweep(sweep_file)
    out = sweep.out
    first = run_sweep(sweep, callbacks=[InterruptAfter(3, tmp_path / "interrupted")])
    assert not first.complete
    done = set(first.table["trial_id"])
    assert len(done) >= 3
    manifests = {t: out / "trials" / t / "checkpoints" / "last" / "manifest.json" for t in done}
    stamps = {t: p.stat().st_mtime_ns for t, p in manifests.items()}

    result = run_sweep(load_sweep(sweep_file), resume=True)

    assert result.complete
    table = result.table
    assert len(table) == 4
    assert {t: p.stat().st_mtime_ns for t, p in manifests.items()} == stamps  # not rerun
    # ASHA stopped the 1-d trials at epoch 1: the third before the interruption, the fourth
    # after it, against the rungs the first sweep recorded.
    one_d = table[table["model.fc_output_dim"] == 1]
    assert list(one_d["epochs_run"]) == [1, 1]
    assert table.iloc[0]["model.fc_output_dim"] == 16

    client = MlflowClient(f"sqlite:///{out.resolve() / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("dist-geo").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 4
    assert parents[0].info.status == "FINISHED"
    for child in children:
        history = client.get_metric_history(child.info.run_id, "val_recall_at_1")
        assert len(history) == int(table.set_index("trial_id").loc[
            child.data.tags["tune.trial_id"], "epochs_run"])
        assert child.data.params["loss.name"] in ("cosface", "arcface")
    assert sum(c.data.tags["tune.stopped_early"] == "true" for c in children) >= 1
    artifacts = MlflowRun(f"sqlite:///{out.resolve() / 'mlflow.db'}", parents[0].info.run_id)
    assert {"results.csv", "best_config.yaml", "plots"} <= set(artifacts.list_artifacts())
    assert (out / "plots" / "learning_curves.png").stat().st_size > 0

    best = out / "best_config.yaml"
    assert yaml.safe_load(best.read_text())["loss"]["name"] == table.iloc[0]["loss.name"]
    retrain = tmp_path / "retrain"
    assert dist_geo_main([
        "train", "--config", str(best), "train.epochs_num=1", f"train.out={retrain}",
        "tracking.enabled=false",
    ]) == 0
    assert (retrain / "checkpoints" / "best" / "model.pt").exists()


class OpenPorts(tune.Callback):
    """What the sweep's processes (this driver and all it started: Ray's servers and workers,
    a trial's training ranks) listen on, sampled at each trial result, while the trial runs."""

    def __init__(self, open_ports):
        self.open_ports, self.seen = open_ports, set()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.seen |= self.open_ports([os.getpid()])


def test_data_parallel_trial_reports_every_epoch_on_a_local_ray_no_one_else_reaches(
        sweep_file: Path, open_ports, loopback):
    """workers_per_trial=2: the trial trains with 2 gloo ranks and reports each epoch (metrics
    + that epoch's checkpoint) to Tune and MLflow as rank 0 finishes it. The Ray it starts
    itself, and the trial's ranks, listen on the loopback interface only, Ray with its token
    authentication on."""
    from ray._raylet import AuthenticationMode, get_authentication_mode

    raw = yaml.safe_load(sweep_file.read_text())
    raw["space"] = {"loss.m": {"grid": [0.3]}}
    raw |= {"workers_per_trial": 2, "resources": {"cpu": 2}, "scheduler": "fifo"}
    raw["base"]["train"]["epochs_num"] = 2
    sweep_file.write_text(yaml.safe_dump(raw))

    sweep = load_sweep(sweep_file)
    ports = OpenPorts(open_ports)
    try:
        result = run_sweep(sweep, callbacks=[ports])  # starts Ray (dist_geo's init_ray)
        assert get_authentication_mode() == AuthenticationMode.TOKEN
    finally:
        ray.shutdown()
    names = {name for name, _, _ in ports.seen}
    assert {"gcs_server", "raylet"} <= names and len(ports.seen) >= 6, ports.seen
    assert all(loopback(ip) for _, ip, _ in ports.seen), ports.seen

    assert result.complete and list(result.table["epochs_run"]) == [2]
    trial = sweep.out / "trials" / result.table.iloc[0]["trial_id"]
    for epoch in (0, 1):
        manifest = json.loads((trial / "checkpoints" / f"epoch_{epoch:03d}" / "manifest.json")
                              .read_text())
        assert manifest["world_size"] == 2 and manifest["position"]["epoch"] == epoch + 1
    reported = [json.loads(line)["epoch"] for line in (trial / "epochs.jsonl").read_text().splitlines()]
    assert reported == [0, 1]
