"""Spectral norm written out equals torch's parametrisation; sigma converges to the largest SV."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from sagan_tutorial.models import Discriminator, GANConfig
from sagan_tutorial.spectral import (
    SpectralNorm,
    apply_spectral_norm,
    as_matrix,
    output_dim,
    power_iteration,
    register_spectral_norm,
)

LAYERS = {
    "linear": lambda: nn.Linear(12, 7),
    "conv": lambda: nn.Conv2d(3, 5, 3),
    "conv_transpose": lambda: nn.ConvTranspose2d(6, 4, 4, 2, 1),
}


def twins(kind):
    """The same layer twice: one with torch's spectral norm, one with ours, same weight and u, v."""
    torch.manual_seed(0)
    theirs = spectral_norm(LAYERS[kind]())
    ours = LAYERS[kind]()
    with torch.no_grad():
        ours.weight.copy_(theirs.parametrizations.weight.original)
        ours.bias.copy_(theirs.bias)
    register_spectral_norm(ours)
    torch_norm = theirs.parametrizations.weight[0]
    our_norm = ours.parametrizations.weight[0]
    our_norm.u.copy_(torch_norm._u)
    our_norm.v.copy_(torch_norm._v)
    return theirs, ours, torch_norm, our_norm


@pytest.mark.parametrize("kind", list(LAYERS))
def test_equals_torch_in_training_and_eval(kind):
    theirs, ours, torch_norm, our_norm = twins(kind)
    for step in range(3):  # training: one power iteration per forward, weights changing between
        torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(our_norm.u, torch_norm._u, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(our_norm.v, torch_norm._v, rtol=1e-6, atol=1e-7)
        with torch.no_grad():  # the same update on both, so the vectors are stale as in training
            delta = torch.randn_like(ours.parametrizations.weight.original) * 0.1 * (step + 1)
            ours.parametrizations.weight.original.add_(delta)
            theirs.parametrizations.weight.original.add_(delta)
    ours.eval()
    theirs.eval()
    u_before = our_norm.u.clone()
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-6, atol=1e-7)
    assert torch.equal(our_norm.u, u_before), "eval mode must not run the power iteration"


def test_gradient_equals_torch():
    theirs, ours, _, _ = twins("conv")
    x = torch.randn(2, 3, 8, 8)
    ours(x).square().sum().backward()
    theirs(x).square().sum().backward()
    torch.testing.assert_close(
        ours.parametrizations.weight.original.grad,
        theirs.parametrizations.weight.original.grad,
        rtol=1e-5,
        atol=1e-6,
    )


def test_sigma_converges_to_the_largest_singular_value():
    torch.manual_seed(0)
    weight = torch.randn(16, 8, 3, 3)
    exact = torch.linalg.matrix_norm(as_matrix(weight), ord=2)
    u = torch.nn.functional.normalize(torch.randn(16), dim=0)
    errors = []
    for n_iter in (0, 1, 5, 200):
        sigma, _, _ = power_iteration(weight, u, n_iter)
        errors.append(float(exact - sigma))
    assert all(e >= -1e-4 for e in errors), "u.Wv never exceeds the largest singular value"
    assert errors[1] < errors[0] and errors[2] < errors[1]
    assert errors[-1] < 1e-4 * float(exact)


def test_power_iteration_resumed_from_its_vectors_climbs_to_sigma_from_below():
    """One iteration per call, each call given the u and v of the one before, as in training."""
    torch.manual_seed(0)
    discriminator = Discriminator(GANConfig(g_width=16, d_width=16, sn="all"))
    weight = discriminator.blocks[1][0].parametrizations.weight.original.detach()  # (32, 16, 4, 4)
    exact = torch.linalg.matrix_norm(as_matrix(weight), ord=2)
    torch.manual_seed(1)
    u = torch.nn.functional.normalize(torch.randn(weight.shape[0]), dim=0)
    v = None
    estimates = []
    for _ in range(30):
        sigma, u, v = power_iteration(weight, u, 1, v=v)
        estimates.append(sigma.item())
    estimates = torch.tensor(estimates)
    assert (estimates <= exact * (1 + 1e-6)).all()
    assert (estimates.diff() >= -1e-6 * exact).all()  # never decreases from one call to the next
    assert abs(estimates[-1] - exact) < 0.01 * exact


def test_normalised_weight_has_spectral_norm_one():
    torch.manual_seed(0)
    layer = register_spectral_norm(nn.Linear(20, 10), n_power_iterations=1)
    for _ in range(50):  # the same weight: the estimate converges as training steps repeat
        weight = layer.weight
    assert torch.linalg.matrix_norm(weight.detach(), ord=2) == pytest.approx(1.0, abs=1e-4)


def test_transposed_conv_uses_its_output_dimension():
    layer = nn.ConvTranspose2d(6, 4, 4)  # weight (in=6, out=4, 4, 4)
    assert output_dim(layer) == 1 and output_dim(nn.Conv2d(6, 4, 4)) == 0
    assert as_matrix(layer.weight.detach(), output_dim(layer)).shape == (4, 6 * 16)
    register_spectral_norm(layer)
    assert layer.parametrizations.weight[0].u.shape == (4,)
    assert layer.parametrizations.weight[0].v.shape == (6 * 16,)
    assert apply_spectral_norm(nn.ConvTranspose2d(6, 4, 4)).parametrizations.weight[0].dim == 1


def test_apply_spectral_norm_is_torchs_parametrisation():
    layer = apply_spectral_norm(nn.Conv2d(3, 8, 3))
    assert parametrize.is_parametrized(layer, "weight")
    norm = layer.parametrizations.weight[0]
    assert type(norm).__name__ == "_SpectralNorm" and not isinstance(norm, SpectralNorm)


def test_bad_input():
    with pytest.raises(ValueError, match=r"expected u of shape \(5,\).*got u \(4,\)"):
        power_iteration(torch.randn(5, 3), torch.randn(4))
    with pytest.raises(ValueError, match=r"at least 2 dimensions, got shape \(5,\)"):
        power_iteration(torch.randn(5), torch.randn(5))
    with pytest.raises(ValueError, match="n_power_iterations must be at least 1, got 0"):
        SpectralNorm(torch.randn(3, 3), n_power_iterations=0)
