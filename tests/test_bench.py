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
    lines = capsys.readouterr().out.splitlines()
    rows = [ln for ln in lines if ln.startswith("| ") and "x" in ln.split("|")[1]]
    assert lines[0].startswith("device: cpu")
    assert "fwd+bwd speed" in lines[2] and "fwd peak MiB" in lines[2]
    sizes = {row.split("|")[1].strip() for row in rows}
    assert sizes == {f"{s}x{s}" for s, _, _ in attention_bench.QUICK_CASES}
    backends = [row.split("|")[4].strip() for row in rows]
    assert backends.count("bmm") == len(sizes) and backends.count("blocked") == len(sizes)
    assert all(b.startswith("auto (") for b in backends if b.startswith("auto"))
    for row in rows:
        if row.split("|")[4].strip() == "bmm":
            assert row.split("|")[6].strip() == "1.00x"  # the baseline against itself


def test_the_table_has_the_columns_the_scaling_chapter_reads(attention_bench):
    rows = [
        attention_bench.Row(8, 16, 2, name, name, 0.002, 2e6, 0.001, 1e6)
        for name in ("bmm", "auto")
    ]
    table = attention_bench.format_table(rows, torch.device("cpu"))
    first_table = table.split("\n\n")[1]  # the chapter's reading: the second paragraph
    header = [cell.strip() for cell in first_table.splitlines()[0].strip("|").split("|")]
    assert (header[0], header[3], header[5], header[7]) == (
        "map",
        "backend",
        "fwd+bwd speed",
        "fwd+bwd memory",
    )


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
