"""GlobalBatchNorm on 2 gloo ranks against one BatchNorm2d on the whole batch."""
from __future__ import annotations


import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from dist_geo.train.sync_batchnorm import GlobalBatchNorm

CHANNELS = 4


def _batch(offset: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    # unequal halves (5 and 3 images): the count must weigh each rank's statistics
    return torch.randn(8, CHANNELS, 3, 3, generator=generator) * 0.5 + offset


def _run(bn: nn.BatchNorm2d, x: torch.Tensor, upstream: torch.Tensor) -> dict[str, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    y = bn(x)
    (y * upstream).sum().backward()
    return {"y": y.detach(), "dx": x.grad, "dweight": bn.weight.grad, "dbias": bn.bias.grad,
            "running_mean": bn.running_mean, "running_var": bn.running_var}


def _rank(rank: int, store_path: str, offset: float, queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    calls = {"all_gather": 0, "all_reduce": 0}
    for name in calls:
        real = getattr(dist, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)
        setattr(dist, name, counted)
    x, upstream = _batch(offset), torch.randn(8, CHANNELS, 3, 3,
                                              generator=torch.Generator().manual_seed(1))
    part = slice(0, 5) if rank == 0 else slice(5, 8)
    bn = GlobalBatchNorm(CHANNELS)
    result = _run(bn, x[part], upstream[part])
    queue.put((rank, {k: v.numpy().copy() for k, v in result.items()}, dict(calls)))  # no shared memory
    dist.destroy_process_group()


@pytest.mark.parametrize("offset", [0.0, 100.0])  # a large mean defeats sum(x^2)/n - mean^2
def test_two_ranks_compute_one_batchnorm_over_the_global_batch(tmp_path, offset):
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_rank, args=(r, str(tmp_path / "store"), offset, queue))
                 for r in range(2)]
    for p in processes:
        p.start()
    results = {}
    for _ in processes:
        rank, arrays, calls = queue.get(timeout=120)
        results[rank] = ({k: torch.from_numpy(v) for k, v in arrays.items()}, calls)
    for p in processes:
        p.join(timeout=60)
    x = _batch(offset)
    upstream = torch.randn(8, CHANNELS, 3, 3,
                           generator=torch.Generator().manual_seed(1))
    one = _run(nn.BatchNorm2d(CHANNELS), x, upstream)
    r0, r1 = results[0][0], results[1][0]
    close = {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(torch.cat([r0["y"], r1["y"]]), one["y"], **close)
    torch.testing.assert_close(torch.cat([r0["dx"], r1["dx"]]), one["dx"], **close)
    # each rank holds its share of the affine gradients; the engine's all-reduce sums them
    torch.testing.assert_close(r0["dweight"] + r1["dweight"], one["dweight"], **close)
    torch.testing.assert_close(r0["dbias"] + r1["dbias"], one["dbias"], **close)
    for r in (r0, r1):
        torch.testing.assert_close(r["running_mean"], one["running_mean"], **close)
        torch.testing.assert_close(r["running_var"], one["running_var"], **close)
    # one collective each way per layer: the cost that makes it affordable on CPU
    assert results[0][1] == {"all_gather": 1, "all_reduce": 1}


def test_alone_or_in_eval_mode_it_is_batchnorm():
    x = torch.randn(4, CHANNELS, 2, 2)
    ours, theirs = GlobalBatchNorm(CHANNELS), nn.BatchNorm2d(CHANNELS)
    torch.testing.assert_close(ours(x), theirs(x))
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x))
    assert set(ours.state_dict()) == set(theirs.state_dict())
