"""FID and KID of generated images, with bootstrap intervals, on digit or Inception features.

FID fits a Gaussian to the features of each set of images and measures the Frechet distance
between the two; KID is an unbiased estimate of the squared maximum mean discrepancy with the
kernel ``(x . y / d + 1) ** 3``, averaged over random subsets. The features (``features=``):

* ``"digits"`` (default): a small digit classifier (:mod:`sagan_tutorial.digits`) whose weights
  ship in the package; 32x32 grey digits only, offline. It sees what matters in a digit (which
  one, how it is drawn); the numbers compare with each other, not with published FIDs.
* ``"inception"``: the 2048-d pool3 features of the FID Inception-v3
  (:mod:`sagan_tutorial.inception`; its weights file is not shipped), for any size, grey or RGB.

Every number is a pure function of the inputs and ``seed`` (the noise of the samples, the KID
subsets and the bootstrap draws come from generators seeded with it; the caller's global RNG state
is left as it was), and comes with a bootstrap interval. FID is biased upward at small sample
sizes, so scores compare only at the same n: the floor (:func:`real_vs_real_floor`), n held-out
images against n training images, is measured at the model's n (:func:`evaluation_report`).
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from ._checks import MAX_SEED, check_choice, check_int
from .data import load_dataset, split_indices
from .digits import (
    WEIGHTS,
    DigitClassifier,
    DigitFeatures,
    classifier_accuracy,
    digit_classifier,
    digit_feature_extractor,
    main,
    train_classifier,
)
from .distances import MIN_IMAGES, check_finite, fid_kid_from_features
from .runtime import resolve_device

__all__ = [
    "FEATURES",
    "WEIGHTS",
    "DigitClassifier",
    "DigitFeatures",
    "check_images",
    "check_sample_size",
    "classifier_accuracy",
    "digit_classifier",
    "digit_feature_extractor",
    "evaluate_generator",
    "evaluation_report",
    "fid_kid",
    "fid_kid_from_features",
    "format_report",
    "main",
    "real_vs_real_floor",
    "train_classifier",
]

FEATURES = ("digits", "inception")
RANGE_SLACK = 0.01  # resampled images may overshoot [-1, 1] a little


def check_images(name: str, x, features: str = "digits") -> None:
    """ValueError/TypeError unless ``x`` is a finite float batch: (N, 1, 32, 32) for "digits",
    (N, C, H, W) with C = 1 or 3 for "inception"."""
    shape = "(N, 1, 32, 32)" if features == "digits" else "(N, C, H, W)"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor {shape}, got {type(x).__name__}")
    if features == "digits" and (x.dim() != 4 or tuple(x.shape[1:]) != (1, 32, 32)):
        raise ValueError(
            f"{name} must have shape (N, 1, 32, 32) (grey 32x32 digits, as the feature "
            f"extractor was trained on), got {tuple(x.shape)}"
        )
    if x.dim() != 4 or x.shape[1] not in (1, 3) or 0 in x.shape:
        raise ValueError(f"{name} must have shape (N, C, H, W), C 1 or 3, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [-1, 1], got dtype {x.dtype}")
    check_finite(name, x)
    low, high = float(x.min()), float(x.max())
    if low < -1 - RANGE_SLACK or high > 1 + RANGE_SLACK:  # [0, 255] images, say
        raise ValueError(f"{name} must be images in [-1, 1], got values from {low:g} to {high:g}")


def _inception_extractor(path, device) -> nn.Module:  # the tests put a stand-in here
    from .inception import inception_feature_extractor

    return inception_feature_extractor(path, device=device)


def _extractor(features: str, inception_weights, device) -> nn.Module:
    check_choice("features", features, FEATURES)
    if features == "digits":
        if inception_weights is not None:
            raise ValueError("inception_weights applies to features='inception', got 'digits'")
        return digit_feature_extractor(device=device)
    return _inception_extractor(inception_weights, device)


@contextlib.contextmanager
def _seeded(seed: int, *devices: torch.device):
    """Run with the global RNGs (CPU, the CUDA devices used) seeded, then restore them."""
    cuda = [d.index if d.index is not None else -1 for d in devices if d.type == "cuda"]
    cuda = sorted({torch.cuda.current_device() if i < 0 else i for i in cuda})
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


@torch.no_grad()
def _embed(extractor, images, name, features, device, batch_size) -> torch.Tensor:
    """(N, d) float64 features on the CPU, checked to be finite."""
    check_images(name, images, features)
    out = [extractor(b.to(device, torch.float32)).double().cpu() for b in images.split(batch_size)]
    features = torch.cat(out)
    check_finite(f"the features of {name}", features)
    return features


def fid_kid(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    seed: int = 0,
    features: str = "digits",
    inception_weights: str | os.PathLike | None = None,
    device=None,
    batch_size: int = 500,
    **options,
) -> dict[str, float]:
    """FID and KID between two sets of images (N, C, H, W) in [-1, 1], with intervals.

    ``features``: "digits" ((N, 1, 32, 32) only) or "inception" (``inception_weights``: its
    file; default: torch.hub's cache). ``options`` and the keys returned: those of
    :func:`fid_kid_from_features`.
    """
    check_int("seed", seed, minimum=0, maximum=MAX_SEED)
    check_int("batch_size", batch_size, minimum=1)
    device = resolve_device(device)
    check_images("real", real, features)
    check_images("fake", fake, features)
    with _seeded(seed, device):
        extractor = _extractor(features, inception_weights, device)
        real_f = _embed(extractor, real, "real", features, device, batch_size)
        fake_f = _embed(extractor, fake, "fake", features, device, batch_size)
        return fid_kid_from_features(real_f, fake_f, seed=seed, **options)


def check_sample_size(n: int, dataset: str | os.PathLike = "mnist5k", *, name="--n") -> int:
    """``n`` if ``n`` samples can be compared with as many held-out (and as many training)
    images of ``dataset``, and n >= 4; else a one-line ValueError naming ``name``."""
    check_int(name, n)
    labels = load_dataset(dataset, split="all", image_size=4).labels.numpy()  # to count splits
    most = min(len(split_indices(labels, "test")), len(split_indices(labels, "train")))
    if not MIN_IMAGES <= n <= most:
        raise _size_error(name, most, f"the held-out images of {dataset}", n)
    return n


def _size_error(name: str, most: int, what: str, n) -> ValueError:
    return ValueError(f"expected {name} between {MIN_IMAGES} and {most} ({what}), got {n}")


def _check_generator(generator, features: str) -> tuple[int, int]:
    config = getattr(generator, "config", None)
    if not isinstance(generator, nn.Module) or config is None:
        raise TypeError(f"expected a Generator (with a .config), got {type(generator).__name__}")
    check_choice("features", features, FEATURES)
    if features == "digits" and (config.image_size, config.channels) != (32, 1):
        raise ValueError(
            f"expected a Generator of 32x32 grey digits for features='digits' (use "
            f"features='inception' for others), got {config.image_size} px, {config.channels} ch"
        )
    return config.image_size, config.channels


def _real(dataset, split: str, n: int, size: int, channels: int):
    """The first n images of ``split`` and their labels; ValueError if there are fewer."""
    data = load_dataset(dataset, split=split, image_size=size, channels=channels)
    if not MIN_IMAGES <= check_int("n", n) <= len(data):
        raise _size_error("n", len(data), f"the {split} images of {dataset}", n)
    return data.images[:n], data.labels[:n]


@torch.no_grad()
def _generate(generator, labels: torch.Tensor, seed: int, batch_size: int) -> torch.Tensor:
    """One sample per label (used if G is conditional), G in eval mode and then as it was."""
    config = generator.config
    if config.num_classes and labels.max() >= config.num_classes:
        raise ValueError(
            f"expected data labels below the generator's num_classes={config.num_classes}, "
            f"got labels up to {labels.max().item()}"
        )
    fake = generator.sample(
        len(labels), labels if config.num_classes else None, seed=seed, batch_size=batch_size
    )  # (n, C, S, S)
    check_finite("the generated images", fake, " (does the generator have NaN weights?)")
    return fake


_OPTIONS = ("dataset", "seed", "features", "inception_weights", "device", "batch_size")
_OPTIONS += ("resamples", "confidence")


def _measure(generator, split: str, n: int, floor: bool, shape: tuple[int, int], options: dict):
    """(the generator's scores or None, the floor's scores or None); each image embedded once."""
    if unknown := sorted(options.keys() - set(_OPTIONS)):
        raise TypeError(f"unexpected keyword arguments {unknown}, expected some of {_OPTIONS}")
    dataset, seed = options.get("dataset", "mnist5k"), options.get("seed", 0)
    features, device = options.get("features", "digits"), options.get("device")
    batch_size = check_int("batch_size", options.get("batch_size", 250), minimum=1)
    stats = {"seed": check_int("seed", seed, minimum=0, maximum=MAX_SEED)}
    stats.update({k: options[k] for k in ("resamples", "confidence") if k in options})
    g_device = next(generator.parameters()).device if generator is not None else None
    device = resolve_device(device) if device is not None or g_device is None else g_device
    with _seeded(seed, *filter(None, (device, g_device))):
        extractor = _extractor(features, options.get("inception_weights"), device)

        def embed(images, what):
            return _embed(extractor, images, what, features, device, batch_size)

        real, labels = _real(dataset, split, n, *shape)
        real_f = embed(real, f"the {split} images of {dataset}")
        scores = floor_scores = None
        if generator is not None:
            fake = _generate(generator, labels, seed, batch_size)
            correct = None
            if generator.config.num_classes == 10 and shape == (32, 1):
                classifier = digit_classifier(device=device)
                read = [classifier(b.to(device)).argmax(1).cpu() for b in fake.split(batch_size)]
                correct = torch.cat(read) == labels
            fake_f = embed(fake, "the generated images")
            scores = fid_kid_from_features(real_f, fake_f, _correct=correct, **stats)
        if floor:
            train_f = embed(_real(dataset, "train", n, *shape)[0], "the training images")
            floor_scores = fid_kid_from_features(real_f, train_f, **stats)
    about = {"n": n, "dataset": str(dataset), "features": features}
    return [None if s is None else {**s, **about} for s in (scores, floor_scores)]


def evaluate_generator(
    generator: nn.Module, dataset_split: str = "test", n: int = 1000, **options
) -> dict[str, float]:
    """FID and KID (with intervals) of ``n`` samples of ``generator`` against the first ``n``
    images of ``dataset_split`` of the data set, loaded at G's image size and channels.

    ``options``: ``dataset``, ``seed``, ``features``, ``inception_weights``, ``device``,
    ``batch_size``, ``resamples``, ``confidence``, as for :func:`evaluation_report`. The noise
    is seeded with ``seed``; a conditional G is given the labels of the real images, and a
    10-class one of 32x32 grey images also gets ``class_accuracy`` (``_low``, ``_high``): the
    fraction of samples the digit classifier reads as the class asked for. G runs in eval mode
    on its device, then is put back in its mode; features are computed on ``device`` (default:
    G's). Returns the keys of :func:`fid_kid_from_features` and ``n``, ``dataset``, ``features``.
    """
    shape = _check_generator(generator, options.get("features", "digits"))
    return _measure(generator, dataset_split, n, False, shape, options)[0]


def real_vs_real_floor(
    n: int = 1000, *, image_size: int = 32, channels: int = 1, **options
) -> dict[str, float]:
    """FID and KID (with intervals) of the first ``n`` training images of the data set against
    its first ``n`` held-out (test) images, the ones :func:`evaluate_generator` compares with.

    The splits are disjoint: this is what a generator that reproduced its training set perfectly
    would score. Measure it at the generator's ``n``: FID is biased upward at smaller n (500
    against 500 digits gives three times the floor at 1000). ``options`` as for
    :func:`evaluate_generator`; the keys returned too.
    """
    return _measure(None, "test", n, True, (image_size, channels), options)[1]


_SHOWN = ("fid", "fid_low", "fid_high", "kid_mean", "kid_low", "kid_high", "kid_subset_std")


def evaluation_report(
    generator: nn.Module,
    *,
    dataset: str | os.PathLike = "mnist5k",
    n: int = 1000,
    seed: int = 0,
    features: str = "digits",
    inception_weights: str | os.PathLike | None = None,
    device=None,
    batch_size: int = 250,
    resamples: int | None = None,
    confidence: float = 0.95,
) -> dict:
    """The generator and the real-vs-real floor, measured on the same ``n`` held-out images of
    ``dataset`` (what the command line's ``evaluate`` prints, through :func:`format_report`).

    ``features``: "digits" or "inception" (``inception_weights``: its file; default: looked up
    in torch.hub's cache). Returns plain numbers: ``fid``, ``fid_low``, ``fid_high``,
    ``kid_mean``, ``kid_low``, ``kid_high``, ``kid_subset_std``, the same with ``floor_`` in
    front; for a 10-class generator of 32x32 grey images ``class_accuracy``,
    ``class_accuracy_low``, ``class_accuracy_high``; and ``n``, ``seed``, ``features``,
    ``dataset``, ``confidence``, ``resamples``.
    """
    shape = _check_generator(generator, features)
    options = {k: v for k, v in locals().items() if k in _OPTIONS}  # the keywords above
    scores, floor = _measure(generator, "test", n, True, shape, options)
    report = {k: scores[k] for k in ("n", "seed", "features", "dataset", "confidence")}
    report["resamples"] = scores["resamples"]
    report.update({k: v for k, v in scores.items() if k in _SHOWN or "accuracy" in k})
    report.update({f"floor_{key}": floor[key] for key in _SHOWN})
    return report


def format_report(report: dict, name: str) -> str:
    """:func:`evaluation_report`'s numbers as a Markdown table (KID x 1e3), after a line saying
    what was compared."""
    n, level = report["n"], f"{report['confidence']:.0%}"
    lines = [
        f"{name}: {n} samples against {n} held-out (test) images of {report['dataset']}; floor: "
        f"the same {n} held-out images against {n} training images. Features: "
        f"{report['features']}; [{level} bootstrap interval, {report['resamples']} resamples], "
        f"seed {report['seed']}.",
        "",
        f"| | FID [{level}] | KID x 1e3 [{level}] | KID std over subsets x 1e3 |",
        "|---|---|---|---|",
    ]
    for label, prefix in ((name, ""), ("real vs real (floor)", "floor_")):
        fid = [report[f"{prefix}fid{end}"] for end in ("", "_low", "_high")]
        kid = [report[f"{prefix}kid{end}"] * 1e3 for end in ("_mean", "_low", "_high")]
        lines.append(
            f"| {label} | {fid[0]:.3f} [{fid[1]:.3f}, {fid[2]:.3f}] | {kid[0]:.3f} "
            f"[{kid[1]:.3f}, {kid[2]:.3f}] | {report[f'{prefix}kid_subset_std'] * 1e3:.3f} |"
        )
    if "class_accuracy" in report:
        low, high = report["class_accuracy_low"], report["class_accuracy_high"]
        accuracy = f"{report['class_accuracy']:.3f} [{low:.3f}, {high:.3f}]"
        lines += ["", f"Class accuracy of the samples (digit classifier): {accuracy}"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
