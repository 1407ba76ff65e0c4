"""benchmarks/attention.py runs and prints its table of ratios against "bmm"."""

import importlib.util
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "attention.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("attention_bench", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up
    spec.loader.exec_module(module)
    return module


def test_prints_a_table_for_every_backend(bench, capsys):
    assert bench.main(["--quick", "--repeats", "1", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [ln for ln in lines if ln.startswith("| ") and "x" in ln.split("|")[1]]
    assert lines[0].startswith("device: cpu")
    assert "fwd+bwd speed" in lines[2] and "fwd peak MiB" in lines[2]
    sizes = {row.split("|")[1].strip() for row in rows}
    assert sizes == {f"{s}x{s}" for s, _, _ in bench.QUICK_CASES}
    backends = [row.split("|")[4].strip() for row in rows]
    assert backends.count("bmm") == len(sizes) and backends.count("blocked") == len(sizes)
    assert all(b.startswith("auto (") for b in backends if b.startswith("auto"))
    for row in rows:
        if row.split("|")[4].strip() == "bmm":
            assert row.split("|")[6].strip() == "1.00x"  # the baseline against itself


def test_bad_arguments(bench):
    with pytest.raises(SystemExit) as info:
        bench.main(["--repeats", "0"])
    assert info.value.code == 2
