"""Part I of the book: its step-by-step code equals the package's layer, and its claims hold.

Chapter 7's module is executed from the notebook; the other code is written as the chapters
write it, in plain PyTorch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import nn

from sagan_tutorial import SelfAttention2d

BOOK = Path(__file__).resolve().parents[1] / "book"
B, C, H, W = 2, 64, 6, 5  # the demo sizes: all different
N = H * W


def book_cell(notebook: str, starts_with: str) -> str:
    """The source of the code cell of ``book/<notebook>`` that starts with ``starts_with``."""
    cells = json.loads((BOOK / notebook).read_text())["cells"]
    sources = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    matches = [s for s in sources if s.startswith(starts_with)]
    assert len(matches) == 1, f"{notebook}: expected one cell starting {starts_with!r}"
    return matches[0]


def book_module():
    """Chapter 7's SelfAttention, executed from the notebook itself so that the two cannot drift."""
    namespace = {"torch": torch, "nn": nn, "F": F, "einsum": einsum, "rearrange": rearrange}
    exec(book_cell("07-three-ways.ipynb", "class SelfAttention(nn.Module):"), namespace)
    return namespace["SelfAttention"]


def walk_through(x, query_conv, key_conv, value_conv, gamma):
    """Chapters 3 to 6, cell after cell, on separately built convs."""
    B, C, H, W = x.shape
    N = H * W
    proj_query = query_conv(x).view(B, -1, N).permute(0, 2, 1)  # B x N x C//8
    proj_key = key_conv(x).view(B, -1, N)  # B x C//8 x N
    energy = torch.bmm(proj_query, proj_key)  # B x N x N
    attention = torch.softmax(energy, dim=-1)
    proj_value = value_conv(x).view(B, -1, N)  # B x C x N
    out = torch.bmm(proj_value, attention.permute(0, 2, 1))  # B x C x N
    out_image = out.view(B, C, H, W)
    return gamma * out_image + x, attention


@pytest.fixture
def book_and_package():
    torch.manual_seed(0)
    book = book_module()(C)
    with torch.no_grad():
        book.gamma.fill_(0.5)
    package = SelfAttention2d(C)
    package.load_state_dict(book.state_dict())
    return book, package


@pytest.mark.parametrize("way", ["bmm", "einsum", "sdpa"])
@pytest.mark.parametrize("backend", SelfAttention2d.BACKENDS)
def test_every_way_equals_every_package_backend(book_and_package, way, backend):
    book, package = book_and_package
    package.backend = backend
    x = torch.randn(B, C, H, W)
    x_book, x_package = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, attention = book(x_book, way)
    expected, expected_attention = package(x_package, return_attention=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention, expected_attention, atol=1e-6, rtol=1e-5)
    out.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(x_book.grad, x_package.grad, atol=1e-4, rtol=1e-4)


def test_walk_through_equals_package_layer(book_and_package):
    book, package = book_and_package
    package.backend = "bmm"
    x = torch.randn(B, C, H, W)
    out, attention = walk_through(x, book.query_conv, book.key_conv, book.value_conv, book.gamma)
    expected, expected_attention = package(x, return_attention=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(attention, expected_attention)
    assert attention.shape == (B, N, N)


def test_one_by_one_conv_is_a_matrix_multiply():
    conv = nn.Conv2d(C, C // 8, kernel_size=1)
    x = torch.randn(B, C, H, W)
    by_einsum = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x)
    torch.testing.assert_close(conv(x), by_einsum + conv.bias.view(1, -1, 1, 1))


def test_flatten_order_and_contiguity():
    key = torch.randn(B, C // 8, H, W)
    flat = key.view(B, -1, N)
    for h in range(H):
        for w in range(W):
            assert torch.equal(flat[:, :, h * W + w], key[:, :, h, w])
    permuted = flat.permute(0, 2, 1)
    assert not permuted.is_contiguous() and permuted.stride() == (N * C // 8, 1, N)
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        permuted.view(B, -1)


def test_missing_transpose_keeps_the_shape_but_not_the_numbers():
    torch.manual_seed(1)
    attention = torch.softmax(torch.randn(B, N, N), dim=-1)
    value = torch.randn(B, C, N)
    right = torch.bmm(value, attention.permute(0, 2, 1))
    wrong = torch.bmm(value, attention)
    assert wrong.shape == right.shape
    assert not torch.allclose(wrong, right, atol=1e-3)
    loops = torch.stack([value[:, :, :] @ attention[:, i, :].unsqueeze(-1) for i in range(N)], 2)
    torch.testing.assert_close(right, loops.squeeze(-1))


def test_key_bias_does_not_change_the_map():
    layer = SelfAttention2d(C, backend="bmm")
    x = torch.randn(B, C, H, W)
    _, before = layer(x, return_attention=True)
    with torch.no_grad():
        layer.key_conv.bias.add_(3.0)
    _, after = layer(x, return_attention=True)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-5)


def test_gamma_at_zero_gets_a_gradient_and_the_projections_do_not():
    layer = SelfAttention2d(C)
    x = torch.randn(B, C, H, W)
    out = layer(x)
    assert torch.equal(out, x)
    ((out - torch.randn_like(x)) ** 2).mean().backward()
    assert layer.gamma.grad.abs().item() > 0
    for conv in (layer.query_conv, layer.key_conv, layer.value_conv):
        assert (conv.weight.grad == 0).all()


def test_unscaled_attention_gets_sharper_with_width():
    def entropy(channels):
        torch.manual_seed(0)
        layer = SelfAttention2d(channels)
        with torch.no_grad():
            _, p = layer(torch.randn(2, channels, 6, 6), return_attention=True)
        return -(p * p.log()).sum(-1).mean().item()

    values = [entropy(c) for c in (8, 64, 512)]
    assert values[0] > values[1] > values[2]


def test_receptive_field_of_conv_stack_and_attention():
    torch.manual_seed(0)
    image = torch.randn(1, 1, 16, 16)

    def field(net):
        x = image.clone().requires_grad_()
        net(x)[0, :, 8, 8].sum().backward()
        return int((x.grad != 0).sum())

    convs = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(8, 8, 3, padding=1)
    )
    assert field(convs) == 5 * 5
    attention = SelfAttention2d(8)
    with torch.no_grad():
        attention.gamma.fill_(1.0)
    assert field(nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), attention)) == 16 * 16
