"""The EMA of G: the update, the warm-up of its decay, and standing BatchNorm statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sagan_tutorial.ema import ema_decay_at, standing_statistics, update_ema
from sagan_tutorial.models import GANConfig, Generator
from sagan_tutorial.train import Trainer


def test_update_ema_math():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model(torch.randn(5, 3))  # moves the BatchNorm statistics away from ema's
    before = [p.detach().clone() for p in ema.parameters()]
    update_ema(ema, model, 0.9)
    for old, new, p in zip(before, ema.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * p, rtol=0, atol=1e-7)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        assert torch.equal(ema_buffer, buffer)  # copied, not averaged
    with pytest.raises(ValueError, match="ema has 2 parameters, the model 4"):
        update_ema(nn.Linear(2, 2), model, 0.9)


def test_the_warm_up_of_the_decay():
    assert ema_decay_at(1, 0.999) == pytest.approx(2 / 11)
    assert ema_decay_at(4000, 0.999) == pytest.approx(4001 / 4010)  # 0.9978: below 0.999
    assert ema_decay_at(8989, 0.999) < 0.999 and ema_decay_at(8991, 0.999) == 0.999
    assert ema_decay_at(100_000, 0.999) == 0.999


def test_the_trainer_averages_after_each_step(tiny):
    trainer = Trainer(tiny(steps=1, ema_decay=0.5))
    initial = [p.detach().clone() for p in trainer.ema.parameters()]
    assert all(
        torch.equal(a, b) for a, b in zip(initial, trainer.generator.parameters(), strict=True)
    )
    trainer.fit()
    decay = ema_decay_at(1, 0.5)  # 2/11 < 0.5: the warm-up applies
    for old, ema, g in zip(
        initial, trainer.ema.parameters(), trainer.generator.parameters(), strict=True
    ):
        torch.testing.assert_close(ema, decay * old + (1 - decay) * g.detach())


def test_standing_statistics_are_the_generators_own():
    torch.manual_seed(0)
    generator = Generator(GANConfig(g_width=16)).eval()
    noise = torch.randn(40, generator.config.z_dim)
    sn_vectors = {k: v.clone() for k, v in generator.state_dict().items() if k.endswith("_u")}
    standing_statistics(generator, noise, batch_size=40)
    assert not generator.training and all(not m.training for m in generator.modules())
    # one batch of 40 with momentum None: the running mean is that batch's mean exactly
    first_bn = generator.blocks[0].bn
    with torch.no_grad():
        h = generator.blocks[0].conv(noise[:, :, None, None])
    torch.testing.assert_close(first_bn.running_mean, h.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert first_bn.momentum == 0.1  # put back
    after = generator.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in sn_vectors.items())  # SN left alone
