"""The local launcher's plan: process count and device from the machine, the global batch kept."""
from __future__ import annotations

import pytest

from dist_geo.config import ConfigError, build_config, bundled_config
from dist_geo.train.launch import LocalPlan, plan_local


@pytest.fixture
def demo():
    return build_config(bundled_config("demo"))


@pytest.mark.parametrize("gpus,requested,expected", [
    (0, None, LocalPlan(2, "cpu", 32)),  # no GPU: two gloo ranks
    (1, None, LocalPlan(1, "cuda", 64)),  # one GPU: one rank with the whole batch
    (2, None, LocalPlan(2, "cuda", 32)),  # one rank per GPU
    (2, 1, LocalPlan(1, "cuda", 64)),
    (0, 4, LocalPlan(4, "cpu", 16)),
])
def test_one_rank_per_gpu_else_two_cpu_ranks_same_global_batch(demo, gpus, requested, expected):
    plan = plan_local(demo, requested, gpus)
    assert plan == expected
    assert plan.nproc * plan.per_rank_batch == demo.train.batch_size == 64


def test_more_ranks_than_gpus_is_a_one_line_error(demo):
    with pytest.raises(ConfigError, match="3 processes asked for but 1 GPU"):
        plan_local(demo, 3, gpus=1)


def test_cpu_can_be_asked_for_on_a_gpu_machine_and_cuda_needs_a_gpu(demo):
    demo.train.device = "cpu"
    assert plan_local(demo, None, gpus=8) == LocalPlan(2, "cpu", 32)
    demo.train.device = "cuda"
    with pytest.raises(ConfigError, match="no CUDA device"):
        plan_local(demo, None, gpus=0)


def test_a_global_batch_that_does_not_split_is_refused(demo):
    with pytest.raises(ConfigError, match="does not split evenly over 3 ranks"):
        plan_local(demo, 3, gpus=0)
