"""CosPlace's released models <-> ours.

Our `GeoLocalizationNet` has CosPlace's exact module layout, so the state dicts share their keys
(`backbone.*`, `aggregation.1.p`, `aggregation.3.weight`, `aggregation.3.bias`). What differs
between files in the wild is the wrapping: models trained under DataParallel/DDP carry a
`module.` prefix, and CosPlace's training checkpoints keep the weights under
`model_state_dict`. This module unwraps both, checks the shapes against ours with a one-line
error, and exports ours as a plain CosPlace state dict.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

WHOLE_MODEL_PREFIXES = ("backbone.", "aggregation.")


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The model state dict inside a file's content, without `module.` prefixes."""
    if isinstance(obj, dict) and isinstance(obj.get("model_state_dict"), dict):
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("not a state dict (a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def is_whole_model(state_dict: dict[str, torch.Tensor]) -> bool:
    """True for a GeoLocalizationNet / CosPlace state dict, False for a bare torchvision one."""
    return any(k.startswith(WHOLE_MODEL_PREFIXES) for k in state_dict)


def load_cosplace_state_dict(model: nn.Module, obj: Any) -> None:
    """Load a CosPlace (or our) state dict into `model`, strictly.

    Raises ValueError with a one-line reason (missing/unexpected keys, or the first shape
    mismatch, e.g. another fc_output_dim or backbone); the caller adds the file name.
    """
    state = unwrap_state_dict(obj)
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    if missing or unexpected:
        raise ValueError(
            f"keys do not match the model ({len(missing)} missing, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    for key, value in state.items():
        if value.shape != ours[key].shape:
            raise ValueError(
                f"{key} has shape {tuple(value.shape)}, the model expects {tuple(ours[key].shape)}"
            )
    model.load_state_dict(state)


def export_cosplace_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our model's weights as CosPlace's `torch.save(model.state_dict())` would hold them
    (no wrapper prefix, CPU tensors), loadable by CosPlace's own `GeoLocalizationNet`."""
    module = getattr(model, "module", model)  # unwrap DDP / DeepSpeed engines
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
