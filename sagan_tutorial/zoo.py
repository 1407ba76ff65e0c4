"""The model zoo: pretrained generators shipped with the package, ``pretrained(name)``.

A trainer checkpoint holds G, D, the EMA of G, both optimizers and the random states: ~9 MB for
the default model. A pretrained file keeps only what sampling needs: the EMA generator's state
dict (float32), its :class:`~sagan_tutorial.models.GANConfig` as a dict, and metadata (the step,
the seed, the command that trained it, FID/KID when given). It loads with
``torch.load(weights_only=True)``, so nothing in it can run code.

Use it from Python::

    import sagan_tutorial

    G = sagan_tutorial.pretrained("sagan-mnist32")  # eval mode, EMA weights
    images = G(torch.randn(16, G.config.z_dim))  # (16, 1, 32, 32) in [-1, 1]

and make such a file from a checkpoint with::

    python -m sagan_tutorial export --checkpoint runs/final64/checkpoint.pt --name sagan-mnist32 \\
        --evaluate
"""

from __future__ import annotations

import os
import re
from dataclasses import fields
from pathlib import Path

import torch

from .models import GANConfig, Generator
from .runtime import default_device
from .train import TrainConfig, _load_weights, load_checkpoint, save_checkpoint

__all__ = [
    "WEIGHTS",
    "available",
    "check_name",
    "export",
    "pretrained",
    "pretrained_info",
    "train_command",
]

WEIGHTS = Path(__file__).parent / "weights"
_FORMAT = "sagan_tutorial.pretrained/1"
# Generators are the "sagan-*" files: the folder also holds the metrics' digit classifier.
_NAME = re.compile(r"sagan-[a-z0-9][a-z0-9._-]*")


def available() -> tuple[str, ...]:
    """The names of the shipped generators, sorted (e.g. ``("sagan-mnist32",)``)."""
    return tuple(sorted(path.stem for path in WEIGHTS.glob("sagan-*.pt")))


def check_name(name) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"name must look like 'sagan-mnist32' (lower case, digits, '.', '_', "
            f"'-' after 'sagan-'), got {name!r}"
        )
    return name


def _flag(name: str, value) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    if isinstance(value, tuple):
        return [flag, ",".join(map(str, value)) or "none"]
    return [flag, str(value)]


def train_command(config: TrainConfig) -> str:
    """The ``python -m sagan_tutorial train`` line that reproduces ``config``.

    Only options that differ from the defaults are listed. A network option is listed when it
    differs from either GANConfig's default or TrainConfig's, so the line gives the same
    networks whichever of the two the command line starts from.
    """
    defaults = TrainConfig()
    flags = ["--out", config.out]
    for f in fields(GANConfig):
        value = getattr(config.model, f.name)
        if any(value != getattr(model, f.name) for model in (GANConfig(), defaults.model)):
            flags += _flag(f.name, value)
    for f in fields(TrainConfig):
        value = getattr(config, f.name)
        if f.name not in ("model", "out") and value != getattr(defaults, f.name):
            flags += _flag(f.name, value)
    return " ".join(["python -m sagan_tutorial train", *flags])


def export(
    checkpoint_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    name: str,
    command: str | None = None,
    notes: str = "",
    metrics: dict[str, float] | None = None,
) -> Path:
    """Write the EMA generator of a trainer checkpoint to ``out_path`` (atomically).

    ``command`` is the training command recorded in the metadata (default: rebuilt from the
    checkpoint's config); ``metrics`` are numbers such as ``{"fid": 0.35}`` measured elsewhere.
    Returns ``out_path``.
    """
    check_name(name)
    metrics = dict(metrics or {})
    for key, value in metrics.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not isinstance(key, str) or not number:
            raise TypeError(f"metrics must map names to numbers, got {key!r}: {value!r}")
    state = load_checkpoint(checkpoint_path)
    try:
        config = TrainConfig.from_dict(state["config"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{checkpoint_path}: its config is invalid ({error})") from error
    weights = {
        key: tensor.detach().cpu().float() if tensor.is_floating_point() else tensor.cpu()
        for key, tensor in state["ema"].items()
    }
    # A file that does not fit its config fails here, not when someone loads it.
    _load_weights(Generator(config.model), weights, "EMA generator", checkpoint_path)
    meta = {
        "name": name,
        "step": int(state["step"]),
        "seed": config.seed,
        "batch_size": config.batch_size,
        "dataset": config.dataset,
        "command": command or train_command(config),
        "notes": notes,
        "metrics": {key: float(value) for key, value in metrics.items()},
    }
    payload = {
        "format": _FORMAT,
        "generator": weights,
        "config": config.model.to_dict(),
        "meta": meta,
    }
    return save_checkpoint(payload, out_path)  # temp file + fsync + os.replace


def _read(name: str) -> dict:
    """The payload of ``weights/<name>.pt``; ValueError for an unknown name or a bad file."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in available():
        raise ValueError(f"no pretrained generator {name!r}; available: {list(available())}")
    path = WEIGHTS / f"{name}.pt"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{path} is not a readable pretrained file: torch.load(weights_only=True) "
            f"failed with {type(error).__name__}"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(
            f"{path} is not a pretrained file: expected a dict with format={_FORMAT!r}"
        )
    missing = [
        key for key in ("generator", "config", "meta") if not isinstance(payload.get(key), dict)
    ]
    if missing:
        raise ValueError(f"{path} is an incomplete pretrained file: no dict under {missing}")
    return payload


def pretrained_info(name: str = "sagan-mnist32") -> dict:
    """The metadata of a shipped generator: name, step, seed, command, notes, metrics, config."""
    payload = _read(name)
    return {**payload["meta"], "config": dict(payload["config"])}


def pretrained(name: str = "sagan-mnist32", *, device=None) -> Generator:
    """The shipped EMA generator ``name``, in eval mode on ``device`` (default: the best one).

    ``G(z)`` with ``z`` of shape (B, G.config.z_dim) gives images (B, C, S, S) in [-1, 1].
    """
    payload = _read(name)
    path = WEIGHTS / f"{name}.pt"
    try:
        generator = Generator(GANConfig.from_dict(payload["config"]))
        generator.load_state_dict(payload["generator"])
    except (TypeError, ValueError, RuntimeError, KeyError) as error:
        detail = " ".join(str(error).split())[:300]
        raise ValueError(f"{path}: the weights do not fit the stored config ({detail})") from error
    return generator.to(device or default_device()).eval()
