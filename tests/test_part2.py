"""Part II of the book: the claims of the spectral-norm chapter hold for the package's networks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from sagan_tutorial.models import Discriminator, GANConfig
from sagan_tutorial.spectral import as_matrix, power_iteration, register_spectral_norm

CONFIG = GANConfig(g_width=16, d_width=16, sn="all")


def operator_norm(conv: nn.Conv2d, in_shape: tuple[int, ...], n_iter: int = 100) -> float:
    """Largest singular value of the bias-free conv as a map on (1, *in_shape) feature maps."""

    def apply(x):
        return F.conv2d(x, conv.weight, None, conv.stride, conv.padding)

    x = torch.randn(1, *in_shape)
    for _ in range(n_iter):
        x = x / x.norm()
        y, pullback = torch.func.vjp(apply, x)
        (x,) = pullback(y)  # W^T W x
    return x.norm().sqrt().item()


def main_path(d: Discriminator) -> list[tuple[nn.Conv2d, tuple[int, int, int]]]:
    """(conv, input shape (C, H, W)) of every conv on D's path from image to logit."""
    layers, c, s = [], CONFIG.channels, CONFIG.image_size
    for block in d.blocks:
        layers.append((block[0], (c, s, s)))
        c, s = block[0].out_channels, s // 2
    return [*layers, (d.to_logit, (c, s, s))]


def scaled_copy(d: Discriminator, scale: float, sn: bool) -> Discriminator:
    """D with every raw weight times ``scale``, with or without spectral norm, in eval mode."""
    copy = Discriminator(CONFIG)
    copy.load_state_dict(d.state_dict())
    for module in copy.modules():
        if parametrize.is_parametrized(module, "weight"):
            with torch.no_grad():
                module.parametrizations.weight.original.mul_(scale)
            if not sn:
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    return copy.eval()


@pytest.fixture(scope="module")
def discriminator() -> Discriminator:
    torch.manual_seed(0)
    return Discriminator(CONFIG).eval()


def test_power_iteration_climbs_to_sigma_from_below(discriminator):
    weight = discriminator.blocks[1][0].parametrizations.weight.original.detach()
    exact = torch.linalg.matrix_norm(as_matrix(weight), ord=2)
    torch.manual_seed(1)
    u = F.normalize(torch.randn(weight.shape[0]), dim=0)
    v = None
    estimates = []
    for _ in range(30):
        sigma, u, v = power_iteration(weight, u, 1, v=v)
        estimates.append(sigma.item())
    estimates = torch.tensor(estimates)
    assert (estimates <= exact * (1 + 1e-6)).all()
    assert (estimates.diff() >= -1e-6 * exact).all()
    assert abs(estimates[-1] - exact) < 0.01 * exact


def test_normalised_matrix_stretches_no_vector():
    torch.manual_seed(2)
    layer = register_spectral_norm(nn.Conv2d(16, 32, 4, 2, 1))
    for _ in range(20):
        weight = layer.weight.detach()  # training mode: one power iteration each
    xs = torch.randn(16 * 4 * 4, 2000)
    ratios = (as_matrix(weight) @ xs).norm(dim=0) / xs.norm(dim=0)
    assert ratios.max() <= 1


def test_strided_conv_stretches_more_than_its_matrix_and_1x1_conv_does_not():
    torch.manual_seed(3)
    strided, one_by_one = nn.Conv2d(16, 32, 4, 2, 1), nn.Conv2d(16, 16, 1)
    for conv, in_shape in ((strided, (16, 16, 16)), (one_by_one, (16, 8, 8))):
        matrix_sigma = torch.linalg.matrix_norm(as_matrix(conv.weight.detach()), ord=2).item()
        conv_sigma = operator_norm(conv, in_shape, n_iter=200)
        if conv is strided:
            assert conv_sigma > 1.1 * matrix_sigma
        else:
            assert conv_sigma == pytest.approx(matrix_sigma, rel=1e-3)


def test_sn_makes_d_independent_of_the_weight_scale(discriminator):
    x = torch.randn(8, CONFIG.channels, CONFIG.image_size, CONFIG.image_size)
    with torch.no_grad():
        once = scaled_copy(discriminator, 1.0, sn=True)(x)
        twice = scaled_copy(discriminator, 2.0, sn=True)(x)
        plain = scaled_copy(discriminator, 1.0, sn=False)(x)
    torch.testing.assert_close(once, twice, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(once, plain, atol=1e-3)


@pytest.mark.parametrize("sn", [True, False])
def test_gradients_stay_below_the_product_of_layer_norms(discriminator, sn):
    torch.manual_seed(4)
    d = scaled_copy(discriminator, 2.0, sn=sn)
    bound = 1.0
    for conv, in_shape in main_path(d):
        bound *= operator_norm(conv, in_shape)
    x = torch.randn(32, CONFIG.channels, CONFIG.image_size, CONFIG.image_size, requires_grad=True)
    (grad,) = torch.autograd.grad(d(x).sum(), x)  # each logit depends on its own image only
    assert 0 < grad.flatten(1).norm(dim=1).max() <= bound
    if not sn:  # four layers without SN: doubling the weights multiplies the bound by 2^4
        plain_bound = 1.0
        for conv, in_shape in main_path(scaled_copy(discriminator, 1.0, sn=False)):
            plain_bound *= operator_norm(conv, in_shape)
        assert bound == pytest.approx(16 * plain_bound, rel=0.01)
