"""The three losses against values worked out by hand, and the gradient penalty."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sagan_tutorial.losses import LOSSES, discriminator_loss, generator_loss, gradient_penalty

REAL = torch.tensor([2.0, 0.5, -1.0])
FAKE = torch.tensor([-2.0, 0.0])


def softplus(x):
    return math.log1p(math.exp(x))


def test_hinge():
    # real: relu(1 - [2, 0.5, -1]) = [0, 0.5, 2], mean 5/6; fake: relu(1 + [-2, 0]) = [0, 1], 1/2
    assert discriminator_loss("hinge", REAL, FAKE).item() == pytest.approx(5 / 6 + 1 / 2)
    assert generator_loss("hinge", FAKE).item() == pytest.approx(1.0)  # -mean([-2, 0])


def test_nonsaturating():
    real = (softplus(-2.0) + softplus(-0.5) + softplus(1.0)) / 3  # -log sigmoid(real)
    fake = (softplus(-2.0) + softplus(0.0)) / 2  # -log(1 - sigmoid(fake))
    assert discriminator_loss("nonsaturating", REAL, FAKE).item() == pytest.approx(real + fake)
    generator = (softplus(2.0) + softplus(0.0)) / 2  # -log sigmoid(fake)
    assert generator_loss("nonsaturating", FAKE).item() == pytest.approx(generator)


def test_nonsaturating_equals_binary_cross_entropy():
    bce = nn.functional.binary_cross_entropy_with_logits
    expected = bce(REAL, torch.ones(3)) + bce(FAKE, torch.zeros(2))
    torch.testing.assert_close(discriminator_loss("nonsaturating", REAL, FAKE), expected)
    torch.testing.assert_close(generator_loss("nonsaturating", FAKE), bce(FAKE, torch.ones(2)))


def test_wgan():
    assert discriminator_loss("wgan-gp", REAL, FAKE).item() == pytest.approx(-1.0 - 0.5)
    assert generator_loss("wgan-gp", FAKE).item() == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["hinge", "nonsaturating"])
def test_a_far_logit_contributes_exactly_nothing(name):
    """Real logit 1e4, fake logit -1e4: D's loss is exactly 0 in float32, so a term of the loss
    can be looked at alone by holding the other input there (the hinge chapter does)."""
    far = torch.tensor([1e4])
    assert discriminator_loss(name, far, -far).item() == 0.0


@pytest.mark.parametrize("name", LOSSES)
def test_generator_gradient_points_to_higher_logits(name):
    fake = torch.zeros(4, requires_grad=True)
    generator_loss(name, fake).backward()
    assert (fake.grad < 0).all()  # G lowers its loss by raising D's logits on its images


class Linear(nn.Module):
    """D(x) = sum(w * x): its input gradient is w everywhere, so the penalty is known exactly."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x, y=None):
        out = (self.w * x).flatten(1).sum(1)
        return out if y is None else out + y.float()


def test_gradient_penalty_exact_value_and_double_backward():
    w = torch.full((1, 2, 2), 0.25)  # ||grad|| = sqrt(4 * 0.25^2) = 0.5 -> (0.5 - 1)^2 = 0.25
    critic = Linear(w)
    real, fake = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    penalty = gradient_penalty(critic, real, fake, weight=10.0)
    assert penalty.item() == pytest.approx(2.5)
    penalty.backward()  # d/dw 10 * (||w|| - 1)^2 = 20 (||w|| - 1) w / ||w||
    torch.testing.assert_close(critic.w.grad, 20 * (0.5 - 1) * w / 0.5)
    penalty = gradient_penalty(critic, real, fake, torch.tensor([0, 1, 2]), weight=1.0)
    assert penalty.item() == pytest.approx(0.25)  # labels passed through, gradient unchanged


def test_bad_input():
    with pytest.raises(ValueError, match=r"loss must be one of \('hinge', 'nonsaturating', "):
        generator_loss("lsgan", FAKE)
    with pytest.raises(ValueError, match=r"real_logits must have shape \(B,\), got \(3, 1\)"):
        discriminator_loss("hinge", REAL[:, None], FAKE)
    with pytest.raises(TypeError, match=r"fake_logits must be a torch.Tensor .*, got list"):
        generator_loss("hinge", [0.0])
    for name in ("hinge", "nonsaturating", "wgan-gp"):  # the mean of nothing would be NaN
        with pytest.raises(ValueError, match="fake_logits must hold at least one logit, got an"):
            generator_loss(name, torch.zeros(0))
        with pytest.raises(ValueError, match="real_logits must hold at least one logit"):
            discriminator_loss(name, torch.zeros(0), torch.zeros(0))
    critic = Linear(torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match=r"same shape .*got \(3, 1, 2, 2\) and \(2, 1, 2, 2\)"):
        gradient_penalty(critic, torch.ones(3, 1, 2, 2), torch.ones(2, 1, 2, 2))
