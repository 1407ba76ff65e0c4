"""sagan_tutorial: the Self-Attention GAN, one tensor at a time.

The package behind the book: the attention layer (several equivalent forward paths), and the
pieces that the book assembles into a spectral-norm GAN with self-attention.
"""

from .attention import PooledSelfAttention2d, SelfAttention2d, attention_blocked
from .runtime import default_device, quick

__all__ = [
    "PooledSelfAttention2d",
    "SelfAttention2d",
    "attention_blocked",
    "default_device",
    "quick",
]
__version__ = "0.1.0"
