"""ShardedMarginHead: world size 1 is the dense head; world size 2 (gloo, spawned ranks) gives
the dense head's loss and gradients on the same global batch; sampling; init; reslice."""
from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from dist_geo.config import LossConfig
from dist_geo.distributed import DistContext, single_process
from dist_geo.model import partial_fc
from dist_geo.model.partial_fc import build_head, class_range, init_rows, memory_bytes, reslice

torch.set_num_threads(1)
PUBLISHED = {  # each loss with its published parameters
    "cosface": {"s": 30.0, "m": 0.4},
    "arcface": {"s": 64.0, "m": 0.5},
    "sphereface": {"s": 30.0, "m": 1.5},
    "circle": {"m": 0.25, "gamma": 64.0},
}
LOSSES = tuple(PUBLISHED)
WORLD, B, K, D, C = 2, 4, 6, 8, 7  # C odd: shards of 4 and 3 classes


def problem():
    """A tiny replicated 'backbone' (Linear K->D), the global batch and the full head weight."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(WORLD * B, K, generator=g)
    labels = torch.randint(0, C, (WORLD * B,), generator=g)
    backbone = torch.nn.Linear(K, D)
    backbone.weight.data = torch.randn(D, K, generator=g)
    backbone.bias.data = torch.randn(D, generator=g)
    weight = torch.randn(C, D, generator=g)
    return images, labels, backbone, weight


def dense_reference(name: str):
    """Single process, whole batch, whole head: the numbers every rank must reproduce."""
    images, labels, backbone, weight = problem()
    head = build_head(LossConfig(name=name, **PUBLISHED[name]), D, C, single_process())
    head.weight.data = weight.clone()
    embeddings = backbone(images)
    embeddings.retain_grad()
    loss = head(embeddings, labels)
    loss.backward()
    return loss.detach(), embeddings.grad, backbone.weight.grad, head.weight.grad


def _rank_main(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    ctx = DistContext(rank=rank, world_size=WORLD, local_rank=rank, device=torch.device("cpu"))
    images, labels, backbone, weight = problem()
    mine = slice(rank * B, (rank + 1) * B)
    results = {}
    for name in LOSSES:
        backbone.zero_grad()
        head = build_head(LossConfig(name=name, **PUBLISHED[name]), D, C, ctx)
        head.weight.data = weight[head.class_start: head.class_end].clone()
        embeddings = backbone(images[mine])
        embeddings.retain_grad()
        loss = head(embeddings, labels[mine])
        loss.backward()
        for p in backbone.parameters():  # what DDP / DeepSpeed do to data-parallel grads
            dist.all_reduce(p.grad)
            p.grad /= WORLD
        results[name] = (loss.detach(), embeddings.grad, backbone.weight.grad.clone(), head.weight.grad)
    full = head.full_weight()
    sampled = build_head(LossConfig(name="cosface", sample_rate=0.5), D, C, ctx)
    sampled_loss = sampled(backbone(images[mine]), labels[mine])
    torch.save({"results": results, "full": full, "sampled_loss": sampled_loss.detach()}, out.format(rank))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path_factory.mktemp("ranks") / "rank{}.pt")
    mp.spawn(_rank_main, args=(port, out), nprocs=WORLD, join=True)
    return [torch.load(out.format(r), weights_only=True) for r in range(WORLD)]


def assert_close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_world_one_is_the_dense_head():
    """The plain head: softmax CE of s*(cos - m*onehot) over all classes (the other margins are
    checked against pytorch-metric-learning in test_margins.py)."""
    images, labels, backbone, weight = problem()
    x = backbone(images).detach().requires_grad_()
    head = build_head(LossConfig(name="cosface"), D, C, single_process())
    head.weight.data = weight.clone()
    cos = F.normalize(x, dim=1) @ F.normalize(weight, dim=1).t()
    ref = F.cross_entropy(30 * (cos - 0.4 * F.one_hot(labels, C)), labels)
    loss = head(x, labels)
    assert_close(loss, ref)
    assert_close(torch.autograd.grad(loss, x)[0], torch.autograd.grad(ref, x)[0])


@pytest.mark.parametrize("name", LOSSES)
def test_two_ranks_equal_the_dense_head(two_ranks, name):
    loss, emb_grad, backbone_grad, weight_grad = dense_reference(name)
    for rank, got in enumerate(two_ranks):
        r_loss, r_emb_grad, r_backbone_grad, r_weight_grad = got["results"][name]
        start, end = class_range(C, rank, WORLD)
        assert_close(r_loss, loss)  # global-batch mean, identical on every rank
        assert_close(r_weight_grad, weight_grad[start:end])  # exact, not averaged
        assert_close(r_emb_grad, WORLD * emb_grad[rank * B:(rank + 1) * B])  # the convention
        assert_close(r_backbone_grad, backbone_grad)  # ... so that DDP averaging is exact


def test_full_weight_gathers_the_shards(two_ranks):
    weight = problem()[3]
    for got in two_ranks:
        assert_close(got["full"], weight)


def test_sampling_keeps_positives_and_agrees_across_ranks(two_ranks):
    assert two_ranks[0]["sampled_loss"] == two_ranks[1]["sampled_loss"]
    head = build_head(LossConfig(name="cosface", sample_rate=0.05), D, 40, single_process())
    target_col = torch.tensor([3, 17, -1, 3, 39])
    index, remapped = head._sample(target_col)
    assert index.tolist() == [3, 17, 39]  # 0.05 * 40 = 2 columns asked, but 3 positives
    head.sample_rate = 0.5
    index, remapped = head._sample(target_col)
    assert len(index) == 20 and {3, 17, 39} <= set(index.tolist())
    assert index[remapped[remapped >= 0]].tolist() == [3, 17, 3, 39]
    assert remapped[2] == -1


def test_sampled_loss_uses_only_sampled_rows():
    torch.manual_seed(0)
    head = build_head(LossConfig(name="cosface", sample_rate=0.25), D, 40, single_process())
    labels = torch.tensor([1, 2, 2, 30])
    head(torch.randn(4, D), labels).backward()
    touched = (head.weight.grad.abs().sum(1) > 0).nonzero().flatten().tolist()
    assert {1, 2, 30} <= set(touched) and len(touched) == 10
    assert head.sample_step == 1
    head.eval()
    head(torch.randn(4, D), labels)
    assert head.sample_step == 1  # evaluation uses every class


def test_class_range_and_reslice():
    assert [class_range(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert class_range(1, 1, 2) == (1, 1)  # more ranks than classes: an empty shard
    full = torch.arange(22.0).reshape(11, 2)
    three = reslice([full[:6], full[6:]], 3)
    assert [len(s) for s in three] == [4, 4, 3]
    assert_close(torch.cat(reslice(three, 1)), full)


def test_init_does_not_depend_on_world_size(monkeypatch):
    monkeypatch.setattr(partial_fc, "INIT_BLOCK", 4)
    whole = init_rows(11, 5, 0, 11, seed=3)
    parts = [init_rows(11, 5, *class_range(11, r, 3), seed=3) for r in range(3)]
    assert torch.equal(torch.cat(parts), whole)
    assert not torch.equal(whole, init_rows(11, 5, 0, 11, seed=4))
    bound = (6 / (11 + 5)) ** 0.5  # xavier_uniform_, as CosPlace
    assert whole.abs().max() <= bound and whole.abs().max() > 0.8 * bound


def test_labels_out_of_range_are_refused():
    head = build_head(LossConfig(), D, C, single_process())
    with pytest.raises(ValueError, match=r"labels must be in \[0, 7\)"):
        head(torch.randn(2, D), torch.tensor([0, 7]))


def test_bf16_embeddings_under_autocast_give_a_float32_loss():
    images, labels, backbone, weight = problem()
    head = build_head(LossConfig(), D, C, single_process())
    x = backbone(images).detach().to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head(x, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    assert_close(loss, head(x.detach().float(), labels))


def test_memory_bytes_counts_weight_and_adam_state():
    """What a rank holds between steps: its rows and their Adam state (two fp32 moments and the
    step count), summed over those tensors; each of 2 ranks holds its own rows only."""
    head = build_head(LossConfig(), D, C, single_process())
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    assert memory_bytes(head, optimizer) == memory_bytes(head) == C * D * 4  # no state yet
    head(torch.randn(B, D), torch.randint(0, C, (B,))).backward()
    optimizer.step()
    state = optimizer.state[head.weight]
    tensors = [head.weight, state["exp_avg"], state["exp_avg_sq"], state["step"]]
    assert memory_bytes(head, optimizer) == sum(t.nbytes for t in tensors) \
        == 3 * C * D * 4 + state["step"].nbytes
    shards = [build_head(LossConfig(), D, C, DistContext(rank=r, world_size=2, local_rank=r,
                                                          device=torch.device("cpu")))
              for r in range(2)]
    assert [memory_bytes(s) for s in shards] == [4 * D * 4, 3 * D * 4]


def test_row_cosine_is_the_normalised_linear_with_its_gradients():
    """The head's cosines without a normalised copy of the weight kept for backward: the same
    values (bit for bit) and gradients as autograd through F.normalize, also on a zero row."""
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(6, D, generator=g, dtype=torch.float64)).requires_grad_()
    weight = torch.randn(5, D, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(partial_fc._RowCosine.apply, (x, weight.requires_grad_()))
    weight = weight.detach()
    weight[2] = 0.0
    grad = torch.randn(6, 5, generator=g, dtype=torch.float64)
    ours = [t.clone().requires_grad_() for t in (x.detach(), weight)]
    ref = [t.clone().requires_grad_() for t in (x.detach(), weight)]
    out = partial_fc._RowCosine.apply(*ours)
    expected = F.linear(ref[0], F.normalize(ref[1]))
    assert torch.equal(out, expected)
    out.backward(grad)
    expected.backward(grad)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-9 * b.grad.abs().max().item())
