"""The trainer's checkpoint, and loading a generator from it.

A checkpoint (``checkpoint.pt``) holds everything a resumed run needs: the weights of G, D and
the EMA of G, both optimizers, the step, the number of batches drawn, the random states of every
process, the run's config and a fingerprint of its data. It is a dict of tensors and plain values
that ``torch.load(weights_only=True)`` reads, so loading it cannot run code. It is written
atomically (:func:`sagan_tutorial.files.atomic_write`), and only when every number in it is
finite: a state with a NaN or an infinity is refused, so the last good checkpoint stays.

Every error while reading is one ValueError that names the file. A network is checked against
the stored tensors on the ``meta`` device before any memory is allocated, so a hostile config
cannot ask for 34 GB.
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

import torch
from torch import nn

from .files import atomic_write, first_non_finite, read_torch_file
from .models import GANConfig, Generator
from .runtime import resolve_device

__all__ = [
    "CHECKPOINT_NAME",
    "FORMAT",
    "NonFiniteStateError",
    "build_generator",
    "check_fits",
    "check_tensors",
    "load_checkpoint",
    "load_generator",
    "load_weights",
    "model_config",
    "save_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "sagan_tutorial.checkpoint/1"
REQUIRED = {
    "step": int,
    "batches_seen": int,
    "world_size": int,
    "config": dict,
    "generator": dict,
    "discriminator": dict,
    "ema": dict,
    "opt_g": dict,
    "opt_d": dict,
    "rng": list,
}


class NonFiniteStateError(ValueError):
    """A state to be written, or weights read, hold a NaN or an infinity."""


# ----------------------------------------------------------------------------------------------
# writing


def save_checkpoint(state: dict, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write ``state`` to ``path`` atomically, only if every tensor in it is finite.

    Raises :class:`NonFiniteStateError` (and writes nothing) when a tensor holds NaN or inf, and
    OSError (with the file's name) when the disk refuses the bytes.
    """
    bad = first_non_finite(state)
    if bad is not None:
        raise NonFiniteStateError(f"not writing {path}: {bad} holds NaN or infinite values")
    buffer = io.BytesIO()
    torch.save(state, buffer)  # in memory first: a full disk is then a plain OSError below
    try:
        return atomic_write(path, buffer.getbuffer(), overwrite=overwrite)
    except OSError as error:
        if error.filename is None:
            error.filename = str(path)
        raise


# ----------------------------------------------------------------------------------------------
# reading


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by the trainer; ValueError naming the file for anything else."""
    state = read_torch_file(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = (
            f"a dict with keys {sorted(map(str, state))[:6]}"
            if isinstance(state, dict)
            else f"a {type(state).__name__}"
        )
        raise ValueError(
            f"{path} is not a sagan_tutorial checkpoint: expected a dict with "
            f"format={FORMAT!r}, got {got}"
        )
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise ValueError(f"{path} is an incomplete checkpoint: missing {missing}")
    for key, kind in REQUIRED.items():
        value = state[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(
                f"{path}: {key!r} should be a {kind.__name__}, got {type(value).__name__}"
            )
        if kind is int and value < (1 if key == "world_size" else 0):
            raise ValueError(f"{path}: {key!r} cannot be {value}")
    return state


# What weights may hold: real floating point, and int64 (BatchNorm's step counters).
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64)


def check_tensors(values: dict, what: str, path: object) -> None:
    """ValueError naming ``path`` unless every value is a plain (strided) tensor of a dtype that
    weights have, and finite."""
    for key, tensor in values.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(
                f"{path}: the {what} weights should be tensors, "
                f"{key!r} is a {type(tensor).__name__}"
            )
        if tensor.layout != torch.strided or tensor.dtype not in _DTYPES:
            raise ValueError(
                f"{path}: the {what} weights hold {key!r} as a {tensor.layout} {tensor.dtype} "
                "tensor; expected real floating-point or int64 tensors"
            )
    bad = first_non_finite(values)
    if bad is not None:
        raise NonFiniteStateError(f"{path}: the {what} weights hold NaN or infinite values ({bad})")


def load_weights(module: nn.Module, weights: object, what: str, path: object) -> None:
    """``module.load_state_dict(weights)`` with one-line errors that name ``what`` and ``path``.

    The keys and shapes must be the module's, and the weights plain finite tensors: a network
    with NaN weights only makes NaN images.
    """
    if not isinstance(weights, dict):
        raise ValueError(
            f"{path}: the {what} weights should be a dict, got {type(weights).__name__}"
        )
    own = module.state_dict()
    missing = [key for key in own if key not in weights]
    _check_keys(missing, [key for key in weights if key not in own], what, path)
    for key, tensor in own.items():
        stored = weights[key]
        if isinstance(stored, torch.Tensor) and stored.shape != tensor.shape:
            raise ValueError(
                f"{path}: the {what} weights do not fit its config: {key!r} has shape "
                f"{tuple(stored.shape)}, the network has {tuple(tensor.shape)}"
            )
    check_tensors(weights, what, path)
    try:
        module.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError, KeyError) as error:
        detail = " ".join(str(error).split())[:300]
        raise ValueError(f"{path}: the {what} weights do not fit its config ({detail})") from None


def _check_keys(missing: list, unexpected: list, what: str, path: object) -> None:
    if missing or unexpected:
        examples = ", ".join(repr(key) for key in (missing[:1] + unexpected[:1]))
        raise ValueError(
            f"{path}: the {what} weights do not fit its config: {len(missing)} entries missing, "
            f"{len(unexpected)} unexpected (e.g. {examples}); was it written by another version "
            "of the package?"
        )


def check_fits(network: type, model: GANConfig, weights: object, what: str, path: object) -> None:
    """ValueError naming ``path`` unless ``weights`` have the keys and shapes that ``network``
    (Generator or Discriminator) of ``model`` has: checked on the ``meta`` device, where nothing
    is allocated, so a config that asks for a huge network fails before anything is built."""
    if not isinstance(weights, dict):
        raise ValueError(
            f"{path}: the {what} weights should be a dict, got {type(weights).__name__}"
        )
    # Built without spectral norm (its power iterations are slow on meta): a normalised layer
    # stores its weight as "<layer>.parametrizations.weight.original".
    with torch.device("meta"):
        expected = network(dataclasses.replace(model, sn="none")).state_dict()
    missing = []
    for key, tensor in expected.items():
        stored = weights.get(
            key, weights.get(key.replace(".weight", ".parametrizations.weight.original"))
        )
        if not isinstance(stored, torch.Tensor):
            missing.append(key)
        elif stored.shape != tensor.shape:
            raise ValueError(
                f"{path}: the {what} weights do not fit its config: {key!r} has shape "
                f"{tuple(stored.shape)}, the config makes {tuple(tensor.shape)}"
            )
    layers = [key.removesuffix(".weight") for key in expected if key.endswith(".weight")]
    normalised = {
        f"{layer}.parametrizations.weight.{part}"
        for layer in layers
        for part in ("original", "0._u", "0._v")
    }
    unexpected = [key for key in weights if key not in expected.keys() | normalised]
    _check_keys(missing, unexpected, what, path)


def model_config(config: object, path: object) -> GANConfig:
    """The GANConfig of a stored config dict; ValueError naming ``path``."""
    try:
        return GANConfig.from_dict(config)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: its network config is invalid ({error})") from None


def build_generator(
    config: object, weights: object, path: object, what: str = "generator"
) -> Generator:
    """A Generator of ``config`` (a GANConfig dict) holding ``weights``, on the CPU, in eval mode.

    Checked first against the stored tensors on the ``meta`` device (:func:`check_fits`), then
    loaded (:func:`load_weights`); one forward of a few images must give finite images.
    """
    model = model_config(config, path)
    check_fits(Generator, model, weights, what, path)
    generator = Generator(model)
    load_weights(generator, weights, what, path)
    generator.eval()
    labels = torch.arange(4) % model.num_classes if model.num_classes else None
    if not torch.isfinite(generator.sample(4, labels)).all():
        raise NonFiniteStateError(
            f"{path}: the {what} makes NaN or infinite images from finite weights"
        )
    return generator


def load_generator(path: str | os.PathLike, *, ema: bool = True, device=None) -> Generator:
    """The (EMA, by default) generator of a trainer checkpoint, in eval mode on ``device``."""
    state = load_checkpoint(path)
    if not isinstance(ema, bool):
        raise TypeError(f"ema must be a bool, got {type(ema).__name__} {ema!r}")
    model = state["config"].get("model")
    key = "ema" if ema else "generator"
    generator = build_generator(model, state[key], path, "EMA generator" if ema else "generator")
    return generator.to(resolve_device(device))
