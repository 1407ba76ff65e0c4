"""``python -m sagan_tutorial``: train, sample, evaluate, bench; help and error handling."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sagan_tutorial.cli import BENCH_VARIANTS, main
from sagan_tutorial.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--g-width",
    "16",
    "--d-width",
    "16",
    "--batch-size",
    "8",
    "--no-progress",
    "--no-tensorboard",
    "--sample-every",
    "0",
    "--log-every",
    "1",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two-step checkpoints of a tiny unconditional and a tiny conditional model."""
    root = tmp_path_factory.mktemp("cli")
    paths = {}
    for name, extra in (("plain", []), ("conditional", ["--num-classes", "10"])):
        out = root / name
        assert main(["train", *TINY, *extra, "--steps", "2", "--out", str(out)]) == 0
        paths[name] = out / "checkpoint.pt"
    return paths


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("command", ["train", "sample", "evaluate", "bench"])
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m sagan_tutorial {command}")
    expected = {
        "train": [
            "--dataset",
            "--steps",
            "--batch-size",
            "--seed",
            "--out",
            "--resume",
            "--device",
            "--n-dis",
            "--ema-decay",
            "--amp",
            "--g-attention",
        ],
        "sample": ["--checkpoint", "--out", "--n", "--seed", "--class", "--no-ema"],
        "evaluate": ["--checkpoint", "--n"],
        "bench": ["--steps", "--quick"],
    }[command]
    assert all(flag in out for flag in expected)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--steps", "many"], "argument --steps: invalid int value: 'many'"),
        (["train", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["train", "--image-size", "48"], "image_size must be one of (32, 64, 128), got 48"),
        (["train", "--g-attention", "3"], "g_attention: the networks at image_size=32"),
        (["train", "--loss", "hinj"], "loss must be one of"),
        (["train", "--batch-size", "5000", "--out", "{tmp}"], "fewer than one batch of 5000"),
        (["train", "--resume", "--out", "{tmp}"], "no checkpoint at"),
        (["sample", "--checkpoint", "{tmp}/absent.pt"], "no checkpoint at"),
        (["evaluate", "--checkpoint", "{tmp}/absent.pt"], "no checkpoint at"),
        (["bench", "--steps", "0"], "--steps must be at least 1, got 0"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_errors_are_one_line_with_status_2(args, message, tmp_path, capsys):
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    try:
        status = main(args)
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    assert status == 2
    assert message in error_line(capsys)


def test_errors_from_a_real_process_have_no_traceback(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(100))
    for args in (["train", "--sn", "everywhere"], ["sample", "--checkpoint", str(junk)]):
        run = subprocess.run(
            [sys.executable, "-m", "sagan_tutorial", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 2
        assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: "), run.stderr
        assert "Traceback" not in run.stderr


def test_bad_checkpoints_for_sample(tmp_path, checkpoints, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["sample", "--checkpoint", str(junk)]) == 2
    assert "junk.pt is not a checkpoint written by sagan_tutorial" in error_line(capsys)
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(checkpoints["plain"]),
                "--class",
                "3",
                "--out",
                str(tmp_path / "x.png"),
            ]
        )
        == 2
    )
    assert "--class needs a conditional model" in error_line(capsys)
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(checkpoints["conditional"]),
                "--class",
                "10",
                "--out",
                str(tmp_path / "x.png"),
            ]
        )
        == 2
    )
    assert "--class must be a class of this conditional model (0 to 9), got 10" in error_line(
        capsys
    )
    assert not (tmp_path / "x.png").exists()


def test_train_resume_from_the_command_line(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *TINY, "--steps", "2", "--out", out]) == 0
    assert "step 2: " in capsys.readouterr().out
    assert main(["train", "--resume", "--out", out, "--lr-d", "0.1"]) == 2
    line = error_line(capsys)
    assert "cannot resume" in line and "lr_d: 0.0004 in the checkpoint, 0.1 given" in line
    # only the flags given change: the tiny widths and batch come from the checkpoint
    assert main(["train", "--resume", "--out", out, "--steps", "3", "--no-progress"]) == 0
    state = load_checkpoint(Path(out) / "checkpoint.pt")
    assert state["step"] == 3 and state["config"]["model"]["g_width"] == 16
    assert state["config"]["batch_size"] == 8


def test_sample_writes_a_grid(tmp_path, checkpoints, capsys):
    png = tmp_path / "grid.png"
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(checkpoints["plain"]),
                "--out",
                str(png),
                "--n",
                "6",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    assert Image.open(png).size == (3 * 34 - 2, 2 * 34 - 2)  # 6 digits, 3 per row
    first = png.read_bytes()
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(checkpoints["plain"]),
                "--out",
                str(png),
                "--n",
                "6",
                "--device",
                "cpu",
                "--no-ema",
            ]
        )
        == 0
    )
    assert png.read_bytes() != first  # G itself differs from its average
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(checkpoints["conditional"]),
                "--out",
                str(png),
                "--n",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert Image.open(png).size == (2 * 34 - 2, 10 * 34 - 2)  # a row per class
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(checkpoints["conditional"]),
                "--out",
                str(png),
                "--n",
                "4",
                "--class",
                "7",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert Image.open(png).size == (2 * 34 - 2, 2 * 34 - 2)


def test_evaluate_prints_fid_kid_and_the_floor(checkpoints, capsys):
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(checkpoints["conditional"]),
                "--n",
                "200",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| ")]
    names = [row[1].strip() for row in rows]
    assert names == ["", "EMA generator", "real vs real (floor)"]
    fid_g, fid_floor = (float(row[2]) for row in rows[1:])
    assert fid_g > fid_floor >= 0  # two training steps are far from real digits
    assert "class accuracy of the samples" in out


def test_bench_prints_its_table(capsys):
    assert main(["bench", "--quick", "--steps", "1", "--repeats", "1", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("device: cpu")
    assert lines[1] == "| variant | steps/s | vs plain | CPU s/step | vs plain |"
    rows = [line.split("|") for line in lines[3:]]
    assert [row[1].strip() for row in rows] == [name for name, _, _ in BENCH_VARIANTS]
    assert rows[0][3].strip() == rows[0][5].strip() == "1.00x"  # the baseline against itself
    for row in rows:
        rate, seconds = float(row[2]), float(row[4])
        assert rate > 0 and seconds > 0
        assert float(row[3].strip().rstrip("x")) == pytest.approx(
            rate / float(rows[0][2]), abs=0.02
        )
