"""GAN losses on the discriminator's logits: hinge (SAGAN's), non-saturating, and WGAN-GP.

Every loss takes raw logits of shape (B,) and returns a 0-d tensor, averaged over the batch.

``"hinge"``          D: mean(relu(1 - D(x))) + mean(relu(1 + D(G(z))))
                     G: -mean(D(G(z)))
``"nonsaturating"``  D: mean(softplus(-D(x))) + mean(softplus(D(G(z))))
                     G: mean(softplus(-D(G(z))))
                     (binary cross-entropy with logits; G maximises log D rather than minimising
                     log(1 - D), whose gradient vanishes when D rejects the fakes)
``"wgan-gp"``        D: mean(D(G(z))) - mean(D(x)), plus :func:`gradient_penalty`
                     G: -mean(D(G(z)))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "discriminator_loss", "generator_loss", "gradient_penalty"]

LOSSES = ("hinge", "nonsaturating", "wgan-gp")


def _check(name: str, **logits: torch.Tensor) -> None:
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
    for arg, t in logits.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{arg} must be a torch.Tensor of shape (B,), got {type(t).__name__}")
        if t.dim() != 1:
            raise ValueError(f"{arg} must have shape (B,), got {tuple(t.shape)}")
        if t.numel() == 0:  # the mean of nothing is NaN
            raise ValueError(f"{arg} must hold at least one logit, got an empty batch")


def discriminator_loss(
    name: str, real_logits: torch.Tensor, fake_logits: torch.Tensor
) -> torch.Tensor:
    """D's loss from its logits on real (B,) and generated (B',) images; D minimises it."""
    _check(name, real_logits=real_logits, fake_logits=fake_logits)
    if name == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    if name == "nonsaturating":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    return fake_logits.mean() - real_logits.mean()  # wgan-gp, before the penalty


def generator_loss(name: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """G's loss from D's logits on generated images (B,); G minimises it."""
    _check(name, fake_logits=fake_logits)
    if name == "nonsaturating":
        return F.softplus(-fake_logits).mean()
    return -fake_logits.mean()  # hinge and wgan-gp


def gradient_penalty(
    discriminator,
    real: torch.Tensor,
    fake: torch.Tensor,
    y: torch.Tensor | None = None,
    weight: float = 10.0,
) -> torch.Tensor:
    """WGAN-GP: ``weight * mean((||grad_x D(x_hat)||_2 - 1)^2)`` at random interpolates.

    Args:
        discriminator: called as ``discriminator(x_hat, y)`` (or ``(x_hat)`` when y is None).
        real, fake: (B, C, H, W) images; x_hat = a * real + (1 - a) * fake, a ~ U(0, 1) per image.
        y: (B,) labels for a conditional discriminator, else None.
    Returns:
        a 0-d tensor with a graph through D's parameters (the gradient is taken with
        ``create_graph=True``, so backward differentiates twice, through attention as well).
    """
    if not isinstance(real, torch.Tensor) or not isinstance(fake, torch.Tensor):
        raise TypeError(
            f"real and fake must be tensors, got {type(real).__name__} and {type(fake).__name__}"
        )
    if real.shape != fake.shape or real.dim() < 2:
        raise ValueError(
            f"real and fake must be batches of the same shape (B, C, H, W), "
            f"got {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    alpha = torch.rand(shape, device=real.device, dtype=real.dtype)  # (B, 1, 1, 1)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    logits = discriminator(x_hat) if y is None else discriminator(x_hat, y)
    (grad,) = torch.autograd.grad(logits.sum(), x_hat, create_graph=True)
    norm = grad.flatten(1).norm(2, dim=1)  # (B,)
    return weight * ((norm - 1.0) ** 2).mean()
