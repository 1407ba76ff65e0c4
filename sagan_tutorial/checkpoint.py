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
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .files import atomic_write, first_non_finite, read_torch_file
from .models import GANConfig, Generator
from .runtime import resolve_device

__all__ = [
    "CHECKPOINT_NAME",
    "FORMAT",
    "NonFiniteStateError",
    "ResumeWarning",
    "build_generator",
    "check_data",
    "load_checkpoint",
    "load_generator",
    "load_weights",
    "restore_random_states",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
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


class ResumeWarning(UserWarning):
    """A resumed run goes on, but not bit for bit (another data set, another process count)."""


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


def load_weights(module: nn.Module, weights: object, what: str, path: object) -> None:
    """``module.load_state_dict(weights)`` with one-line errors that name ``what`` and ``path``.

    The weights must be finite: a network with NaN weights only makes NaN images.
    """
    if not isinstance(weights, dict):
        raise ValueError(
            f"{path}: the {what} weights should be a dict, got {type(weights).__name__}"
        )
    bad = first_non_finite(weights)
    if bad is not None:
        raise NonFiniteStateError(f"{path}: the {what} weights hold NaN or infinite values ({bad})")
    try:
        result = module.load_state_dict(weights, strict=False)
    except (RuntimeError, TypeError, AttributeError, KeyError) as error:
        detail = " ".join(str(error).split())[:300]
        raise ValueError(f"{path}: the {what} weights do not fit its config ({detail})") from None
    _check_keys(result.missing_keys, result.unexpected_keys, what, path)


def _check_keys(missing: list, unexpected: list, what: str, path: object) -> None:
    if missing or unexpected:
        examples = ", ".join(repr(key) for key in (missing[:1] + unexpected[:1]))
        raise ValueError(
            f"{path}: the {what} weights do not fit its config: {len(missing)} entries missing, "
            f"{len(unexpected)} unexpected (e.g. {examples}); was it written by another version "
            "of the package?"
        )


def build_generator(
    config: object, weights: object, path: object, what: str = "generator"
) -> Generator:
    """A Generator of ``config`` (a GANConfig dict) holding ``weights``, on the CPU, in eval mode.

    The config is checked against the stored tensors' shapes on the ``meta`` device first (no
    memory), so a config that asks for a huge network fails before anything is allocated.
    """
    try:
        model = GANConfig.from_dict(config)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: its network config is invalid ({error})") from None
    if not isinstance(weights, dict):
        raise ValueError(
            f"{path}: the {what} weights should be a dict, got {type(weights).__name__}"
        )
    # The shapes the config makes, from the network built on the meta device (no memory) and
    # without spectral norm (its power iterations are slow there): a normalised layer stores
    # its weight as "<layer>.parametrizations.weight.original".
    with torch.device("meta"):
        expected = Generator(dataclasses.replace(model, sn="none")).state_dict()
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
    generator = Generator(model)
    load_weights(generator, weights, what, path)
    return generator.eval()


def load_generator(path: str | os.PathLike, *, ema: bool = True, device=None) -> Generator:
    """The (EMA, by default) generator of a trainer checkpoint, in eval mode on ``device``."""
    state = load_checkpoint(path)
    model = state["config"].get("model")
    key = "ema" if ema else "generator"
    generator = build_generator(model, state[key], path, "EMA generator" if ema else "generator")
    return generator.to(resolve_device(device))


# ----------------------------------------------------------------------------------------------
# random states


def rng_state() -> dict:
    """Every random generator this process uses, as tensors and plain values."""
    # numpy's legacy global generator is the one that library code (and readers) seed and use.
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": version,
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }


def set_rng_state(state: object, where: object) -> None:
    """Restore what :func:`rng_state` returned; ValueError naming ``where`` if it does not fit."""
    try:
        torch.set_rng_state(state["torch"].cpu())
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        mt = state["numpy"]
        keys = mt["keys"].numpy().astype(np.uint32)
        legacy = (
            "MT19937",
            keys,
            int(mt["pos"]),
            int(mt["has_gauss"]),
            float(mt["cached_gaussian"]),
        )
        np.random.set_state(legacy)  # noqa: NPY002
        python = state["python"]
        internal = tuple(int(i) for i in python["internal"].tolist())
        random.setstate((python["version"], internal, python["gauss_next"]))
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as error:
        detail = " ".join(str(error).split())[:200]
        raise ValueError(
            f"{where}: the random states do not fit ({type(error).__name__}: {detail})"
        ) from None


def restore_random_states(states: list, rank: int, world: int, where: object) -> None:
    """Set this process's random states from a checkpoint's list (one entry per process).

    Another number of processes cannot go on bit for bit: the generators are then reseeded from
    the saved state of rank 0 mixed with this rank, and a :class:`ResumeWarning` says so.
    """
    if not states:
        raise ValueError(f"{where}: the random states are missing")
    if len(states) == world:
        set_rng_state(states[rank], where)
        return
    warnings.warn(
        f"{where} was written by {len(states)} processes, this run has {world}: it goes on, "
        "but not bit for bit",
        ResumeWarning,
        stacklevel=3,
    )
    set_rng_state(states[0], where)
    torch.manual_seed(int(torch.randint(2**62, ())) + rank)


def check_data(saved: object, now: dict, where: object) -> None:
    """Warn (:class:`ResumeWarning`) when the data fingerprint differs from the checkpoint's."""
    keys = ("files", "bytes", "sha256")  # not "source": the same folder may be named otherwise
    if isinstance(saved, dict) and any(saved.get(key) != now.get(key) for key in keys):

        def describe(fingerprint):
            if isinstance(fingerprint, dict) and "files" in fingerprint:
                return f"{fingerprint['files']} files, {fingerprint.get('bytes', '?')} bytes"
            return repr(fingerprint)

        warnings.warn(
            f"the data set {now.get('source', '?')!r} changed since {where} was written "
            f"({describe(saved)} then, {describe(now)} now): the resumed run goes on, but not "
            "bit for bit",
            ResumeWarning,
            stacklevel=3,
        )
