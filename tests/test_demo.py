"""`dist-geo demo` end to end on the tiny world: 2 training processes, results.json, MLflow;
then `dist-geo eval` of its best checkpoint reproduces the test recalls training reported."""
import json

from dist_geo.cli import main

TINY = [
    "data.M=10", "data.alpha=30", "data.N=2", "data.L=1", "data.groups_num=2",
    "data.min_images_per_class=3", "data.image_size=32", "data.shard_size=200",
    "model.fc_output_dim=16", "train.epochs_num=1", "train.iterations_per_epoch=2",
    "train.batch_size=4", "eval.batch_size=64", "eval.image_size=32",
]


def test_demo_writes_results_and_one_mlflow_run(tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--preset", "tiny", *TINY]) == 0

    results = json.loads((out / "results.json").read_text())
    for model in ("trained", "untrained", "raw_pixels"):
        for split in ("test", "test-night"):
            recalls = results[model][split]
            assert set(recalls) == {"recall_at_1", "recall_at_5", "recall_at_10", "recall_at_20"}
            assert 0 <= recalls["recall_at_1"] <= recalls["recall_at_5"] <= 100
    assert results["nproc"] == 2 and (out / "train" / "checkpoints" / "best").is_dir()

    run = MlflowClient(f"sqlite:///{out / 'train' / 'mlflow.db'}").get_run(results["mlflow_run_id"])
    metrics = run.data.metrics
    assert round(metrics["test_recall_at_1"], 2) == results["trained"]["test"]["recall_at_1"]
    assert round(metrics["raw_pixels_test_night_recall_at_1"], 2) == \
        results["raw_pixels"]["test-night"]["recall_at_1"]
    assert "untrained_test_recall_at_5" in metrics and run.data.params["loss.name"] == "cosface"

    # A checkpoint folder is evaluated with its training's own eval settings (32 px here).
    evaluated = out / "eval"
    assert main(["eval", str(out / "train" / "checkpoints" / "best"), "--dataset",
                 str(out / "world"), "--out", str(evaluated), "tracking.enabled=false"]) == 0
    table = json.loads((evaluated / "results.json").read_text())["results"]
    for split in ("test", "test-night"):
        for key, value in results["trained"][split].items():
            assert round(table[split][key], 2) == value
