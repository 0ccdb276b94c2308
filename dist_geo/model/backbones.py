"""Torchvision backbones cut into CosPlace's feature extractors, never downloading weights.

A backbone is an `nn.Sequential` of the network's convolutional part (its state-dict keys are
the indices CosPlace's released models use, e.g. `backbone.4.0.conv1.weight` for a ResNet):
- ResNets: every child but `avgpool` and `fc`; conv1, bn1, layer1 and layer2 frozen (CosPlace).
- VGG-16: `features` without its last ReLU and max-pool; all but the last 5 layers frozen
  (CosPlace).
- EfficientNet (B0..B7, V2-S/M/L), MobileNetV3 (small, large), ConvNeXt (T/S/B/L): their
  `features`. Our rule, chosen to match what the ResNet freezing does: the leading blocks whose
  output stride is at most 8 are frozen (ResNet's layer2 ends at stride 8), measured with a probe
  forward so that the rule is the same for every family.
`train_all_layers=True` leaves everything trainable. BatchNorm statistics of frozen blocks still
update in train mode, as in CosPlace.
"""
from __future__ import annotations

import torch
import torchvision.models as tvm
from torch import nn

from dist_geo.config import ConfigError

RESNETS = ("resnet18", "resnet50", "resnet101", "resnet152")
VGGS = ("vgg16",)
FEATURE_NETS = (
    *(f"efficientnet_b{i}" for i in range(8)),
    "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l",
    "mobilenet_v3_small", "mobilenet_v3_large",
    "convnext_tiny", "convnext_small", "convnext_base", "convnext_large",
)
SUPPORTED_BACKBONES = (*RESNETS, *VGGS, *FEATURE_NETS)
FROZEN_MAX_STRIDE = 8  # leading blocks of FEATURE_NETS with output stride <= this are frozen
_PROBE_SIDE = 64  # probe input side: divisible by 32, so every stride is exact


def canonical_name(name: str) -> str:
    """`ResNet18`, `resnet18` -> `resnet18`; unknown names raise ConfigError listing the known."""
    key = name.strip().lower().replace("-", "_")
    if key not in SUPPORTED_BACKBONES:
        raise ConfigError(
            f"model.backbone={name!r} is not supported (supported: {', '.join(SUPPORTED_BACKBONES)})"
        )
    return key


def torchvision_model(name: str) -> nn.Module:
    """The whole torchvision classifier, randomly initialised (weights=None: no download)."""
    return getattr(tvm, canonical_name(name))(weights=None)


def cut(name: str, model: nn.Module) -> nn.Sequential:
    """The feature extractor of a whole torchvision model, laid out as CosPlace's backbone."""
    name = canonical_name(name)
    if name in RESNETS:
        return nn.Sequential(*list(model.children())[:-2])  # drop avgpool and fc
    if name in VGGS:
        return nn.Sequential(*list(model.features.children())[:-2])  # drop last ReLU + pool
    return model.features


@torch.no_grad()
def probe(backbone: nn.Sequential) -> tuple[list[int], int]:
    """Output stride of each child of `backbone`, and the channels of its last feature map."""
    was_training = backbone.training
    backbone.eval()
    x = torch.zeros(1, 3, _PROBE_SIDE, _PROBE_SIDE, device=next(backbone.parameters()).device)
    strides = []
    for child in backbone:
        x = child(x)
        strides.append(_PROBE_SIDE // x.shape[-1])
    backbone.train(was_training)
    return strides, x.shape[1]


def freeze_early_layers(name: str, backbone: nn.Sequential, strides: list[int]) -> None:
    """Set requires_grad=False on the leading layers CosPlace (or our rule) keeps fixed."""
    name = canonical_name(name)
    if name in VGGS:
        frozen = list(backbone)[:-5]
    else:  # for ResNets this is exactly conv1, bn1, relu, maxpool, layer1, layer2
        first_trained = next(
            (i for i, s in enumerate(strides) if s > FROZEN_MAX_STRIDE), len(strides)
        )
        frozen = list(backbone)[:first_trained]
    for layer in frozen:
        layer.requires_grad_(False)


def build_backbone(
    name: str,
    train_all_layers: bool = False,
    torchvision_state: dict[str, torch.Tensor] | None = None,
) -> tuple[nn.Sequential, int]:
    """(backbone, features_dim). `torchvision_state` is a state dict of the WHOLE torchvision
    model (as torchvision publishes them); it is loaded strictly before cutting, so a
    mismatching file raises RuntimeError (the caller names the file)."""
    model = torchvision_model(name)
    if torchvision_state is not None:
        model.load_state_dict(torchvision_state)
    backbone = cut(name, model)
    strides, features_dim = probe(backbone)
    if not train_all_layers:
        freeze_early_layers(name, backbone, strides)
    return backbone, features_dim
