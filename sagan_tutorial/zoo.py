"""The model zoo: pretrained generators shipped with the package, ``pretrained(name)``.

A trainer checkpoint holds G, D, the EMA of G, both optimizers and the random states: ~9 MB for
the default model. A pretrained file keeps only what sampling needs: the EMA generator's state
dict (float32), its :class:`~sagan_tutorial.models.GANConfig` as a dict, and metadata (the step,
the seed, the command that trained it, the figures measured). It loads with
``torch.load(weights_only=True)``, so nothing in it can run code, and its weights must be finite.

Use it from Python::

    import sagan_tutorial

    G = sagan_tutorial.pretrained("sagan-mnist32")  # eval mode, EMA weights
    images = G(torch.randn(16, G.config.z_dim))  # (16, 1, 32, 32) in [-1, 1]
    G = sagan_tutorial.pretrained("my-run.pt")  # a file made by the export command

and make such a file from a checkpoint with::

    python -m sagan_tutorial export --checkpoint runs/default/checkpoint.pt --name sagan-mine

which writes ``sagan-mine.pt`` in the current folder: the files inside the package are replaced
only when asked for by path and with ``--overwrite``.
"""

from __future__ import annotations

import io
import math
import os
import re
from pathlib import Path

import torch

from .checkpoint import build_generator, load_checkpoint
from .files import atomic_write, read_torch_file
from .models import Generator
from .runtime import resolve_device

__all__ = [
    "FORMAT",
    "WEIGHTS",
    "available",
    "check_name",
    "export",
    "pretrained",
    "pretrained_info",
    "read_pretrained",
]

WEIGHTS = Path(__file__).parent / "weights"
FORMAT = "sagan_tutorial.pretrained/1"
# Generators are the "sagan-*" files: the folder also holds the metrics' digit classifier.
_NAME = re.compile(r"sagan-[a-z0-9][a-z0-9._-]*")


def available() -> tuple[str, ...]:
    """The names of the shipped generators, sorted (e.g. ``("sagan-mnist32", ...)``)."""
    return tuple(sorted(path.stem for path in WEIGHTS.glob("sagan-*.pt")))


def check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if not _NAME.fullmatch(name):
        raise ValueError(
            "name must look like 'sagan-mnist32' (lower case, digits, '.', '_', '-' after "
            f"'sagan-'), got {name!r}"
        )
    return name


def _path_of(name_or_path: object) -> Path:
    """A shipped name -> its file in the package; a path (``str`` ending in .pt, PathLike)."""
    if isinstance(name_or_path, os.PathLike) or (
        isinstance(name_or_path, str) and name_or_path.endswith(".pt")
    ):
        return Path(name_or_path)
    if not isinstance(name_or_path, str):
        raise TypeError(f"expected a name or a path, got {type(name_or_path).__name__}")
    if name_or_path not in available():
        raise ValueError(
            f"no pretrained generator {name_or_path!r}; available: {list(available())} "
            "(or give the path of a file that the export command wrote)"
        )
    return WEIGHTS / f"{name_or_path}.pt"


def read_pretrained(name_or_path: str | os.PathLike) -> dict:
    """The checked payload of a pretrained file: ``format``, ``generator``, ``config``, ``meta``."""
    path = _path_of(name_or_path)
    payload = read_torch_file(path, "pretrained generator")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pretrained file: expected a dict with format={FORMAT!r}")
    missing = [
        key for key in ("generator", "config", "meta") if not isinstance(payload.get(key), dict)
    ]
    if missing:
        raise ValueError(f"{path} is an incomplete pretrained file: no dict under {missing}")
    return payload


def pretrained_info(name_or_path: str | os.PathLike = "sagan-mnist32") -> dict:
    """The metadata of a pretrained file: name, step, seed, command, notes, metrics, config."""
    payload = read_pretrained(name_or_path)
    return {**payload["meta"], "config": dict(payload["config"])}


def pretrained(name_or_path: str | os.PathLike = "sagan-mnist32", *, device=None) -> Generator:
    """The EMA generator ``name_or_path``, in eval mode on ``device`` (default: the best one).

    A name is one of :func:`available`; a path (ending in ``.pt``) is a file that the export
    command wrote. ``G(z)`` with ``z`` of shape (B, G.config.z_dim) gives images (B, C, S, S)
    in [-1, 1].
    """
    payload = read_pretrained(name_or_path)
    path = _path_of(name_or_path)
    generator = build_generator(payload["config"], payload["generator"], path)
    return generator.to(resolve_device(device))


def _is_pretrained_file(path: Path) -> bool:
    """Whether ``path`` holds a file that :func:`export` wrote (so that it may replace it)."""
    try:
        read_pretrained(Path(path))
    except (ValueError, OSError):
        return False
    return True


def export(
    checkpoint_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    name: str,
    command: str,
    notes: str = "",
    metrics: dict[str, float] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the EMA generator of a trainer checkpoint to ``out_path``; returns ``out_path``.

    ``command`` is the training command recorded in the metadata, ``metrics`` finite numbers such
    as ``{"fid": 0.35}``. An existing ``out_path`` is replaced only with ``overwrite=True``, and
    never when it is the checkpoint itself.
    """
    check_name(name)
    for key, value in (("command", command), ("notes", notes)):
        if not isinstance(value, str):
            raise TypeError(f"{key} must be a str, got {type(value).__name__}")
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be a bool, got {type(overwrite).__name__}")
    if metrics is not None and not isinstance(metrics, dict):
        raise TypeError(f"metrics must be a dict of names to numbers, got {type(metrics).__name__}")
    metrics = dict(metrics or {})
    for key, value in metrics.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not isinstance(key, str) or not number or not math.isfinite(value):
            raise ValueError(f"metrics must map names to finite numbers, got {key!r}: {value!r}")
    out_path = Path(out_path)
    if out_path.exists() and out_path.resolve() == Path(checkpoint_path).resolve():
        raise ValueError(f"the output {out_path} is the checkpoint it would be made from")
    if out_path.is_dir():
        raise ValueError(f"expected a file to write, got the folder {out_path}")
    if os.path.lexists(out_path) and not overwrite:
        raise FileExistsError(f"{out_path} exists: pass --overwrite (overwrite=True) to replace it")
    if os.path.lexists(out_path) and not _is_pretrained_file(out_path):
        raise ValueError(
            f"{out_path} exists and is not a pretrained generator file: --overwrite replaces "
            "only those (it is not overwritten)"
        )
    state = load_checkpoint(checkpoint_path)
    run = state["config"]
    weights = {
        key: tensor.detach().cpu().float() if tensor.is_floating_point() else tensor.cpu()
        for key, tensor in state["ema"].items()
        if isinstance(tensor, torch.Tensor)
    }
    # A file that does not fit its config, or holds NaN, fails here, not when someone loads it.
    build_generator(run.get("model"), weights, checkpoint_path, "EMA generator")
    meta = {
        "name": name,
        "step": state["step"],
        "seed": run.get("seed"),
        "batch_size": run.get("batch_size"),
        "dataset": run.get("dataset"),
        "command": command,
        "notes": notes,
        "metrics": {key: float(value) for key, value in metrics.items()},
    }
    payload = {"format": FORMAT, "generator": weights, "config": run["model"], "meta": meta}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write(out_path, buffer.getbuffer(), overwrite=overwrite)
