"""Reading a training checkpoint: its layout, its verified files, the network it holds.

Layout of one checkpoint (`<train.out>/checkpoints/{last,best,epoch_NNN}/`):

    manifest.json                  written last: position, world size, metrics, MLflow run id,
                                   groups' class counts and the sha256 of every file below
    config.yaml                    the run's whole config (load_model rebuilds the network from it)
    model.pt                       the network's state dict in fp32 (rank 0)
    engine/optimizer.pt            the network optimizer's state (ZeRO 0: one file, rank 0)
    engine/optimizer_rank{r:03d}.pt     ... or one partition per rank (ZeRO 1/2)
    engine/scheduler.pt            the lr schedule's state
    heads/group_{g:02d}/rank_{r:03d}.pt  rank r's rows of group g's head: {"weight", "optimizer"}
    rng/rank_{r:03d}.pt            torch (and CUDA) RNG states of rank r
    rng/rank_{r:03d}.json          python and numpy RNG states of rank r

Files hold tensors and plain containers only and load with `torch.load(weights_only=True)`;
everything else is JSON. Every file is checked against its sha256 in the manifest before it is
used. The network's weights are all evaluation, soups and the final test need, so reading
them lives here, below evaluation; writing checkpoints and restoring a run from one (engine,
heads, optimizers, RNG states) is training's: dist_geo/train/checkpoint.py.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from dist_geo.atomic import previous_path
from dist_geo.checksums import matches
from dist_geo.config import Config, build_config
from dist_geo.errors import CheckpointError
from dist_geo.model.network import build_model

FORMAT = 1
MANIFEST = "manifest.json"


def verified_file(directory: Path, manifest: dict[str, Any], name: str) -> Path:
    """`directory/name`, after checking it lies inside `directory` (a manifest naming
    `../x`, or a link pointing out, is refused), exists and matches its sha256 in the manifest."""
    path = directory / name
    if not path.resolve().is_relative_to(directory.resolve()):
        raise CheckpointError(f"{directory / MANIFEST}: names {name!r}, outside the checkpoint")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file missing")
    if not matches(path, manifest["files"].get(name)):
        raise CheckpointError(f"{path}: sha256 does not match the checkpoint manifest (corrupt)")
    return path


def load_file(directory: Path, manifest: dict[str, Any], name: str) -> Any:
    path = verified_file(directory, manifest, name)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, pickle and format errors all mean "unusable file"
        raise CheckpointError(f"{path}: unreadable checkpoint file ({_why(e)})") from None


def _why(error: Exception) -> str:
    """One line on why torch.load failed. Its weights_only refusal is a paragraph advising to
    retry with weights_only=False (that would run the file's code): only its reason is kept."""
    text = str(error)
    refusal = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: was not an allowed global|\n|$)",
                        text)
    if refusal:
        return f"not plain tensors: {refusal.group(1)}; only tensors and containers are loaded"
    return f"{type(error).__name__}: {text.strip().splitlines()[0] if text.strip() else ''}"


def resolve(directory: str | Path) -> Path:
    """The checkpoint folder to read: `directory`, or its `.old` twin after an interrupted swap."""
    directory = Path(directory)
    if (directory / MANIFEST).is_file():
        return directory
    old = previous_path(directory)
    if (old / MANIFEST).is_file():
        return old
    raise CheckpointError(f"{directory / MANIFEST}: no checkpoint manifest")


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = resolve(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: manifest is not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {manifest.get('format')!r}")
    return manifest


def config_file(directory: str | Path) -> Path:
    """The checkpoint's config.yaml, checked against the manifest like every other file (an
    edited config would rebuild another network than the one its weights fit)."""
    directory = resolve(directory)
    return verified_file(directory, read_manifest(directory), "config.yaml")


def load_config(directory: str | Path) -> Config:
    return build_config(config_file(directory))


def load_model(checkpoint_path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The trained GeoLocalizationNet of a checkpoint folder, in eval mode on `device`.

    The network is rebuilt from the checkpoint's own config (its `model.weights` file is not
    needed: every weight comes from `model.pt`).
    """
    directory = resolve(checkpoint_path)
    manifest = read_manifest(directory)
    cfg = load_config(directory)
    cfg.model.weights = ""
    model = build_model(cfg.model)
    model.load_state_dict(load_file(directory, manifest, "model.pt"))
    return model.to(device).eval()


__all__ = ["FORMAT", "MANIFEST", "config_file", "load_config", "load_file", "load_model",
           "read_manifest", "resolve", "verified_file"]
