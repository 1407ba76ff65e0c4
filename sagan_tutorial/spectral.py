"""Spectral normalisation: the power iteration written out, and the helper the models use.

Spectral normalisation (Miyato et al. 2018) divides a layer's weight by its largest singular value
``sigma``, so that the layer is 1-Lipschitz. Computing ``sigma`` exactly (an SVD) every step would
be slow; instead two vectors ``u`` (size ``out``) and ``v`` (size ``in * k * k``) are kept between
steps and refined by one *power iteration* per training step:

    u <- normalise(W v)        v <- normalise(W^T u)        sigma = u . (W v)

Since W changes little from one step to the next, one iteration per step is enough to track sigma.
A convolution's weight (out, in, kh, kw) is seen as the matrix (out, in*kh*kw); a transposed
convolution's weight is (in, out, kh, kw), so its ``out`` dimension is dim 1.

``power_iteration`` and :class:`SpectralNorm` are the teaching version: they compute exactly what
``torch.nn.utils.parametrizations.spectral_norm`` computes (the tests prove it). The models use
torch's own parametrisation through :func:`apply_spectral_norm`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as _torch_spectral_norm

__all__ = [
    "SpectralNorm",
    "apply_spectral_norm",
    "as_matrix",
    "output_dim",
    "power_iteration",
    "register_spectral_norm",
]

EPS = 1e-12  # torch's default: keeps normalise() finite for an all-zero vector

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def output_dim(module: nn.Module) -> int:
    """The weight dimension that indexes output features: 1 for transposed convs, else 0."""
    return 1 if isinstance(module, _TRANSPOSED) else 0


def as_matrix(weight: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The weight as a matrix (out, the rest): a conv's (out, in, k, k) -> (out, in*k*k)."""
    if weight.dim() < 2:
        raise ValueError(
            "spectral norm needs a weight with at least 2 dimensions, "
            f"got shape {tuple(weight.shape)}"
        )
    if dim != 0:
        weight = weight.movedim(dim, 0)
    return weight.reshape(weight.shape[0], -1)  # (out, in*k*k)


def power_iteration(
    weight: torch.Tensor,
    u: torch.Tensor,
    n_iter: int = 1,
    *,
    v: torch.Tensor | None = None,
    dim: int = 0,
    eps: float = EPS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Estimate the largest singular value of ``weight`` by ``n_iter`` power iterations.

    Args:
        weight: a matrix (out, in) or a conv weight (out, in, k, k), seen as (out, in*k*k);
            ``dim`` names the output dimension (1 for a transposed conv).
        u: (out,) the left vector kept from the previous step.
        n_iter: iterations to run; 0 only computes sigma from the vectors given.
        v: (in*k*k,) the right vector; if None it is derived from ``u`` as normalise(W^T u).
    Returns:
        ``(sigma, u, v)``: sigma a 0-d tensor ``u . (W v)`` that carries the gradient to
        ``weight`` (the vectors do not), and the refined unit vectors u (out,) and v (in*k*k,).

    Each iteration is ``u = normalise(W v)`` then ``v = normalise(W^T u)``, the order of torch's
    ``spectral_norm``, so that with the same ``u`` and ``v`` the two give the same numbers.
    """
    matrix = as_matrix(weight, dim)  # (out, in*k*k)
    if u.shape != matrix.shape[:1] or (v is not None and v.shape != matrix.shape[1:]):
        got = f"u {tuple(u.shape)}" + ("" if v is None else f", v {tuple(v.shape)}")
        raise ValueError(
            f"for a weight seen as a {tuple(matrix.shape)} matrix expected u of shape "
            f"({matrix.shape[0]},) and v of shape ({matrix.shape[1]},), got {got}"
        )
    # The vectors are estimates, not functions of W: no gradient flows through them.
    with torch.no_grad():
        w = matrix.detach()
        if v is None:
            v = F.normalize(w.t() @ u, dim=0, eps=eps)
        for _ in range(n_iter):
            u = F.normalize(w @ v, dim=0, eps=eps)
            v = F.normalize(w.t() @ u, dim=0, eps=eps)
    sigma = torch.dot(u, matrix @ v)
    return sigma, u, v


class SpectralNorm(nn.Module):
    """A parametrisation ``weight -> weight / sigma(weight)`` with a kept pair of vectors.

    In training mode each call runs ``n_power_iterations`` power iterations and stores the new
    ``u`` and ``v``; in eval mode it runs none and uses the stored vectors, so evaluation never
    changes the model. Register it with :func:`register_spectral_norm`.
    """

    def __init__(
        self, weight: torch.Tensor, n_power_iterations: int = 1, dim: int = 0, eps: float = EPS
    ) -> None:
        super().__init__()
        if n_power_iterations < 1:
            raise ValueError(f"n_power_iterations must be at least 1, got {n_power_iterations}")
        self.n_power_iterations = n_power_iterations
        self.dim = dim
        self.eps = eps
        out_features = as_matrix(weight, dim).shape[0]
        u = F.normalize(weight.new_empty(out_features).normal_(), dim=0, eps=eps)
        # Start from a good estimate, as torch does: 15 iterations on the initial weight.
        _, u, v = power_iteration(weight, u, 15, dim=dim, eps=eps)
        self.register_buffer("u", u)
        self.register_buffer("v", v)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        n_iter = self.n_power_iterations if self.training else 0
        sigma, u, v = power_iteration(weight, self.u, n_iter, v=self.v, dim=self.dim, eps=self.eps)
        if self.training:
            self.u.copy_(u)
            self.v.copy_(v)
        return weight / sigma


def register_spectral_norm(
    module: nn.Module, name: str = "weight", n_power_iterations: int = 1
) -> nn.Module:
    """Put the teaching :class:`SpectralNorm` on ``module.<name>``; returns the module."""
    weight = getattr(module, name)
    norm = SpectralNorm(weight.detach(), n_power_iterations, dim=output_dim(module))
    parametrize.register_parametrization(module, name, norm)
    return module


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Put torch's spectral norm (one power iteration per training forward) on ``module.weight``."""
    return _torch_spectral_norm(module, n_power_iterations=1, dim=output_dim(module))
