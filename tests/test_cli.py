import subprocess
import sys

import pytest
import yaml

from dist_geo import __version__
from dist_geo.bench_cli import ALIASES, benchmarks
from dist_geo.cli import SUBCOMMANDS, main
from dist_geo.config import build_config, bundled_config


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SUBCOMMANDS)


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_subcommand_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    assert "usage: dist-geo " + name in capsys.readouterr().out


def test_bad_config_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: {name: softmax}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "dist_geo.cli", "train", "--config", str(bad)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("dist-geo train: error: ") and "bad.yaml" in lines[-1]
    assert "loss.name='softmax'" in lines[-1]


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"dist-geo {__version__}"


@pytest.mark.parametrize("name, sections", [
    ("train", {"loss", "train"}), ("eval", {"eval"}), ("demo", {"train", "loss"}),
    ("soup", {"model"}), ("shard", {"data"}), ("config", {"train", "loss"}),
])
def test_each_command_gives_an_example_of_its_own_and_points_to_config_show(name, sections,
                                                                             capsys):
    """eval's example changes evaluation keys, shard's the grouping keys: keys the command
    uses (a training key in eval's help would teach the wrong thing)."""
    text = " ".join(_help([name], capsys).split())
    example = text.split("config overrides, e.g. ")[1].split(" (every key")[0]
    assert {word.split(".")[0] for word in example.split()} == sections
    assert "dist-geo config show [--config NAME] [key=value ...]" in text


def test_train_help_points_to_config_show_and_launchers(capsys):
    text = _help(["train"], capsys)
    assert "every config key, with its default, range and meaning:" in text
    assert "launch/README.md" in text


def test_tune_help_lists_the_bundled_sweeps(capsys):
    text = _help(["tune"], capsys)
    for name in ("loss_study", "margin_search", "optim_ablation"):
        assert f"\n  {name} " in text


@pytest.mark.parametrize("name", benchmarks())
def test_bench_help_names_the_command(name, capsys):
    shown = {script: alias for alias, script in ALIASES.items()}.get(name, name)
    assert _help(["bench", name], capsys).startswith(f"usage: dist-geo bench {shown} ")


def test_config_show_is_the_resolved_config_with_meanings(capsys):
    assert main(["config", "show", "--config", "demo", "train.epochs_num=2"]) == 0
    text = capsys.readouterr().out
    shown = build_config(base=yaml.safe_load(text))
    assert shown == build_config(bundled_config("demo"), ["train.epochs_num=2"])
    line = next(line for line in text.splitlines() if line.strip().startswith("epochs_num:"))
    assert line.split("#")[1].strip() == \
        "epochs; epoch k trains group k mod groups_num; >= 1; default 50"
    assert "one of cosface | arcface | sphereface | circle" in text
    keys = [line for line in text.splitlines() if ":" in line and not line.startswith("#")]
    assert all("# " in line for line in keys)  # every key and section has its meaning
