"""A stop signal mid-epoch, sent to real training processes (1 rank, 2 ranks): the run saves
the step all ranks agree on, marks its MLflow run KILLED, exits non-zero, and
`train.resume=true` ends with the weights of a run that was never interrupted."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from dist_geo.config import build_config
from dist_geo.model.checkpoint import read_manifest
from dist_geo.tracking import tracking_uri
from dist_geo.train.checkpoint import head_file
from dist_geo.train.launch import start_local

ITERATIONS = 8


def overrides(train_overrides: list[str], out: Path, *more: str) -> list[str]:
    """2 epochs of 8 steps, a checkpoint after the first step of epoch 1 (step 9)."""
    return [*train_overrides, "train.epochs_num=2", f"train.iterations_per_epoch={ITERATIONS}",
            f"train.checkpoint_every={ITERATIONS + 1}", "train.validate=false",
            "train.test=false", f"train.out={out}", *more]


def wait_for_step_9(out: Path, process, meanwhile=lambda: None) -> None:
    """Until the checkpoint of step 9 is written: the run is then in the middle of epoch 1."""
    manifest = out / "checkpoints" / "last" / "manifest.json"
    deadline = time.monotonic() + 300
    while not (manifest.exists() and read_manifest(manifest.parent)["position"]["step"] > 8):
        assert process.poll() is None and time.monotonic() < deadline, "training ended early"
        meanwhile()
        time.sleep(0.05)


def assert_same_weights(a: Path, b: Path, ranks: int) -> None:
    heads = [head_file(g, r) for g in range(2) for r in range(ranks)]
    for name in ["model.pt", "engine/optimizer.pt", "engine/scheduler.pt", *heads]:
        x = torch.load(a / "checkpoints/last" / name, weights_only=True)
        y = torch.load(b / "checkpoints/last" / name, weights_only=True)
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)


def train_alone(args: list[str], log: Path) -> subprocess.Popen:
    """`dist-geo train` in its own process group (as a terminal job: Ctrl-C reaches it all)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as stderr:
        return subprocess.Popen([sys.executable, "-m", "dist_geo.cli", "train", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)


def test_ctrl_c_on_one_rank_saves_the_step_and_resumes_exactly(train_overrides, tmp_path):
    from mlflow.tracking import MlflowClient

    common = ["data.num_workers=1"]  # its loader worker gets the Ctrl-C too, and must live on
    straight = train_alone(overrides(train_overrides, tmp_path / "a", *common,
                                     "tracking.enabled=false"), tmp_path / "a.log")
    out = tmp_path / "b"
    run = train_alone(overrides(train_overrides, out, *common), tmp_path / "b.log")
    wait_for_step_9(out, run)
    os.killpg(run.pid, signal.SIGINT)  # the process group, as a terminal's Ctrl-C
    assert run.wait() == 128 + signal.SIGINT
    manifest = read_manifest(out / "checkpoints/last")
    epoch, batch, step = manifest["position"].values()
    assert epoch == 1 and 1 < batch < ITERATIONS and step == ITERATIONS + batch
    assert (tmp_path / "b.log").read_text().rstrip().endswith(  # after the progress bar
        f"\ndist-geo train: error: {out}: stopped by SIGINT at step {step} (epoch 1, batch "
        f"{batch}), saved in checkpoints/last: continue with train.resume=true")
    cfg = build_config(overrides=[f"train.out={out}"])
    assert MlflowClient(tracking_uri(cfg)).get_run(
        manifest["mlflow_run_id"]).info.status == "KILLED"

    resumed = train_alone(overrides(train_overrides, out, *common, "train.resume=true"),
                          tmp_path / "c.log")
    assert resumed.wait() == 0 and straight.wait() == 0
    assert read_manifest(out / "checkpoints/last")["position"]["step"] == 2 * ITERATIONS
    assert_same_weights(tmp_path / "a", out, ranks=1)


def test_two_local_ranks_listen_on_loopback_only_and_stop_together_on_one_sigterm(
        train_overrides, tmp_path, open_ports, loopback):
    """Only rank 1 is signalled: the ranks agree at the next loss read (every 2 steps). While
    they train, nothing the job opened (the launcher's store, the ranks' gloo sockets) listens
    beyond this machine."""
    common = ["train.log_every=2", "tracking.enabled=false"]
    straight = start_local(build_config(overrides=overrides(
        train_overrides, tmp_path / "a", *common)), nproc=2)
    out = tmp_path / "b"
    ranks = start_local(build_config(overrides=overrides(train_overrides, out, *common)), nproc=2)
    ports: set[tuple[str, str, int]] = set()
    wait_for_step_9(out, ranks, lambda: ports.update(open_ports([os.getpid()])))
    assert len(ports) >= 3, ports  # the store and each rank's gloo listener at least
    assert all(loopback(ip) for _, ip, _ in ports), ports
    os.kill(ranks.pids[1], signal.SIGTERM)
    assert ranks.wait() == 128 + signal.SIGTERM
    manifest = read_manifest(out / "checkpoints/last")
    epoch, batch, step = manifest["position"].values()
    assert manifest["world_size"] == 2 and epoch == 1 and 1 < batch < ITERATIONS
    assert step % 2 == 0  # a step both ranks read the loss at

    resumed = start_local(build_config(overrides=overrides(
        train_overrides, out, *common, "train.resume=true")), nproc=2)
    assert resumed.wait() == 0 and straight.wait() == 0
    assert_same_weights(tmp_path / "a", out, ranks=2)
