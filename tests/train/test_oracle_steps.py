"""Fed the same batches, `dist-geo train` and the oracle (bench/oracle.py) take the same steps.

The oracle is CosPlace's method as a plain single-process loop: plain BatchNorm over the batch,
a dense head, F.cross_entropy, Adam on the network and one Adam per group head. `dist-geo
train` runs the same recipe through its DeepSpeed engine, sharded heads, head optimizers and
group schedule; with one rank, and with two ranks splitting the same global batch (gloo,
synchronised batch norm, all-gathered embeddings). Both start from the same weights and see the
same batches (the loader is replaced by a fixed list of global batches, each rank taking its
half), over two epochs on two groups, so the head switch and its optimizer are exercised too.
The losses of all 20 steps must agree to 1e-4 relative: the whole training step is the
method's, not just each part of it. Every layer trains (convolutions, batch norms, GeM's p, the
FC), at CosPlace's lr: at the fidelity recipe's 1e-3 the trajectory is chaotic within a few
steps (Adam moves every weight by about lr whatever its gradient's size, so the few gradients
that rounding flips in sign already part two runs of the oracle itself: measured, 1 thread
against 2 differ by 4e-3 after 6 steps).
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from dist_geo.config import build_config
from dist_geo.distributed import init_distributed, shutdown, single_process
from dist_geo.train import trainer as trainer_module

ORACLE_FILE = Path(__file__).resolve().parents[2] / "bench" / "oracle.py"
EPOCHS, ITERATIONS, BATCH, SIZE, DIM = 2, 10, 8, 32, 16
LR, HEAD_LR = 1e-5, 1e-2  # CosPlace's
RTOL = 1e-4


def load_oracle():
    spec = importlib.util.spec_from_file_location("dist_geo_bench_oracle", ORACLE_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def global_batches(classes: list[int]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """batches[g][i]: the i-th global batch of group g (images, labels), fixed by a seed."""
    generator = torch.Generator().manual_seed(7)
    return [[(torch.randn(BATCH, 3, SIZE, SIZE, generator=generator),
              torch.randint(0, classes[g], (BATCH,), generator=generator))
             for _ in range(ITERATIONS)] for g in range(EPOCHS)]


class FixedBatches:
    """The loader contract over fixed global batches: this rank's contiguous share of each."""

    def __init__(self, batches, ctx):
        share, rank, device = BATCH // ctx.world_size, ctx.rank, ctx.device
        self.batches = iter([(x[rank * share:(rank + 1) * share].to(device),
                              y[rank * share:(rank + 1) * share].to(device)) for x, y in batches])

    def __next__(self):
        return next(self.batches)

    def stats(self) -> dict:
        return {"corrupt_samples": 0}


def config(overrides: list[str], out: Path):
    return build_config(overrides=overrides + [
        f"train.out={out}", f"train.epochs_num={EPOCHS}", f"train.iterations_per_epoch={ITERATIONS}",
        f"train.batch_size={BATCH}", f"data.image_size={SIZE}", f"model.fc_output_dim={DIM}",
        "model.train_all_layers=true", f"optim.lr={LR}", f"optim.classifiers_lr={HEAD_LR}",
        "train.validate=false", "train.test=false", "train.log_every=1", "tracking.enabled=false",
        "data.groups_num=2",
    ])


def train_on_fixed_batches(cfg, ctx) -> tuple[list[float], dict, list[torch.Tensor]]:
    """(per-step losses, initial network state, initial full head weights) of `dist-geo train`."""
    original = trainer_module.build_train_loader
    trainer = trainer_module.Trainer(cfg, ctx)
    batches = global_batches([h.num_classes for h in trainer.heads])
    trainer_module.build_train_loader = (
        lambda cfg, g, ctx, epoch, start_batch=0: FixedBatches(batches[g], ctx))
    try:
        initial = copy.deepcopy(trainer.engine.module.state_dict())
        heads = [h.full_weight().cpu() for h in trainer.heads]
        trainer.run()
    finally:
        trainer_module.build_train_loader = original
    return [loss for _, loss in trainer.loss_log], initial, heads


def oracle_losses(initial: dict, heads: list[torch.Tensor], device: str = "cpu") -> list[float]:
    """The oracle's losses on the same batches from the same weights."""
    oracle = load_oracle()
    recipe = oracle.Recipe(fc_output_dim=DIM, lr=LR, classifiers_lr=HEAD_LR)
    model = oracle.GeoLocalizationNet(recipe.backbone, DIM, train_all_layers=True)
    model.load_state_dict({k.replace("module.", ""): v for k, v in initial.items()})
    model.to(device).train()
    margin_heads = []
    for weight in heads:
        head = oracle.MarginHead(DIM, len(weight), recipe)
        head.weight.data.copy_(weight)
        margin_heads.append(head.to(device))
    model_optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    head_optimizers = [torch.optim.Adam(h.parameters(), lr=HEAD_LR) for h in margin_heads]
    batches = global_batches([len(w) for w in heads])
    return [oracle.train_step(model, margin_heads[g], model_optimizer, head_optimizers[g],
                              x.to(device), y.to(device)).item()
            for g in range(EPOCHS) for x, y in batches[g]]


def _rank_main(rank: int, port: int, overrides: list[str], out: str, device: str) -> None:
    torch.set_num_threads(1)
    torch.backends.cudnn.allow_tf32 = False
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = init_distributed(device)
    try:
        losses, _, _ = train_on_fixed_batches(
            config(overrides + [f"train.device={device}"], Path(out)), ctx)
    finally:
        shutdown()
    if rank == 0:
        Path(out, "losses.json").write_text(json.dumps(losses))


@pytest.fixture(scope="module")
def one_rank(train_overrides, tmp_path_factory):
    """(our losses, the oracle's losses, how often the engine all-reduced gradients)."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    out = tmp_path_factory.mktemp("one_rank")
    reductions = []
    real = DeepSpeedEngine.allreduce_gradients
    DeepSpeedEngine.allreduce_gradients = lambda *a, **k: reductions.append(real(*a, **k))
    try:
        losses, initial, heads = train_on_fixed_batches(
            config(train_overrides, out), single_process())
    finally:
        DeepSpeedEngine.allreduce_gradients = real
    return losses, oracle_losses(initial, heads), len(reductions)


def assert_same_losses(ours: list[float], oracle: list[float]) -> None:
    assert len(ours) == len(oracle) == EPOCHS * ITERATIONS
    worst = max(abs(a - b) / abs(b) for a, b in zip(ours, oracle))
    assert worst < RTOL, f"largest relative difference {worst:.2e}: {list(zip(ours, oracle))}"


def test_one_rank_takes_the_oracles_steps(one_rank):
    ours, oracle, _ = one_rank
    assert_same_losses(ours, oracle)
    first_group = oracle[:ITERATIONS]  # it learns: the comparison is not of two flat lines
    assert sum(first_group[-3:]) < sum(first_group[:3])


def test_one_rank_reduces_no_gradients(one_rank):
    """An all-reduce over one rank is the identity, but costs a copy of every gradient into a
    flat buffer and back each step (a tenth of a CPU step): the engine must skip it."""
    assert one_rank[2] == 0


def two_ranks(overrides: list[str], out: Path, device: str) -> list[float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(port, overrides, str(out), device), nprocs=2, join=True)
    return json.loads((out / "losses.json").read_text())


def test_two_ranks_with_the_same_global_batch_take_the_oracles_steps(
        one_rank, train_overrides, tmp_path):
    assert_same_losses(two_ranks(train_overrides, tmp_path, "cpu"), one_rank[1])


@pytest.fixture
def no_tf32():
    """Exact fp32 convolutions and matmuls on the GPU (TF32 rounds them to 10 bits)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.gpu
def test_one_gpu_takes_the_oracles_steps(train_overrides, tmp_path, no_tf32):
    cfg = config(train_overrides + ["train.device=cuda"], tmp_path)
    ours, initial, heads = train_on_fixed_batches(cfg, single_process("cuda"))
    assert_same_losses(ours, oracle_losses(initial, heads, "cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (NCCL ranks)")
def test_two_gpus_nccl_take_the_oracles_steps(train_overrides, tmp_path, no_tf32):
    cfg = config(train_overrides + ["train.device=cuda"], tmp_path / "one")
    _, initial, heads = train_on_fixed_batches(cfg, single_process("cuda"))
    assert_same_losses(two_ranks(train_overrides, tmp_path / "two", "cuda"),
                       oracle_losses(initial, heads, "cuda"))
