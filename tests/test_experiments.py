"""The experiments: runs over variants and seeds, results that the chapters read, the gallery."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sagan_tutorial import experiments as ex
from sagan_tutorial import gallery
from sagan_tutorial.attention import SelfAttention2d
from sagan_tutorial.config import TrainConfig
from sagan_tutorial.models import GANConfig

TINY = TrainConfig(
    model=GANConfig(g_width=16, d_width=16),
    batch_size=8,
    progress=False,
    tensorboard=False,
    sample_every=0,
    log_every=1,
    checkpoint_every=0,
    device="cpu",
)


@pytest.mark.slow
def test_a_small_experiment_end_to_end(tmp_path):
    variants = ["correct layer", "no transpose in the second bmm"]
    results = ex.run(
        "gallery", tmp_path, seeds=(0, 1), steps=2, n=8, base=TINY, variants=variants, standing=64
    )
    assert results["experiment"] == "gallery"
    assert [len(results["variants"][v]) for v in variants] == [2, 2]
    record = results["variants"]["no transpose in the second bmm"][1]
    assert record["seed"] == 1 and record["steps"] == 2 and "--seed 1" in record["command"]
    assert "attention layer: no_transpose" in record["command"]
    assert {"raw G", "EMA, standing statistics", "EMA, G's statistics"} == set(record["ema_study"])
    assert (tmp_path / "no-transpose-in-the-second-bmm" / "seed1" / "grid.png").exists()
    # a second call finds the finished runs and trains nothing
    again = ex.run(
        "gallery", tmp_path, seeds=(0, 1), steps=2, n=8, base=TINY, variants=variants, standing=64
    )
    assert again["variants"] == ex.collect("gallery", tmp_path)["variants"]
    rows = ex.summarize(results)
    assert [row["variant"] for row in rows] == variants
    assert all(row["low"] <= row["mean"] <= row["high"] for row in rows)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert ex.load_results("gallery", path) == results
    shipped = ex.ship("gallery", tmp_path, dest=tmp_path / "shipped")
    assert ex.load_results("gallery", shipped)["variants"] == results["variants"]
    assert ex.grid_of("gallery", variants[0], tmp_path / "shipped").exists()
    log = ex.log_of("gallery", variants[1], 1, tmp_path / "shipped")
    assert [row["step"] for row in log] == [1, 2]
    assert {"d_loss", "g_loss", "gamma/G.attention.8"} <= set(log[0])
    assert not [key for key in log[0] if key.startswith("sigma/")]  # kept small


def test_summaries_and_the_rule_for_a_difference():
    results = {
        "variants": {
            "a": [{"seed": s, "fid": v} for s, v in enumerate((1.0, 1.2, 1.1))],
            "b": [{"seed": s, "fid": v} for s, v in enumerate((2.0, 2.1, 1.9))],
            "c": [{"seed": 0, "fid": 1.5}],
        }
    }
    a, b, c = ex.summarize(results)
    assert a["mean"] == pytest.approx(1.1) and a["std"] == pytest.approx(0.1)
    assert a["high"] - a["mean"] == pytest.approx(4.303 * 0.1 / math.sqrt(3))  # Student's t, 2 df
    assert ex.differs(a, b) and not ex.differs(a, a)
    assert math.isnan(c["low"]) and not ex.differs(a, c)  # one seed: no interval, no verdict


def test_compare_gives_a_verdict_only_where_intervals_separate():
    results = {
        "variants": {
            "base": [{"seed": s, "fid": v} for s, v in enumerate((1.0, 1.2, 1.1))],
            "worse": [{"seed": s, "fid": v} for s, v in enumerate((2.0, 2.1, 1.9))],
            "same": [{"seed": s, "fid": v} for s, v in enumerate((0.9, 1.3, 1.1))],
        }
    }
    base, worse, same = ex.compare(results, "base", ["worse", "same"])
    assert base["variant"] == "base" and base["gap"] == 0 and base["verdict"] == ""
    assert worse["verdict"] == "higher" and worse["gap"] == pytest.approx(0.9)
    assert same["verdict"] == "the data cannot tell"
    assert ex.compare(results, "worse", ["base"])[1]["verdict"] == "lower"
    with pytest.raises(ValueError, match=r"expected variants of .*got \['nope'\]"):
        ex.compare(results, "base", ["nope"])


def test_score_table_gives_each_score_its_column():
    from sagan_tutorial.stats import compare_scores, score_table

    def record(seed, raw, ema, standing):
        study = {"raw G": raw, "EMA, G's statistics": ema, "EMA, standing statistics": standing}
        return {"seed": seed, "ema_study": {k: {"fid": v, "fid_low": v, "fid_high": v}
                                            for k, v in study.items()}}  # fmt: skip

    results = {
        "variants": {
            "base": [record(0, 1.0, 1.1, 1.2), record(1, 1.2, 1.3, 1.4)],
            "other": [record(0, 2.0, 2.1, 2.2), record(1, 2.2, 2.3, 2.4)],
        }
    }
    header, rows = score_table(compare_scores(results, "base", ["other"]))
    assert header[:2] == ["variant", "seeds"] and len(header) == 5
    assert header[2].startswith("EMA (shipped)") and header[4].startswith("raw G")
    assert rows[0] == ["base", "2", "1.10, 1.30", "1.20, 1.40", "1.00, 1.20"]
    assert rows[1][0] == "other" and rows[1][2].startswith("2.10, 2.30; +1.00 [")


def test_difference_interval_is_welchs():
    a, b = [1.0, 1.2, 1.1], [2.0, 2.4, 2.2]  # variances 0.01 and 0.04, three values each
    gap, low, high = ex.difference_interval(a, b)
    se = math.sqrt(0.01 / 3 + 0.04 / 3)
    df = (0.05 / 3) ** 2 / ((0.01 / 3) ** 2 / 2 + (0.04 / 3) ** 2 / 2)  # 2.94: t of 2 df
    assert int(df) == 2 and gap == pytest.approx(1.1)
    assert high - gap == pytest.approx(4.303 * se) and gap - low == pytest.approx(4.303 * se)
    assert math.isnan(ex.difference_interval([1.0], b)[1])  # one value: no interval


def test_mean_interval_uses_the_t_of_its_degrees_of_freedom():
    values = [0.1 * k for k in range(12)]  # 11 degrees of freedom: t = 2.201
    mean, std, low, high = ex.mean_interval(values)
    assert mean == pytest.approx(0.55) and std == pytest.approx(0.3605551)
    assert high - mean == pytest.approx(2.201 * std / math.sqrt(12))
    assert mean - low == pytest.approx(high - mean)
    with pytest.raises(ValueError, match="at least one value, got none"):
        ex.mean_interval([])
    with pytest.raises(ValueError, match="at most 31 values, got 40"):
        ex.mean_interval(range(40))


@pytest.mark.parametrize("layer", ["wrong_axis", "no_transpose", "scaled"])
def test_each_broken_layer_changes_exactly_one_thing(layer):
    torch.manual_seed(0)
    correct = SelfAttention2d(16, backend="bmm")
    with torch.no_grad():
        correct.gamma.fill_(1.0)
    broken = gallery.BROKEN[layer](16, backend="bmm")
    broken.load_state_dict(correct.state_dict())
    x = torch.randn(2, 16, 4, 3)
    out, attention = correct(x, return_attention=True)
    bad_out, bad_attention = broken(x, return_attention=True)
    n, c8 = 12, 2
    if layer == "wrong_axis":
        torch.testing.assert_close(bad_attention.sum(1), torch.ones(2, n))  # columns sum to 1
    elif layer == "no_transpose":
        torch.testing.assert_close(bad_attention, attention)  # the same map, read wrongly
        v = correct.value_conv(x).flatten(2)
        torch.testing.assert_close(bad_out, (v @ attention).view_as(x) + x)
    else:
        q, k = correct.query_conv(x).flatten(2), correct.key_conv(x).flatten(2)
        expected = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c8), -1)
        torch.testing.assert_close(bad_attention, expected)
    assert not torch.allclose(bad_out, out)


def test_gamma_one_networks_start_with_attention_on():
    G, D = gallery.broken_networks("gamma_one")(GANConfig(g_width=16, d_width=16))
    from sagan_tutorial.models import attention_layers

    assert all(
        float(layer.gamma.detach()) == 1.0 for net in (G, D) for _, layer in attention_layers(net)
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["gallery", "--out", "x", "--variants", "nope"], "error: unknown variants ['nope'] of"),
        (["gallery", "--out", "x", "--seeds", "-1"], "argument --seeds: expected 0 to 4294967295"),
        (["gallery", "--out", "x", "--n", "2000"], "error: expected --n between 4 and 1000"),
        (["gallery", "--out", "x", "--steps", "0"], "argument --steps: expected 1 to 10000000"),
        (["gallery", "--out", "x", "--results", "."], "error: --results: expected a file name"),
        (
            ["gallery", "--out", "x", "--results", "precious.pt"],
            "error: --results: 'precious.pt' exists and is not a results file of the 'gallery'",
        ),
    ],
)
def test_the_command_line_refuses_bad_arguments_in_one_line(
    tmp_path, monkeypatch, capsys, argv, message
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious.pt").write_bytes(b"a checkpoint")
    try:
        status = ex.main(argv)
    except SystemExit as exit:  # argparse's own errors leave through SystemExit
        status = exit.code
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()
    assert (tmp_path / "precious.pt").read_bytes() == b"a checkpoint"


@pytest.mark.parametrize("content", ['{"ema_study": {}}', "[1, 2]", "not json"])
def test_a_damaged_result_file_is_named_in_one_line(tmp_path, monkeypatch, capsys, content):
    done = tmp_path / "runs" / "no-attention" / "seed0"
    done.mkdir(parents=True)
    (done / "result.json").write_text(content)
    monkeypatch.chdir(tmp_path)
    argv = ["attention", "--out", "runs", "--seeds", "0", "--variants", "no attention"]
    assert ex.main(argv) == 2
    err = capsys.readouterr().err
    assert "result.json: " in err and len(err.splitlines()) == 1
