"""Generator and Discriminator: config checks, shapes, attention placement, SN presets, classes."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn.utils import parametrize

from sagan_tutorial import SelfAttention2d
from sagan_tutorial.losses import gradient_penalty
from sagan_tutorial.models import (
    ConditionalBatchNorm2d,
    Discriminator,
    GANConfig,
    Generator,
    attention_layers,
    attention_maps,
    set_attention_backend,
    spectral_sigmas,
)
from sagan_tutorial.spectral import as_matrix, register_spectral_norm


def small(**kwargs):
    """A narrow config: tests look at structure, not capacity."""
    return GANConfig(**{"g_width": 8, "d_width": 8, "z_dim": 16, **kwargs})


def attention_sizes(module):
    """(name, map size the layer sits on, its channels) of every attention layer, in order."""
    return [
        (name, int(name.rsplit(".", 1)[1]), layer.in_channels)
        for name, layer in attention_layers(module)
    ]


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
@torch.no_grad()
def test_shapes_and_ranges(size, channels):
    torch.manual_seed(0)
    config = small(image_size=size, channels=channels, attention_backend="bmm")
    generator, discriminator = Generator(config), Discriminator(config)
    images = generator(torch.randn(2, 16))
    assert images.shape == (2, channels, size, size)
    assert images.abs().max() <= 1.0  # tanh
    assert discriminator(images).shape == (2,)


@pytest.mark.parametrize(
    ("size", "g_expected", "d_expected"),
    [
        (
            32,
            [("attention.8", 8, 16), ("attention.16", 16, 8)],
            [("attention.8", 8, 16), ("attention.4", 4, 32)],
        ),
        (
            64,
            [("attention.16", 16, 16), ("attention.32", 32, 8)],
            [("attention.8", 8, 32), ("attention.4", 4, 64)],
        ),
        (
            128,
            [("attention.32", 32, 16), ("attention.64", 64, 8)],
            [("attention.16", 16, 32), ("attention.8", 8, 64)],
        ),
    ],
)
def test_default_attention_placement(size, g_expected, d_expected):
    config = small(image_size=size)
    assert attention_sizes(Generator(config)) == g_expected  # G: in the order the maps grow
    assert attention_sizes(Discriminator(config)) == d_expected  # D: in the order they shrink


def test_attention_sits_on_the_named_feature_maps():
    seen = []
    generator = Generator(small(g_attention=(4, 16)))
    for _, layer in attention_layers(generator):
        layer.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    generator(torch.randn(2, 16))
    assert seen == [(2, 32, 4, 4), (2, 8, 16, 16)]


def test_port_64px_channels_match_the_port():
    config = GANConfig(image_size=64, g_width=64, d_width=64, z_dim=100, channels=3)
    assert [m.in_channels for _, m in attention_layers(Generator(config))] == [128, 64]
    assert [m.in_channels for _, m in attention_layers(Discriminator(config))] == [256, 512]


def test_no_attention_and_backend():
    config = small(g_attention=(), d_attention=(), attention_backend="einsum")
    assert attention_layers(Generator(config)) == []
    layers = attention_layers(Generator(small(attention_backend="einsum")))
    assert {layer.backend for _, layer in layers} == {"einsum"}
    discriminator = Discriminator(small())
    set_attention_backend(discriminator, "blocked")
    assert {layer.backend for _, layer in attention_layers(discriminator)} == {"blocked"}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"image_size": 48}, ValueError, r"image_size must be one of \(32, 64, 128\), got 48"),
        ({"channels": 2}, ValueError, "channels must be 1 .grey. or 3 .RGB., got 2"),
        (
            {"sn": "nowhere"},
            ValueError,
            r"sn must be one of \('port', 'all', 'd', 'none'\), got 'no",
        ),
        ({"z_dim": 0}, ValueError, "z_dim must be between 1 and 1024, got 0"),
        ({"g_width": 10**8}, ValueError, "g_width must be between 1 and 1024, got 100000000"),
        ({"g_width": 8.0}, TypeError, "g_width must be an int, got float"),
        ({"num_classes": -1}, ValueError, "num_classes must be between 0 and 100000, got -1"),
        ({"attention_backend": "flash"}, ValueError, "attention_backend must be one of"),
        (
            {"g_attention": (32,)},
            ValueError,
            r"g_attention: the networks at image_size=32 have feature maps of sizes \(4, 8, 16\), "
            "got 32",
        ),
        ({"d_attention": (2,)}, ValueError, r"sizes \(4, 8, 16\), got 2"),
        ({"d_attention": (8.0,)}, ValueError, r"sizes \(4, 8, 16\), got 8.0"),
        ({"g_attention": 8}, TypeError, "g_attention must be a tuple of feature-map sizes, got 8"),
        (
            {"g_width": 4},
            ValueError,
            "g_attention: attention needs at least 8 channels, but the 16x16 map has 4 "
            r"\(raise g_width to at least 8\)",
        ),
        (
            {"d_width": 2, "d_attention": (8,)},
            ValueError,
            "the 8x8 map has 4 .raise d_width to at least 4.",
        ),
    ],
)
def test_config_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        GANConfig(**kwargs)


def test_config_resolves_defaults_and_round_trips_through_json():
    config = GANConfig(image_size=64, g_attention=[32, 16, 32], num_classes=10, sn="all")
    assert config.g_attention == (16, 32) and config.d_attention == (4, 8)
    d = json.loads(json.dumps(config.to_dict()))
    assert d["g_attention"] == [16, 32]
    assert GANConfig.from_dict(d) == config
    with pytest.raises(ValueError, match=r"unknown GANConfig keys \['conv_dim'\]; the fields are"):
        GANConfig.from_dict({**d, "conv_dim": 64})
    with pytest.raises(TypeError, match="expected a dict of GANConfig fields, got list"):
        GANConfig.from_dict([1, 2])


def sn_layers(module):
    return {name for name, m in module.named_modules() if parametrize.is_parametrized(m, "weight")}


def test_sn_presets():
    port_g, port_d = Generator(small(num_classes=3)), Discriminator(small(num_classes=3))
    convs = ("query_conv", "key_conv", "value_conv")
    g_attention = {f"attention.{s}.{c}" for s in (8, 16) for c in convs}
    d_attention = {f"attention.{s}.{c}" for s in (4, 8) for c in convs}
    assert sn_layers(port_g) == {"blocks.0.conv", "blocks.1.conv", "blocks.2.conv"} | g_attention
    # the class embedding is normalised under both presets
    assert sn_layers(port_d) == {"blocks.0.0", "blocks.1.0", "blocks.2.0", "embed"} | d_attention
    all_g = Generator(small(sn="all", num_classes=3))
    all_d = Discriminator(small(sn="all", num_classes=3))
    assert sn_layers(all_g) == sn_layers(port_g) | {"to_image"}
    assert sn_layers(all_d) == sn_layers(port_d) | {"to_logit"}
    # "d": D as under "port", G without any (SN-GAN's placement); "none": nowhere
    assert sn_layers(Generator(small(sn="d", num_classes=3))) == set()
    assert sn_layers(Discriminator(small(sn="d", num_classes=3))) == sn_layers(port_d)
    assert sn_layers(Generator(small(sn="none", num_classes=3))) == set()
    assert sn_layers(Discriminator(small(sn="none", num_classes=3))) == set()


def test_the_default_placement_builds_the_same_weights_as_before_the_presets_grew():
    """The shipped generators were trained under "port": its networks must load them."""
    from sagan_tutorial import pretrained

    G = pretrained("sagan-mnist32", device="cpu")
    assert sn_layers(G) == {f"blocks.{i}.conv" for i in range(3)} | {
        f"attention.{s}.{c}" for s in (8, 16) for c in ("query_conv", "key_conv", "value_conv")
    }


def test_spectral_sigmas_reads_the_vectors_without_iterating():
    torch.manual_seed(0)
    discriminator = Discriminator(small(sn="all"))
    before = {n: b.clone() for n, b in discriminator.named_buffers()}
    sigmas = spectral_sigmas(discriminator)
    assert set(sigmas) == sn_layers(discriminator)
    assert all(torch.equal(b, before[n]) for n, b in discriminator.named_buffers())
    layer = discriminator.blocks[1][0]
    norm = layer.parametrizations.weight[0]
    matrix = as_matrix(layer.parametrizations.weight.original.detach())
    exact = torch.linalg.matrix_norm(matrix, ord=2)
    # torch initialises u and v with 15 power iterations: sigma is already close to exact
    assert sigmas["blocks.1.0"] == pytest.approx(exact.item(), rel=0.05)
    assert sigmas["blocks.1.0"] == pytest.approx((norm._u @ matrix @ norm._v).item())
    discriminator(torch.randn(2, 1, 32, 32))  # a training forward moves u, v and so sigma
    assert spectral_sigmas(discriminator)["blocks.1.0"] != sigmas["blocks.1.0"]


def test_spectral_sigmas_reads_the_teaching_parametrisation():
    layers = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 4))
    register_spectral_norm(layers[1])
    norm = layers[1].parametrizations.weight[0]
    expected = norm.u @ layers[1].parametrizations.weight.original.detach() @ norm.v
    assert spectral_sigmas(layers) == {"1": pytest.approx(expected.item())}


def test_conditional_generator_and_discriminator():
    torch.manual_seed(0)
    config = small(num_classes=10)
    # eval: no power iteration and no batch statistics, so images do not affect each other
    generator, discriminator = Generator(config).eval(), Discriminator(config).eval()
    z = torch.randn(4, 16)
    y = torch.tensor([0, 3, 3, 9])
    with torch.no_grad():
        generator.blocks[1].bn.beta.weight[3].fill_(0.5)  # class 3 gets its own shift
    images = generator(z, y)
    assert images.shape == (4, 1, 32, 32)
    other = generator(z, torch.tensor([0, 4, 3, 9]))  # image 1 asks for class 4 now
    assert torch.equal(images[[0, 2, 3]], other[[0, 2, 3]])
    assert (images[1] - other[1]).abs().max() > 0.01
    logits = discriminator(images, y)
    assert logits.shape == (4,)
    changed = discriminator(images, torch.tensor([0, 4, 3, 9]))  # image 1 claims class 4
    assert torch.equal(changed[[0, 2, 3]], logits[[0, 2, 3]])  # each logit reads its own label
    assert not torch.allclose(changed[1], logits[1])


@pytest.mark.parametrize("num_classes", [0, 10])
def test_batchnorm_in_every_generator_block_and_nowhere_in_the_discriminator(num_classes):
    """D's logit for an image must not depend on the other images of its batch."""
    norms = (torch.nn.BatchNorm2d, ConditionalBatchNorm2d)
    config = small(num_classes=num_classes)
    assert all(isinstance(block.bn, norms) for block in Generator(config).blocks)
    assert not any(isinstance(m, norms) for m in Discriminator(config).modules())


def test_conditional_bn_starts_as_batchnorm():
    torch.manual_seed(0)
    conditional = Generator(small(num_classes=10))
    plain = Generator(small())
    plain.load_state_dict(conditional.state_dict(), strict=False)
    z = torch.randn(4, 16)
    torch.testing.assert_close(conditional(z, torch.tensor([1, 2, 3, 4])), plain(z))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda g, d: g(torch.randn(2, 16)),
            ValueError,
            r"conditional \(num_classes=10\): pass labels y",
        ),
        (
            lambda g, d: g(torch.randn(2, 16), torch.tensor([1, 10])),
            ValueError,
            r"class indices in \[0, 9\], got values from 1 to 10",
        ),
        (
            lambda g, d: g(torch.randn(2, 16), torch.tensor([1.0, 2.0])),
            TypeError,
            "y must be an int64 .long. tensor of class indices, got dtype torch.float32",
        ),
        (
            lambda g, d: g(torch.randn(2, 16), torch.tensor([[1, 2]])),
            ValueError,
            r"y must have shape \(2,\), one label per image, got \(1, 2\)",
        ),
        (
            lambda g, d: g(torch.randn(2, 15), torch.tensor([1, 2])),
            ValueError,
            r"z must have shape \(B, z_dim\), got \(2, 15\)",
        ),
        (lambda g, d: g([0.0], None), TypeError, "z must be a tensor of shape"),
        (
            lambda g, d: d(torch.randn(2, 3, 32, 32), torch.tensor([1, 2])),
            ValueError,
            r"x must have shape \(B, 1, 32, 32\), got \(2, 3, 32, 32\)",
        ),
        (
            lambda g, d: d(torch.zeros(2, 1, 32, 32, dtype=torch.uint8), torch.tensor([1, 2])),
            TypeError,
            "x must be a floating-point tensor, got dtype torch.uint8",
        ),
    ],
)
def test_bad_inputs_conditional(call, error, match):
    config = small(num_classes=10)
    with pytest.raises(error, match=match):
        call(Generator(config), Discriminator(config))


def test_labels_given_to_an_unconditional_model():
    with pytest.raises(ValueError, match=r"unconditional \(num_classes=0\) but labels y were"):
        Discriminator(small())(torch.randn(2, 1, 32, 32), torch.tensor([0, 1]))


@pytest.mark.parametrize("backend", SelfAttention2d.BACKENDS)
def test_gradient_penalty_through_attention(backend):
    """WGAN-GP differentiates twice; every attention backend must allow it and agree."""
    torch.manual_seed(0)
    discriminator = Discriminator(small(num_classes=10, attention_backend=backend))
    for _, layer in attention_layers(discriminator):
        torch.nn.init.constant_(layer.gamma, 0.5)  # at 0 attention would not touch the gradient
    discriminator.eval()  # no power iteration: every backend sees the same weights
    real, fake = torch.randn(4, 1, 32, 32), torch.randn(4, 1, 32, 32)
    torch.manual_seed(1)
    penalty = gradient_penalty(discriminator, real, fake, torch.tensor([0, 1, 2, 3]))
    penalty.backward()
    grad = discriminator.attention["8"].gamma.grad
    assert penalty.item() > 0 and grad is not None and grad.abs().item() > 0
    reference = Discriminator(small(num_classes=10, attention_backend="bmm"))
    reference.load_state_dict(discriminator.state_dict())
    reference.eval()
    torch.manual_seed(1)
    gradient_penalty(reference, real, fake, torch.tensor([0, 1, 2, 3])).backward()
    torch.testing.assert_close(grad, reference.attention["8"].gamma.grad, rtol=1e-4, atol=1e-6)


def test_attention_maps_of_a_generator_are_row_stochastic_and_match_the_layer():
    torch.manual_seed(0)
    G = Generator(GANConfig(g_width=16, g_attention=(8, 16))).eval()
    z = torch.randn(3, G.config.z_dim)
    with torch.no_grad():
        expected = G(z)
    images, maps = attention_maps(G, z)
    assert torch.equal(images, expected)  # the hooks change nothing
    assert {name: tuple(m.shape) for name, m in maps.items()} == {
        "attention.8": (3, 64, 64),
        "attention.16": (3, 256, 256),
    }
    for attention in maps.values():
        torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:2]))
    seen = {}
    layer = G.get_submodule("attention.16")
    handle = layer.register_forward_hook(lambda m, a, o: seen.setdefault("x", a[0]))
    with torch.no_grad():
        G(z)
    handle.remove()
    _, direct = SelfAttention2d.forward(layer, seen["x"], return_attention=True)
    torch.testing.assert_close(maps["attention.16"], direct)
    assert not any(layer._forward_hooks for _, layer in attention_layers(G))  # hooks removed
