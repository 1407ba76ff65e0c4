"""Part III, assembling G and D: the traced shapes, attention placement, counts and maps."""

from __future__ import annotations

import pytest
import torch

import sagan_tutorial as st
from sagan_tutorial.models import (
    Discriminator,
    GANConfig,
    Generator,
    attention_layers,
    attention_maps,
)
from sagan_tutorial.shapes import trace_shapes

CONFIG = GANConfig()


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return Generator(CONFIG).eval(), Discriminator(CONFIG).eval()


def test_default_config():
    assert (CONFIG.image_size, CONFIG.g_width, CONFIG.d_width, CONFIG.sn) == (32, 32, 32, "port")
    assert CONFIG.g_attention == (8, 16) and CONFIG.d_attention == (4, 8)
    assert {s: CONFIG.width_at(s, 32) for s in CONFIG.feature_sizes} == {4: 128, 8: 64, 16: 32}


def test_generator_trace_block_by_block(nets):
    G, _ = nets
    table = trace_shapes(G, torch.randn(3, CONFIG.z_dim), depth=1)
    assert [(r.module, r.outputs[0]) for r in table] == [
        ("", (3, 128, 1, 1)),
        ("blocks.0", (3, 128, 4, 4)),
        ("blocks.1", (3, 64, 8, 8)),
        ("attention.8", (3, 64, 8, 8)),
        ("blocks.2", (3, 32, 16, 16)),
        ("attention.16", (3, 32, 16, 16)),
        ("to_image", (3, 1, 32, 32)),
        ("", (3, 1, 32, 32)),
    ]
    assert table[-1].op == "tanh"


def test_gblock_is_conv_batchnorm_relu(nets):
    G, _ = nets
    table = trace_shapes(G.blocks[2], torch.randn(3, 64, 8, 8), None)
    assert [r.op for r in table] == ["ParametrizedConvTranspose2d", "BatchNorm2d", "relu"]


def test_discriminator_trace_block_by_block(nets):
    _, D = nets
    table = trace_shapes(D, torch.randn(5, 1, 32, 32), depth=1)
    assert [(r.module, r.outputs[0]) for r in table] == [
        ("blocks.0", (5, 32, 16, 16)),
        ("blocks.1", (5, 64, 8, 8)),
        ("attention.8", (5, 64, 8, 8)),
        ("blocks.2", (5, 128, 4, 4)),
        ("attention.4", (5, 128, 4, 4)),
        ("to_logit", (5, 1, 1, 1)),
        ("", (5,)),
    ]


def test_bmm_trace_of_the_largest_attention_layer(nets):
    G, _ = nets
    layer = G.attention["16"]
    layer.backend = "bmm"
    try:
        rows = list(trace_shapes(layer, torch.randn(3, 32, 16, 16), depth=0))
    finally:
        layer.backend = "auto"
    assert (rows[5].op, rows[5].outputs) == ("bmm", ((3, 256, 256),))  # row 6: the energy
    assert (rows[6].op, rows[6].outputs) == ("softmax", ((3, 256, 256),))  # row 7
    assert rows[-1].outputs == ((3, 32, 16, 16),)


def test_attention_placement_and_parameter_counts(nets):
    G, D = nets
    channels = {name: layer.in_channels for name, layer in attention_layers(G)}
    assert channels == {"attention.8": 64, "attention.16": 32}
    channels = {name: layer.in_channels for name, layer in attention_layers(D)}
    assert channels == {"attention.8": 64, "attention.4": 128}
    for net in (G, D):
        for _, layer in attention_layers(net):
            c = layer.in_channels
            assert count(layer) == 2 * (c * (c // 8) + c // 8) + c * c + c + 1
    assert (count(G), count(D)) == (433_691, 192_467)
    g_share = sum(count(m) for _, m in attention_layers(G)) / count(G)
    d_share = sum(count(m) for _, m in attention_layers(D)) / count(D)
    assert g_share < 0.02 < 0.1 < d_share
    largest = max(attention_layers(D), key=lambda item: count(item[1]))[0]
    assert largest == "attention.4"


def test_attention_maps_of_the_pretrained_generator_and_of_d(nets):
    _, D = nets
    G = st.pretrained("sagan-mnist32", device="cpu")
    assert G.config == CONFIG
    z = torch.randn(3, CONFIG.z_dim)
    images, maps = attention_maps(G, z)
    assert {n: tuple(m.shape) for n, m in maps.items()} == {
        "attention.8": (3, 64, 64),
        "attention.16": (3, 256, 256),
    }
    for attention in maps.values():
        torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:2]))
    with torch.no_grad():
        assert torch.equal(images, G(z))
    logits, d_maps = attention_maps(D, images)
    assert logits.shape == (3,)
    assert {n: tuple(m.shape) for n, m in d_maps.items()} == {
        "attention.8": (3, 64, 64),
        "attention.4": (3, 16, 16),
    }


def test_at_64_px_g_largest_attention_map_has_16_times_the_entries():
    config64 = GANConfig(image_size=64)
    assert config64.g_attention == (16, 32) and config64.d_attention == (4, 8)
    assert (32 * 32) ** 2 // (16 * 16) ** 2 == 16
