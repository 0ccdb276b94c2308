"""GeoLocalizationNet: layout, freezing, local weights, errors, and CosPlace interop."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dist_geo.config import ConfigError, ModelConfig
from dist_geo.errors import CheckpointError
from dist_geo.model.cosplace_interop import export_cosplace_state_dict
from dist_geo.model.network import build_model

torch.set_num_threads(1)


class CosPlaceReplica(nn.Module):
    """CosPlace's network.py (ResNet-18 branch), re-typed independently of our modules."""

    class GeM(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.ones(1) * 3)

        def forward(self, x):
            return F.avg_pool2d(x.clamp(min=1e-6).pow(self.p), (x.size(-2), x.size(-1))).pow(1.0 / self.p)

    class Flatten(nn.Module):
        def forward(self, x):
            assert x.shape[2] == x.shape[3] == 1
            return x[:, :, 0, 0]

    class L2Norm(nn.Module):
        def forward(self, x):
            return F.normalize(x, p=2.0, dim=1)

    def __init__(self, fc_output_dim: int = 512):
        super().__init__()
        resnet = torchvision.models.resnet18(weights=None)
        self.backbone = nn.Sequential(*list(resnet.children())[:-2])
        self.aggregation = nn.Sequential(
            self.L2Norm(), self.GeM(), self.Flatten(), nn.Linear(512, fc_output_dim), self.L2Norm()
        )

    def forward(self, x):
        return self.aggregation(self.backbone(x))


@pytest.mark.parametrize(
    "backbone,dim", [("resnet18", 512), ("vgg16", 512), ("efficientnet_b0", 1280),
                     ("mobilenet_v3_small", 576), ("convnext_tiny", 768)],
)
def test_forward_gives_unit_descriptors(backbone, dim):
    model = build_model(ModelConfig(backbone=backbone, fc_output_dim=32)).eval()
    assert model.features_dim == dim
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 32)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


def test_resnet_layout_and_freezing_follow_cosplace():
    model = build_model(ModelConfig(backbone="ResNet18"))
    keys = model.state_dict().keys()
    assert {"aggregation.1.p", "aggregation.3.weight", "aggregation.3.bias"} <= set(keys)
    assert keys == CosPlaceReplica().state_dict().keys()
    frozen = {n.split(".")[1] for n, p in model.backbone.named_parameters(prefix="b") if not p.requires_grad}
    assert frozen == {"0", "1", "4", "5"}  # conv1, bn1, layer1, layer2
    assert model.aggregation[1].p.item() == 3.0
    everything = build_model(ModelConfig(train_all_layers=True, gem_p=2.0))
    assert all(p.requires_grad for p in everything.parameters())
    assert everything.aggregation[1].p.item() == 2.0


def test_unknown_backbone_lists_supported():
    with pytest.raises(ConfigError, match="resnet50.*convnext_tiny"):
        build_model(ModelConfig(backbone="alexnet"))


def test_torchvision_weights_load_into_backbone(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    torch.nn.init.constant_(tv.layer3[0].conv1.weight, 0.5)
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    model = build_model(ModelConfig(weights=str(path)))
    torch.testing.assert_close(model.backbone[6][0].conv1.weight, tv.layer3[0].conv1.weight)


def test_bad_weight_files_name_the_file(tmp_path):
    missing = tmp_path / "none.pth"
    with pytest.raises(CheckpointError, match="none.pth: model weights file not found"):
        build_model(ModelConfig(weights=str(missing)))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth: not a readable"):
        build_model(ModelConfig(weights=str(garbage)))
    wrong = tmp_path / "r50.pth"
    torch.save(CosPlaceReplica(fc_output_dim=512).state_dict(), wrong)
    with pytest.raises(CheckpointError, match="r50.pth: GeoLocalizationNet/CosPlace weights do not fit"):
        build_model(ModelConfig(weights=str(wrong), fc_output_dim=128))


def test_cosplace_round_trip(tmp_path):
    """A CosPlace-structured model saved under DataParallel loads into ours (same outputs),
    and ours exported loads back into CosPlace's structure."""
    torch.manual_seed(0)
    cosplace = CosPlaceReplica().eval()
    with torch.no_grad():
        cosplace.aggregation[1].p.fill_(2.5)
    path = tmp_path / "cosplace.pth"
    torch.save({f"module.{k}": v for k, v in cosplace.state_dict().items()}, path)
    ours = build_model(ModelConfig(weights=str(path))).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), cosplace(images))
        ours.aggregation[3].bias.add_(0.1)
        back = CosPlaceReplica().eval()
        back.load_state_dict(export_cosplace_state_dict(ours))
        torch.testing.assert_close(back(images), ours(images))
