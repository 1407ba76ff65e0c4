"""Where and how long the code runs: the one device resolver, and the quick mode of the tests."""

from __future__ import annotations

import os

import torch

__all__ = ["default_device", "quick", "resolve_device"]

ENV_DEVICE = "SAGAN_TUTORIAL_DEVICE"
ENV_QUICK = "SAGAN_TUTORIAL_QUICK"


def resolve_device(
    name: str | torch.device | None = "auto", *, local_rank: int | None = None
) -> torch.device:
    """The device a name asks for, checked: ValueError for a name torch does not know or a device
    this machine does not have.

    ``"auto"`` (or None): the device named by ``SAGAN_TUTORIAL_DEVICE``, else CUDA when
    available, else the CPU. ``local_rank`` (under torchrun) picks the GPU of this process.
    Supported: ``cpu``, ``cuda``/``cuda:N`` and ``mps``.
    """
    source = "device"
    if name is None:
        name = "auto"
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise TypeError(f"device must be a str or a torch.device, got {type(name).__name__}")
    if name == "auto":
        name = os.environ.get(ENV_DEVICE, "").strip()
        source = ENV_DEVICE
        if not name:
            name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"{source} must name a device such as 'cpu', 'cuda' or 'cuda:1', got {name!r}"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{source} {name!r} asks for CUDA, which is not available here")
        if local_rank is not None:
            device = torch.device("cuda", local_rank)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"{source} {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{source} {name!r} asks for Apple's MPS, which is not available here")
    elif device.type != "cpu":
        raise ValueError(f"{source} must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {name!r}")
    return device


def default_device() -> torch.device:
    """The device named by ``SAGAN_TUTORIAL_DEVICE``, else CUDA when available, else the CPU."""
    return resolve_device("auto")


def quick() -> bool:
    """True when ``SAGAN_TUTORIAL_QUICK`` is set to a true value: notebooks shorten long runs."""
    return os.environ.get(ENV_QUICK, "").strip().lower() in {"1", "true", "yes", "on"}
