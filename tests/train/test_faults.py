"""Faults a training run must survive without losing anything: a re-run into a finished run's
folder, a loss that turns NaN, a full disk while checkpointing."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dist_geo.config import build_config
from dist_geo.distributed import DistContext, single_process
from dist_geo.errors import CheckpointError
from dist_geo.model.checkpoint import load_model, read_manifest
from dist_geo.model.partial_fc import ShardedMarginHead
from dist_geo.tracking import tracking_uri
from dist_geo.train import checkpoint as ckpt
from dist_geo.train import launch_local, train
from dist_geo.train.stopping import Diverged

QUICK = ["train.validate=false", "train.test=false", "tracking.enabled=false"]


def run_status(cfg, run_id: str) -> str:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri(cfg)).get_run(run_id).info.status


def test_a_rerun_is_refused_until_resumed_or_overwritten(train_overrides, tmp_path):
    out = tmp_path / "run"
    args = train_overrides + QUICK + ["train.epochs_num=1", f"train.out={out}",
                                      "train.keep_epoch_checkpoints=true"]
    train(build_config(overrides=args), single_process())
    last = (out / "checkpoints/last/manifest.json").read_bytes()
    refusal = (f"{out}: holds the checkpoints of an earlier run; continue it with "
               "train.resume=true, or replace it with train.overwrite=true")
    with pytest.raises(CheckpointError) as error:
        train(build_config(overrides=args), single_process())
    assert str(error.value) == refusal
    with pytest.raises(CheckpointError, match="earlier run"):  # before any rank starts
        launch_local(build_config(overrides=args), nproc=2)
    command = subprocess.run([sys.executable, "-m", "dist_geo.cli", "train", *args],
                             capture_output=True, text=True)
    assert command.returncode == 2
    assert command.stderr.strip().splitlines()[-1] == f"dist-geo train: error: {refusal}"
    assert (out / "checkpoints/last/manifest.json").read_bytes() == last  # nothing touched

    resumed = train(build_config(overrides=args[:-2] + [
        "train.epochs_num=2", f"train.out={out}", "train.resume=true"]), single_process())
    assert resumed["steps"] == 4
    train(build_config(overrides=args[:-1] + ["train.overwrite=true"]), single_process())
    assert read_manifest(out / "checkpoints/last")["position"]["step"] == 2  # a new run
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best", "last"]


def test_a_loss_that_stays_nan_stops_the_run_and_is_never_saved(
        train_overrides, tmp_path, monkeypatch):
    """Epoch 0 trains normally; from step 4 (epoch 1) the loss is NaN (an injected fault)."""
    out = tmp_path / "run"
    cfg = build_config(overrides=train_overrides + [
        "train.epochs_num=3", "train.iterations_per_epoch=3", f"train.out={out}",
        "train.max_nonfinite_steps=2", "train.validate=false", "train.test=false"])
    forward, steps = ShardedMarginHead.forward, []

    def poisoned(self, embeddings, labels):
        steps.append(1)
        loss = forward(self, embeddings, labels)
        return loss * float("nan") if len(steps) > 3 else loss

    monkeypatch.setattr(ShardedMarginHead, "forward", poisoned)
    with pytest.raises(Diverged) as error:
        train(cfg, single_process())
    assert str(error.value) == (
        f"{out}: the loss was NaN or inf for 2 steps in a row, the last by step 5 "
        "(train.max_nonfinite_steps=2): stopped without saving them; the checkpoints hold the "
        "run before (lower optim.lr, loss.s, or check the data)")
    for name in ("last", "best"):  # epoch 0's, whole
        assert read_manifest(out / "checkpoints" / name)["position"]["step"] == 3
        assert all(torch.isfinite(p).all() for p in load_model(out / "checkpoints" / name)
                   .state_dict().values())
    run_id = read_manifest(out / "checkpoints/last")["mlflow_run_id"]
    assert run_status(cfg, run_id) == "FAILED"


def test_a_full_disk_names_the_folder_and_keeps_the_previous_checkpoint(
        train_overrides, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = train_overrides + ["train.validate=false", "train.test=false", f"train.out={out}"]
    train(build_config(overrides=args + ["train.epochs_num=1"]), single_process())
    before = read_manifest(out / "checkpoints/last")

    def open_full(path, mode="r", *more):  # the kernel's own ENOSPC, for the network's file
        return open("/dev/full" if str(path).endswith("model.pt") else path, mode, *more)

    monkeypatch.setattr(ckpt, "open", open_full, raising=False)
    cfg = build_config(overrides=args + ["train.epochs_num=2", "train.resume=true"])
    with pytest.raises(CheckpointError) as error:
        train(cfg, single_process())
    staging = out / "checkpoints" / ".last.tmp"
    assert str(error.value) == (
        f"{out / 'checkpoints' / 'last'}: checkpoint not written ([Errno 28] No space left on "
        f"device: '{staging / 'model.pt'}'); the previous one is kept")
    assert read_manifest(out / "checkpoints/last") == before and not staging.exists()
    load_model(out / "checkpoints/last")  # every file still matches its sha256
    assert run_status(cfg, before["mlflow_run_id"]) == "FAILED"


def _save_on_rank(rank: int, world: int, port: int, folder: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    ctx = DistContext(rank, world, rank, torch.device("cpu"))
    directory = Path(folder) / "last"
    tmp = Path(folder) / ".last.tmp"
    tmp.mkdir(parents=True, exist_ok=True)

    def part() -> None:
        if rank == 1:
            raise OSError(28, "No space left on device", str(tmp / "heads/rank_001.pt"))

    try:
        ckpt._together(part, ctx, directory, tmp)
        outcome = "written"
    except CheckpointError as e:
        outcome = str(e)
    finally:
        dist.destroy_process_group()
    Path(f"{out}.{rank}").write_text(json.dumps(outcome))


def test_ranks_share_one_rank_s_write_error_instead_of_waiting_for_it(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "outcome")
    mp.start_processes(_save_on_rank, args=(2, port, str(tmp_path), out), nprocs=2,
                       start_method="spawn", join=True)
    outcomes = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(2)]
    assert outcomes[0] == outcomes[1] == (
        f"{tmp_path / 'last'}: checkpoint not written ([Errno 28] No space left on device: "
        f"'{tmp_path / '.last.tmp' / 'heads/rank_001.pt'}'); the previous one is kept")
    assert not (tmp_path / ".last.tmp").exists()
