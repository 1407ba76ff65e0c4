"""Part II, where spectral norm goes: the placement the chapter tabulates and what training does."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from sagan_tutorial.losses import discriminator_loss, generator_loss
from sagan_tutorial.models import (
    ConditionalBatchNorm2d,
    Discriminator,
    GANConfig,
    Generator,
    set_attention_backend,
    spectral_sigmas,
)
from sagan_tutorial.shapes import trace_shapes
from sagan_tutorial.spectral import as_matrix, output_dim

WEIGHT_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Embedding)
LAST = {"G": {"to_image"}, "D": {"to_logit"}}


def weight_layers(net: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in net.named_modules() if isinstance(m, WEIGHT_LAYERS)}


def has_sn(module: nn.Module) -> bool:
    return parametrize.is_parametrized(module, "weight")


def networks(sn: str, num_classes: int = 0) -> dict[str, nn.Module]:
    config = GANConfig(g_width=8, d_width=8, sn=sn, num_classes=num_classes)
    return {"G": Generator(config), "D": Discriminator(config)}


@pytest.mark.parametrize("num_classes", [0, 10])
@pytest.mark.parametrize("sn", ["port", "all"])
def test_sn_on_every_weight_layer_but_the_last_ones_under_port(sn, num_classes):
    for tag, net in networks(sn, num_classes).items():
        layers = weight_layers(net)
        assert any("attention" in name for name in layers)
        for name, module in layers.items():
            if ".bn." in name:  # conditional BatchNorm's per-class scale and shift: never SN
                assert isinstance(module, nn.Embedding) and not has_sn(module), name
            elif name == "embed":  # D's class table: SN under both presets
                assert has_sn(module), (sn, name)
            elif name in LAST[tag]:
                assert has_sn(module) == (sn == "all"), (sn, name)
            else:
                assert has_sn(module), (sn, name)


def test_batchnorm_follows_each_conv_of_g_and_d_has_none():
    nets = networks("port")
    G, D = nets["G"].eval(), nets["D"].eval()
    assert not any(isinstance(m, (nn.BatchNorm2d, ConditionalBatchNorm2d)) for m in D.modules())
    for net, inputs in ((G, (torch.randn(3, 128),)), (D, (torch.randn(3, 1, 32, 32),))):
        set_attention_backend(net, "bmm")
        rows = list(trace_shapes(net, *inputs))
        following = {row.module: rows[i + 1].op for i, row in enumerate(rows[:-1])}
        for name in weight_layers(net):
            if name.startswith("blocks."):
                expected = "BatchNorm2d" if net is G else "LeakyReLU"
                assert following[name] == expected, name
        last = "to_image" if net is G else "to_logit"
        assert following[last] == ("tanh" if net is G else "flatten")


def test_unnormalised_to_logit_sets_the_scale_of_d_and_sn_removes_it():
    images = torch.randn(4, 1, 32, 32)
    ratios = {}
    for sn in ("port", "all"):
        logits = []
        for scale in (1.0, 3.0):
            torch.manual_seed(0)
            d = Discriminator(GANConfig(d_width=8, sn=sn)).eval()
            layer = d.to_logit
            raw = layer.parametrizations.weight.original if has_sn(layer) else layer.weight
            with torch.no_grad():
                raw.mul_(scale)
                layer.bias.zero_()
                logits.append(d(images))
        ratios[sn] = logits[1] / logits[0]
    torch.testing.assert_close(ratios["port"], torch.full((4,), 3.0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ratios["all"], torch.ones(4), rtol=1e-4, atol=1e-4)


def test_transposed_conv_to_image_starts_with_sigma_above_one():
    torch.manual_seed(0)
    G = Generator(GANConfig(g_width=16))
    matrix = as_matrix(G.to_image.weight.detach(), output_dim(G.to_image))
    assert matrix.shape == (1, 16 * 4 * 4)  # one row: one output channel
    assert torch.linalg.matrix_norm(matrix, ord=2) > 1.5


def test_after_training_steps_normalised_weights_have_sigma_close_to_and_above_one():
    torch.manual_seed(0)
    config = GANConfig(g_width=8, d_width=8)
    G, D = Generator(config), Discriminator(config)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(D.parameters(), lr=4e-4, betas=(0.0, 0.9))
    raw_before = {n: s for n, s in spectral_sigmas(D).items()}
    for _ in range(15):
        real = torch.rand(8, 1, 32, 32) * 2 - 1
        fake = G(torch.randn(8, 128))
        logits = D(torch.cat([real, fake.detach()]))
        loss_d = discriminator_loss("hinge", *logits.chunk(2))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = generator_loss("hinge", D(G(torch.randn(8, 128))))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
    assert spectral_sigmas(D) != raw_before  # the raw weights moved
    G.eval()
    D.eval()
    for net in (G, D):
        for name, module in weight_layers(net).items():
            if has_sn(module):
                matrix = as_matrix(module.weight.detach(), output_dim(module))
                sigma = torch.linalg.matrix_norm(matrix, ord=2).item()
                assert 1 - 1e-5 < sigma < 1.2, (name, sigma)
