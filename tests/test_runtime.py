"""The one device resolver, quick mode, and what ``import sagan_tutorial`` loads."""

import pytest
import torch

from sagan_tutorial import default_device, quick
from sagan_tutorial.runtime import resolve_device


def test_default_device_follows_the_environment(monkeypatch):
    monkeypatch.delenv("SAGAN_TUTORIAL_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert default_device().type == expected
    assert resolve_device(None) == resolve_device("auto") == default_device()
    monkeypatch.setenv("SAGAN_TUTORIAL_DEVICE", "cpu")
    assert default_device() == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "nonsense", "tpu-please", "cuda:x"])
def test_names_torch_does_not_know(name, monkeypatch):
    with pytest.raises(ValueError, match=rf"^device must name a device such as .* got '{name}'$"):
        resolve_device(name)
    monkeypatch.setenv("SAGAN_TUTORIAL_DEVICE", name)
    with pytest.raises(ValueError, match=rf"^SAGAN_TUTORIAL_DEVICE must name a device .*'{name}'"):
        default_device()


def test_devices_this_machine_does_not_have():
    with pytest.raises(
        ValueError, match=r"^device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got 'meta'"
    ):
        resolve_device("meta")
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="MPS, which is not available here"):
            resolve_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="asks for CUDA, which is not available here"):
            resolve_device("cuda")
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(TypeError, match=r"device must be a str or a torch\.device, got int"):
        resolve_device(0)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("true", True), ("0", False), ("", False)]
)
def test_quick(monkeypatch, value, expected):
    monkeypatch.setenv("SAGAN_TUTORIAL_QUICK", value)
    assert quick() is expected


def test_top_level_exports():
    import sagan_tutorial

    for name in sagan_tutorial.__all__:
        assert getattr(sagan_tutorial, name) is not None, name
    config = sagan_tutorial.GANConfig(g_width=16, d_width=16)
    images = sagan_tutorial.Generator(config)(torch.randn(2, config.z_dim))
    assert images.shape == (2, 1, 32, 32)
    assert sagan_tutorial.Discriminator(config)(images).shape == (2,)
