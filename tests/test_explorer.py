"""explorer: the embedded data, parsed back out of the HTML, is the generator's own numbers."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

import sagan_tutorial
from sagan_tutorial import explorer
from sagan_tutorial.models import (
    Discriminator,
    GANConfig,
    Generator,
    attention_layers,
    attention_maps,
)


@pytest.fixture(scope="module")
def G():
    return sagan_tutorial.pretrained("sagan-mnist32", device="cpu")


@pytest.fixture(scope="module")
def shipped_html(G):
    return explorer.explorer_html(G, seed=0)


def parse(html: str) -> dict:
    """The root's attributes and the embedded payload, decoded independently of the module."""
    root = re.match(r'<div class="sagan-explorer" id="([^"]+)" data-ready="0" data-query="">', html)
    assert root, html[:200]
    found = re.findall(
        r'<script type="application/json" class="sagan-explorer-data">(.*?)</script>', html, re.S
    )
    assert len(found) == 1
    data = json.loads(found[0])

    def raw(text, dtype):
        return np.frombuffer(base64.b64decode(text), dtype=dtype)

    size, channels = data["size"], data["channels"]
    data["id"] = root.group(1)
    data["image"] = raw(data["image"], np.uint8).reshape(size, size, channels)
    for layer in data["layers"]:
        n = layer["height"] * layer["width"]
        q = raw(layer["map"], np.uint8).reshape(n, n).astype(np.float64)
        layer["scale"] = raw(layer["scale"], "<f4").astype(np.float64)
        layer["attention"] = q / 255 * layer["scale"][:, None]
        layer["branch"] = np.array([np.nan if b is None else b for b in layer["branch"]])
    return data


def noise(G, seed=0):
    return torch.randn(1, G.config.z_dim, generator=torch.Generator().manual_seed(seed))


def reference(G, z, y=None):
    """Maps from attention_maps, and ||gamma * o_i|| / ||x_i|| with o = V A^T from hooked x."""
    inputs = {}

    def keep(name):
        def hook(layer, args, output):  # returns None: the output is left alone
            inputs.setdefault(name, args[0])

        return hook

    hooks = [layer.register_forward_hook(keep(name)) for name, layer in attention_layers(G)]
    try:
        image, maps = attention_maps(G, z, y)
    finally:
        for hook in hooks:
            hook.remove()
    branches, gammas = {}, {}
    with torch.no_grad():
        for name, layer in attention_layers(G):
            x = inputs[name].double()
            value = torch.nn.functional.conv2d(
                x, layer.value_conv.weight.double(), layer.value_conv.bias.double()
            ).flatten(2)  # (1, C, N)
            o = value @ maps[name].double().transpose(1, 2)  # (1, C, N)
            gamma = layer.gamma.double()
            branches[name] = ((gamma * o).norm(dim=1) / x.flatten(2).norm(dim=1))[0].numpy()
            gammas[name] = float(layer.gamma)
    return image, maps, gammas, branches


def test_maps_gammas_and_branch_sizes_decode_to_the_real_ones(G, shipped_html):
    data = parse(shipped_html)
    _, maps, gammas, branches = reference(G, noise(G))
    assert (
        [layer["name"] for layer in data["layers"]] == list(maps) == ["attention.8", "attention.16"]
    )
    for layer in data["layers"]:
        name, real = layer["name"], maps[layer["name"]][0].double().numpy()
        side = int(name.split(".")[1])
        assert (layer["height"], layer["width"]) == (side, side)
        np.testing.assert_allclose(layer["scale"], real.max(axis=1), rtol=1e-6)
        error = np.abs(layer["attention"] - real)
        assert (error <= layer["scale"][:, None] / 510 + 1e-7).all(), error.max()
        assert layer["gamma"] == pytest.approx(gammas[name], rel=1e-7)
        np.testing.assert_allclose(layer["branch"], branches[name].reshape(-1), rtol=1e-4)
        assert (layer["branch"] > 0).all()


def test_image_is_the_generators_digit(G, shipped_html):
    data = parse(shipped_html)
    assert (data["size"], data["channels"]) == (32, 1)
    expected = G.sample(1, seed=0)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(data["image"] / 127.5 - 1, expected, atol=1 / 255 + 1e-6)
    r, c = data["start"]
    assert 0 <= r < 32 and 0 <= c < 32


def test_given_z_one_or_two_dimensional(G):
    z = noise(G, seed=5)
    a = parse(explorer.explorer_html(G, z[0], element_id="a"))
    b = parse(explorer.explorer_html(G, z, seed=123, element_id="b"))  # seed is unused with z
    c = parse(explorer.explorer_html(G, seed=5, element_id="c"))
    for other in (b, c):
        assert np.array_equal(a["image"], other["image"])
        for la, lo in zip(a["layers"], other["layers"], strict=True):
            np.testing.assert_allclose(la["attention"], lo["attention"], atol=1e-6)
    d = parse(explorer.explorer_html(G, seed=6, element_id="d"))
    assert not np.array_equal(a["image"], d["image"])


def test_explorer_data_is_unquantised_and_restores_the_mode():
    torch.manual_seed(0)
    G = Generator(GANConfig(channels=3, g_width=16))
    for _, layer in attention_layers(G):
        layer.gamma.data.fill_(0.7)
    G.train()
    data = explorer.explorer_data(G, seed=2)
    assert G.training
    G.eval()
    image, maps, _, branches = reference(G, noise(G, seed=2))
    np.testing.assert_allclose(data["image"], image[0].permute(1, 2, 0).numpy(), atol=1e-6)
    for layer in data["layers"]:
        np.testing.assert_allclose(layer["attention"], maps[layer["name"]][0].numpy(), atol=1e-6)
        np.testing.assert_allclose(layer["branch"], branches[layer["name"]].reshape(-1), rtol=1e-4)
        assert layer["gamma"] == pytest.approx(0.7)
    parsed = parse(explorer.explorer_html(G, seed=2))
    assert parsed["image"].shape == (32, 32, 3)
    np.testing.assert_allclose(parsed["image"] / 127.5 - 1, data["image"], atol=1 / 255 + 1e-6)


def test_conditional_generator_uses_the_class():
    torch.manual_seed(0)
    G = Generator(GANConfig(g_width=16, num_classes=10)).eval()
    for y in (7, torch.tensor(7), torch.tensor([7])):
        html = explorer.explorer_html(G, y=y, seed=1)
        expected = G.sample(1, torch.tensor([7]), seed=1)[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(parse(html)["image"] / 127.5 - 1, expected, atol=1 / 255 + 1e-6)
        assert "class 7" in html
    with pytest.raises(ValueError, match="conditional"):
        explorer.explorer_html(G)
    with pytest.raises(ValueError, match="y must be"):
        explorer.explorer_html(G, y=10)
    with pytest.raises(TypeError, match="int64"):
        explorer.explorer_html(G, y=torch.tensor(7.0))
    with pytest.raises(ValueError, match="one class"):
        explorer.explorer_html(G, y=torch.tensor([1, 2]))
    with pytest.raises(TypeError):
        explorer.explorer_html(G, y=True)


def test_two_explorers_get_different_ids(G, shipped_html):
    other = explorer.explorer_html(G, seed=0)
    ids = {parse(html)["id"] for html in (shipped_html, other)}
    assert len(ids) == 2
    for html in (shipped_html, other):
        root = parse(html)["id"]
        assert f'id="{root}-readout"' in html and f'"{root}");</script></div>' in html
        assert html.count(' id="') == 2  # the root and its readout, both from the root's id
    assert parse(explorer.explorer_html(G, element_id="my-explorer_1"))["id"] == "my-explorer_1"


def test_dom_contract_and_payload_size(G, shipped_html):
    for marker in (
        'class="sagan-explorer"',
        'class="sagan-explorer-image"',
        'class="sagan-explorer-readout"',
        'aria-live="polite"',
        'tabindex="0"',
        'setAttribute("data-ready", "1")',
        'setAttribute("data-query", r + "," + c)',
        "ArrowUp",
    ):
        assert marker in shipped_html, marker
    assert shipped_html.count('class="sagan-explorer-map"') == 2
    assert len(shipped_html.encode()) < 300_000


def test_no_url_and_no_external_resource(shipped_html):
    assert not re.search(r"https?:", shipped_html, re.I)
    assert not re.search(r"\b(src|href)\s*=", shipped_html, re.I)
    assert "import(" not in shipped_html and "@import" not in shipped_html


def test_attention_explorer_returns_ipython_html(G):
    from IPython.display import HTML

    out = explorer.attention_explorer(G, seed=0, element_id="x1")
    assert isinstance(out, HTML)
    assert parse(out.data)["id"] == "x1"


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to check the JS syntax")
def test_script_is_valid_javascript(shipped_html, tmp_path):
    scripts = re.findall(r"<script>(.*?)</script>", shipped_html, re.S)
    assert len(scripts) == 1
    path = tmp_path / "explorer.js"
    path.write_text(scripts[0])
    subprocess.run(["node", "--check", str(path)], check=True, capture_output=True)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"z": [0.0] * 128}, TypeError, "z must be a tensor"),
        ({"z": torch.zeros(1, 128, dtype=torch.long)}, TypeError, "floating"),
        ({"z": torch.zeros(2, 128)}, ValueError, "one digit"),
        ({"z": torch.zeros(1, 64)}, ValueError, "shape"),
        ({"z": torch.full((128,), float("nan"))}, ValueError, "finite"),
        ({"y": 3}, ValueError, "unconditional"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"element_id": 7}, TypeError, "element_id"),
        ({"element_id": "1st"}, ValueError, "element_id"),
        ({"element_id": 'a"><script>'}, ValueError, "element_id"),
        ({"element_id": "a b"}, ValueError, "element_id"),
    ],
)
def test_bad_arguments(G, kwargs, error, match):
    with pytest.raises(error, match=match):
        explorer.attention_explorer(G, **kwargs)


def test_bad_generators():
    with pytest.raises(TypeError, match="Generator"):
        explorer.attention_explorer(Discriminator(GANConfig(g_width=16, d_width=16)))
    with pytest.raises(TypeError, match="Generator"):
        explorer.explorer_data("sagan-mnist32")
    with pytest.raises(ValueError, match="no attention"):
        explorer.attention_explorer(Generator(GANConfig(g_width=16, g_attention=())))
    big = Generator(GANConfig(image_size=128, g_width=8, d_width=8))  # maps of 32x32 and 64x64
    with pytest.raises(ValueError, match="MAX_MAP_BYTES"):
        explorer.attention_explorer(big)
