"""What a log file gets: plain progress lines instead of redraws, other libraries' INFO left out."""
import logging
import os

from dist_geo.logs import OURS, PlainProgress, progress, setup_logging


def test_progress_off_a_terminal_is_a_line_per_tenth(caplog):
    caplog.set_level(logging.INFO, logger="dist_geo")
    bar = progress(total=20, desc="epoch 0 (group 0)")  # pytest's stderr is not a terminal
    assert isinstance(bar, PlainProgress)
    bar.interval_s = 0.0
    for _ in range(20):
        bar.update()
        bar.set_postfix(loss="1.5")
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10 and lines[-1] == "epoch 0 (group 0): 20/20 (100%), loss 1.5"
    assert not [line for line in lines if "\r" in line]


def test_progress_is_quiet_for_short_loops_and_other_ranks(caplog):
    caplog.set_level(logging.INFO, logger="dist_geo")
    assert list(progress(range(5), desc="fast")) == list(range(5))  # under interval_s: silent
    quiet = PlainProgress(range(5), None, "rank 1", enabled=False, interval_s=0.0)
    assert list(quiet) == list(range(5))
    assert not caplog.records


def test_other_libraries_log_warnings_only(monkeypatch):
    for name in ("", *OURS):  # restored after the test
        monkeypatch.setattr(logging.getLogger(name), "level", logging.getLogger(name).level)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in a fresh process
    monkeypatch.setattr(os, "environ", {})
    setup_logging()
    assert logging.getLogger("dist_geo.demo").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("faiss.loader").getEffectiveLevel() == logging.WARNING
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"
