"""Part III, the conditional model: the claims of its chapter hold for the package's networks."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from sagan_tutorial.losses import discriminator_loss, generator_loss
from sagan_tutorial.models import ConditionalBatchNorm2d, Discriminator, GANConfig, Generator

SMALL = {"g_width": 8, "d_width": 8, "g_attention": (), "d_attention": ()}
PLAIN, CONDITIONAL = GANConfig(**SMALL), GANConfig(**SMALL, num_classes=10)


def parameter_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in module.named_parameters()}


def conditional_copy(plain_g: Generator, num_classes: int = 10) -> Generator:
    """A conditional G whose every class row holds plain_g's BatchNorm scale and shift."""
    config = GANConfig.from_dict({**plain_g.config.to_dict(), "num_classes": num_classes})
    state = {}
    for key, value in plain_g.state_dict().items():
        module, _, leaf = key.rpartition(".")
        if module.endswith(".bn") and leaf in ("weight", "bias"):
            table = "gamma" if leaf == "weight" else "beta"
            state[f"{module}.{table}.weight"] = value.expand(num_classes, -1)
        elif module.endswith(".bn"):
            state[f"{module}.bn.{leaf}"] = value
        else:
            state[key] = value
    copy = Generator(config)
    copy.load_state_dict(state)
    return copy.eval()


def caught_forward(d: Discriminator, x: torch.Tensor, y: torch.Tensor):
    """D(x, y), the last feature map h and the unconditional part to_logit(h), from one forward."""
    caught = {}
    hook = d.to_logit.register_forward_hook(
        lambda module, inputs, output: caught.update(h=inputs[0], linear=output.flatten())
    )
    try:
        logits = d(x, y)
    finally:
        hook.remove()
    return logits, caught["h"], caught["linear"]


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.rand(6, 1, 32, 32) * 2 - 1, torch.tensor([3, 8, 3, 1, 0, 9])


def test_the_flag_swaps_the_bn_affine_for_class_tables_and_adds_embed():
    for network, new, gone in (
        (
            Generator,
            {f"blocks.{i}.bn.{t}.weight" for i in range(3) for t in ("gamma", "beta")},
            {f"blocks.{i}.bn.{t}" for i in range(3) for t in ("weight", "bias")},
        ),
        (Discriminator, {"embed.parametrizations.weight.original"}, set()),
    ):
        plain = parameter_shapes(network(PLAIN))
        conditional = parameter_shapes(network(CONDITIONAL))
        assert set(conditional) - set(plain) == new
        assert set(plain) - set(conditional) == gone
        for name in set(plain) & set(conditional):
            assert plain[name] == conditional[name], name
    g = Generator(CONDITIONAL)
    widths = [CONDITIONAL.width_at(s, CONDITIONAL.g_width) for s in CONDITIONAL.feature_sizes]
    for block, width in zip(g.blocks, widths, strict=True):
        assert isinstance(block.bn, ConditionalBatchNorm2d)
        assert block.bn.gamma.weight.shape == block.bn.beta.weight.shape == (10, width)
        assert not block.bn.bn.affine
    d = Discriminator(CONDITIONAL)
    assert d.embed.weight.shape == (10, d.to_logit.in_channels)


def test_conditional_bn_starts_as_batchnorm_and_follows_the_formula():
    torch.manual_seed(0)
    cbn, bn = ConditionalBatchNorm2d(8, 10), nn.BatchNorm2d(8)
    x, y = torch.randn(4, 8, 5, 6), torch.tensor([3, 8, 3, 1])
    torch.testing.assert_close(cbn(x, y), bn(x), atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        cbn.gamma.weight.normal_(1.0, 0.2)
        cbn.beta.weight.normal_(0.0, 0.2)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    expected = (
        cbn.gamma.weight[y][:, :, None, None] * (x - mean) / torch.sqrt(var + cbn.bn.eps)
        + cbn.beta.weight[y][:, :, None, None]
    )
    torch.testing.assert_close(cbn(x, y), expected, atol=1e-5, rtol=1e-5)
    threes, eights = torch.full_like(y, 3), torch.full_like(y, 8)
    assert (cbn(x, threes) - cbn(x, eights)).abs().max() > 0.1
    others = torch.tensor([3, 0, 0, 0])  # image 0 keeps its label, the others change
    torch.testing.assert_close(cbn(x, y)[0], cbn(x, others)[0])
    assert not torch.allclose(cbn(x, y)[1:], cbn(x, others)[1:])


def test_equal_class_rows_give_the_unconditional_generator():
    torch.manual_seed(1)
    plain = Generator(PLAIN)
    with torch.no_grad():  # affine parameters away from their initial 1 and 0
        for block in plain.blocks:
            block.bn.weight.normal_(1.0, 0.3)
            block.bn.bias.normal_(0.0, 0.3)
    plain.train()
    plain(torch.randn(16, PLAIN.z_dim))  # running statistics away from their initial 0 and 1
    plain.eval()
    copy = conditional_copy(plain)
    z = torch.randn(5, PLAIN.z_dim)
    with torch.no_grad():
        reference = plain(z)
        for k in range(10):
            torch.testing.assert_close(copy(z, torch.full((5,), k)), reference)
        copy.blocks[0].bn.gamma.weight[4] += 0.5  # one row differs: that label changes
        assert not torch.allclose(copy(z, torch.full((5,), 4)), reference, atol=1e-3)
        torch.testing.assert_close(copy(z, torch.full((5,), 5)), reference)


@pytest.mark.parametrize("sn", ["port", "all"])
def test_projection_is_what_d_adds_to_the_linear_logit(batch, sn):
    x, y = batch
    torch.manual_seed(2)
    # eval mode: no power iteration, so reading d.embed after the forward sees the same weights
    d = Discriminator(GANConfig(**SMALL, num_classes=10, sn=sn)).eval()
    with torch.no_grad():
        logits, h, linear = caught_forward(d, x, y)
        projection = (d.embed(y) * h.sum(dim=(2, 3))).sum(dim=1)
    assert logits.shape == (6,) and h.shape[2:] == (4, 4)
    torch.testing.assert_close(logits - linear, projection, atol=1e-5, rtol=1e-5)
    assert projection.abs().min() > 0
    wrong = (y + 1) % 10
    with torch.no_grad():
        expected = ((d.embed(y) - d.embed(wrong)) * h.sum(dim=(2, 3))).sum(dim=1)
        torch.testing.assert_close(d(x, y) - d(x, wrong), expected, atol=1e-5, rtol=1e-5)


def test_without_the_projection_the_discriminator_is_the_unconditional_one(batch):
    x, y = batch
    torch.manual_seed(3)
    conditional, plain = Discriminator(CONDITIONAL).eval(), Discriminator(PLAIN).eval()
    missing, unexpected = conditional.load_state_dict(plain.state_dict(), strict=False)
    assert all(key.startswith("embed.") for key in missing) and missing and not unexpected
    with torch.no_grad():
        logits, h, _ = caught_forward(conditional, x, y)
        projection = (conditional.embed(y) * h.sum(dim=(2, 3))).sum(dim=1)
        assert not torch.allclose(logits, plain(x), atol=1e-3)
        torch.testing.assert_close(logits - projection, plain(x), atol=1e-5, rtol=1e-5)


def test_class_table_has_spectral_norm_so_the_projection_starts_moderate(batch):
    x, y = batch
    ratios = {}
    for sn in ("port", "all", "no SN on the table"):
        torch.manual_seed(0)
        d = Discriminator(GANConfig(num_classes=10, sn="port" if sn[0] == "n" else sn))
        if sn[0] == "n":
            nn.utils.parametrize.remove_parametrizations(d.embed, "weight")
            nn.init.normal_(d.embed.weight)
        with torch.no_grad():
            logits, _, linear = caught_forward(d, x, y)
        ratios[sn] = ((logits - linear).abs().mean() / linear.abs().mean()).item()
    sigma = torch.linalg.matrix_norm(Discriminator(CONDITIONAL).eval().embed.weight, ord=2)
    assert abs(sigma - 1) < 0.05  # the normalised table stretches no vector by much more than 1
    assert ratios["no SN on the table"] > 10 * max(ratios["port"], ratios["all"])


def test_the_losses_read_logits_only():
    assert list(inspect.signature(discriminator_loss).parameters) == [
        "name",
        "real_logits",
        "fake_logits",
    ]
    assert list(inspect.signature(generator_loss).parameters) == ["name", "fake_logits"]
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 0.5])
    hinge_d = torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()
    torch.testing.assert_close(discriminator_loss("hinge", real, fake), hinge_d)
    torch.testing.assert_close(generator_loss("hinge", fake), -fake.mean())
