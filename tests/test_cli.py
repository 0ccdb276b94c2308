import subprocess
import sys

import pytest

from dist_geo.cli import SUBCOMMANDS, main


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
