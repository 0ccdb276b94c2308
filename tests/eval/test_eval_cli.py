import json

import pytest
import torch

from dist_geo.cli import main as cli_main
from dist_geo.config import build_config
from dist_geo.distributed import single_process
from dist_geo.eval.report import log_to_mlflow, mlflow_metrics
from dist_geo.model.network import build_model


@pytest.fixture(scope="module")
def state_dict_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pth"
    torch.save(build_model(build_config(overrides=["model.fc_output_dim=16"]).model).state_dict(),
               path)
    return path


def test_eval_command_writes_results_and_pictures(state_dict_file, known_dataset, tmp_path):
    out = tmp_path / "out"
    code = cli_main(["eval", str(state_dict_file), "model.fc_output_dim=16", "data.num_workers=0",
                     "tracking.enabled=false", "--dataset", str(known_dataset),
                     "--splits", "val", "test-night", "--baseline", "--plots", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert set(results) == {"val", "test-night", "raw-pixels/val", "raw-pixels/test-night"}
    assert results["val"]["queries_without_positives"] == 1
    for name in ("recall_curves.png", "retrievals_val.png", "retrievals_test-night.png"):
        assert (out / name).stat().st_size > 1000


def test_eval_command_refuses_a_backbone_only_file(known_dataset, tmp_path, capsys):
    path = tmp_path / "backbone.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    code = cli_main(["eval", str(path), "tracking.enabled=false", "--dataset", str(known_dataset)])
    assert code == 2
    assert "backbone.pth" in capsys.readouterr().err


def test_mlflow_metric_names():
    names = mlflow_metrics({"test": {"recall_at_1": 50.0}, "test-night": {"recall_at_1": 1.0}})
    assert names == {"test_recall_at_1": 50.0, "test_night_recall_at_1": 1.0}


def test_metrics_land_on_a_new_run_when_the_run_id_is_unknown(tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = build_config(overrides=[f"train.out={tmp_path}"])
    run_id = log_to_mlflow({"test": {"recall_at_1": 42.0}}, cfg, single_process(),
                           run_id="0" * 32, step=7)
    assert run_id and run_id != "0" * 32
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    history = client.get_metric_history(run_id, "test_recall_at_1")
    assert [(m.step, m.value) for m in history] == [(7, 42.0)]


def test_tracking_off_leaves_the_training_run_alone(make_checkpoint, known_dataset, tmp_path):
    from mlflow.tracking import MlflowClient

    from dist_geo.tracking import MlflowRun, open_experiment

    uri = f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"  # the checkpoint's train.out's store
    run = MlflowRun.start(uri, open_experiment(uri, "dist-geo"))
    checkpoint = make_checkpoint(mlflow_run_id=run.run_id)
    command = ["eval", str(checkpoint), "--dataset", str(known_dataset), "--splits", "val",
               "--out", str(tmp_path / "eval"), "data.num_workers=0"]
    assert cli_main(command + ["tracking.enabled=false"]) == 0
    assert MlflowClient(uri).get_run(run.run_id).data.metrics == {}
    assert cli_main(command) == 0  # tracking on: the numbers land on the training's run
    assert "val_recall_at_1" in MlflowClient(uri).get_run(run.run_id).data.metrics
