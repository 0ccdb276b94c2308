"""What `dist-geo eval` and `dist-geo soup` accept as a model.

- a training checkpoint folder (manifest.json inside): read by dist_geo/model/checkpoint.py,
  which rebuilds the network from the checkpoint's own config; its MLflow run id comes along so
  test metrics land on the run that trained the model;
- a state-dict file (ours, a soup, or one of CosPlace's releases, with or without `module.` or
  `model_state_dict` wrapping): the network `cfg.model` describes, with every weight loaded
  (dist_geo/model/network.py and cosplace_interop.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from dist_geo.config import ModelConfig
from dist_geo.errors import CheckpointError
from dist_geo.model.checkpoint import load_model, read_manifest
from dist_geo.model.cosplace_interop import is_whole_model
from dist_geo.model.network import build_model, read_state_dict


@dataclass
class LoadedModel:
    model: nn.Module
    source: Path
    mlflow_run_id: str = ""
    step: int = 0  # the training step the checkpoint was taken at (MLflow x-axis)


def load_for_eval(path: str | Path, model_cfg: ModelConfig, device: torch.device) -> LoadedModel:
    """The model stored at `path`, in eval mode on `device`."""
    path = Path(path)
    if path.is_dir():
        manifest = read_manifest(path)
        return LoadedModel(load_model(path, device), path, manifest.get("mlflow_run_id", ""),
                           int(manifest.get("position", {}).get("step", 0)))
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint folder or state-dict file there")
    if not is_whole_model(read_state_dict(path)):
        raise CheckpointError(
            f"{path}: holds only backbone weights (no aggregation layers): not a model to evaluate"
        )
    model = build_model(replace(model_cfg, weights=str(path)))
    return LoadedModel(model.to(device).eval(), path)


def state_dict_of(path: str | Path, model_cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The network weights stored at `path` (checkpoint folder or state-dict file), on CPU."""
    model = load_for_eval(path, model_cfg, torch.device("cpu")).model
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
