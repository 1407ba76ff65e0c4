"""The digit classifier whose features FID and KID use (:mod:`sagan_tutorial.metrics`): its
network, its checked loading, its accuracy, its training and the command that writes its weights.

``python -m sagan_tutorial.metrics --train-classifier --out FILE`` trains it on the mnist5k train
split and writes its state dict to FILE; the shipped weights are
``sagan_tutorial/weights/digit_features.pt`` (replacing that file needs ``--overwrite``).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import MAX_SEED
from .data import load_dataset
from .files import atomic_write, read_torch_file
from .runtime import resolve_device

__all__ = [
    "NUM_FEATURES",
    "WEIGHTS",
    "DigitClassifier",
    "DigitFeatures",
    "classifier_accuracy",
    "digit_classifier",
    "digit_feature_extractor",
    "main",
    "train_classifier",
]

WEIGHTS = Path(__file__).with_name("weights") / "digit_features.pt"
NUM_FEATURES = 64
PROG = "python -m sagan_tutorial.metrics"


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


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    """The classifier's state dict in ``path``, checked; a one-line ValueError naming the file."""
    where = f"digit classifier weights {str(path)!r}"
    if not path.is_file():
        raise ValueError(f"{where}: no such file")
    state = read_torch_file(path, "file of digit classifier weights")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        got = type(state).__name__
        raise ValueError(f"{where}: expected a state dict (names -> tensors), got a {got}")
    expected = {k: tuple(v.shape) for k, v in DigitClassifier().state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    found = {
        "missing keys": sorted(expected.keys() - given.keys()),
        "unexpected keys": sorted(given.keys() - expected.keys()),
        "wrong shapes": [
            f"{k} {given[k]} (expected {s})" for k, s in expected.items() if given.get(k, s) != s
        ],
        "non-float values in": [k for k, v in state.items() if not v.is_floating_point()],
        "non-finite values in": [
            k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()
        ],
    }
    problems = [f"{what} {', '.join(keys[:3])}" for what, keys in found.items() if keys]
    if not problems and state["feature_scale"].item() <= 0:
        problems = [f"feature_scale {state['feature_scale'].item():g} (expected > 0)"]
    if problems:
        raise ValueError(f"{where}: not the DigitClassifier's weights: {'; '.join(problems)}")
    return state


def digit_classifier(path: str | os.PathLike = WEIGHTS, device=None) -> DigitClassifier:
    """The shipped digit classifier (or the one at ``path``), eval mode, frozen parameters."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or a path, got {type(path).__name__}")
    model = DigitClassifier()
    model.load_state_dict(_load_state(Path(path)))
    model.eval().requires_grad_(False)
    return model.to(resolve_device(device))


class DigitFeatures(nn.Module):
    """The features of FID and KID: (N, 1, 32, 32) in [-1, 1] -> (N, 64), the input checked."""

    num_features = NUM_FEATURES  # read by torchmetrics instead of probing with a dummy image

    def __init__(self, classifier: DigitClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 32, 32) or not x.is_floating_point():
            raise ValueError(
                "images must be a float tensor (N, 1, 32, 32) (grey 32x32 digits, as the "
                f"classifier was trained on), got {tuple(x.shape)} {x.dtype}"
            )
        return self.classifier.embed(x)


def digit_feature_extractor(path: str | os.PathLike = WEIGHTS, device=None) -> DigitFeatures:
    """The digit features of the shipped classifier (or the one at ``path``), frozen."""
    return DigitFeatures(digit_classifier(path, device)).eval()


def _split(split: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset("mnist5k", split=split)
    return data.images[:n], data.labels[:n]


def classifier_accuracy(model: nn.Module, split: str = "test") -> float:
    """Fraction of the mnist5k ``split`` that ``model`` classifies correctly."""
    images, labels = _split(split)
    device = next(model.parameters()).device
    with torch.no_grad():
        return float((model(images.to(device)).argmax(1).cpu() == labels).float().mean())


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
    images, labels = _split("train", n)
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


def _out_problem(out: Path, overwrite: bool) -> str | None:
    """Why ``--out`` cannot be written (checked before training), or None."""
    if out.is_dir():
        return f"--out {out} is a folder, expected a file name"
    if out.exists() and not overwrite:
        return f"--out {out} exists: pass --overwrite to replace it"
    if not out.parent.is_dir():
        return f"--out {out}: no such folder {out.parent}"
    if not os.access(out.parent, os.W_OK | os.X_OK):  # found now, not after the training
        return f"--out {out}: the folder {out.parent} is not writable"
    return None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog=PROG, description="Train the digit classifier whose features FID and KID use."
    )
    parser.add_argument("--train-classifier", action="store_true", required=True)
    parser.add_argument("--epochs", type=int, default=20, help="1 to 1000 (default: 20)")
    parser.add_argument("--seed", type=int, default=0, help=f"0 to {MAX_SEED} (default: 0)")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="the weights file to write (shipped: sagan_tutorial/weights/digit_features.pt)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    if not 1 <= args.epochs <= 1000:
        parser.error(f"--epochs must be between 1 and 1000, got {args.epochs}")
    if not 0 <= args.seed <= MAX_SEED:
        parser.error(f"--seed must be between 0 and {MAX_SEED}, got {args.seed}")
    problem = _out_problem(args.out, args.overwrite)
    if problem:
        parser.error(problem)
    try:
        model = train_classifier(epochs=args.epochs, seed=args.seed)
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted; nothing was written", file=sys.stderr)
        return 130
    try:
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        atomic_write(args.out, buffer.getbuffer(), overwrite=args.overwrite)
    except OSError as error:
        message = error.strerror or " ".join(str(error).split())
        print(f"{PROG}: error: cannot write {args.out}: {message}", file=sys.stderr)
        return 2
    print(f"saved {args.out}: test accuracy {classifier_accuracy(model):.4f}")
    return 0


if __name__ == "__main__":  # python -m sagan_tutorial.digits works as ... .metrics does
    raise SystemExit(main())
