"""What a trained generator's attention does, measured.

For each attention layer of G, over many generated images (:func:`attention_statistics`):

* ``query_dependence``: the mean Jensen-Shannon divergence (in bits, 0 to 1) between the rows of
  two different query pixels of one map. 0: every query reads the same places (the map is a
  global pooling, as GCNet found for many trained non-local blocks); 1: queries read disjoint
  places.
* ``effective_rank``: exp of the entropy of the map's normalised singular values (Roy &
  Vetterli 2007), as a fraction of N: near 1/N for a map whose rows are all alike.
* ``entropy``: the mean row entropy as a fraction of log N (1: uniform rows, 0: one-hot rows).
* ``branch``: the size of the attention branch against its input, ``||gamma * o_i|| / ||x_i||``
  averaged over pixels i, where o is the attention output and x the layer's input.

:func:`without_attention` sets every gamma to 0 for a while: the generator then draws with the
attention layers as identities, which shows what they add after training.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from .models import attention_layers

__all__ = ["attention_statistics", "without_attention"]


def _js_bits(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in bits between rows of p and q (..., N) -> (...)."""
    m = (p + q) / 2

    def kl(a, b):
        return (a * (a.clamp_min(1e-30).log() - b.clamp_min(1e-30).log())).sum(-1)

    return (kl(p, m) + kl(q, m)) / (2 * math.log(2))


@torch.no_grad()
def attention_statistics(
    generator: nn.Module, n: int = 128, *, seed: int = 0, pairs: int = 256
) -> dict[str, dict[str, float]]:
    """Statistics of every attention layer of ``generator`` over ``n`` images of seeded noise.

    Returns ``{layer name: {"gamma", "query_dependence", "effective_rank", "entropy",
    "branch", "n_positions"}}`` (see the module docstring); ``pairs`` random query pairs per map.
    """
    layers = attention_layers(generator)
    if not layers:
        raise ValueError("the generator has no attention layer")
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name, _ in layers}

    def keep(name: str):
        def hook(module, args):
            inputs[name].append(args[0].detach())

        return hook

    handles = [layer.register_forward_pre_hook(keep(name)) for name, layer in layers]
    was_training = generator.training
    generator.eval()
    try:
        classes = generator.config.num_classes
        labels = torch.arange(n) % classes if classes else None
        generator.sample(n, labels, seed=seed)
    finally:
        for handle in handles:
            handle.remove()
    seen = {}
    for name, layer in layers:  # again, from the inputs each layer received, with the map
        x = torch.cat(inputs[name])
        out, attention = layer(x, return_attention=True)  # out = gamma * o + x
        seen[name] = {"x": x, "branch": out - x, "attention": attention}
    generator.train(was_training)
    rng = torch.Generator().manual_seed(seed)
    result = {}
    for name, layer in layers:
        x, branch, attention = (seen[name][k].double().cpu() for k in ("x", "branch", "attention"))
        b, positions = attention.shape[0], attention.shape[1]
        i = torch.randint(positions, (b, pairs), generator=rng)
        j = (i + torch.randint(1, positions, (b, pairs), generator=rng)) % positions  # j != i
        rows_i = attention.gather(1, i[..., None].expand(-1, -1, positions))
        rows_j = attention.gather(1, j[..., None].expand(-1, -1, positions))
        singular = torch.linalg.svdvals(attention)  # (b, N)
        p = singular / singular.sum(-1, keepdim=True)
        rank = (-(p * p.clamp_min(1e-30).log()).sum(-1)).exp()
        entropy = -(attention * attention.clamp_min(1e-30).log()).sum(-1) / math.log(positions)
        ratio = branch.flatten(2).norm(dim=1) / x.flatten(2).norm(dim=1).clamp_min(1e-12)
        result[name] = {
            "gamma": float(layer.gamma.detach().reshape(-1)[0]),
            "query_dependence": float(_js_bits(rows_i, rows_j).mean()),
            "effective_rank": float((rank / positions).mean()),
            "entropy": float(entropy.mean()),
            "branch": float(ratio.mean()),
            "n_positions": positions,
        }
    return result


@contextlib.contextmanager
def without_attention(generator: nn.Module):
    """Within the block, every attention layer's gamma is 0 (the layer is the identity)."""
    layers = [layer for _, layer in attention_layers(generator)]
    saved = [layer.gamma.detach().clone() for layer in layers]
    try:
        with torch.no_grad():
            for layer in layers:
                layer.gamma.zero_()
        yield generator
    finally:
        with torch.no_grad():
            for layer, gamma in zip(layers, saved, strict=True):
                layer.gamma.copy_(gamma)
