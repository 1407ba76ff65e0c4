"""Part II, hinge loss and TTUR: where the hinge is flat, and the optimisers the trainer builds."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, vmap

from sagan_tutorial.losses import discriminator_loss, generator_loss
from sagan_tutorial.models import Discriminator, GANConfig
from sagan_tutorial.train import TrainConfig, Trainer

FAR = 1e4  # a logit whose term of D's loss is exactly zero
LOGITS = torch.linspace(-4, 4, 801)


def curve(f):
    """(value, slope) of a loss of one logit, at every point of LOGITS."""
    return vmap(f)(LOGITS[:, None]), vmap(grad(f))(LOGITS[:, None])[:, 0]


def real_term(name):
    return lambda d: discriminator_loss(name, d, torch.full_like(d, -FAR))


def fake_term(name):
    return lambda d: discriminator_loss(name, torch.full_like(d, FAR), d)


@pytest.mark.parametrize("name", ["hinge", "nonsaturating"])
def test_the_far_logit_contributes_nothing(name):
    far = torch.tensor([FAR])
    assert discriminator_loss(name, far, -far).item() == 0.0


def test_hinge_is_flat_beyond_the_margin_and_linear_inside():
    value, slope = curve(real_term("hinge"))
    assert (value[LOGITS > 1] == 0).all() and (slope[LOGITS > 1] == 0).all()
    assert (slope[LOGITS < 1] == -1).all()
    torch.testing.assert_close(value[LOGITS < 1], 1 - LOGITS[LOGITS < 1])
    value, slope = curve(fake_term("hinge"))
    assert (value[LOGITS < -1] == 0).all() and (slope[LOGITS < -1] == 0).all()
    assert (slope[LOGITS > -1] == 1).all()


def test_generator_hinge_loss_has_slope_minus_one_everywhere():
    value, slope = curve(lambda d: generator_loss("hinge", d))
    assert (slope == -1).all()
    torch.testing.assert_close(value, -LOGITS)


def test_nonsaturating_slopes_are_sigmoids_never_zero():
    _, slope = curve(real_term("nonsaturating"))
    torch.testing.assert_close(slope, -torch.sigmoid(-LOGITS), atol=1e-6, rtol=0)
    assert (slope != 0).all()
    _, g_slope = curve(lambda d: generator_loss("nonsaturating", d))
    torch.testing.assert_close(g_slope, slope)  # G's loss is D's loss on a real image
    ratio = slope[LOGITS.abs().argmin()] / slope[(LOGITS - 3).abs().argmin()]
    assert 10 < ratio < 11


def test_confident_real_images_give_d_no_gradient():
    torch.manual_seed(1)
    D = Discriminator(GANConfig(d_width=8)).eval()
    reals = torch.rand(12, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        D.to_logit.bias += 1 - D(reals).sort().values[5:7].mean()
    no_fake = torch.full((1,), -FAR)
    confident = 0
    for image in reals:
        D.zero_grad()
        logit = D(image[None])
        discriminator_loss("hinge", logit, no_fake).backward()
        norm = sum((p.grad**2).sum() for p in D.parameters() if p.grad is not None)
        if logit.item() > 1:
            confident += 1
            assert norm == 0
        else:
            assert norm > 0
    assert confident == 6


def test_ttur_defaults():
    config = TrainConfig()
    assert (config.lr_g, config.lr_d, config.n_dis, config.loss) == (1e-4, 4e-4, 1, "hinge")
    assert (config.beta1, config.beta2) == (0.0, 0.9)
    assert type(config.beta1) is float and type(TrainConfig(beta1=0).beta1) is float


def test_trainer_builds_adam_with_ttur(tmp_path):
    trainer = Trainer(
        TrainConfig(
            model=GANConfig(g_width=8, d_width=8),
            out=str(tmp_path),
            progress=False,
            tensorboard=False,
        )
    )
    for opt, net, lr in (
        (trainer.opt_g, trainer.generator, 1e-4),
        (trainer.opt_d, trainer.discriminator, 4e-4),
    ):
        assert isinstance(opt, torch.optim.Adam)
        (group,) = opt.param_groups
        assert group["lr"] == lr and group["betas"] == (0.0, 0.9)
        assert {id(p) for p in group["params"]} == {id(p) for p in net.parameters()}
    assert not any(tmp_path.iterdir())  # building a trainer writes nothing


def test_adam_rejects_mixed_int_float_betas():
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="both floats"):
        torch.optim.Adam(params, lr=1e-4, betas=(0, 0.9))
    adam = torch.optim.Adam(params, lr=1e-4, betas=(0.0, 0.9))
    assert adam.param_groups[0]["betas"] == (0.0, 0.9)
