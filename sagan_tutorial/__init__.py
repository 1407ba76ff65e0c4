"""sagan_tutorial: the Self-Attention GAN, one tensor at a time.

The package behind the book: the attention layer (several equivalent forward paths), the
spectral-norm generator and discriminator built from a config, the data sets, and the trainer
(``sagan_tutorial.train``), metrics (``sagan_tutorial.metrics``) and pictures
(``sagan_tutorial.viz``, ``sagan_tutorial.shapes``) that the book uses, and the pretrained
generators: ``sagan_tutorial.pretrained("sagan-mnist32")`` (``sagan_tutorial.zoo``).
"""

from .attention import PooledSelfAttention2d, SelfAttention2d, attention_blocked
from .data import load_dataset
from .models import Discriminator, GANConfig, Generator
from .runtime import default_device, quick
from .zoo import pretrained

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
