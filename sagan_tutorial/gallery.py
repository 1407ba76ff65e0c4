"""The attention layer broken one detail at a time, for the book's gallery.

Each class is :class:`~sagan_tutorial.attention.SelfAttention2d`'s ``"bmm"`` form with one
detail flipped (one class attribute of ``_BrokenAttention``); :func:`broken_networks` builds the
package's G and D with every attention layer broken the same way, for
:class:`~sagan_tutorial.train.Trainer`'s ``networks`` argument. Nothing else in the package uses
them.
"""

from __future__ import annotations

import math

import torch

from .attention import SelfAttention2d
from .models import Discriminator, Generator, attention_layers

__all__ = ["BROKEN", "NoTranspose", "ScaledEnergy", "WrongAxisSoftmax", "broken_networks"]


class _BrokenAttention(SelfAttention2d):
    """SelfAttention2d's ``"bmm"`` form with three switches, each one detail of the layer; a
    subclass flips exactly one of them."""

    softmax_dim = -1  # over the keys: each row of the map sums to 1
    transpose = True  # the second bmm reads the map's rows: bmm(V, A^T)
    scaled = False  # SAGAN has no 1/sqrt(d) on the energy

    def _forward_bmm(self, x, return_attention):
        batch, channels, height, width = x.size()
        n = height * width
        proj_query = self.query_conv(x).view(batch, -1, n).permute(0, 2, 1)
        proj_key = self.key_conv(x).view(batch, -1, n)
        energy = torch.bmm(proj_query, proj_key)
        if self.scaled:
            energy = energy / math.sqrt(proj_key.shape[1])
        attention = torch.softmax(energy, dim=self.softmax_dim)
        proj_value = self.value_conv(x).view(batch, -1, n)
        out = torch.bmm(proj_value, attention.permute(0, 2, 1) if self.transpose else attention)
        return out.view(batch, channels, height, width), attention


class WrongAxisSoftmax(_BrokenAttention):
    """The softmax over the queries (dim=1) instead of the keys: columns sum to 1, rows do not."""

    softmax_dim = 1


class NoTranspose(_BrokenAttention):
    """The second bmm without the permute: pixel i reads the column of A, not its row."""

    transpose = False


class ScaledEnergy(_BrokenAttention):
    """The transformer's 1/sqrt(d) scale on the energy, which SAGAN does not have."""

    scaled = True


BROKEN = {"wrong_axis": WrongAxisSoftmax, "no_transpose": NoTranspose, "scaled": ScaledEnergy}


def broken_networks(layer: str):
    """A ``networks`` factory for :class:`~sagan_tutorial.train.Trainer`: the package's G and D
    with every attention layer broken as ``layer`` says ("gamma_one": gamma starts at 1)."""

    def build(model):
        networks = Generator(model), Discriminator(model)
        for net in networks:
            for _, attention in attention_layers(net):
                if layer == "gamma_one":
                    with torch.no_grad():
                        attention.gamma.fill_(1.0)
                else:  # the same parameters, the forward of the broken class
                    attention.__class__ = BROKEN[layer]
                    attention.backend = "bmm"
        return networks

    return build
