"""MLflow tracking: embedded sqlite store in the run folder, rank 0 only, resumable run; a
machine-learning experiment whose artifacts the store records relative to the run folder."""
from dataclasses import replace

from dist_geo.config import build_config
from dist_geo.distributed import single_process
from dist_geo.tracking import Tracker, peak_memory_mb, tracking_uri


def test_tracker_logs_config_metrics_and_resumes(tmp_path):
    cfg = build_config(overrides=[f"train.out={tmp_path}", "tracking.run_name=unit"])
    ctx = single_process()
    tracker = Tracker(cfg, ctx)
    assert tracking_uri(cfg) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    tracker.log_metrics({"loss": 2.0, "val_recall_at_1": 50.0, "skipped": float("nan")}, step=1)
    (tmp_path / "plot.png").write_bytes(b"png")
    tracker.log_artifacts(tmp_path / "plot.png", "plots")
    tracker.finish()

    again = Tracker(cfg, ctx, run_id=tracker.run_id)  # a resumed run logs into the same run
    again.log_metrics({"loss": 1.0}, step=2)
    again.finish()
    run = again.run.client.get_run(tracker.run_id)
    assert run.info.run_name == "unit" and run.data.params["optim.lr"] == "1e-05"
    history = again.run.client.get_metric_history(run.info.run_id, "loss")
    assert [m.value for m in history] == [2.0, 1.0]
    assert "skipped" not in run.data.metrics
    assert {"config.yaml", "plots"} <= set(again.run.list_artifacts())
    assert run.info.artifact_uri == f"mlflow-artifacts:/{run.info.run_id}/artifacts"
    assert (tmp_path / "mlartifacts" / run.info.run_id / "artifacts" / "plots" / "plot.png").is_file()
    experiment = again.run.client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert again.run.link == (f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/"
                              f"{run.info.run_id}?workflowType=machine_learning")
    assert peak_memory_mb(ctx.device) > 0


def test_tracker_is_silent_off_rank_zero_or_disabled(tmp_path):
    cfg = build_config(overrides=[f"train.out={tmp_path}", "tracking.enabled=false"])
    other_rank = replace(single_process(), rank=1, world_size=2)
    for tracker in (Tracker(cfg, single_process()),
                    Tracker(build_config(overrides=[f"train.out={tmp_path}"]), other_rank)):
        tracker.log_metrics({"loss": 1.0}, step=1)
        tracker.finish()
        assert tracker.run_id == ""
    assert not (tmp_path / "mlflow.db").exists()
