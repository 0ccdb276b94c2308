"""`dist-geo demo` end to end on the tiny world, as a person meets it: its log (written to a
file), results.json, the training run in MLflow (name, tags, description, artifacts), the link
it prints opened in a browser after the run folder was moved; then `dist-geo eval` of its best
checkpoint reproduces the test recalls training reported, as a run of its own."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from html import unescape
from pathlib import Path

import pytest

from dist_geo.cli import main
from dist_geo.tracking import MlflowRun, store_uri, ui_command

TINY = [
    "data.M=10", "data.alpha=30", "data.N=2", "data.L=1", "data.groups_num=2",
    "data.min_images_per_class=3", "data.image_size=32", "data.shard_size=200",
    "model.fc_output_dim=16", "train.epochs_num=2", "train.iterations_per_epoch=2",
    "train.batch_size=4", "eval.batch_size=64", "eval.image_size=32",
]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    """The demo's folder and results.json; its whole output is in `<out>/demo.log`, as when a
    person redirects it to a file (no terminal: progress comes as plain lines)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    out.mkdir()
    with (out / "demo.log").open("w") as log:
        subprocess.run([sys.executable, "-m", "dist_geo.cli", "demo", "--out", str(out),
                        "--preset", "tiny", *TINY], stdout=log, stderr=subprocess.STDOUT,
                       check=True)
    return out, json.loads((out / "results.json").read_text())


def test_demo_writes_results(demo):
    out, results = demo
    for model in ("trained", "untrained", "raw_pixels"):
        for split in ("test", "test-night"):
            recalls = results[model][split]
            assert set(recalls) == {"recall_at_1", "recall_at_5", "recall_at_10", "recall_at_20"}
            assert 0 <= recalls["recall_at_1"] <= recalls["recall_at_5"] <= 100
    assert results["nproc"] == 2 and (out / "train" / "checkpoints" / "best").is_dir()


def test_demo_log_is_quiet(demo):
    """No progress-bar redraws, nothing from other libraries that reads as an error, no
    warning twice; the last line is how to open the run."""
    out, results = demo
    text = (out / "demo.log").read_text()
    assert "\r" not in text
    lines = text.splitlines()
    assert not [line for line in lines if re.search(r"Traceback|Error|\bERROR\b", line)]
    warnings = Counter(re.sub(r"^\S+ ", "", line) for line in lines
                       if re.search(r"Warning|\bWARNING\b", line))
    assert not [line for line, count in warnings.items() if count > 1]
    assert lines[-1].endswith(f"{results['mlflow_ui']}   # then open {results['mlflow_run']}")
    epochs = [line for line in lines if "dist_geo.train.trainer: epoch" in line]
    assert [line.split(": epoch ")[1][:8] for line in epochs] == ["0 of 0-1", "1 of 0-1"]


def test_training_run_is_named_tagged_and_holds_the_comparison(demo):
    out, results = demo
    run = MlflowRun(store_uri(out / "train"), results["mlflow_run_id"])
    info = run.client.get_run(run.run_id)
    assert re.fullmatch(r"resnet18 cosface, 2 groups, 2x2 steps, 2 x cpu, \d{4}-\d\d-\d\d \d\d:\d\d",
                        info.info.run_name)
    tags = info.data.tags
    assert {k: tags[k] for k in ("dist_geo.world_size", "dist_geo.global_batch",
                                 "dist_geo.device", "dist_geo.precision", "dist_geo.kind")} == \
        {"dist_geo.world_size": "2", "dist_geo.global_batch": "4", "dist_geo.device": "cpu",
         "dist_geo.precision": "fp32", "dist_geo.kind": "training"}
    assert tags["dist_geo.version"] and "dist_geo.train.cli" in tags["dist_geo.command"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                            capture_output=True, text=True)
    if commit.returncode == 0:
        assert tags["mlflow.source.git.commit"] == commit.stdout.strip()
    description = tags["mlflow.note.content"]
    raw = results["raw_pixels"]["test-night"]["recall_at_1"]
    assert f"| raw_pixels / test-night | {raw:.1f} |" in description

    metrics = info.data.metrics
    assert round(metrics["test_recall_at_1"], 2) == results["trained"]["test"]["recall_at_1"]
    assert not [name for name in metrics if name.startswith(("raw_pixels", "untrained"))]
    assert [value for _, value in run.metric_history("epoch")] == [0, 1]
    assert {"results.json", "config.yaml", "plots", "best_checkpoint", "demo"} <= \
        set(run.list_artifacts())
    assert set(run.list_artifacts("plots")) == {"plots/training_curves.png"}
    assert set(run.list_artifacts("demo")) == {"demo/results.json", "demo/comparison.png"}
    stored = out / "train" / "mlartifacts" / run.run_id / "artifacts"
    assert json.loads((stored / "demo" / "results.json").read_text()) == results
    trained = json.loads((stored / "results.json").read_text())["results"]
    assert trained["test"]["recall_at_1"] == metrics["test_recall_at_1"]
    assert {"test", "test-night"} < set(trained) and any(k.startswith("val (epoch") for k in trained)


def _runs(out: Path) -> dict[str, object]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store_uri(out / "train"))
    experiment = client.get_experiment_by_name("dist-geo")
    return {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}


def test_eval_is_a_run_of_its_own_and_leaves_training_as_it_was(demo):
    out, results = demo
    before = _runs(out)
    trained = before[results["mlflow_run_id"]]
    best = out / "train" / "checkpoints" / "best"
    evaluated = out / "eval"
    # A checkpoint folder is evaluated with its training's own eval settings (32 px here);
    # the demo's results.json is drawn beside it (--compare), read before the evaluation.
    assert main(["eval", str(best), "--dataset", str(out / "world"), "--out", str(evaluated),
                 "--plots", "--compare", str(out / "results.json")]) == 0
    table = json.loads((evaluated / "results.json").read_text())["results"]
    for split in ("test", "test-night"):
        for key, value in results["trained"][split].items():
            assert round(table[split][key], 2) == value
    assert (evaluated / "recall_curves.png").stat().st_size > 1000

    after = _runs(out)
    (new,) = set(after) - set(before)
    evaluation = after[new]
    assert evaluation.data.tags["mlflow.parentRunId"] == results["mlflow_run_id"]
    assert evaluation.data.tags["dist_geo.kind"] == "evaluation"
    assert re.match(r"eval best \(step [24]\) on world: test, test-night", evaluation.info.run_name)
    assert evaluation.data.metrics["test_recall_at_1"] == table["test"]["recall_at_1"]
    assert {"results.json", "recall_curves.png"} <= set(MlflowRun(store_uri(out / "train"),
                                                                  new).list_artifacts())
    unchanged = after[results["mlflow_run_id"]]
    assert unchanged.data.metrics == trained.data.metrics
    assert (unchanged.info.end_time, unchanged.info.status) == (trained.info.end_time, "FINISHED")

    assert main(["eval", str(best), "tracking.enabled=false", "--dataset", str(out / "world"),
                 "--out", str(evaluated), "--splits", "test"]) == 0
    assert set(_runs(out)) == set(after)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moved_ui(demo, tmp_path_factory):
    """The demo's run folder moved elsewhere, served by the command the demo prints (with the
    new paths, a free port and one worker): (its folder, base URL, the link with that port)."""
    out, results = demo
    moved = tmp_path_factory.mktemp("moved") / "train"
    shutil.move(out / "train", moved)
    port = _free_port()
    command = shlex.split(ui_command(store_uri(moved)).replace("--port 5000", f"--port {port}"))
    server = subprocess.Popen([sys.executable, "-m", *command, "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, "mlflow ui exited"
                time.sleep(0.5)
        yield moved, base, results["mlflow_run"].replace("127.0.0.1:5000", f"127.0.0.1:{port}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def test_moved_run_folder_still_serves_its_artifacts(demo, moved_ui):
    _, results = demo
    _, base, _ = moved_ui
    run_id = results["mlflow_run_id"]
    with urllib.request.urlopen(f"{base}/ajax-api/2.0/mlflow/artifacts/list?run_id={run_id}") as r:
        listed = {f["path"] for f in json.load(r)["files"]}
    assert {"results.json", "plots", "best_checkpoint"} <= listed
    with urllib.request.urlopen(f"{base}/get-artifact?path=demo/results.json&run_uuid={run_id}") as r:
        assert json.load(r)["mlflow_run_id"] == run_id


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)")
def test_browser_opens_the_printed_link_on_the_run(demo, moved_ui, tmp_path):
    """Headless Chromium renders the page the demo's link names: the run, by its name, in the
    machine-learning view (its side bar offers the model registry, not GenAI observability)."""
    _, results = demo
    moved, _, link = moved_ui
    run_id = results["mlflow_run_id"]
    name = MlflowRun(store_uri(moved), run_id).client.get_run(run_id).info.run_name
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000",
         "--dump-dom", link], capture_output=True, text=True, timeout=180, check=True).stdout
    text = re.sub(r"\s+", " ", unescape(re.sub(r"<script.*?</script>|<[^>]+>", " ", dom, flags=re.S)))
    assert name in text
    assert "Model registry" in text and "Observability" not in text  # not the GenAI view
