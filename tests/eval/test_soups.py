import json

import pytest
import torch
from torch import nn

from dist_geo.cli import main as cli_main
from dist_geo.config import build_config
from dist_geo.errors import CheckpointError
from dist_geo.eval.soups import average_state_dicts, check_same_architecture, greedy_soup
from dist_geo.model.network import build_model


def tiny(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_uniform_soup_is_the_average():
    a, b = tiny(0).state_dict(), tiny(1).state_dict()
    soup = average_state_dicts([a, b])
    torch.testing.assert_close(soup["0.weight"], (a["0.weight"] + b["0.weight"]) / 2)
    assert soup["1.num_batches_tracked"].dtype == torch.int64


def test_greedy_adds_only_what_improves():
    states = [{"w": torch.tensor([float(v)])} for v in (0.0, 10.0, 4.0, 2.0)]
    # mocked val recall@1: best when the averaged weight is 5
    score = lambda s: 100.0 - abs(s["w"].item() - 5.0)  # noqa: E731
    soup = greedy_soup(states, score)
    # order by own score: 4 (99), 2 (97), 10 (95), 0 (95)
    # {4,2}=3 (98, worse) no; {4,10}=7 (98) no; {4,0}=2 (97) no
    assert soup.ingredients == [2]
    states.append({"w": torch.tensor([6.0])})  # {4,6}=5 (100) improves
    assert greedy_soup(states, score).ingredients == [2, 4]


def test_different_architectures_are_refused():
    with pytest.raises(CheckpointError, match="b.pth"):
        check_same_architecture(
            [tiny(0).state_dict(), nn.Linear(3, 4).state_dict()], ["a.pth", "b.pth"])


def test_soup_command_writes_an_evaluable_state_dict(known_dataset, tmp_path):
    cfg = build_config(overrides=["model.fc_output_dim=16"])
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(tmp_path / f"m{seed}.pth")
        torch.save(build_model(cfg.model).state_dict(), paths[-1])
    out = tmp_path / "soup.pth"
    code = cli_main(["soup", "--checkpoints", *map(str, paths), "--method", "greedy",
                     "--dataset", str(known_dataset), "--out", str(out),
                     "model.fc_output_dim=16", "data.num_workers=0", "eval.recall_values=[1]"])
    assert code == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert len(summary["individual_recall_at_1"]) == 2
    assert summary["soup_recall_at_1"] >= max(summary["individual_recall_at_1"])
    model = build_model(cfg.model)
    model.load_state_dict(torch.load(out, weights_only=True))
