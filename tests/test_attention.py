"""SelfAttention2d and PooledSelfAttention2d: faithful to the original, every backend exact."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
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
