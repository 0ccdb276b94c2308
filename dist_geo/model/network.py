"""CosPlace's GeoLocalizationNet: backbone -> L2 -> GeM -> Flatten -> Linear -> L2.

The module layout is CosPlace's own (`self.backbone`, `self.aggregation` as a Sequential), so
our state dicts and CosPlace's released ones are interchangeable (see cosplace_interop.py).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dist_geo.config import ModelConfig
from dist_geo.errors import CheckpointError
from dist_geo.model.backbones import build_backbone, canonical_name
from dist_geo.model.cosplace_interop import (
    is_whole_model, load_cosplace_state_dict, unwrap_state_dict,
)
from dist_geo.model.pooling import GeM, L2Norm


class GeoLocalizationNet(nn.Module):
    """Images [B,3,H,W] -> L2-normalised descriptors [B, fc_output_dim]."""

    def __init__(
        self,
        backbone: str,
        fc_output_dim: int = 512,
        train_all_layers: bool = False,
        gem_p: float = 3.0,
        torchvision_state: dict[str, torch.Tensor] | None = None,
    ):
        super().__init__()
        self.backbone, features_dim = build_backbone(backbone, train_all_layers, torchvision_state)
        self.features_dim = features_dim
        self.aggregation = nn.Sequential(
            L2Norm(),
            GeM(p=gem_p),
            nn.Flatten(),
            nn.Linear(features_dim, fc_output_dim),
            L2Norm(),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.aggregation(self.backbone(images))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file (tensors only: weights_only=True), unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: model weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        return unwrap_state_dict(obj)
    except Exception as e:  # pickle, zip and format errors all mean "unusable file"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable model state dict ({reason})") from None


def build_model(model_cfg: ModelConfig) -> GeoLocalizationNet:
    """The network `model_cfg` describes, on the CPU.

    `model_cfg.weights`, when set, is a local file holding either the whole torchvision
    classifier's state dict (loaded into the backbone; the aggregation stays random) or a
    whole GeoLocalizationNet / CosPlace state dict (every weight loaded); which one is told
    by its keys. Without it the weights are random: nothing is ever downloaded.
    """
    canonical_name(model_cfg.backbone)  # an unknown name is a ConfigError, whatever the file
    state = read_state_dict(model_cfg.weights) if model_cfg.weights else None
    whole = state is not None and is_whole_model(state)
    try:
        model = GeoLocalizationNet(
            model_cfg.backbone, model_cfg.fc_output_dim, model_cfg.train_all_layers,
            model_cfg.gem_p, torchvision_state=None if whole else state,
        )
        if whole:
            load_cosplace_state_dict(model, state)
    except (RuntimeError, ValueError) as e:
        if state is None:
            raise
        kind = "GeoLocalizationNet/CosPlace" if whole else "torchvision backbone"
        raise CheckpointError(
            f"{model_cfg.weights}: {kind} weights do not fit model.backbone="
            f"{model_cfg.backbone} fc_output_dim={model_cfg.fc_output_dim} "
            f"({str(e).strip().splitlines()[0]})"
        ) from None
    return model
