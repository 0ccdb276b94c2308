"""Sweep files: the bundled ones load, coupled keys expand, every mistake is one line naming
the sweep file and the key."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dist_geo.cli import main as dist_geo_main
from dist_geo.config import ConfigError
from dist_geo.tuning.cli import sweep_path
from dist_geo.tuning.sweep import load_sweep


def write(tmp_path: Path, sweep: dict) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


@pytest.mark.parametrize("name, trials", [
    ("loss_study", 5), ("margin_search", 12), ("optim_ablation", 6),
])
def test_bundled_sweeps_load_and_take_a_dataset_override(name, trials):
    sweep = load_sweep(sweep_path(name), ["data.dataset=/data/sf_xl/processed"])
    assert sweep.num_trials() == trials
    assert sweep.base["data.dataset"] == "/data/sf_xl/processed"
    assert sweep.metric == "val_recall_at_1" and sweep.mode == "max"
    assert sweep.param_space().keys() == sweep.space.keys()


def test_loss_study_expands_coupled_keys_into_typed_configs():
    sweep = load_sweep(sweep_path("loss_study"))
    configs = [sweep.trial_config({"loss": label}).loss for label in sweep.space["loss"].values]
    assert [(c.name, c.s, c.m) for c in configs[:4]] == [
        ("cosface", 30.0, 0.4), ("cosface", 64.0, 0.35), ("arcface", 64.0, 0.5),
        ("sphereface", 30.0, 1.5),
    ]
    assert (configs[4].name, configs[4].m, configs[4].gamma) == ("circle", 0.25, 64.0)


def test_base_merges_config_file_inline_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("loss: {name: arcface, s: 64}\noptim: {lr: 1.0e-4}\n")
    path = write(tmp_path, {
        "config": "base.yaml", "base": {"loss.s": 32, "optim": {"name": "adamw"}},
        "space": {"optim.lr": {"loguniform": [1e-6, 1e-3]}, "loss.m": {"grid": [0, 1]}},
    })
    sweep = load_sweep(path, ["loss.gamma=80", "data.augment.hflip=true"])
    cfg = sweep.trial_config({"optim.lr": 3e-5, "loss.m": 1.0})
    assert (cfg.loss.name, cfg.loss.s, cfg.loss.gamma, cfg.optim.name) == ("arcface", 32.0, 80.0, "adamw")
    assert cfg.optim.lr == 3e-5 and cfg.loss.m == 1.0 and cfg.data.augment.hflip is True
    assert sweep.space["loss.m"].values == (0.0, 1.0)  # typed by the config tree
    assert all(isinstance(v, float) for v in sweep.space["loss.m"].values)
    assert sweep.out == Path("runs/tune/s")


@pytest.mark.parametrize("sweep, message", [
    ({"space": {"loss.foo": {"choice": [1]}}}, "unknown config key 'loss.foo'"),
    ({"base": {"optim.lrr": 1}}, "unknown config key 'optim.lrr'"),
    ({"space": {"l": {"grid": [{"loss.name": "arcface", "loss.bar": 1}]}}},
     "unknown config key 'loss.bar'"),
    ({"spaces": {}}, "unknown sweep key 'spaces'"),
    ({"space": {"loss.s": {"uniform": [-1, 2]}}}, "space 'loss.s': loss.s=-1.0 is below"),
    ({"space": {"loss.name": {"choice": ["triplet"]}}}, "space 'loss.name': loss.name='triplet'"),
    ({"space": {"optim.lr": {"normal": [0, 1]}}}, "space 'optim.lr': expected one of"),
    ({"space": {"optim.lr": {"grid": [1e-3]}}, "search": "optuna"}, "use choice instead of grid"),
    ({"space": {"data.M": {"grid": [5, 10]}}}, "space key 'data.M' changes the shards"),
    ({"space": {"model.fc_output_dim": {"choice": [64, 128]}}, "scheduler": "pbt"},
     "'model.fc_output_dim' changes the network's shape"),
    ({"scheduler": {"name": "hyperband"}}, "scheduler.name='hyperband' is not one of"),
])
def test_mistakes_are_one_line_naming_file_and_key(tmp_path, sweep, message):
    path = write(tmp_path, sweep)
    with pytest.raises(ConfigError) as error:
        load_sweep(path)
    text = str(error.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_cli_prints_the_error_without_traceback(tmp_path, capsys):
    path = write(tmp_path, {"space": {"loss.foo": {"choice": [1]}}})
    assert dist_geo_main(["tune", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"dist-geo tune: error: {path}: unknown config key 'loss.foo'"


def test_tune_without_ray_says_which_extra_to_install(tmp_path):
    run_without_ray = ("import sys; sys.modules['ray'] = None; from dist_geo.cli import main; "
                       "sys.exit(main(['tune', 'loss_study']))")
    proc = subprocess.run([sys.executable, "-c", run_without_ray], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith('pip install -e ".[tune]"')
