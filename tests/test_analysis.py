"""Measurements of trained attention: query dependence, effective rank, entropy, branch size."""

from __future__ import annotations

import math

import pytest
import torch

from sagan_tutorial.analysis import _js_bits, attention_statistics, without_attention
from sagan_tutorial.models import GANConfig, Generator, attention_layers


@pytest.fixture
def generator():
    torch.manual_seed(0)
    G = Generator(GANConfig(g_width=16)).eval()
    with torch.no_grad():
        for _, layer in attention_layers(G):
            layer.gamma.fill_(0.5)
    return G


def test_js_divergence_in_bits():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    q = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    torch.testing.assert_close(_js_bits(p, q), torch.tensor([1.0, 0.0]))


def test_statistics_of_every_layer(generator):
    stats = attention_statistics(generator, n=8, pairs=64)
    assert list(stats) == ["attention.8", "attention.16"]
    for name, _ in attention_layers(generator):
        row = stats[name]
        assert row["gamma"] == 0.5 and row["n_positions"] in (64, 256)
        assert 0 <= row["query_dependence"] <= 1 and 0 < row["effective_rank"] <= 1
        assert 0 < row["entropy"] <= 1 and row["branch"] > 0
    assert attention_statistics(generator, n=8, pairs=64) == stats  # seeded


def test_branch_size_is_gamma_times_the_output_against_the_input(generator):
    """Computed independently: ||gamma * o|| / ||x|| per pixel from the layer's own parts."""
    name, layer = attention_layers(generator)[1]
    captured = []
    handle = layer.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    generator.sample(4, seed=0)
    handle.remove()
    x = captured[0]
    o = layer(x) - x  # gamma * o
    expected = (o.flatten(2).norm(dim=1) / x.flatten(2).norm(dim=1)).mean().item()
    assert attention_statistics(generator, n=4)[name]["branch"] == pytest.approx(expected, rel=1e-5)


def test_identical_rows_have_no_query_dependence_and_rank_one_over_n(generator, monkeypatch):
    layer = attention_layers(generator)[0][1]

    def same_rows(self, x, return_attention=False):
        b, _, h, w = x.shape
        row = torch.softmax(torch.arange(h * w, dtype=x.dtype), 0)
        return (x, row.expand(b, h * w, h * w)) if return_attention else x

    monkeypatch.setattr(type(layer), "forward", same_rows)
    stats = attention_statistics(generator, n=2)["attention.8"]
    assert stats["query_dependence"] == pytest.approx(0.0, abs=1e-9)
    assert stats["effective_rank"] == pytest.approx(1 / 64, rel=1e-3)


def test_without_attention_zeroes_gamma_and_puts_it_back(generator):
    z = torch.randn(2, generator.config.z_dim)
    before = generator(z)
    with without_attention(generator):
        assert all(float(layer.gamma.detach()) == 0 for _, layer in attention_layers(generator))
        off = generator(z)
    assert all(float(layer.gamma) == 0.5 for _, layer in attention_layers(generator))
    assert not torch.allclose(before, off) and torch.equal(generator(z), before)
    assert math.isfinite(float(off.sum()))
