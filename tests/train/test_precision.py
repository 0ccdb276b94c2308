"""Mixed precision the standard way: autocast over fp32 master weights, the sensitive parts fp32.

bf16 autocast runs on the CPU too, so it is checked here; the GPU tests (marked `gpu`, skipped
without CUDA) add fp16 with loss scaling and the DALI GPU loader.
"""
from __future__ import annotations

import pytest
import torch

from dist_geo.config import build_config
from dist_geo.distributed import single_process
from dist_geo.model.pooling import GeM, L2Norm
from dist_geo.train.engine import grad_scaler, step_head
from dist_geo.train.trainer import Trainer


def dtypes_seen(trainer: Trainer) -> dict[str, set[torch.dtype]]:
    """Output dtypes of the first convolution, GeM and the L2 norms during one epoch."""
    seen: dict[str, set[torch.dtype]] = {"conv": set(), "gem": set(), "l2": set()}
    module = trainer.engine.module
    hooks = [module.backbone[0].register_forward_hook(lambda m, i, o: seen["conv"].add(o.dtype))]
    for m in module.modules():
        if isinstance(m, GeM):
            hooks.append(m.register_forward_hook(lambda m, i, o: seen["gem"].add(o.dtype)))
        if isinstance(m, L2Norm):
            hooks.append(m.register_forward_hook(lambda m, i, o: seen["l2"].add(o.dtype)))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    metrics = trainer.train_epoch(0)
    for h in hooks:
        h.remove()
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    changed = [k for k, v in module.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("weight") for k in changed)  # it trained
    return seen


def assert_fp32_state(trainer: Trainer) -> None:
    """Master weights, batch-norm buffers, heads and every optimizer state stay fp32."""
    module = trainer.engine.module
    assert {p.dtype for p in module.parameters()} == {torch.float32}
    assert {b.dtype for b in module.buffers() if b.is_floating_point()} == {torch.float32}
    assert {h.weight.dtype for h in trainer.heads} == {torch.float32}
    for optimizer in [trainer.engine.optimizer, *trainer.head_optimizers]:
        for state in optimizer.state.values():
            assert all(v.dtype == torch.float32 for v in state.values()
                       if torch.is_tensor(v) and v.is_floating_point())


def build_trainer(overrides: list[str], precision: str, device: str, tmp_path) -> Trainer:
    cfg = build_config(overrides=overrides + [
        f"train.precision={precision}", f"train.device={device}", f"train.out={tmp_path}",
        "train.validate=false", "train.test=false", "tracking.enabled=false"])
    return Trainer(cfg, single_process(device))


def test_bf16_is_autocast_over_fp32_weights_on_the_cpu(train_overrides, tmp_path):
    trainer = build_trainer(train_overrides, "bf16", "cpu", tmp_path)
    seen = dtypes_seen(trainer)
    assert seen["conv"] == {torch.bfloat16}  # the convolutions run in bf16 ...
    assert seen["gem"] == {torch.float32} and seen["l2"] == {torch.float32}  # ... GeM, L2 not
    assert_fp32_state(trainer)
    assert grad_scaler(trainer.engine) is None  # bf16 needs no loss scaling


def test_fp32_runs_no_autocast(train_overrides, tmp_path):
    trainer = build_trainer(train_overrides, "fp32", "cpu", tmp_path)
    assert dtypes_seen(trainer)["conv"] == {torch.float32}
    assert_fp32_state(trainer)


@pytest.mark.gpu
@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_gpu_autocast_over_fp32_weights(train_overrides, tmp_path, precision, dtype):
    trainer = build_trainer(train_overrides, precision, "cuda", tmp_path)
    seen = dtypes_seen(trainer)
    assert seen["conv"] == {dtype}
    assert seen["gem"] == {torch.float32} and seen["l2"] == {torch.float32}
    assert_fp32_state(trainer)
    assert (grad_scaler(trainer.engine) is not None) == (precision == "fp16")


@pytest.mark.gpu
def test_fp16_head_step_is_skipped_on_overflow_like_the_networks(train_overrides, tmp_path):
    """A head gradient with inf is not applied, and the loss scale backs off (GradScaler)."""
    trainer = build_trainer(train_overrides, "fp16", "cuda", tmp_path)
    trainer.train_epoch(0)  # creates the optimizers' state
    scaler = grad_scaler(trainer.engine)
    head, optimizer = trainer.heads[1].cuda(), trainer.head_optimizers[1]
    before, scale = head.weight.detach().clone(), scaler.get_scale()
    head.weight.grad = torch.full_like(head.weight, float("inf"))
    step_head(trainer.engine, head, optimizer, 0.0)
    scaler.update()
    assert torch.equal(head.weight.detach(), before) and scaler.get_scale() < scale
