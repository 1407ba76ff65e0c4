"""Speed measurements: benchmarks/attention.py's table of ratios against "bmm", and the variants
that ``python -m sagan_tutorial bench`` times (its table: tests/test_cli.py)."""

import subprocess
import sys

import pytest
import torch

from sagan_tutorial.bench import VARIANTS


@pytest.fixture(scope="module")
def attention_bench():
    from sagan_tutorial import bench_attention

    return bench_attention


@pytest.mark.slow  # 2.4 to 4.4 s on 2 loaded cores: it times every backend
def test_prints_a_table_for_every_backend(attention_bench, capsys):
    assert attention_bench.main(["--quick", "--repeats", "1", "--device", "cpu"]) == 0
    device, times, memory = capsys.readouterr().out.strip().split("\n\n")
    assert device.startswith("device: cpu")
    for table, columns in (
        (times, ("fwd+bwd speed", "fwd speed")),
        (memory, ("fwd+bwd memory", "fwd memory")),
    ):
        header, _, *rows = table.splitlines()
        assert all(column in header for column in columns)
        cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
        cases = {c[0] for c in cells}
        assert cases == {f"{s}x{s}, C {c}, B {b}" for s, c, b in attention_bench.QUICK_CASES}
        backends = [c[1] for c in cells]
        assert backends.count("bmm") == len(cases) and backends.count("blocked") == len(cases)
        assert all(b.startswith("auto (") for b in backends if b.startswith("auto"))
        assert all(c[3] == "1.00x" for c in cells if c[1] == "bmm")  # the baseline to itself


def test_the_tables_have_the_columns_the_scaling_chapter_reads(attention_bench):
    rows = [
        attention_bench.Row(8, 16, 2, name, name, 0.002, 2e6, 0.001, 1e6)
        for name in ("bmm", "auto")
    ]
    _, times, memory = attention_bench.format_table(rows, torch.device("cpu")).split("\n\n")
    first = [cell.strip() for cell in times.splitlines()[0].strip("|").split("|")]
    assert first[:4] == ["case", "backend", "fwd+bwd ms", "fwd+bwd speed"]
    row = [cell.strip() for cell in times.splitlines()[3].strip("|").split("|")]
    assert row[:4] == ["8x8, C 16, B 2", "auto (auto)", "2.0", "1.00x"]
    second = [cell.strip() for cell in memory.splitlines()[0].strip("|").split("|")]
    assert second[:4] == ["case", "backend", "fwd+bwd peak MiB", "fwd+bwd memory"]


@pytest.mark.parametrize("repeats", ["0", "1001", "x"])
def test_bad_arguments(attention_bench, repeats, capsys):
    with pytest.raises(SystemExit) as info:
        attention_bench.main(["--repeats", repeats])
    assert info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1  # one line, no usage block


def test_each_case_is_measured_against_its_own_bmm_row(attention_bench):
    rows = [
        attention_bench.Row(4, c, 2, name, name, t, None, t, None)
        for c, t in ((8, 0.002), (16, 0.004))
        for name in ("bmm", "blocked")
    ]
    times = attention_bench.format_table(rows, torch.device("cpu")).split("\n\n")[1]
    speeds = [row.split("|")[4].strip() for row in times.splitlines()[2:]]
    assert speeds == ["1.00x"] * 4


def test_each_training_variant_adds_one_speed_up_and_the_default_is_the_third():
    # the scaling chapter reads the rows by these names
    names = [name for name, _, _ in VARIANTS]
    assert names[0].startswith("plain") and "(default)" in names[2]
    assert names[3:] == ["+ channels_last", "+ bf16 autocast"]
    assert VARIANTS[4][2] == {"channels_last": True, "amp": "bf16"}  # bf16 on top of channels_last


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("32,64", "three whole numbers"),
        ("32,64,x", "three whole numbers"),
        ("32,-64,16", "three whole numbers"),
        ("32,4,16", "CHANNELS must be in [8, 4096]"),
        ("0,64,16", "SIZE must be in [1, 512]"),
        ("32,64,99999999999999999999", "BATCH must be in [1, 4096]"),
        ("128,8,64", "at most 268,435,456"),
    ],
)
def test_bad_cases_are_one_line(attention_bench, argument, message, capsys):
    with pytest.raises(SystemExit) as info:
        attention_bench.main(["--case", argument])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_case_chooses_the_cases(attention_bench, capsys, monkeypatch):
    monkeypatch.setattr(attention_bench, "measure_memory", lambda rows, device: None)  # speed
    assert attention_bench.main(["--case", "4,8,2", "--case", " 2 ,8,1", "--repeats", "1"]) == 0
    _, times, _ = capsys.readouterr().out.strip().split("\n\n")[:3]
    cases = {row.split("|")[1].strip() for row in times.splitlines()[2:]}
    assert cases == {"4x4, C 8, B 2", "2x2, C 8, B 1"}
    with pytest.raises(SystemExit):
        attention_bench.main(["--case", "4,8,2", "--quick"])


def test_keep_freed_is_named_on_the_device_line():
    # in a new process: mallopt's settings would stay for the rest of this one
    command = [sys.executable, "-m", "sagan_tutorial.bench_attention", "--keep-freed"]
    command += ["--case", "2,8,1", "--repeats", "1", "--device", "cpu"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].endswith(", glibc keeping freed memory")
