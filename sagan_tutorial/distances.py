"""FID and KID between two sets of features, with bootstrap intervals.

FID fits a Gaussian to each set of features and measures the Frechet distance between the two:
``|mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))``. KID is the unbiased estimate of the
squared maximum mean discrepancy with the kernel ``(x . y / d + 1) ** 3``, averaged over random
subsets (Binkowski et al. 2018). Both equal what ``torchmetrics`` computes (the tests compare
them); here they are written with a weight per image, so that one pass over the features gives
the estimate, every KID subset and every bootstrap resample at once.

The interval is a percentile bootstrap over images (the real and the generated set resampled
with replacement, independently). Resampling repeats images, which pushes every FID replicate up
(by about 0.09 at n=1000 in the digit features, more than the real-vs-real floor itself); the
replicates are shifted so that their mean is the estimate before the percentiles are read.
"""

from __future__ import annotations

import math

import torch

from ._checks import MAX_SEED, check_int, check_number

__all__ = [
    "KID_SUBSETS",
    "MIN_IMAGES",
    "RESAMPLES",
    "RESAMPLES_LARGE",
    "check_finite",
    "fid_kid_from_features",
]

MIN_IMAGES = 4  # FID needs a covariance, KID two subsets of at least 2
KID_SUBSETS = 100
# Bootstrap resamples: 1000 for up to 128 features (the 64 digit features: about a second at
# n=1000 on 2 CPU cores); 100 above (Inception's 2048: each resample solves an eigenvalue problem
# of about 0.63 n x 0.63 n for FID's matrix square root, about 0.3 s at n=1000).
RESAMPLES, RESAMPLES_LARGE, _MOMENTS_MAX_DIM = 1000, 100, 128
MAX_RESAMPLES = 100_000  # bootstrap draws and KID subsets: beyond it only memory grows
MAX_FEATURE = 1e100
_BLOCK = 2048  # rows of features handled at once


def check_finite(name: str, x: torch.Tensor, hint: str = "") -> None:
    """ValueError naming ``name`` when any row of ``x`` holds a NaN or an infinity."""
    bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
    if bad:
        raise ValueError(f"{name} must be finite, got {bad} of {len(x)} with NaN or inf{hint}")


# --- FID and KID for many weightings of the same images at once ---------------------------------
# Row r of a weight matrix w (R, n) says how often each image counts: all ones for the estimate
# itself, 0/1 for a KID subset, the counts of n draws with replacement for a bootstrap resample.


def _kid(x, y, wx, wy) -> torch.Tensor:
    """Unbiased MMD^2 for each row of weights; pairs of an image with itself are left out."""

    def sums(a, b, wa, wb):  # sum_ij wa[r, i] k(a_i, b_j) wb[r, j]
        total = torch.zeros(len(wa), dtype=a.dtype)
        for start in range(0, len(b), _BLOCK):
            k = (a @ b[start : start + _BLOCK].T / a.shape[1] + 1) ** 3  # (n_a, block)
            total += ((wa @ k) * wb[:, start : start + _BLOCK]).sum(1)
        return total

    def within(f, w):
        itself = w.square() @ ((f.square().sum(1) / f.shape[1] + 1) ** 3)  # i == j terms
        return (sums(f, f, w, w) - itself) / (w.sum(1).square() - w.square().sum(1)).clamp_min(1)

    return within(x, wx) + within(y, wy) - 2 * sums(x, y, wx, wy) / (wx.sum(1) * wy.sum(1))


def _root_sum(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Sum of square roots of a PSD matrix's eigenvalues (ascending), rounding noise left out."""
    noise = eigenvalues[..., -1:] * eigenvalues.shape[-1] * 10 * torch.finfo(eigenvalues.dtype).eps
    return eigenvalues.where(eigenvalues > noise, 0).sqrt().sum(-1)


def _fid(x, y, wx, wy) -> torch.Tensor:
    """FID for each row of weights: |mu_x - mu_y|^2 + tr(S_x) + tr(S_y) - 2 tr sqrt(S_x S_y)."""
    both = torch.cat([x, y])
    alive = (both != both[0]).any(0)  # a feature constant over both sets adds 0: left out
    x, y, d = x[:, alive], y[:, alive], int(alive.sum())
    mx, my = wx.sum(1), wy.sum(1)
    mu_x, mu_y = wx @ x / mx[:, None], wy @ y / my[:, None]
    out = (mu_x - mu_y).square().sum(1)
    if 0 < d <= min(_MOMENTS_MAX_DIM, len(x), len(y)):  # few features: d x d covariances
        sx, sy = _covariances(x, wx, mu_x), _covariances(y, wy, mu_y)
        low, info = torch.linalg.cholesky_ex(sx)  # S_x = L L^T: S_x S_y ~ L^T S_y L
        root, ok = torch.empty(len(sx), dtype=x.dtype), info == 0
        root[ok] = _root_sum(torch.linalg.eigvalsh(low[ok].mT @ sy[ok] @ low[ok]))
        if not ok.all():  # S_x singular (as few distinct images as features, a dead feature)
            root[~ok] = torch.linalg.eigvals(sx[~ok] @ sy[~ok]).sqrt().real.sum(-1)
        return out + sx.diagonal(0, 1, 2).sum(1) + sy.diagonal(0, 1, 2).sum(1) - 2 * root
    for r in range(len(wx)):  # S_x = A^T A, S_y = B^T B: S_x S_y ~ M M^T, M = A B^T (n1 x n2)
        ix, iy = wx[r].nonzero()[:, 0], wy[r].nonzero()[:, 0]
        a = wx[r, ix].sqrt()[:, None] * (x[ix] - mu_x[r]) / (mx[r] - 1).sqrt()
        b = wy[r, iy].sqrt()[:, None] * (y[iy] - mu_y[r]) / (my[r] - 1).sqrt()
        m = a @ b.T
        gram = m @ m.T if len(ix) <= len(iy) else m.T @ m
        out[r] += a.square().sum() + b.square().sum() - 2 * _root_sum(torch.linalg.eigvalsh(gram))
    return out


def _covariances(x, w, mu) -> torch.Tensor:
    """Weighted covariances (R, d, d) of x (n, d) for weights w (R, n) with means mu (R, d)."""
    centre, d = x.mean(0), x.shape[1]  # subtracted first, for precision
    second = torch.zeros(len(w), d * d, dtype=x.dtype)
    for start in range(0, len(x), _BLOCK):
        rows = x[start : start + _BLOCK] - centre
        second += w[:, start : start + _BLOCK] @ (rows[:, :, None] * rows[:, None, :]).flatten(1)
    m, mc = w.sum(1)[:, None, None], (mu - centre)[:, :, None]
    return (second.view(-1, d, d) - m * mc * mc.mT) / (m - 1)


def _counts(n: int, resamples: int, rng: torch.Generator) -> torch.Tensor:
    """(resamples, n): how often each of n images is drawn in n draws with replacement."""
    draws = torch.randint(n, (resamples, n), generator=rng)
    ones = torch.ones(resamples, n, dtype=torch.float64)
    return torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(1, draws, ones)


def _interval(point: float, replicates: torch.Tensor, confidence: float, lowest=-math.inf):
    """Percentile interval of the bootstrap replicates, shifted so that their mean is ``point``.

    A resample repeats images (about 63% are distinct), which biases FID upward as a smaller
    sample would (by about 0.09 at n=1000 on digit features, more than the floor itself); the
    shift removes that bias. For KID (pairs of an image with itself left out) and accuracy it is
    about 0.
    """
    shifted = replicates - (replicates.mean() - point)
    tails = torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2], dtype=shifted.dtype)
    low, high = torch.quantile(shifted, tails).tolist()
    return max(low, lowest), high


def fid_kid_from_features(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    seed: int = 0,
    resamples: int | None = None,
    confidence: float = 0.95,
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: int | None = None,
    _correct: torch.Tensor | None = None,
) -> dict[str, float]:
    """FID and KID between two sets of features (N, d), with intervals; random only by ``seed``.

    Returns ``fid``, ``kid_mean`` (the mean over ``kid_subsets`` random subsets of
    ``kid_subset_size``, default half the smaller set, at most 1000), ``kid_subset_std`` (their
    standard deviation), intervals ``fid_low``, ``fid_high``, ``kid_low``, ``kid_high``, and
    ``kid_subsets``, ``kid_subset_size``, ``n_real``, ``n_fake``, ``resamples``, ``confidence``,
    ``seed``. Intervals: ``resamples`` times (default :data:`RESAMPLES` up to 128 features,
    :data:`RESAMPLES_LARGE` above) both sets are drawn again with replacement and FID and KID
    (of the whole sets) recomputed; the percentiles of these replicates, shifted to the estimate
    (see :func:`_interval`), bound the ``confidence`` interval; FID's is clipped at 0.
    """
    for name, f in (("real", real), ("fake", fake)):
        if not isinstance(f, torch.Tensor) or f.dim() != 2 or not f.is_floating_point():
            got = f"{tuple(f.shape)} {f.dtype}" if isinstance(f, torch.Tensor) else type(f)
            raise TypeError(f"{name} features must be a float tensor (N, d), got {got}")
        check_finite(f"{name} features", f)
        if f.numel() and f.abs().max() > MAX_FEATURE:  # their squares would overflow float64
            raise ValueError(
                f"{name} features must be below {MAX_FEATURE:g} in magnitude, got "
                f"{f.abs().max().item():.3g}"
            )
    if min(real.shape[1], fake.shape[1]) < 1:
        raise ValueError(
            f"expected at least one feature per image, got {tuple(real.shape)} and "
            f"{tuple(fake.shape)}"
        )
    if min(len(real), len(fake)) < MIN_IMAGES or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"expected at least {MIN_IMAGES} images in each set, with as many features, got "
            f"{tuple(real.shape)} and {tuple(fake.shape)}"
        )
    x, y, seed = (
        real.double().cpu(),
        fake.double().cpu(),
        check_int("seed", seed, minimum=0, maximum=MAX_SEED),
    )
    n1, n2 = len(x), len(y)
    if resamples is None:
        resamples = RESAMPLES if x.shape[1] <= _MOMENTS_MAX_DIM else RESAMPLES_LARGE
    check_int("resamples", resamples, minimum=2, maximum=MAX_RESAMPLES)
    check_number("confidence", confidence, 0, 1, open_min=True, open_max=True)
    subsets = check_int("kid_subsets", kid_subsets, minimum=1, maximum=MAX_RESAMPLES)
    size = kid_subset_size or min(1000, n1 // 2, n2 // 2)
    check_int("kid_subset_size", size, minimum=2, maximum=min(n1, n2))
    rng = torch.Generator().manual_seed(seed)
    in_x, in_y = (torch.zeros(subsets, n, dtype=torch.float64) for n in (n1, n2))
    for row in range(subsets):
        in_x[row, torch.randperm(n1, generator=rng)[:size]] = 1.0
        in_y[row, torch.randperm(n2, generator=rng)[:size]] = 1.0
    wx, wy = _counts(n1, resamples, rng), _counts(n2, resamples, rng)
    kid = _kid(x, y, torch.cat([in_x, wx]), torch.cat([in_y, wy]))
    ones_x, ones_y = torch.ones(1, n1, dtype=x.dtype), torch.ones(1, n2, dtype=x.dtype)
    fid = _fid(x, y, torch.cat([ones_x, wx]), torch.cat([ones_y, wy]))  # row 0: the estimate
    result = {"fid": fid[0].item(), "kid_mean": kid[:subsets].mean().item()}
    result["fid_low"], result["fid_high"] = _interval(result["fid"], fid[1:], confidence, 0.0)
    result["kid_low"], result["kid_high"] = _interval(result["kid_mean"], kid[subsets:], confidence)
    result["kid_subset_std"] = kid[:subsets].std(unbiased=False).item()
    result.update(kid_subsets=subsets, kid_subset_size=size, n_real=n1, n_fake=n2)
    result.update(resamples=resamples, confidence=confidence, seed=seed)
    if _correct is not None:  # 1 where a sample is read as its class; same draws as the fakes
        accuracy, correct = _correct.double().mean().item(), _correct.double()
        low, high = _interval(accuracy, wy @ correct / n2, confidence, 0.0)
        result.update(class_accuracy=accuracy, class_accuracy_low=low)
        result["class_accuracy_high"] = min(high, 1.0)
    return result
