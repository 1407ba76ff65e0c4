"""Shared helpers: a tiny training config that runs a handful of steps in well under a second."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from sagan_tutorial.config import TrainConfig
from sagan_tutorial.models import GANConfig


def load_script(path: Path) -> ModuleType:
    """A Python file of the repository (not in the package) imported as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(out, **options) -> TrainConfig:
    """G and D of width 16, batch 8, 4 steps, nothing written but what a test asks for."""
    values = {
        "model": GANConfig(g_width=16, d_width=16),
        "batch_size": 8,
        "steps": 4,
        "out": str(out),
        "progress": False,
        "tensorboard": False,
        "log_every": 1,
        "sample_every": 0,
        "checkpoint_every": 0,
        "device": "cpu",
    }
    model = options.pop("model", {})
    values["model"] = GANConfig(**{**values["model"].to_dict(), **model})
    return TrainConfig(**{**values, **options})


@pytest.fixture
def tiny(tmp_path):
    """``tiny(**options)``: a tiny TrainConfig writing into ``tmp_path / "run"``."""
    return lambda **options: tiny_config(options.pop("out", tmp_path / "run"), **options)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: takes more than a few seconds (deselect: -m 'not slow')"
    )
