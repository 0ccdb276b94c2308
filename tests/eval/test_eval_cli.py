import json

import pytest
import torch

from dist_geo.cli import main as cli_main
from dist_geo.config import build_config
from dist_geo.distributed import single_process
from dist_geo.eval.report import log_evaluation, markdown_table, mlflow_metrics
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
    assert not (out / "mlflow.db").exists()  # tracking.enabled=false: no run anywhere


def test_compare_files_are_checked_before_the_evaluation(state_dict_file, known_dataset,
                                                         tmp_path, capsys, monkeypatch):
    wrong = tmp_path / "other" / "results.json"
    wrong.parent.mkdir()
    wrong.write_text(json.dumps({"trained": {"test": {"recall_at_1": 1.0}}}))
    monkeypatch.setattr("dist_geo.eval.cli.evaluate", None)  # never reached
    code = cli_main(["eval", str(state_dict_file), "model.fc_output_dim=16", "--plots",
                     "--dataset", str(known_dataset), "--compare", str(wrong)])
    assert code == 2
    assert f"{wrong}: neither an evaluation's nor the demo's results.json" in capsys.readouterr().err


def test_eval_command_refuses_a_backbone_only_file(known_dataset, tmp_path, capsys):
    path = tmp_path / "backbone.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    code = cli_main(["eval", str(path), "tracking.enabled=false", "--dataset", str(known_dataset)])
    assert code == 2
    assert "backbone.pth" in capsys.readouterr().err


def test_mlflow_metric_names():
    names = mlflow_metrics({"test": {"recall_at_1": 50.0}, "test-night": {"recall_at_1": 1.0}})
    assert names == {"test_recall_at_1": 50.0, "test_night_recall_at_1": 1.0}


def test_an_evaluation_of_an_unknown_run_gets_a_run_of_its_own(tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = build_config(overrides=[f"train.out={tmp_path}"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    results = {"test": {"recall_at_1": 42.0, "recall_at_5": 50.0, "recall_at_10": 60.0,
                        "recall_at_20": 70.0, "queries": 10}}
    run_id = log_evaluation(results, cfg, single_process(), uri, "eval model.pth on x: test",
                            parent_run_id="0" * 32, step=7)
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.run_name == "eval model.pth on x: test" and run.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.data.tags["mlflow.note.content"] == markdown_table(results, [1, 5, 10, 20])
    assert "| test | 42.0 | 50.0 | 60.0 | 70.0 | 10 |" in run.data.tags["mlflow.note.content"]
    history = MlflowClient(tracking_uri=uri).get_metric_history(run_id, "test_recall_at_1")
    assert [(m.step, m.value) for m in history] == [(7, 42.0)]


def test_tracking_off_leaves_the_training_run_alone(make_checkpoint, known_dataset, tmp_path):
    from mlflow.tracking import MlflowClient

    from dist_geo.tracking import MlflowRun, open_experiment

    uri = f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"  # the checkpoint's train.out's store
    run = MlflowRun.start(uri, open_experiment(uri, "dist-geo"))
    checkpoint = make_checkpoint(mlflow_run_id=run.run_id)
    command = ["eval", str(checkpoint), "--dataset", str(known_dataset), "--splits", "val",
               "--out", str(tmp_path / "eval"), "data.num_workers=0"]
    client = MlflowClient(uri)
    runs = lambda: client.search_runs([run.experiment_id])  # noqa: E731
    assert cli_main(command + ["tracking.enabled=false"]) == 0
    assert client.get_run(run.run_id).data.metrics == {} and len(runs()) == 1  # no run at all
    assert cli_main(command) == 0  # tracking on: a run of its own, the training's untouched
    assert client.get_run(run.run_id).data.metrics == {} and len(runs()) == 2
