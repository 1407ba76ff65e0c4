"""log.csv: rows flushed as written, rewritten on resume whatever state it is in; the bar."""

from __future__ import annotations

import csv
import sys
import types

import pytest
import torch

from sagan_tutorial.runlog import LossMeter, RunLog, in_notebook, read_log

COLUMNS = ["step", "d_loss", "g_loss", "steps_per_s"]


def rows_of(path):
    with open(path, newline="") as file:
        return list(csv.reader(file))


def test_the_header_is_on_disk_before_the_first_row(tmp_path):
    log = RunLog(tmp_path, COLUMNS, step=0, tensorboard=False)
    assert rows_of(tmp_path / "log.csv") == [COLUMNS]  # a kill now leaves a header
    log.write({"step": 1, "d_loss": 1.5, "g_loss": 0.5, "steps_per_s": 3.0})
    assert rows_of(tmp_path / "log.csv")[1] == ["1", "1.5", "0.5", "3.0"]  # flushed
    log.close()


def write(path, text: str | bytes):
    path.write_bytes(text.encode() if isinstance(text, str) else text)


GOOD = "step,d_loss,g_loss,steps_per_s\n1,1.0,0.5,3\n2,0.9,0.6,3\n3,0.8,0.7,3\n"


@pytest.mark.parametrize(
    ("content", "kept"),
    [
        (GOOD, [1, 2]),  # rows past the checkpoint (step 2) are dropped
        (GOOD.split("\n", 1)[1], [1, 2]),  # the header was lost: rows read in column order
        (GOOD.encode() + b"\0" * 512, [1, 2]),  # NUL bytes after a power loss
        (GOOD[:-9] + "\n2,0.9", [1, 2]),  # a damaged last row
        ("step,d_loss,g_loss,steps_per_s\n1,1.0,x,3\n2,0.9,0.6,3\n", [2]),  # not a number
        ("step,d_loss,g_loss,steps_per_s\n2,1,1,1\n1,1,1,1\n", [2]),  # steps must increase
        ("", []),
        (b"\xff\xfe garbage", []),
    ],
)
def test_resume_rewrites_the_log_from_the_checkpoint_step(tmp_path, content, kept):
    write(tmp_path / "log.csv", content)
    log = RunLog(tmp_path, COLUMNS, step=2, tensorboard=False)
    log.write({"step": 3, "d_loss": 0.1, "g_loss": 0.2, "steps_per_s": 9.0})
    log.close()
    rows = rows_of(tmp_path / "log.csv")
    assert rows[0] == COLUMNS
    assert [int(row[0]) for row in rows[1:]] == [*kept, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["log.csv"]  # rewritten through a temp file


def test_no_log_file_gives_no_rows(tmp_path):
    assert read_log(tmp_path / "log.csv") == []


def test_read_log_maps_an_older_header_by_name(tmp_path):
    write(tmp_path / "log.csv", "step,g_loss,d_loss\n1,0.5,1.0\n")
    (row,) = read_log(tmp_path / "log.csv", COLUMNS)
    assert row == {"step": 1, "g_loss": 0.5, "d_loss": 1.0}


def test_loss_meter_finds_the_first_bad_step_and_averages():
    meter = LossMeter()
    for d in (1.0, 3.0):
        meter.add(torch.tensor([d, 0.5]))
    assert meter.first_non_finite() is None and len(meter) == 2
    assert meter.mean_and_clear() == (2.0, 0.5) and len(meter) == 0
    for losses in ([1.0, 1.0], [float("nan"), 1.0], [1.0, float("inf")]):
        meter.add(torch.tensor(losses))
    back, d_loss, g_loss = meter.first_non_finite()
    assert back == 1 and d_loss != d_loss and g_loss == 1.0  # 1 step before the latest: NaN D


def test_progress_bar_shows_in_a_notebook_kernel_only(monkeypatch):
    class ZMQInteractiveShell:  # the class name of the shell inside a Jupyter kernel
        pass

    class TerminalInteractiveShell:
        pass

    fake = types.ModuleType("IPython")
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert not in_notebook()  # IPython imported but no running shell
    fake.get_ipython = TerminalInteractiveShell
    assert not in_notebook()
    fake.get_ipython = ZMQInteractiveShell
    assert in_notebook()
    monkeypatch.delitem(sys.modules, "IPython")
    assert not in_notebook()


@pytest.mark.parametrize(
    "bad_line",
    [
        '3,"0.5,0.5',  # a stray quote: read whole, it swallowed every row after it
        "3,0.5\x00,0.5",
        "3," + "9" * 200_000 + ",0.5",  # longer than the csv module's field limit
        "3,0.5\r0.5,0.5",
        "\xff\xfe\x00binary",
    ],
)
def test_one_bad_line_costs_one_row(tmp_path, bad_line):
    rows = ["step,d_loss,g_loss", "1,0.1,0.2", "2,0.3,0.4", bad_line, "4,0.5,0.6", "5,0.7,0.8"]
    text = "\n".join(rows) + "\n"  # the log ends each row with a newline
    (tmp_path / "log.csv").write_bytes(text.encode("utf-8", "surrogateescape"))
    assert [row["step"] for row in read_log(tmp_path / "log.csv")] == [1, 2, 4, 5]


def test_a_last_row_without_its_newline_was_cut_short_and_is_dropped(tmp_path):
    (tmp_path / "log.csv").write_text("step,d_loss,g_loss\n1,0.5,0.5\n2,0.5,0.1")
    assert [row["step"] for row in read_log(tmp_path / "log.csv")] == [1]


def test_an_overlong_line_is_skipped_in_pieces(tmp_path, monkeypatch):
    from sagan_tutorial import runlog

    monkeypatch.setattr(runlog, "MAX_LINE", 16)  # a 1 GB line, scaled down
    text = "step,d_loss\n1,0.5\n2," + "9" * 100 + "\n3,0.25\n"
    (tmp_path / "log.csv").write_text(text)
    assert [row["step"] for row in read_log(tmp_path / "log.csv")] == [1, 3]


def test_a_log_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    log = RunLog(tmp_path, ["step", "d_loss"], step=0, tensorboard=False)

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(log, "writer", types.SimpleNamespace(writerow=full))
    with pytest.raises(OSError, match=r"cannot write the training log .*log.csv: No space left"):
        log.write({"step": 1, "d_loss": 0.5})
    log.close()
