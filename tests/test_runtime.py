"""Device choice and quick mode, read from the environment."""

import pytest
import torch

from sagan_tutorial import default_device, quick


def test_default_device_follows_the_environment(monkeypatch):
    monkeypatch.delenv("SAGAN_TUTORIAL_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert default_device().type == expected
    monkeypatch.setenv("SAGAN_TUTORIAL_DEVICE", "cpu")
    assert default_device() == torch.device("cpu")


def test_bad_device_names(monkeypatch):
    monkeypatch.setenv("SAGAN_TUTORIAL_DEVICE", "tpu-please")
    with pytest.raises(ValueError, match="'tpu-please'"):
        default_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("SAGAN_TUTORIAL_DEVICE", "cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            default_device()


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
