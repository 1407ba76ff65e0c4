"""Speed measurements: benchmarks/attention.py's table of ratios against "bmm", and the variants
that ``python -m sagan_tutorial bench`` times (its table: tests/test_cli.py)."""

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


def test_bad_arguments(attention_bench):
    with pytest.raises(SystemExit) as info:
        attention_bench.main(["--repeats", "0"])
    assert info.value.code == 2


def test_each_training_variant_adds_one_speed_up_and_the_default_is_the_third():
    # the scaling chapter reads the rows by these names
    names = [name for name, _, _ in VARIANTS]
    assert names[0].startswith("plain") and "(default)" in names[2]
    assert names[3:] == ["+ channels_last", "+ bf16 autocast"]
    assert VARIANTS[4][2] == {"channels_last": True, "amp": "bf16"}  # bf16 on top of channels_last
