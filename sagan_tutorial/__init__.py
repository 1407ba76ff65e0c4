"""sagan_tutorial: the Self-Attention GAN, one tensor at a time.

The package behind the book: the attention layer (several equivalent forward paths), the
spectral-norm generator and discriminator built from a config, the data sets, and the trainer
(``sagan_tutorial.train``), metrics (``sagan_tutorial.metrics``) and pictures
(``sagan_tutorial.viz``, ``sagan_tutorial.shapes``) that the book uses, and the pretrained
generators: ``sagan_tutorial.pretrained("sagan-mnist32")`` (``sagan_tutorial.zoo``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for readers and tools; at run time each name loads on first use
    from .attention import PooledSelfAttention2d, SelfAttention2d, attention_blocked
    from .data import load_dataset
    from .models import Discriminator, GANConfig, Generator
    from .runtime import default_device, quick
    from .zoo import pretrained

_HOMES = {
    "PooledSelfAttention2d": "attention",
    "SelfAttention2d": "attention",
    "attention_blocked": "attention",
    "load_dataset": "data",
    "Discriminator": "models",
    "GANConfig": "models",
    "Generator": "models",
    "default_device": "runtime",
    "quick": "runtime",
    "pretrained": "zoo",
}


def __getattr__(name: str):
    """The top-level names load their module (and torch) on first use, so that the command
    line starts, and answers Ctrl-C, before torch is imported."""
    if name not in _HOMES:
        raise AttributeError(f"module 'sagan_tutorial' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


__all__ = [
    "Discriminator",
    "GANConfig",
    "Generator",
    "PooledSelfAttention2d",
    "SelfAttention2d",
    "attention_blocked",
    "default_device",
    "load_dataset",
    "pretrained",
    "quick",
]
__version__ = "0.1.0"
