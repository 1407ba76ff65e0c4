"""The exponential moving average (EMA) of G's weights, which samples and evaluation use.

Neither the SAGAN paper nor its PyTorch port averages G's weights; the practice comes from
progressive GANs (Karras et al. 2018, a fixed decay of 0.999) and BigGAN (Brock et al. 2019,
0.9999 from a given iteration on). The warm-up of :func:`ema_decay_at`, ``min(decay, (1 + t) /
(10 + t))``, is the one TensorFlow's ``tf.train.ExponentialMovingAverage`` applies when it is
given the step (``num_updates``). The average is smoother than G itself, whose weights jitter
with every Adam step of the adversarial game.

The EMA network keeps G's *buffers* (BatchNorm running statistics, spectral-norm vectors) as G
has them, copied at every update: BatchNorm statistics averaged over the raw G's activations
need not fit the averaged weights. :func:`standing_statistics` recomputes them for the EMA
network itself (BigGAN's "standing statistics"), so the two choices can be compared.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ema_decay_at", "standing_statistics", "update_ema"]


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model`` for every parameter; buffers are copied.

    Buffers (BatchNorm statistics, spectral-norm vectors) are not averaged: the EMA network then
    normalises exactly as the current G would.
    """
    ema_params, params = list(ema.parameters()), list(model.parameters())
    if len(ema_params) != len(params):
        raise ValueError(f"ema has {len(ema_params)} parameters, the model {len(params)}")
    torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


def ema_decay_at(step: int, decay: float) -> float:
    """The decay used at ``step`` (1-based): ``min(decay, (1 + step) / (10 + step))``.

    A warm-up: early on, when G changes fast and its first weights are noise, the average forgets
    quickly. The warm-up value reaches ``decay`` only at ``step = (10 decay - 1) / (1 - decay)``:
    8,990 steps for 0.999 (at step 4,000 it is 0.9978).
    """
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def standing_statistics(
    generator: nn.Module,
    noise: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    batch_size: int = 64,
) -> nn.Module:
    """Recompute every BatchNorm's running statistics from ``generator``'s own activations.

    Runs ``generator(noise, labels)`` batch by batch in training mode with BatchNorm momentum
    ``None`` (a plain average over the batches), then puts every module back as it was; the
    spectral-norm vectors are left untouched (they are read in eval mode only). ``noise``
    (N, z_dim) and ``labels`` (N,) or None. Returns ``generator``, in eval mode.
    """
    norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return generator.eval()
    saved = {m: m.momentum for m in norms}
    generator.eval()
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches seen
            m.train()
        for i in range(0, len(noise), batch_size):
            y = None if labels is None else labels[i : i + batch_size]
            generator(noise[i : i + batch_size], y)
    finally:
        for m, momentum in saved.items():
            m.momentum = momentum
        generator.eval()
    return generator
