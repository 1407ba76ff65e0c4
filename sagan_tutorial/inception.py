"""The FID Inception-v3 (TensorFlow graph "2015-12-05" ported to PyTorch): 2048-d pool3 features.

FID and KID as published are measured with the pool3 features of one particular Inception-v3: the
TensorFlow graph of 2015-12-05 that the original FID code used. It is not torchvision's
Inception3: its weights differ, and so do two details that pytorch-fid and torch-fidelity patch
in ("FIDInceptionA/C/E_1/E_2"): the average pools of the Mixed_5*, Mixed_6b-e and Mixed_7b blocks
leave the zero padding out of the mean (TensorFlow's pooling), and Mixed_7c pools with a max, not
an average. BatchNorm uses eps 0.001, and the classifier has 1008 outputs (unused for FID).

This module builds that network without torchvision, so its ``state_dict()`` has exactly the keys
and shapes of the published weights file (566 entries: 94 conv + BatchNorm pairs, each with
``num_batches_tracked``, and ``fc``; 23,850,960 parameters). The file is not shipped (95.6 MB) and
never downloaded here: :func:`find_inception_weights` looks for it in torch.hub's cache or takes a
path. pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` and torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth`` are the same bytes (SHA-256 6726825d0af5...), so
either name works and no key mapping is needed; a file written by torch-fidelity's conversion
script (same names, no ``num_batches_tracked``) loads too.

Preprocessing follows pytorch-fid: bilinear resize to 299x299 (``align_corners=False``, no
antialiasing) of images in [-1, 1]. torchmetrics' own ``feature=2048`` instead quantises to uint8
and, by default, resizes with antialiasing (``antialias=True`` here does the same resize), so its
numbers differ slightly from these; published FIDs differ again with the image resizing used.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .files import read_torch_file
from .runtime import resolve_device

__all__ = [
    "INCEPTION_WEIGHTS_NAME",
    "INCEPTION_WEIGHTS_SHA256_PREFIX",
    "INCEPTION_WEIGHTS_URL",
    "TORCH_FIDELITY_WEIGHTS_NAME",
    "FIDInceptionV3",
    "check_rgb_images",
    "find_inception_weights",
    "inception_feature_extractor",
]

INCEPTION_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    + INCEPTION_WEIGHTS_NAME
)
# The same bytes under torch-fidelity's name (its v0.2.0 release), cached by torchmetrics' FID.
TORCH_FIDELITY_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
# torch.hub's convention: the file name ends with the first 8 hex digits of the file's SHA-256.
INCEPTION_WEIGHTS_SHA256_PREFIX = "6726825d"
INPUT_SIZE = 299
NUM_FEATURES = 2048


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm (eps 0.001, TensorFlow's) + ReLU; keys ``conv.*`` and ``bn.*``."""

    def __init__(self, in_channels: int, out_channels: int, **conv) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's 3x3 "SAME" average pool divides by the number of real pixels under the window:
    # count_include_pad=False. torchvision's blocks count the zeros, which darkens the borders.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """Mixed_5b/c/d, 35x35: (N, C, 35, 35) -> (N, 224 + pool_features, 35, 35)."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([self.branch1x1(x), b5, b3, pool], 1)


class InceptionB(nn.Module):
    """Mixed_6a, the grid reduction 35 -> 17: (N, 288, 35, 35) -> (N, 768, 17, 17)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([self.branch3x3(x), b3, pool], 1)


class FIDInceptionC(nn.Module):
    """Mixed_6b/c/d/e, 17x17 with factorised 7x7 convs: (N, 768, 17, 17) -> (N, 768, 17, 17)."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        row, col = (
            {"kernel_size": (1, 7), "padding": (0, 3)},
            {"kernel_size": (7, 1), "padding": (3, 0)},
        )
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            b7dbl = conv(b7dbl)
        b7dbl = self.branch7x7dbl_5(b7dbl)
        pool = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([self.branch1x1(x), b7, b7dbl, pool], 1)


class InceptionD(nn.Module):
    """Mixed_7a, the grid reduction 17 -> 8: (N, 768, 17, 17) -> (N, 1280, 8, 8)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = conv(b7)
        pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, pool], 1)


class FIDInceptionE(nn.Module):
    """Mixed_7b (``pool="avg"``) and Mixed_7c (``pool="max"``): (N, C, 8, 8) -> (N, 2048, 8, 8).

    The 2015-12-05 graph max-pools in the pool branch of its last block (pytorch-fid's
    FIDInceptionE_2); every other Inception-v3 averages there. The FID features depend on it.
    """

    def __init__(self, in_channels: int, pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3dbl = torch.cat([self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl)], 1)
        if self.pool == "max":
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, b3dbl, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 as torchmetrics' ``feature=``: (N, C, H, W) in [-1, 1] -> (N, 2048).

    C is 1 (grey, repeated to RGB) or 3; any H, W: images are resized to 299x299 bilinearly
    (``align_corners=False``; ``antialias=True`` matches torchmetrics' default resize instead of
    pytorch-fid's). The output is the 2048-d global average of Mixed_7c ("pool3"). ``fc`` (1008
    ImageNet logits) is kept only so that the published weights load; FID does not use it.
    Built with random weights: load the real ones with :func:`inception_feature_extractor`.
    """

    num_features = NUM_FEATURES  # read by torchmetrics instead of probing with a dummy image

    def __init__(self, *, antialias: bool = False) -> None:
        super().__init__()
        self.antialias = antialias
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)  # 299 -> 149
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)  # 147
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)  # 147, max-pool -> 73
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)  # 73
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)  # 71, max-pool -> 35
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)  # (N, 256, 35, 35)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)  # (N, 288, 35, 35)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)  # (N, 288, 35, 35)
        self.Mixed_6a = InceptionB(288)  # (N, 768, 17, 17)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)  # (N, 768, 17, 17)
        self.Mixed_7a = InceptionD(768)  # (N, 1280, 8, 8)
        self.Mixed_7b = FIDInceptionE(1280, pool="avg")  # (N, 2048, 8, 8)
        self.Mixed_7c = FIDInceptionE(2048, pool="max")  # (N, 2048, 8, 8)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_rgb_images(x)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey as RGB: what a grey image saved as RGB would be
        x = x.to(self.fc.weight.dtype)
        size = (INPUT_SIZE, INPUT_SIZE)
        x = F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=self.antialias)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 192, 35, 35)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)  # ends (N, 2048, 8, 8)
        return x.mean(dim=(2, 3))  # (N, 2048): pool3


def check_rgb_images(x) -> None:
    """TypeError/ValueError unless ``x`` is a float batch (N, 1 or 3, H, W) in [-1, 1]."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"images must be a tensor (N, C, H, W), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"images must be a float tensor in [-1, 1], got dtype {x.dtype} (uint8 images in "
            "[0, 255]: use x.float() / 127.5 - 1)"
        )
    if x.dim() != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0 or min(x.shape[2:]) == 0:
        raise ValueError(
            f"images must have shape (N, C, H, W) with N >= 1 and C = 1 (grey) or 3 (RGB), "
            f"got {tuple(x.shape)}"
        )
    low, high = x.aminmax()
    # A little slack for rounding; images in [0, 1] or [0, 255] would give wrong features silently.
    if low < -1.001 or high > 1.001:
        raise ValueError(
            f"images must have values in [-1, 1], got values in "
            f"[{low.item():.3g}, {high.item():.3g}]"
        )


def find_inception_weights(path: str | Path | None = None) -> Path:
    """The FID Inception weights file: ``path`` if given, else the one in torch.hub's cache.

    The cache is ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``), where
    pytorch-fid (``pt_inception-...``) and torchmetrics/torch-fidelity (``weights-inception-...``)
    put it. Never downloads. ValueError, one line, when there is no file.
    """
    if path is not None:
        given = Path(path).expanduser()
        if not given.is_file():
            what = (
                "is a directory"
                if given.is_dir()
                else "is not a regular file"
                if given.exists()
                else "does not exist"
            )
            raise ValueError(f"FID Inception weights file {str(given)!r} {what}")
        return given
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    for name in (INCEPTION_WEIGHTS_NAME, TORCH_FIDELITY_WEIGHTS_NAME):
        if (checkpoints / name).is_file():
            return checkpoints / name
    raise ValueError(
        f"FID Inception weights not found in {checkpoints}: download {INCEPTION_WEIGHTS_URL} "
        f"(95.6 MB) into that folder, or save it anywhere and pass --inception-weights FILE"
    )


def _expected_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    # num_batches_tracked only counts training steps: files may have it or not, eval ignores it.
    return {
        k: tuple(v.shape)
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def _load_state(file: Path) -> dict[str, torch.Tensor]:
    state = read_torch_file(file, f"file of FID Inception weights ({INCEPTION_WEIGHTS_NAME})")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(
            f"{str(file)!r} must hold a state dict (names -> tensors) of the FID Inception, "
            f"got {type(state).__name__}"
        )
    return state


def _check_keys(file: Path, state: dict[str, torch.Tensor], model: nn.Module) -> None:
    expected = _expected_shapes(model)
    given = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    wrong = [
        f"{k} {given[k]} (expected {shape})"
        for k, shape in expected.items()
        if k in given and given[k] != shape
    ]
    found = {"missing keys": missing, "unexpected keys": unexpected, "wrong shapes": wrong}
    problems = [f"{len(v)} {what} (e.g. {', '.join(v[:3])})" for what, v in found.items() if v]
    if problems:
        raise ValueError(
            f"{str(file)!r} is not the FID Inception-v3 weights ({INCEPTION_WEIGHTS_NAME}): "
            + "; ".join(problems)
        )


def _check_digest(file: Path) -> None:
    """ValueError unless the file's SHA-256 begins with the published file's digest prefix: a
    file of the right shapes but other numbers would give FIDs that compare with nothing."""
    digest = hashlib.sha256()
    with open(file, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(INCEPTION_WEIGHTS_SHA256_PREFIX):
        raise ValueError(
            f"{str(file)!r} is not the FID Inception weights file: its SHA-256 begins with "
            f"{digest.hexdigest()[:8]}, the published {INCEPTION_WEIGHTS_NAME} with "
            f"{INCEPTION_WEIGHTS_SHA256_PREFIX}"
        )


def inception_feature_extractor(
    path: str | Path | None = None, device=None, *, antialias: bool = False
) -> FIDInceptionV3:
    """The FID Inception with the published weights, eval mode, frozen: (N, C, H, W) -> (N, 2048).

    ``path`` as for :func:`find_inception_weights`. The file is read with
    ``torch.load(weights_only=True)``; a file that is not the FID Inception's state dict gives a
    one-line ValueError naming it.
    """
    file = find_inception_weights(path)
    _check_digest(file)
    state = _load_state(file)
    model = FIDInceptionV3(antialias=antialias)
    _check_keys(file, state, model)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    model.load_state_dict(state, strict=False)  # strict in effect: _check_keys compared the rest
    model.eval().requires_grad_(False)
    return model.to(resolve_device(device))
