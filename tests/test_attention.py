"""SelfAttention2d and PooledSelfAttention2d: faithful to the original, every backend exact."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from sagan_tutorial import PooledSelfAttention2d, SelfAttention2d, attention
from sagan_tutorial.attention import attention_blocked

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BACKENDS = SelfAttention2d.BACKENDS


class Self_Attn(nn.Module):
    """The layer as the widely used PyTorch port writes it (the reference for every backend)."""

    def __init__(self, in_dim):
        super().__init__()
        self.query_conv = nn.Conv2d(in_dim, in_dim // 8, kernel_size=1)
        self.key_conv = nn.Conv2d(in_dim, in_dim // 8, kernel_size=1)
        self.value_conv = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x):
        m_batchsize, C, width, height = x.size()
        proj_query = self.query_conv(x).view(m_batchsize, -1, width * height).permute(0, 2, 1)
        proj_key = self.key_conv(x).view(m_batchsize, -1, width * height)
        energy = torch.bmm(proj_query, proj_key)
        attention = self.softmax(energy)
        proj_value = self.value_conv(x).view(m_batchsize, -1, width * height)
        out = torch.bmm(proj_value, attention.permute(0, 2, 1))
        out = out.view(m_batchsize, C, width, height)
        out = self.gamma * out + x
        return out, attention


def make_layer(channels=64, gamma=0.7, device="cpu", seed=0):
    torch.manual_seed(seed)
    layer = SelfAttention2d(channels).to(device)
    with torch.no_grad():
        layer.gamma.fill_(gamma)
    return layer


def run(layer, x, backend, weights):
    """Output, attention map and gradients of x and of every parameter for one backend."""
    layer.backend = backend
    x = x.detach().clone().requires_grad_()
    out, attn = layer(x, return_attention=True)
    loss = (out * weights).sum()
    grads = torch.autograd.grad(loss, [x, *layer.parameters()])
    return out.detach(), attn.detach(), grads


def assert_all_close(actual, expected, atol=1e-5, rtol=1e-5):
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, atol=atol, rtol=rtol)


def test_submodules_and_initial_state():
    layer = SelfAttention2d(64)
    assert [name for name, _ in layer.named_children()] == ["query_conv", "key_conv", "value_conv"]
    for conv, out_channels in [(layer.query_conv, 8), (layer.key_conv, 8), (layer.value_conv, 64)]:
        assert isinstance(conv, nn.Conv2d)
        assert conv.kernel_size == (1, 1) and conv.in_channels == 64
        assert conv.out_channels == out_channels and conv.bias is not None
    assert layer.gamma.shape == (1,) and layer.gamma.item() == 0.0
    assert set(layer.state_dict()) == set(Self_Attn(64).state_dict())


@pytest.mark.parametrize("backend", BACKENDS)
def test_original_state_dict_loads_and_matches(backend):
    torch.manual_seed(1)
    original = Self_Attn(32)
    with torch.no_grad():
        original.gamma.fill_(0.5)
    layer = SelfAttention2d(32, backend=backend)
    layer.load_state_dict(original.state_dict(), strict=True)
    x = torch.randn(2, 32, 7, 4)
    expected_out, expected_attn = original(x)
    out, attn = layer(x, return_attention=True)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn, expected_attn, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 64, 6, 5), (3, 16, 4, 9), (2, 8, 24, 20)])
def test_backends_agree_with_bmm(device, backend, shape):
    """Output, map and every gradient equal the "bmm" form; H != W and batch > 1 throughout."""
    layer = make_layer(shape[1], device=device)
    torch.manual_seed(2)
    x = torch.randn(shape, device=device)
    weights = torch.randn(shape, device=device) / x[0].numel() ** 0.5
    expected = run(layer, x, "bmm", weights)
    actual = run(layer, x, backend, weights)
    torch.testing.assert_close(actual[0], expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(actual[1], expected[1], atol=1e-5, rtol=1e-5)
    assert_all_close(actual[2], expected[2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_rows_sum_to_one(backend):
    layer = make_layer(16)
    layer.backend = backend
    x = torch.randn(3, 16, 5, 7)
    out, attn = layer(x, return_attention=True)
    assert out.shape == x.shape
    assert attn.shape == (3, 35, 35)
    assert (attn >= 0).all()
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 35))


@pytest.mark.parametrize("backend", ("auto", *BACKENDS))
def test_gamma_zero_is_exact_identity(backend):
    layer = SelfAttention2d(32, backend=backend)
    x = torch.randn(2, 32, 6, 5)
    assert torch.equal(layer(x), x)
    out, attn = layer(x, return_attention=True)
    assert torch.equal(out, x)
    assert attn.shape == (2, 30, 30)


def test_blocked_with_many_blocks(monkeypatch):
    """Force blocks of a few rows, and blocks spanning several batch items, against "bmm"."""
    layer = make_layer(16)
    x = torch.randn(5, 16, 6, 7)
    weights = torch.randn_like(x) / 10
    expected = run(layer, x, "bmm", weights)
    for elements in (42 * 5, 42 * 42 * 2, 1 << 20):  # 5 rows, 2 batch items, everything at once
        monkeypatch.setattr(attention, "_BLOCK_ELEMENTS", elements)
        actual = run(layer, x, "blocked", weights)
        torch.testing.assert_close(actual[0], expected[0], atol=1e-5, rtol=1e-5)
        assert_all_close(actual[2], expected[2])


def test_blocked_forward_without_grad_matches():
    layer = make_layer(32)
    x = torch.randn(2, 32, 12, 10)
    with torch.no_grad():
        layer.backend = "bmm"
        expected = layer(x)
        layer.backend = "blocked"
        actual = layer(x)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_of_gradient(backend):
    """A gradient penalty (WGAN-GP) differentiates the input gradient again: every backend can."""
    layer = make_layer(16)
    x = torch.randn(2, 16, 4, 6)

    def penalty(name):
        layer.backend = name
        xi = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(layer(xi).square().sum(), xi, create_graph=True)
        value = grad.square().sum()
        return value.detach(), torch.autograd.grad(value, layer.value_conv.weight)[0]

    expected, actual = penalty("bmm"), penalty(backend)
    torch.testing.assert_close(actual[0], expected[0], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(actual[1], expected[1], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ("auto", *BACKENDS))
def test_autocast(device, dtype, backend):
    layer = make_layer(32, device=device)
    x = torch.randn(2, 32, 8, 6, device=device)
    with torch.no_grad():
        layer.backend = "bmm"
        reference = layer(x)
    layer.backend = backend
    xi = x.clone().requires_grad_()
    with torch.autocast(device, dtype=dtype):
        out, attn = layer(xi, return_attention=True)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), reference, atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(
        attn.float().sum(-1), torch.ones(2, 48, device=device), atol=2e-2, rtol=0
    )
    out.float().square().mean().backward()
    assert xi.grad is not None and torch.isfinite(xi.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("device", DEVICES)
def test_spectral_norm_on_the_three_convs(device):
    layer = make_layer(32, device=device)
    for name in ("query_conv", "key_conv", "value_conv"):
        setattr(layer, name, spectral_norm(getattr(layer, name)))
    layer.eval()  # no power iteration: every backend sees the same normalised weights
    x = torch.randn(2, 32, 6, 5, device=device)
    weights = torch.randn_like(x) / 10
    expected = run(layer, x, "bmm", weights)
    for backend in BACKENDS:
        actual = run(layer, x, backend, weights)
        torch.testing.assert_close(actual[0], expected[0], atol=1e-5, rtol=1e-5)
        assert_all_close(actual[2], expected[2])
    sigma = torch.linalg.matrix_norm(layer.value_conv.weight.flatten(1), ord=2)
    assert sigma.item() == pytest.approx(1.0, abs=0.05)
    layer.train()
    layer(x).sum().backward()  # with power iteration in training mode
    assert layer.value_conv.parametrizations.weight.original.grad is not None


def fake_input(device_type, size, batch=16):
    device = types.SimpleNamespace(type=device_type)
    return types.SimpleNamespace(shape=(batch, 8, size, size), device=device)


def test_auto_resolution():
    layer = SelfAttention2d(8)
    for size, batch in [(4, 1), (16, 16), (32, 16), (64, 4)]:
        assert layer.resolve_backend(fake_input("cpu", size, batch)) == "blocked"
        assert layer.resolve_backend(fake_input("cuda", size, batch)) == "sdpa"
        for device in ("cpu", "cuda"):  # the map is wanted: the form that builds it anyway
            assert layer.resolve_backend(fake_input(device, size), return_attention=True) == "bmm"
    layer.backend = "einsum"
    assert layer.resolve_backend(fake_input("cpu", 64)) == "einsum"


def test_backend_is_selectable_per_instance():
    a, b = SelfAttention2d(8, backend="sdpa"), SelfAttention2d(8)
    assert (a.backend, b.backend) == ("sdpa", "auto")
    b.backend = "blocked"
    assert (a.backend, b.backend) == ("sdpa", "blocked")
    assert "backend='blocked'" in repr(b)


@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (lambda: SelfAttention2d(4), ValueError, ["at least 8", "got 4"]),
        (lambda: SelfAttention2d(7), ValueError, ["at least 8", "got 7"]),
        (lambda: SelfAttention2d(8.0), TypeError, ["int", "float"]),
        (lambda: SelfAttention2d(16, backend="flash"), ValueError, ["'bmm'", "'flash'"]),
        (lambda: PooledSelfAttention2d(6), ValueError, ["at least 8", "got 6"]),
    ],
)
def test_bad_construction(make, error, words):
    with pytest.raises(error) as info:
        make()
    for word in words:
        assert word in str(info.value)


def test_bad_backend_assignment():
    layer = SelfAttention2d(16)
    with pytest.raises(ValueError, match="'nope'"):
        layer.backend = "nope"
    assert layer.backend == "auto"


@pytest.mark.parametrize("layer_cls", [SelfAttention2d, PooledSelfAttention2d])
@pytest.mark.parametrize(
    ("x", "error", "words"),
    [
        (torch.randn(16, 6, 4), ValueError, ["4-D", "(16, 6, 4)"]),
        (torch.randn(2, 8, 6, 4), ValueError, ["16 channels", "(2, 8, 6, 4)"]),
        (torch.ones(2, 16, 6, 4, dtype=torch.int64), TypeError, ["floating", "torch.int64"]),
        ([[1.0]], TypeError, ["torch.Tensor", "list"]),
    ],
)
def test_bad_input(layer_cls, x, error, words):
    with pytest.raises(error) as info:
        layer_cls(16)(x)
    for word in words:
        assert word in str(info.value)


def test_pooled_needs_even_sizes():
    with pytest.raises(ValueError, match=r"even height and width.*\(1, 16, 5, 4\)"):
        PooledSelfAttention2d(16)(torch.randn(1, 16, 5, 4))


def test_attention_blocked_function_shapes():
    query, key, value = torch.randn(2, 4, 30), torch.randn(2, 4, 30), torch.randn(2, 32, 30)
    out = attention_blocked(query, key, value)
    expected = value @ torch.softmax(query.transpose(1, 2) @ key, -1).transpose(1, 2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_pooled_variant_matches_its_definition():
    torch.manual_seed(3)
    layer = PooledSelfAttention2d(32)
    names = {"theta.weight", "phi.weight", "g.weight", "o.weight", "gamma"}
    assert set(layer.state_dict()) == names
    assert (layer.g.out_channels, layer.o.in_channels, layer.o.out_channels) == (16, 16, 32)
    x = torch.randn(2, 32, 6, 8)
    assert torch.equal(layer(x), x)  # gamma starts at 0
    with torch.no_grad():
        layer.gamma.fill_(0.3)
    out, attn = layer(x, return_attention=True)
    assert out.shape == x.shape and attn.shape == (2, 48, 12)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 48))
    # The same computation written with einsum over pooled keys and values.
    theta = layer.theta(x).flatten(2)
    phi = F.max_pool2d(layer.phi(x), 2).flatten(2)
    g = F.max_pool2d(layer.g(x), 2).flatten(2)
    beta = torch.einsum("bci,bcj->bij", theta, phi).softmax(-1)
    o = torch.einsum("bcj,bij->bci", g, beta).reshape(2, 16, 6, 8)
    torch.testing.assert_close(out, 0.3 * layer.o(o) + x, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert all(p.grad is not None for p in layer.parameters())


# Float64: every backend is bmm to rounding. Small odd sizes (N = 15) and block plans that split
# rows unevenly (4 + 4 + 4 + 3 rows) and batches unevenly (2 + 1 items), on a batch of 3.
SMALL = (3, 16, 3, 5)
PLANS = [(name, None) for name in ("auto", *BACKENDS)] + [("blocked", 15 * 4), ("blocked", 450)]


def make_double_layer(backend, monkeypatch, elements):
    if elements is not None:
        monkeypatch.setattr(attention, "_BLOCK_ELEMENTS", elements)
    layer = make_layer(SMALL[1]).double()
    layer.backend = backend
    torch.manual_seed(4)
    x = torch.randn(SMALL, dtype=torch.float64)
    return layer, x


def as_function(layer, return_attention=False):
    """The layer as a function of (x, *parameters), and copies of its parameters, for gradcheck."""
    names = [name for name, _ in layer.named_parameters()]

    def f(x, *params):
        params = dict(zip(names, params, strict=True))
        return torch.func.functional_call(
            layer, params, (x,), {"return_attention": return_attention}
        )

    return f, [p.detach().clone().requires_grad_() for p in layer.parameters()]


def test_block_plans_of_the_float64_tests_really_split(monkeypatch):
    assert attention._block_plan(3, 15) == (3, 15)
    monkeypatch.setattr(attention, "_BLOCK_ELEMENTS", 15 * 4)
    assert attention._block_plan(3, 15) == (1, 4)
    monkeypatch.setattr(attention, "_BLOCK_ELEMENTS", 450)
    assert attention._block_plan(3, 15) == (2, 15)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (torch.float64, torch.float64),
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32),
    ],
)
def test_accumulation_dtype(dtype, expected):
    assert attention._accumulation_dtype(dtype) == expected


@pytest.mark.parametrize(("backend", "elements"), PLANS)
@pytest.mark.parametrize("return_attention", [False, True])
def test_float64_equals_bmm_to_rounding(monkeypatch, backend, elements, return_attention):
    layer, x = make_double_layer(backend, monkeypatch, elements)
    weights = torch.randn_like(x)

    def run_double(name):
        layer.backend = name
        xi = x.clone().requires_grad_()
        result = layer(xi, return_attention=return_attention)
        out, attn = result if return_attention else (result, None)
        loss = (out * weights).sum() + (0.0 if attn is None else (attn * attn.flip(-1)).sum())
        grads = torch.autograd.grad(loss, [xi, *layer.parameters()])
        return out.detach(), attn, grads

    expected, actual = run_double("bmm"), run_double(backend)
    assert actual[0].dtype == torch.float64 and actual[0].shape == x.shape
    torch.testing.assert_close(actual[0], expected[0], atol=1e-12, rtol=0)
    if return_attention:
        torch.testing.assert_close(actual[1], expected[1], atol=1e-12, rtol=0)
    assert_all_close(actual[2], expected[2], atol=1e-12, rtol=0)


@pytest.mark.parametrize(("backend", "elements"), PLANS)
def test_float64_gradcheck_through_the_layer(monkeypatch, backend, elements):
    layer, x = make_double_layer(backend, monkeypatch, elements)
    f, params = as_function(layer)
    assert torch.autograd.gradcheck(f, (x.requires_grad_(), *params))


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_gradcheck_of_the_map(monkeypatch, backend):
    layer, x = make_double_layer(backend, monkeypatch, None)
    f, params = as_function(layer, return_attention=True)
    assert torch.autograd.gradcheck(f, (x.requires_grad_(), *params), fast_mode=True)


@pytest.mark.parametrize("elements", [None, 15 * 4, 450])
def test_float64_gradcheck_of_attention_blocked(monkeypatch, elements):
    if elements is not None:
        monkeypatch.setattr(attention, "_BLOCK_ELEMENTS", elements)
    torch.manual_seed(5)
    query, key, value = (
        torch.randn(3, c, 15, dtype=torch.float64, requires_grad=True) for c in (2, 2, 16)
    )
    assert torch.autograd.gradcheck(attention_blocked, (query, key, value))
    assert torch.autograd.gradgradcheck(attention_blocked, (query, key, value))


@pytest.mark.parametrize(("backend", "elements"), PLANS)
def test_float64_gradgradcheck_through_the_layer(monkeypatch, backend, elements):
    # fast_mode (random projections of the Jacobians): the full check of the layer takes over a
    # minute for all backends; attention_blocked's double backward is checked in full above.
    layer, x = make_double_layer(backend, monkeypatch, elements)
    f, params = as_function(layer)
    assert torch.autograd.gradgradcheck(f, (x.requires_grad_(), *params), fast_mode=True)


def test_float64_gradcheck_of_the_pooled_layer():
    torch.manual_seed(6)
    layer = PooledSelfAttention2d(16).double()
    with torch.no_grad():
        layer.gamma.fill_(0.7)
    x = torch.randn(2, 16, 4, 6, dtype=torch.float64, requires_grad=True)
    f, params = as_function(layer, return_attention=True)
    assert torch.autograd.gradcheck(f, (x, *params))
    f, params = as_function(layer)
    assert torch.autograd.gradgradcheck(f, (x, *params), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ("auto", *BACKENDS, "pooled"))
def test_empty_batch(backend, dtype):
    """B = 0 gives an empty output (and an empty map), and backward gives zero gradients."""
    if backend == "pooled":
        layer, n_keys = PooledSelfAttention2d(16), 6
    else:
        layer, n_keys = SelfAttention2d(16, backend=backend), 24
    layer = layer.to(dtype)
    with torch.no_grad():
        layer.gamma.fill_(0.7)
    x = torch.randn(0, 16, 4, 6, dtype=dtype, requires_grad=True)
    out = layer(x)
    assert out.shape == x.shape and out.dtype == dtype
    out, attn = layer(x, return_attention=True)
    assert out.shape == x.shape and attn.shape == (0, 24, n_keys)
    grads = torch.autograd.grad(out.sum() + attn.sum(), [x, *layer.parameters()])
    assert grads[0].shape == x.shape
    for grad, param in zip(grads[1:], layer.parameters(), strict=True):
        assert torch.equal(grad, torch.zeros_like(param))
    with torch.no_grad():
        assert layer(x.detach()).shape == x.shape


def test_attention_blocked_on_an_empty_batch():
    query, key = torch.randn(0, 2, 15), torch.randn(0, 2, 15)
    value = torch.randn(0, 16, 15, requires_grad=True)
    out = attention_blocked(query, key, value)
    assert out.shape == (0, 16, 15)
    out.sum().backward()
    assert value.grad.shape == value.shape


@pytest.mark.parametrize("shape", [(2, 16, 0, 4), (2, 16, 4, 0), (0, 16, 0, 0)])
@pytest.mark.parametrize("backend", ("auto", *BACKENDS, "pooled"))
@pytest.mark.parametrize("return_attention", [False, True])
def test_zero_sized_map_is_rejected(shape, backend, return_attention):
    if backend == "pooled":
        layer = PooledSelfAttention2d(16)
    else:
        layer = SelfAttention2d(16, backend=backend)
    with pytest.raises(ValueError) as info:
        layer(torch.randn(shape), return_attention=return_attention)
    message = str(info.value)
    assert "H >= 1 and W >= 1" in message and str(shape) in message


@pytest.mark.parametrize("shape", [(1, 16, 5, 4), (1, 16, 4, 5), (2, 16, 3, 3), (0, 16, 4, 5)])
def test_pooled_odd_sizes_are_rejected(shape):
    with pytest.raises(ValueError) as info:
        PooledSelfAttention2d(16)(torch.randn(shape))
    assert "even height and width" in str(info.value) and str(shape) in str(info.value)


@pytest.mark.parametrize("backend", ["auto", *SelfAttention2d.BACKENDS, "pooled"])
def test_an_input_of_another_dtype_than_the_layer_is_one_clear_error(backend):
    layer = (
        PooledSelfAttention2d(16) if backend == "pooled" else SelfAttention2d(16, backend=backend)
    )
    x = torch.randn(2, 16, 4, 6)
    with pytest.raises(
        TypeError, match=r"expected a torch.float64 tensor .* got dtype torch.float32"
    ):
        layer.double()(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast mixes dtypes on purpose
        assert layer.float()(x.bfloat16()).shape == x.shape


# ----------------------------------------------------------------------------------------------
# the book's code equals the package's layer: chapter 7's module is run from the notebook itself,
# chapters 3 to 6 are written out as the chapters write them, so the two cannot drift apart

BOOK = Path(__file__).resolve().parents[1] / "book"
DEMO = (2, 64, 6, 5)  # the book's demo sizes B, C, H, W: all different


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
    book = book_module()(DEMO[1])
    with torch.no_grad():
        book.gamma.fill_(0.5)
    package = SelfAttention2d(DEMO[1])
    package.load_state_dict(book.state_dict())
    return book, package


@pytest.mark.parametrize("way", ["bmm", "einsum", "sdpa"])
@pytest.mark.parametrize("backend", SelfAttention2d.BACKENDS)
def test_every_way_equals_every_package_backend(book_and_package, way, backend):
    book, package = book_and_package
    package.backend = backend
    x = torch.randn(*DEMO)
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
    x = torch.randn(*DEMO)
    out, attention = walk_through(x, book.query_conv, book.key_conv, book.value_conv, book.gamma)
    expected, expected_attention = package(x, return_attention=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(attention, expected_attention)
    assert attention.shape == (DEMO[0], DEMO[2] * DEMO[3], DEMO[2] * DEMO[3])


def test_key_bias_does_not_change_the_map():
    layer = SelfAttention2d(64, backend="bmm")
    x = torch.randn(*DEMO)
    _, before = layer(x, return_attention=True)
    with torch.no_grad():
        layer.key_conv.bias.add_(3.0)
    _, after = layer(x, return_attention=True)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-5)


def test_gamma_at_zero_gets_a_gradient_and_the_projections_do_not():
    layer = SelfAttention2d(64)
    x = torch.randn(*DEMO)
    out = layer(x)
    assert torch.equal(out, x)
    ((out - torch.randn_like(x)) ** 2).mean().backward()
    assert layer.gamma.grad.abs().item() > 0
    for conv in (layer.query_conv, layer.key_conv, layer.value_conv):
        assert (conv.weight.grad == 0).all()


def test_blocked_gets_row_major_operands_from_a_channels_last_input(monkeypatch):
    # bf16 batched products are slow on operands strided along N (a channels-last layout)
    import sagan_tutorial.attention as attention_module

    seen = []

    def spy(query, key, value):
        seen.extend(t.stride(-1) for t in (query, key, value))
        return original(query, key, value)

    original = attention_module._BlockedAttention.apply
    monkeypatch.setattr(attention_module._BlockedAttention, "apply", spy)
    layer = SelfAttention2d(16, backend="blocked")
    x = torch.randn(2, 16, 4, 4).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        layer.gamma.fill_(0.5)
        out = layer(x)
    assert seen == [1, 1, 1]
    layer.backend = "bmm"
    torch.testing.assert_close(out, layer(x))


@pytest.mark.parametrize(
    ("elements", "dtype", "kept"),
    [
        (None, torch.float32, True),  # the whole 3 x 16 x 16 map is one block: kept
        (16 * 8, torch.float32, False),  # blocks of 8 query rows: recomputed
        (None, torch.bfloat16, False),  # backward works in float32: recomputed
    ],
)
def test_a_map_of_one_block_is_kept_for_backward_instead_of_recomputed(
    monkeypatch, elements, dtype, kept
):
    if elements is not None:
        monkeypatch.setattr(attention, "_BLOCK_ELEMENTS", elements)
    calls = []
    original = attention._attention_blocks

    def counting(*args):
        calls.append(args[2])
        yield from original(*args)

    monkeypatch.setattr(attention, "_attention_blocks", counting)
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 2, 16, dtype=dtype)
    v = torch.randn(3, 8, 16, dtype=dtype)
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    out = attention_blocked(*inputs)
    shapes = [tuple(t.shape) for t in out.grad_fn.saved_tensors]
    assert shapes[:4] == [(3, 2, 16), (3, 2, 16), (3, 8, 16), (3, 8, 16)]
    assert shapes[4:] == ([(3, 16, 16)] if kept else [])
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, grad_out)
    assert len(calls) == (1 if kept else 2)  # the forward's pass, and the backward's unless kept
    reference = torch.autograd.grad(
        attention._attention_reference(*(t.double() for t in inputs)), inputs, grad_out.double()
    )
    tolerance = {"rtol": 5e-2, "atol": 1e-1} if dtype == torch.bfloat16 else {}  # 8-bit mantissa
    for got, expected in zip(grads, reference, strict=True):
        torch.testing.assert_close(got, expected.to(dtype), **tolerance)
