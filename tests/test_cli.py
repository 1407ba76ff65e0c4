"""``python -m sagan_tutorial``: every command's help, its work, and one line for a bad input.

The error cases run in-process through ``main(argv)``: a subprocess would add nothing but time.
One test runs real processes to see that nothing prints a traceback.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from sagan_tutorial import bench as bench_module
from sagan_tutorial import files
from sagan_tutorial.checkpoint import load_checkpoint
from sagan_tutorial.cli import main
from sagan_tutorial.models import Generator

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


def run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit:  # argparse's own errors and --help
        return exit.code


def error_line(capsys) -> str:
    """The one error line of a failed command: the last line on stderr (a run may have said
    where it writes before it failed)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error:") for line in lines) == 1 and len(lines) <= 2, err
    assert "Traceback" not in err
    return lines[-1]


@pytest.mark.parametrize("command", ["train", "sample", "evaluate", "export", "bench"])
def test_help_of_every_command(command, capsys):
    assert run([command, "--help"]) == 0
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
            "--overwrite",
            "--device",
            "--n-dis",
            "--ema-decay",
            "--amp",
            "--g-attention",
        ],
        "sample": ["--checkpoint", "--out", "--n", "--seed", "--class", "--no-ema", "--overwrite"],
        "evaluate": ["--checkpoint", "--n", "--features", "--inception-weights", "--dataset"],
        "export": ["--checkpoint", "--name", "--out", "--overwrite", "--evaluate", "--metric"],
        "bench": ["--steps", "--quick"],
    }[command]
    assert all(flag in out for flag in expected)


COMMANDS = {  # the smallest valid call of each command, {ck}: a checkpoint, {tmp}: a folder
    "train": ["train", *TINY, "--steps", "1", "--out", "{tmp}/run"],
    "sample": ["sample", "--checkpoint", "{ck}", "--out", "{tmp}/x.png"],
    "evaluate": ["evaluate", "--checkpoint", "{ck}", "--n", "8"],
    "export": [
        "export",
        "--checkpoint",
        "{ck}",
        "--name",
        "sagan-x",
        "--out",
        "{tmp}/x.pt",
        "--evaluate",
        "--n",
        "8",
    ],
    "bench": ["bench", "--quick", "--steps", "1", "--repeats", "1"],
}


def fill(args, tmp_path, checkpoints):
    return [
        a.replace("{tmp}", str(tmp_path)).replace("{ck}", str(checkpoints["plain"])) for a in args
    ]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("device", ["gpu", "nonsense", "mps", "meta", "cuda:99"])
def test_a_bad_device_is_one_line_in_every_command(command, device, tmp_path, checkpoints, capsys):
    args = fill(COMMANDS[command], tmp_path, checkpoints)
    args = [a for a in args if a != "cpu" and a != "--device"] + ["--device", device]
    assert run(args) == 2
    line = error_line(capsys)
    assert repr(device) in line or "CUDA" in line, line
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--steps", "many"], "argument --steps: invalid int value: 'many'"),
        (["train", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["train", "--image-size", "48"], "image_size must be one of (32, 64, 128), got 48"),
        (["train", "--g-attention", "3"], "g_attention: the networks at image_size=32"),
        (["train", "--loss", "hinj"], "loss must be one of"),
        (["train", "--lr-g", "nan"], "lr_g must be a finite number in (0, inf), got nan"),
        (
            ["train", "--seed", "99999999999999999999999"],
            "argument --seed: expected 0 to 4294967295",
        ),
        (["train", "--n-samples", "200000"], "n_samples must be between 1 and 1024"),
        (["train", "--batch-size", "5000", "--out", "{tmp}/r"], "fewer than one batch of 5000"),
        (["train", "--resume", "--out", "{tmp}"], "no checkpoint at"),
        (["train", "--resume", "--overwrite"], "not allowed with argument"),
        (["sample", "--checkpoint", "{tmp}/absent.pt"], "no checkpoint at"),
        (["sample", "--checkpoint", "{ck}", "--seed", "-1"], "expected 0 to 4294967295, got -1"),
        (["sample", "--checkpoint", "{ck}", "--n", "1000000"], "expected 1 to 1024"),
        (["sample", "--checkpoint", "{ck}", "--out", "{tmp}"], "is a folder: expected an image"),
        (["sample", "--checkpoint", "{ck}", "--out", "{tmp}/grid"], "expected an image file name"),
        (["evaluate", "--checkpoint", "{tmp}/absent.pt"], "no checkpoint at"),
        (["evaluate", "--checkpoint", "{ck}", "--n", "5000"], "--n"),
        (["export", "--checkpoint", "{ck}", "--name", "Bad Name"], "name must look like"),
        (["export", "--checkpoint", "{ck}", "--name", "sagan-x", "--metric", "fid=nan"], "finite"),
        (
            ["export", "--checkpoint", "{ck}", "--name", "sagan-x", "--out", "{ck}"],
            "is the checkpoint",
        ),
        (["bench", "--steps", "0"], "argument --steps: expected 1 to 1000000, got 0"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_errors_are_one_line_with_status_2(args, message, tmp_path, checkpoints, capsys):
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run(fill(args, tmp_path, checkpoints)) == 2
    assert message in error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing left behind


def test_train_into_a_file_or_an_unwritable_folder(tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    assert run(["train", *TINY, "--steps", "1", "--out", str(a_file)]) == 2
    assert f"{a_file} is not a folder: expected a folder for the run's files" in error_line(capsys)
    assert a_file.read_text() == "mine"
    assert run(["train", *TINY, "--steps", "1", "--out", str(tmp_path / ("x" * 300))]) == 2
    assert "File name too long" in error_line(capsys)

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert run(["train", *TINY, "--steps", "1", "--out", str(tmp_path / "ro")]) == 2
    assert error_line(capsys) == f"error: {tmp_path / 'ro'}: Read-only file system"


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert run(["train", *TINY, "--steps", "2", "--out", str(out)]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    real_fsync = os.fsync

    def full(descriptor):
        if os.fstat(descriptor).st_size > 100_000:  # the checkpoint, not log.csv
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(descriptor)

    monkeypatch.setattr(files.os, "fsync", full)
    capsys.readouterr()
    assert run(["train", "--resume", "--out", str(out), "--steps", "4"]) == 2
    assert "checkpoint.pt: No space left on device" in error_line(capsys)
    assert (out / "checkpoint.pt").read_bytes() == before
    assert not list(out.glob(".*.tmp"))


def test_out_of_memory_and_ctrl_c_are_one_line(tmp_path, checkpoints, monkeypatch, capsys):
    def no_memory(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
        )

    monkeypatch.setattr(Generator, "sample", no_memory)
    assert (
        run(["sample", "--checkpoint", str(checkpoints["plain"]), "--out", str(tmp_path / "a.png")])
        == 2
    )
    assert error_line(capsys).startswith("error: out of memory (try fewer images with --n): ")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Generator, "sample", interrupted)
    assert (
        run(["sample", "--checkpoint", str(checkpoints["plain"]), "--out", str(tmp_path / "a.png")])
        == 130
    )
    assert error_line(capsys) == "error: interrupted"


def test_bad_checkpoints_are_named(tmp_path, checkpoints, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    for command in (
        ["sample", "--out", str(tmp_path / "a.png")],
        ["evaluate"],
        ["export", "--name", "sagan-x", "--out", str(tmp_path / "x.pt")],
    ):
        assert run([command[0], "--checkpoint", str(junk), *command[1:]]) == 2
        assert f"{junk} is not a checkpoint that can be read safely" in error_line(capsys)
    state = torch.load(checkpoints["plain"], weights_only=True)
    state["rng"][0]["torch"] = torch.zeros(3, dtype=torch.uint8)
    bad = tmp_path / "run"
    bad.mkdir()
    torch.save(state, bad / "checkpoint.pt")
    assert run(["train", "--resume", "--out", str(bad), "--steps", "3"]) == 2
    assert f"{bad / 'checkpoint.pt'}: the random states do not fit" in error_line(capsys)
    state = torch.load(checkpoints["plain"], weights_only=True)
    state["config"]["evil"] = 1
    torch.save(state, bad / "checkpoint.pt")
    assert run(["train", "--resume", "--out", str(bad)]) == 2
    assert (
        f"{bad / 'checkpoint.pt'}: its config is invalid (unknown TrainConfig fields"
        in error_line(capsys)
    )


def test_non_finite_weights_are_refused_by_sample_export_and_evaluate(
    tmp_path, checkpoints, capsys
):
    state = torch.load(checkpoints["plain"], weights_only=True)
    for tensor in state["ema"].values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
    nan = tmp_path / "nan.pt"
    torch.save(state, nan)
    for argv in (
        ["sample", "--out", str(tmp_path / "a.png")],
        ["evaluate", "--n", "8"],
        ["export", "--name", "sagan-x", "--out", str(tmp_path / "x.pt")],
    ):
        assert run([argv[0], "--checkpoint", str(nan), *argv[1:]]) == 2
        assert "weights hold NaN or infinite values" in error_line(capsys)


def test_train_refuses_a_used_folder_and_resumes_from_the_command_line(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert run(["train", *TINY, "--steps", "2", "--out", out]) == 0
    assert "step 2: " in capsys.readouterr().out
    before = (Path(out) / "checkpoint.pt").read_bytes()
    assert run(["train", *TINY, "--steps", "1", "--out", out]) == 2
    assert (
        "already holds a run" in error_line(capsys)
        and (Path(out) / "checkpoint.pt").read_bytes() == before
    )
    assert run(["train", "--resume", "--out", out, "--lr-d", "0.1"]) == 2
    line = error_line(capsys)
    assert "cannot resume" in line and "lr_d: 0.0004 in the checkpoint, 0.1 given" in line
    # only the flags given change: the tiny widths and batch come from the checkpoint
    assert run(["train", "--resume", "--out", out, "--steps", "3"]) == 0
    state = load_checkpoint(Path(out) / "checkpoint.pt")
    assert state["step"] == 3 and state["config"]["model"]["g_width"] == 16
    assert state["config"]["batch_size"] == 8
    assert run(["train", *TINY, "--steps", "1", "--out", out, "--overwrite"]) == 0
    assert load_checkpoint(Path(out) / "checkpoint.pt")["step"] == 1


def test_sample_writes_a_grid_and_never_overwrites_unasked(tmp_path, checkpoints, capsys):
    png = tmp_path / "deep" / "grid.png"
    plain = ["sample", "--checkpoint", str(checkpoints["plain"]), "--out", str(png)]
    assert run([*plain, "--n", "6"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert Image.open(png).size == (3 * 34 - 2, 2 * 34 - 2)  # 6 digits, 3 per row
    first = png.read_bytes()
    assert run([*plain, "--n", "6", "--no-ema"]) == 2
    assert "exists: pass --overwrite" in error_line(capsys) and png.read_bytes() == first
    assert run([*plain, "--n", "6", "--no-ema", "--overwrite"]) == 0
    assert png.read_bytes() != first  # G itself differs from its average
    conditional = [
        "sample",
        "--checkpoint",
        str(checkpoints["conditional"]),
        "--out",
        str(png),
        "--overwrite",
    ]
    assert run([*conditional, "--n", "2"]) == 0
    assert Image.open(png).size == (2 * 34 - 2, 10 * 34 - 2)  # a row per class
    assert run([*conditional, "--n", "4", "--class", "7"]) == 0
    assert Image.open(png).size == (2 * 34 - 2, 2 * 34 - 2)
    assert run([*conditional, "--class", "10"]) == 2
    assert "--class must be a class of this conditional model (0 to 9), got 10" in error_line(
        capsys
    )
    assert run([*plain, "--class", "3", "--overwrite"]) == 2
    assert "--class needs a conditional model" in error_line(capsys)
    assert run([*conditional, "--n", "200"]) == 2
    assert "makes 2000 images; at most 1024" in error_line(capsys)


def test_evaluate_prints_fid_kid_and_the_floor_at_the_same_n(checkpoints, capsys):
    assert run(["evaluate", "--checkpoint", str(checkpoints["conditional"]), "--n", "200"]) == 0
    out = capsys.readouterr().out
    assert "200" in out.splitlines()[0]  # says how many images were compared
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| ")]
    fid = {row[1].strip(): row[2].strip() for row in rows[1:]}
    model = next(value for name, value in fid.items() if "generator" in name)
    floor = next(value for name, value in fid.items() if "floor" in name)
    assert float(model.split()[0]) > float(floor.split()[0]) >= 0  # 2 steps: far from digits
    assert "[" in model and "]" in model  # an interval beside the number
    assert "Class accuracy of the samples" in out


def test_bench_prints_its_table(capsys, monkeypatch):
    assert run(["bench", "--quick", "--steps", "1", "--repeats", "1", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("device: cpu")
    assert lines[1] == "| variant | steps/s | vs plain | CPU s/step | vs plain |"
    rows = [line.split("|") for line in lines[3:]]
    assert [row[1].strip() for row in rows] == [name for name, _, _ in bench_module.VARIANTS]
    assert rows[0][3].strip() == rows[0][5].strip() == "1.00x"  # the baseline against itself
    for row in rows:
        rate, seconds = float(row[2]), float(row[4])
        assert rate > 0 and seconds > 0
        assert float(row[3].strip().rstrip("x")) == pytest.approx(
            rate / float(rows[0][2]), abs=0.02
        )


@pytest.mark.slow
def test_real_processes_print_no_traceback(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(100))
    cases = [
        (["train", "--sn", "everywhere"], {}),
        (["sample", "--checkpoint", str(junk)], {}),
        (["train", "--device", "gpu", "--out", str(tmp_path / "r")], {}),
        (["train", "--out", str(tmp_path / "r")], {"WORLD_SIZE": "abc"}),
    ]
    for args, env in cases:
        done = subprocess.run(
            [sys.executable, "-m", "sagan_tutorial", *args],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert "WORLD_SIZE must be a whole number" in done.stderr


def test_a_symlinked_lock_is_named(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").symlink_to(out / ".lock")  # a loop
    assert run(["train", "--out", str(out), "--steps", "1", "--g-width", "16"]) == 2
    assert "run/.lock is a symbolic link: the run folder's lock must be a plain file" in (
        error_line(capsys)
    )


def test_ctrl_c_while_torch_is_imported_is_one_line():
    """``python -m sagan_tutorial`` imports torch for seconds; a Ctrl-C then is one line too."""
    code = (
        "import builtins, runpy, sys\n"
        "real = builtins.__import__\n"
        "def slow(name, *args, **kwargs):\n"
        "    if name == 'torch':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = slow\n"
        "sys.argv = ['sagan_tutorial', 'sample']\n"
        "runpy.run_module('sagan_tutorial', run_name='__main__', alter_sys=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (130, "error: interrupted\n")
