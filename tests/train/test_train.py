"""End-to-end training on CPU: exact resume, MLflow run, 2 gloo ranks, head re-slicing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dist_geo.config import build_config
from dist_geo.distributed import single_process
from dist_geo.errors import CheckpointError
from dist_geo.model.checkpoint import load_model, read_manifest
from dist_geo.tracking import MlflowRun, tracking_uri
from dist_geo.train import launch_local, reslice_checkpoint, train, trainer
from dist_geo.train.checkpoint import head_file


def _tensors(obj) -> list[torch.Tensor]:
    if torch.is_tensor(obj):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in _tensors(obj[k])]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in _tensors(v)]
    return []


def _load(checkpoint: Path, name: str) -> list[torch.Tensor]:
    return _tensors(torch.load(checkpoint / name, weights_only=True))


SAVED = ["model.pt", "engine/optimizer.pt", "engine/scheduler.pt",
         head_file(0, 0), head_file(1, 0)]


def test_resume_is_exact_and_tracked(train_overrides, tmp_path, monkeypatch):
    """2 epochs straight == 1 epoch, resume, crash mid-epoch, resume from mid-epoch."""
    ctx = single_process()
    common = train_overrides + ["sched.name=cosine", "sched.warmup_steps=1", "optim.name=adamw",
                                "train.iterations_per_epoch=3", "train.checkpoint_every=2"]
    straight = train(build_config(overrides=common + [
        "train.epochs_num=2", f"train.out={tmp_path / 'a'}", "tracking.enabled=false",
        "train.test=false"]), ctx)
    out = tmp_path / "b"
    first = train(build_config(overrides=common + [
        "train.epochs_num=1", f"train.out={out}", "train.test=false"]), ctx)

    calls = []

    def crash_on_second_step(*args):  # epoch 1: step 4 runs (and is checkpointed), step 5 dies
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("node lost")
        return step_head(*args)

    step_head = trainer.step_head
    monkeypatch.setattr(trainer, "step_head", crash_on_second_step)
    resume = build_config(overrides=common + [
        "train.epochs_num=2", f"train.out={out}", "train.resume=true"])
    with pytest.raises(RuntimeError, match="node lost"):
        train(resume, ctx)
    position = read_manifest(out / "checkpoints/last")["position"]
    assert position == {"epoch": 1, "batch": 1, "step": 4}
    monkeypatch.undo()
    epochs = []
    resumed = train(resume, ctx, on_epoch_end=lambda e, m, d: epochs.append(
        (e, "val_recall_at_1" in m, d.name)))

    assert epochs == [(1, True, "last")]  # only the epoch left was trained
    assert straight["steps"] == resumed["steps"] == 6
    a, b = Path(straight["last_checkpoint"]), Path(resumed["last_checkpoint"])
    for name in SAVED:
        for x, y in zip(_load(a, name), _load(b, name), strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)

    # One MLflow run across the resume: config, per-step loss, per-epoch recall, artifacts.
    from mlflow.tracking import MlflowClient

    cfg = build_config(overrides=common + [f"train.out={out}"])
    client = MlflowClient(tracking_uri(cfg))
    assert first["mlflow_run_id"] == resumed["mlflow_run_id"]
    run = client.get_run(resumed["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["loss.s"] == "30.0" and run.data.params["train.epochs_num"] == "1"
    loss_steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert loss_steps == [1, 2, 3, 4, 5, 6]
    assert len(client.get_metric_history(run.info.run_id, "val_recall_at_1")) == 2
    assert "test_recall_at_1" in run.data.metrics and "peak_memory_mb" in run.data.metrics
    stored = MlflowRun(tracking_uri(cfg), run.info.run_id)
    artifacts = {*stored.list_artifacts("best_checkpoint"), *stored.list_artifacts("plots")}
    assert {"best_checkpoint/model.pt", "plots/training_curves.png"} <= artifacts
    assert [epoch for _, epoch in stored.metric_history("epoch")] == [0, 1]  # across the resume

    best = Path(resumed["best_checkpoint"])
    model = load_model(best, "cpu")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 16)
    (best / "model.pt").write_bytes(b"corrupt")
    with pytest.raises(CheckpointError, match="model.pt"):
        load_model(best, "cpu")


def test_two_ranks_then_resliced_resume_on_one(train_overrides, tmp_path):
    out = tmp_path / "run"
    cfg = build_config(overrides=train_overrides + [
        "train.epochs_num=1", f"train.out={out}", "train.validate=false", "train.test=false",
        "tracking.enabled=false"])
    result = launch_local(cfg, nproc=2, threads_per_process=1)
    last = Path(result["last_checkpoint"])
    manifest = read_manifest(last)
    assert manifest["world_size"] == 2 and result["steps"] == 2

    one = reslice_checkpoint(last, tmp_path / "one_rank", 1)
    assert read_manifest(one)["world_size"] == 1
    for g in range(2):
        parts = [torch.load(last / head_file(g, r), weights_only=True) for r in range(2)]
        whole = torch.load(one / head_file(g, 0), weights_only=True)
        assert whole["weight"].shape[0] == manifest["groups"][g]["num_classes"]
        assert torch.equal(whole["weight"], torch.cat([p["weight"] for p in parts]))
        if g == 0:  # the group trained in epoch 0: its Adam moments are re-sliced too
            moments = [p["optimizer"]["state"][0]["exp_avg"] for p in parts]
            assert torch.equal(whole["optimizer"]["state"][0]["exp_avg"], torch.cat(moments))

    # The 2-rank checkpoint resumes in one process (heads re-sliced while loading).
    cfg.train.epochs_num, cfg.train.resume = 2, True
    resumed = train(cfg, single_process())
    assert resumed["steps"] == 4
    assert json.loads((out / "checkpoints/last/manifest.json").read_text())["world_size"] == 1


def test_zero2_bf16_resume_is_exact(train_overrides, tmp_path):
    """ZeRO-2 partitions and bf16 master weights go through the checkpoint (weights_only) too."""
    ctx = single_process()
    common = train_overrides + ["train.zero_stage=2", "train.precision=bf16", "optim.name=sgd",
                                "optim.clip_grad_norm=1.0", "train.validate=false",
                                "train.test=false", "tracking.enabled=false"]
    straight = train(build_config(overrides=common + [
        "train.epochs_num=2", f"train.out={tmp_path / 'a'}"]), ctx)
    train(build_config(overrides=common + ["train.epochs_num=1", f"train.out={tmp_path / 'b'}"]),
          ctx)
    resumed = train(build_config(overrides=common + [
        "train.epochs_num=2", f"train.out={tmp_path / 'b'}", "train.resume=true"]), ctx)
    a, b = Path(straight["last_checkpoint"]), Path(resumed["last_checkpoint"])
    assert (b / "engine/optimizer_rank000.pt").is_file()
    for name in ["model.pt", head_file(0, 0), head_file(1, 0), "engine/optimizer_rank000.pt"]:
        for x, y in zip(_load(a, name), _load(b, name), strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)
