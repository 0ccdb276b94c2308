"""Optimizer/schedule builders and the DeepSpeed config, without starting an engine."""
import json

import pytest
import torch

from dist_geo.config import ConfigError, build_config
from dist_geo.distributed import DistContext, single_process
from dist_geo.train.engine import check_precision, deepspeed_config
from dist_geo.train.optim import build_optimizer, build_scheduler, head_lr


def _lrs(overrides, steps, iterations_per_epoch=4):
    cfg = build_config(overrides=overrides)
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg.optim, cfg.optim.lr)
    scheduler = build_scheduler(optimizer, cfg.sched, iterations_per_epoch)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_then_cosine_per_iteration():
    lrs = _lrs(["optim.lr=1.0", "sched.name=cosine", "sched.T_max=2", "sched.eta_min=0",
                "sched.warmup_steps=3"], steps=12)
    assert lrs[0] == pytest.approx(0.25) and lrs[2] == pytest.approx(0.75)  # linear warm-up
    assert lrs[3] == pytest.approx(1.0)  # then the cosine starts at the base lr
    assert lrs[3 + 4] == pytest.approx(0.5)  # half of T_max = 1 epoch = 4 iterations later
    assert lrs[3 + 8] == pytest.approx(0.0, abs=1e-9)


def test_step_schedule_counts_epochs_and_heads_follow():
    lrs = _lrs(["optim.lr=1.0", "sched.name=step", "sched.step_size=1", "sched.gamma=0.1"], 9)
    assert lrs[:4] == [1.0] * 4 and lrs[4] == pytest.approx(0.1) and lrs[8] == pytest.approx(0.01)
    cfg = build_config(overrides=["optim.lr=1e-5", "optim.classifiers_lr=1e-2"])
    assert head_lr(cfg.optim, 0.5e-5) == pytest.approx(0.5e-2)


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                      ("sgd", torch.optim.SGD)])
def test_optimizer_choice_skips_frozen(name, cls):
    cfg = build_config(overrides=[f"optim.name={name}"])
    frozen = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
    optimizer = build_optimizer([frozen, torch.nn.Parameter(torch.zeros(1))], cfg.optim, 0.1)
    assert isinstance(optimizer, cls) and len(optimizer.param_groups[0]["params"]) == 1


def test_deepspeed_config_from_keys_and_user_json(tmp_path):
    cfg = build_config(overrides=["train.batch_size=8", "train.zero_stage=2",
                                  "train.precision=bf16", "optim.clip_grad_norm=1.5"])
    ds = deepspeed_config(cfg, single_process())
    assert ds["train_batch_size"] == 8 and ds["zero_optimization"]["stage"] == 2
    assert ds["gradient_clipping"] == 1.5
    # Mixed precision is autocast over fp32 weights, never DeepSpeed's whole-model half modes,
    # and gradients are all-reduced in fp32.
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16",
                                    "lower_precision_safe_modules": []}
    assert "bf16" not in ds and "fp16" not in ds
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"stage": 1, "overlap_comm": True}}))
    cfg.train.deepspeed_config = str(user)
    assert deepspeed_config(cfg, single_process())["zero_optimization"]["stage"] == 1
    user.write_text("{not json")
    with pytest.raises(ConfigError, match="ds.json"):
        deepspeed_config(cfg, single_process())


def test_batch_size_is_the_global_batch_split_over_ranks():
    cfg = build_config(overrides=["train.batch_size=32"])
    two = DistContext(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"))
    ds = deepspeed_config(cfg, two)
    assert ds["train_batch_size"] == 32 and ds["train_micro_batch_size_per_gpu"] == 16
    assert cfg.train.per_rank_batch(1) == 32 and cfg.train.per_rank_batch(4) == 8
    with pytest.raises(ConfigError, match="batch_size=32 .* 3 ranks"):
        cfg.train.per_rank_batch(3)


def test_fp16_autocast_is_refused_on_the_cpu():
    cfg = build_config(overrides=["train.precision=fp16"])
    with pytest.raises(ConfigError, match="fp16 is not supported on cpu"):
        check_precision(cfg.train.precision, single_process())
