"""FID and KID of generated digits, measured with a small digit classifier instead of Inception.

FID and KID compare two sets of images through the features a network extracts from them: FID fits
a Gaussian to each set of features and measures the Frechet distance between the two; KID is an
unbiased estimate of the squared maximum mean discrepancy with a polynomial kernel. Inception-v3
features need 299x299 RGB images and a download; for 32x32 digits a classifier trained on digits
sees what matters (which digit, how it is drawn) and runs offline. Its weights ship in the package
(``weights/digit_features.pt``, made by ``python -m sagan_tutorial.metrics --train-classifier``).

The numbers are comparable with each other, not with published FIDs (other features, other scale).
:func:`real_vs_real_floor` gives the value two sets of real digits reach: the best a model can do.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from .data import load_dataset
from .runtime import default_device

__all__ = [
    "WEIGHTS",
    "DigitClassifier",
    "DigitFeatures",
    "check_images",
    "classifier_accuracy",
    "digit_classifier",
    "digit_feature_extractor",
    "evaluate_generator",
    "fid_kid",
    "real_vs_real_floor",
    "train_classifier",
]

WEIGHTS = Path(__file__).with_name("weights") / "digit_features.pt"
IMAGE_SHAPE = (1, 32, 32)
NUM_FEATURES = 64


class DigitClassifier(nn.Module):
    """Three conv + max-pool stages and a 64-d feature layer: (N, 1, 32, 32) -> logits (N, 10).

    ``feature_scale`` divides the features that :meth:`embed` returns so that their mean squared
    norm over the training digits is 64, one per feature: KID's polynomial kernel
    ``(x . y / 64 + 1) ** 3`` then sees values near 1, as with Inception features, instead of
    numbers in the thousands whose noise would swamp the estimate.
    """

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 32, 16, 16)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 64, 8, 8)
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 128, 4, 4)
            nn.AvgPool2d(2), nn.Flatten(),  # (N, 512)
        )  # fmt: skip
        self.features = nn.Sequential(nn.Linear(512, NUM_FEATURES), nn.ReLU())
        self.head = nn.Linear(NUM_FEATURES, 10)
        self.register_buffer("feature_scale", torch.ones(()))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 32, 32) in [-1, 1] -> the penultimate features (N, 64), scaled."""
        return self.features(self.convs(x)) / self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.convs(x)))

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor) -> None:
        """Set ``feature_scale`` so that the mean squared feature norm on ``images`` is 64."""
        features = self.features(self.convs(images))  # (N, 64), unscaled
        self.feature_scale.fill_(features.square().sum(1).mean().div(NUM_FEATURES).sqrt().item())


class DigitFeatures(nn.Module):
    """The feature extractor torchmetrics calls: checks the input, returns (N, 64) features."""

    num_features = NUM_FEATURES  # read by torchmetrics instead of probing with a dummy image

    def __init__(self, classifier: DigitClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images("images", x)
        return self.classifier.embed(x)


class _GivenFeatures(nn.Module):
    """The "feature extractor" torchmetrics sees when :func:`fid_kid` has computed the features."""

    num_features = NUM_FEATURES

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def check_images(name: str, x) -> None:
    """ValueError/TypeError unless ``x`` is a float batch (N, 1, 32, 32)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor (N, 1, 32, 32), got {type(x).__name__}")
    if x.dim() != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(
            f"{name} must have shape (N, 1, 32, 32) (grey 32x32 digits, as the feature "
            f"extractor was trained on), got {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [-1, 1], got dtype {x.dtype}")


def digit_classifier(path: str | Path = WEIGHTS, device=None) -> DigitClassifier:
    """The shipped digit classifier, in eval mode with frozen parameters."""
    model = DigitClassifier()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.eval().requires_grad_(False)
    return model.to(device or "cpu")


def digit_feature_extractor(path: str | Path = WEIGHTS, device=None) -> DigitFeatures:
    """The feature extractor for :func:`fid_kid`: (N, 1, 32, 32) in [-1, 1] -> (N, 64)."""
    return DigitFeatures(digit_classifier(path, device)).eval()


@torch.no_grad()
def fid_kid(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    device=None,
    kid_subset_size: int | None = None,
    batch_size: int = 500,
) -> dict[str, float]:
    """FID and KID between two sets of digits, each (N, 1, 32, 32) in [-1, 1].

    KID averages 100 subsets of ``kid_subset_size`` images (default: half the smaller set, at
    most 1000), so ``kid_std`` says how much it varies. Returns ``{"fid", "kid_mean", "kid_std"}``.
    """
    check_images("real", real)
    check_images("fake", fake)
    if min(len(real), len(fake)) < 4:
        raise ValueError(
            f"FID and KID need at least 4 images in each set, got {len(real)} and {len(fake)}"
        )
    device = torch.device(device) if device is not None else default_device()
    subset = kid_subset_size or min(1000, len(real) // 2, len(fake) // 2)
    if subset > min(len(real), len(fake)):
        raise ValueError(
            f"kid_subset_size must be at most the size of the smaller set "
            f"({min(len(real), len(fake))}), got {subset}"
        )
    extractor = digit_feature_extractor(device=device)
    # Both metrics would run the extractor on every image; run it once and hand them features.
    given = _GivenFeatures()
    fid = FrechetInceptionDistance(feature=given).to(device)
    with warnings.catch_warnings():  # KID warns that it keeps every feature: 64 floats each here
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=given, subset_size=subset).to(device)
    for images, is_real in ((real, True), (fake, False)):
        for batch in images.split(batch_size):
            features = extractor(batch.to(device, torch.float32))  # (b, 64)
            fid.update(features, real=is_real)
            kid.update(features, real=is_real)
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}


def _held_out(split: str, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset("mnist5k", split=split)
    n = len(data) if n is None else min(n, len(data))
    return data.images[:n], data.labels[:n]


@torch.no_grad()
def evaluate_generator(
    generator: nn.Module,
    dataset_split: str = "test",
    n: int = 1000,
    *,
    batch_size: int = 250,
    seed: int = 0,
    device=None,
) -> dict[str, float]:
    """FID and KID of ``n`` samples of ``generator`` against ``n`` real mnist5k digits.

    The generator must make (N, 1, 32, 32) digits. A conditional generator is given the labels of
    the real digits, and the result also holds ``class_accuracy``: the fraction of samples that
    the digit classifier reads as the digit asked for. G runs in eval mode (BatchNorm statistics
    of training) on the device it is on, and is put back in the mode it was in; the features are
    computed on ``device`` (default: G's device).
    """
    config = getattr(generator, "config", None)
    if config is None or (config.image_size, config.channels) != (32, 1):
        got = "no config" if config is None else f"{config.image_size} px, {config.channels} ch"
        raise ValueError(f"expected a Generator of 32x32 grey digits, got {got}")
    sample_device = next(generator.parameters()).device
    device = torch.device(device) if device is not None else sample_device
    real, labels = _held_out(dataset_split, n)
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(len(real), config.z_dim, generator=rng)
    conditional = config.num_classes > 0
    was_training = generator.training
    generator.eval()
    fake = []
    try:
        for zb, yb in zip(z.split(batch_size), labels.split(batch_size), strict=True):
            yb = yb.to(sample_device) if conditional else None
            fake.append(generator(zb.to(sample_device), yb).float().cpu())  # (b, 1, 32, 32)
    finally:
        generator.train(was_training)
    fake = torch.cat(fake)
    result = fid_kid(real, fake, device=device)
    result["n"] = len(real)
    if conditional:
        predicted = digit_classifier(device=device)(fake.to(device)).argmax(1).cpu()
        result["class_accuracy"] = float((predicted == labels).float().mean())
    return result


def real_vs_real_floor(split: str = "test", **kwargs) -> dict[str, float]:
    """FID and KID between the two halves of a held-out split (500 and 500 digits for "test").

    The halves are the even and odd positions of the split, so each holds every digit about
    equally often; the result is what a perfect generator would score with as many samples.
    """
    images, _ = _held_out(split, None)
    return fid_kid(images[0::2], images[1::2], **kwargs)


def classifier_accuracy(model: nn.Module, split: str = "test") -> float:
    """Fraction of the mnist5k ``split`` that ``model`` classifies correctly."""
    images, labels = _held_out(split, None)
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).float().mean())


def _shift(x: torch.Tensor, generator: torch.Generator, pixels: int = 2) -> torch.Tensor:
    """Each image shifted by up to ``pixels`` in x and y, so that position matters less."""
    padded = F.pad(x, (pixels,) * 4, value=-1.0)  # (N, 1, 32 + 2p, 32 + 2p), background -1
    offsets = torch.randint(0, 2 * pixels + 1, (len(x), 2), generator=generator)
    size = x.shape[-1]
    crops = [p[:, i : i + size, j : j + size] for p, (i, j) in zip(padded, offsets, strict=True)]
    return torch.stack(crops)  # (N, 1, 32, 32)


def train_classifier(
    epochs: int = 20,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 1e-3,
    n: int | None = None,
    log=print,
) -> DigitClassifier:
    """Train :class:`DigitClassifier` on the mnist5k train split (or its first ``n`` digits).

    Each batch is shifted by up to 2 pixels; Adam with a cosine schedule; on the CPU.
    """
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    images, labels = _held_out("train", n)
    model = DigitClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=rng)
        total = 0.0
        for batch in order.split(batch_size):
            loss = F.cross_entropy(model(_shift(images[batch], rng)), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        schedule.step()
        model.eval()
        log(
            f"epoch {epoch + 1}/{epochs}: loss {total / len(images):.4f}, "
            f"test accuracy {classifier_accuracy(model):.4f}"
        )
    model.eval().calibrate(images)
    return model


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m sagan_tutorial.metrics",
        description="Train the digit classifier whose features FID and KID use.",
    )
    parser.add_argument("--train-classifier", action="store_true", required=True)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    model = train_classifier(epochs=args.epochs, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    print(f"saved {args.out}: test accuracy {classifier_accuracy(model):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
