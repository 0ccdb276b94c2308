"""Writing training checkpoints and restoring a run from one (the layout, and reading the
network's weights: dist_geo/model/checkpoint.py).

A checkpoint is written into `.<name>.tmp` beside its final place by all ranks, then rank 0
hashes the files, writes the manifest and renames the folder (dist_geo/atomic.py: the old one
is moved to `.<name>.old` and deleted after the rename, and reading falls back to it if a crash
happened between the two renames). Ranks must share the filesystem of `train.out`.

Heads are sharded by class (rank r holds rows `class_range(num_classes, r, world)`); a
checkpoint written by W ranks is read by any number of ranks: `read_head` gathers the W shards
of a group, weights and optimizer moments alike, and re-slices them with the model's `reslice`.
`reslice_checkpoint` writes such a re-sliced copy to disk (a tool for moving runs between
machines). The network's optimizer state re-slices only when it was not partitioned (ZeRO 0).
"""
from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dist_geo.atomic import atomic_dir, publish_dir, staging_path, write_json
from dist_geo.checksums import checksum_files
from dist_geo.config import Config, save_config
from dist_geo.distributed import DistContext
from dist_geo.errors import CheckpointError
from dist_geo.model.checkpoint import (
    FORMAT, MANIFEST, load_file, read_manifest, resolve, verified_file,
)
from dist_geo.model.partial_fc import reslice


@dataclass
class Position:
    """Where training continues: `batch` batches of epoch `epoch` are done, `step` in total."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


@dataclass
class RunState:
    """What a checkpoint records besides tensors (JSON in the manifest)."""

    position: Position = field(default_factory=Position)
    mlflow_run_id: str = ""
    best_recall_at_1: float = -1.0
    best_epoch: int = -1
    metrics: dict[str, float] = field(default_factory=dict)


def head_file(group: int, rank: int) -> str:
    return f"heads/group_{group:02d}/rank_{rank:03d}.pt"


def _save(obj: Any, path: Path) -> None:
    """torch.save through a Python file: a full disk then raises the OS error naming the
    file, where torch's own writer says "[enforce fail at inline_container.cc] unexpected pos"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "wb") as f:
            torch.save(obj, f)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


def fp32_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
            for k, v in module.state_dict().items()}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, plain


def set_rng_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def engine_optimizer_state(engine: Any) -> dict[str, Any]:
    """The network optimizer's state as tensors and plain values (so weights_only loads it).

    DeepSpeed's ZeRO and fp16 optimizers add a loss-scaler object (kept as its attribute dict),
    an enum (kept as its int) and fragment mappings that only DeepSpeed's own "universal"
    checkpoints use (dropped).
    """
    state = dict(engine.optimizer.state_dict())
    if "loss_scaler" in state:
        state["loss_scaler"] = dict(vars(state["loss_scaler"]))
    if "zero_stage" in state:
        state["zero_stage"] = int(state["zero_stage"])
    state.pop("param_slice_mappings", None)
    return state


def load_engine_optimizer_state(engine: Any, states: list[dict[str, Any]]) -> None:
    """Inverse of `engine_optimizer_state`; `states` holds every saved rank's (ZeRO) or one."""
    for state in states:
        if isinstance(state.get("loss_scaler"), dict):
            engine.optimizer.loss_scaler.__dict__.update(state["loss_scaler"])
            state["loss_scaler"] = engine.optimizer.loss_scaler
    if len(states) > 1 or engine.zero_optimization():
        # As DeepSpeed's own loader: all partitions, fp32 master weights from the checkpoint.
        engine.optimizer.load_state_dict(states, load_from_fp32_weights=True)
    else:
        engine.optimizer.load_state_dict(states[0])


def save_checkpoint(
    directory: Path,
    ctx: DistContext,
    cfg: Config,
    state: RunState,
    engine: Any,
    heads: list[torch.nn.Module],
    head_optimizers: list[torch.optim.Optimizer],
) -> Path:
    """Collective: every rank calls it; returns the final folder once rank 0 has renamed it.

    If any rank cannot write its part (a full disk, a quota), every rank raises the same
    CheckpointError naming the folder and the OS error, and the previous checkpoint is kept.
    """
    tmp = staging_path(directory)

    def prepare() -> None:
        if ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)

    def write_rank_files() -> None:
        r = ctx.rank
        if ctx.is_main:
            save_config(cfg, tmp / "config.yaml")
            _save(fp32_state_dict(engine.module), tmp / "model.pt")
            _save(engine.lr_scheduler.state_dict(), tmp / "engine/scheduler.pt")
        if cfg.train.zero_stage > 0:
            _save(engine_optimizer_state(engine), tmp / f"engine/optimizer_rank{r:03d}.pt")
        elif ctx.is_main:
            _save(engine_optimizer_state(engine), tmp / "engine/optimizer.pt")
        for g, (head, optimizer) in enumerate(zip(heads, head_optimizers)):
            _save({"weight": head.weight.detach().cpu(), "optimizer": optimizer.state_dict()},
                  tmp / head_file(g, r))
        tensors, plain = rng_state()
        _save(tensors, tmp / f"rng/rank_{r:03d}.pt")
        write_json(tmp / f"rng/rank_{r:03d}.json", plain, indent=1)

    def publish() -> None:
        if ctx.is_main:
            _seal(tmp, {
                "format": FORMAT,
                "world_size": ctx.world_size,
                "zero_stage": cfg.train.zero_stage,
                "position": vars(state.position),
                "mlflow_run_id": state.mlflow_run_id,
                "best_recall_at_1": state.best_recall_at_1,
                "best_epoch": state.best_epoch,
                "metrics": state.metrics,
                "groups": [{"num_classes": int(h.num_classes)} for h in heads],
            })
            publish_dir(tmp, directory)

    for part in (prepare, write_rank_files, publish):
        _together(part, ctx, directory, tmp)
    return directory


def _together(part: Callable[[], None], ctx: DistContext, directory: Path, tmp: Path) -> None:
    """This rank's `part` of writing checkpoint `directory`, then every rank's outcome on every
    rank (in place of a barrier): a rank raising alone would leave the others waiting."""
    error = ""
    try:
        part()
    except OSError as e:
        error = str(e)  # "[Errno 28] No space left on device: '<file>'"
    errors = [error]
    if ctx.is_distributed:
        errors = [""] * ctx.world_size
        dist.all_gather_object(errors, error)
    failed = next((e for e in errors if e), "")
    if failed:
        if ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{directory}: checkpoint not written ({failed}); the previous "
                              "one is kept")


def _seal(folder: Path, manifest: dict[str, Any]) -> None:
    """Write `manifest` into `folder` with the sha256 of every file there, the manifest last."""
    write_json(folder / MANIFEST, {**manifest, "files": checksum_files(folder)}, indent=1)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links
        shutil.copy2(src, dst)


def copy_checkpoint(src: Path, dst: Path) -> None:
    """Rank 0 only: `dst` becomes a copy of the finished checkpoint `src` (e.g. last -> best).

    Files are hard-linked when possible: checkpoint files are never modified in place (a new
    checkpoint is a new folder renamed over the old one), so sharing them is safe and free.
    CheckpointError naming `dst` and the OS error if it cannot be written (the old one stays).
    """
    try:
        with atomic_dir(dst) as tmp:
            shutil.copytree(src, tmp, copy_function=_link_or_copy, dirs_exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"{dst}: checkpoint not written ({e}); the previous one is "
                              "kept") from None


def check_run_folder(cfg: Config) -> bool:
    """Whether `train.out` holds checkpoints of an earlier run that this config replaces
    (`train.overwrite`). A config that neither resumes nor overwrites them is refused: a re-run
    would silently replace their last and best."""
    out = Path(cfg.train.out)
    earlier = any((out / "checkpoints").glob(f"*/{MANIFEST}")) or any(
        (out / "checkpoints").glob(f".*.old/{MANIFEST}"))
    if not earlier or cfg.train.resume:
        return False
    if not cfg.train.overwrite:
        raise CheckpointError(
            f"{out}: holds the checkpoints of an earlier run; continue it with "
            "train.resume=true, or replace it with train.overwrite=true")
    return True


def read_head(
    directory: Path, manifest: dict[str, Any], group: int, rank: int, world_size: int
) -> dict[str, Any]:
    """Rank `rank`'s part of group `group`'s head in a world of `world_size` (re-sliced)."""
    saved_world = manifest["world_size"]
    if saved_world == world_size:
        return load_file(directory, manifest, head_file(group, rank))
    parts = [load_file(directory, manifest, head_file(group, r)) for r in range(saved_world)]
    return reslice_head(parts, world_size)[rank]


def reslice_head(parts: list[dict[str, Any]], new_world: int) -> list[dict[str, Any]]:
    """Head shards {"weight", "optimizer"} of W ranks -> `new_world` shards of the same classes.

    Optimizer tensors shaped like the weight (Adam moments, SGD momentum) are re-sliced with
    it; the others (the step count) are the same on every rank and are copied.
    """
    weights = reslice([p["weight"] for p in parts], new_world)
    states = [p["optimizer"]["state"] for p in parts]
    new_states: list[dict[Any, Any]] = [{} for _ in range(new_world)]
    for param_id, first in states[0].items():
        for r in range(new_world):
            new_states[r][param_id] = {}
        for key, value in first.items():
            if torch.is_tensor(value) and value.shape == parts[0]["weight"].shape:
                pieces = reslice([s[param_id][key] for s in states], new_world)
            else:
                pieces = [value] * new_world
            for r in range(new_world):
                new_states[r][param_id][key] = pieces[r]
    param_groups = parts[0]["optimizer"]["param_groups"]
    return [
        {"weight": weights[r], "optimizer": {"state": new_states[r], "param_groups": param_groups}}
        for r in range(new_world)
    ]


def reslice_checkpoint(src: str | Path, dst: str | Path, new_world: int) -> Path:
    """Copy checkpoint `src` to `dst` with its heads re-sliced for `new_world` ranks.

    The network's optimizer state must be unpartitioned (ZeRO 0); RNG states of ranks beyond
    the old world are copied from rank 0 (their streams differ from an uninterrupted run).
    """
    src, dst = resolve(src), Path(dst)
    manifest = read_manifest(src)
    if manifest["zero_stage"] > 0 and manifest["world_size"] != new_world:
        raise CheckpointError(
            f"{src}: the optimizer state is partitioned by ZeRO stage {manifest['zero_stage']} "
            f"over {manifest['world_size']} ranks and cannot be re-sliced"
        )
    with atomic_dir(dst) as tmp:
        for name in manifest["files"]:
            if not name.startswith(("heads/", "rng/")):
                source = verified_file(src, manifest, name)  # inside src, and intact
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, tmp / name)
        for g in range(len(manifest["groups"])):
            parts = [load_file(src, manifest, head_file(g, r))
                     for r in range(manifest["world_size"])]
            for r, part in enumerate(reslice_head(parts, new_world)):
                _save(part, tmp / head_file(g, r))
        for r in range(new_world):
            old_r = r if r < manifest["world_size"] else 0
            for ext in ("pt", "json"):
                (tmp / "rng").mkdir(exist_ok=True)
                shutil.copy2(verified_file(src, manifest, f"rng/rank_{old_r:03d}.{ext}"),
                             tmp / f"rng/rank_{r:03d}.{ext}")
        _seal(tmp, {**manifest, "world_size": new_world})
    return dst


def load_checkpoint(
    directory: str | Path,
    ctx: DistContext,
    engine: Any,
    heads: list[torch.nn.Module],
    head_optimizers: list[torch.optim.Optimizer],
) -> RunState:
    """Restore everything `save_checkpoint` wrote into the live objects of this rank."""
    directory = resolve(directory)
    manifest = read_manifest(directory)
    saved_world = manifest["world_size"]
    if len(manifest["groups"]) != len(heads) or any(
        g["num_classes"] != h.num_classes for g, h in zip(manifest["groups"], heads)
    ):
        raise CheckpointError(
            f"{directory / MANIFEST}: its groups and classes differ from the shards'"
        )
    model_state = load_file(directory, manifest, "model.pt")
    engine.module.load_state_dict(
        {k: v.to(engine.module.state_dict()[k].dtype) for k, v in model_state.items()}
    )
    if manifest["zero_stage"] > 0:
        if saved_world != ctx.world_size:
            raise CheckpointError(
                f"{directory}: ZeRO-partitioned optimizer state of {saved_world} ranks cannot be "
                f"loaded by {ctx.world_size} ranks"
            )
        load_engine_optimizer_state(engine, [
            load_file(directory, manifest, f"engine/optimizer_rank{r:03d}.pt")
            for r in range(saved_world)
        ])
    else:
        load_engine_optimizer_state(engine, [load_file(directory, manifest, "engine/optimizer.pt")])
    engine.lr_scheduler.load_state_dict(load_file(directory, manifest, "engine/scheduler.pt"))
    for g, (head, optimizer) in enumerate(zip(heads, head_optimizers)):
        part = read_head(directory, manifest, g, ctx.rank, ctx.world_size)
        with torch.no_grad():
            head.weight.copy_(part["weight"])
        optimizer.load_state_dict(part["optimizer"])
    rng_rank = ctx.rank if ctx.rank < saved_world else 0
    tensors = load_file(directory, manifest, f"rng/rank_{rng_rank:03d}.pt")
    plain_file = verified_file(directory, manifest, f"rng/rank_{rng_rank:03d}.json")
    plain = json.loads(plain_file.read_text())
    set_rng_state(tensors, plain)
    return RunState(
        position=Position(**manifest["position"]),
        mlflow_run_id=manifest["mlflow_run_id"],
        best_recall_at_1=manifest["best_recall_at_1"],
        best_epoch=manifest["best_epoch"],
        metrics=manifest["metrics"],
    )
