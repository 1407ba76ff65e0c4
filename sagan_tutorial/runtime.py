"""Where and how long the notebooks run: the device, and the quick mode used by the tests."""

from __future__ import annotations

import os

import torch

__all__ = ["default_device", "quick"]


def default_device() -> torch.device:
    """The device named by ``SAGAN_TUTORIAL_DEVICE``, else CUDA when available, else the CPU."""
    name = os.environ.get("SAGAN_TUTORIAL_DEVICE", "").strip()
    if name:
        try:
            device = torch.device(name)
        except RuntimeError as error:
            raise ValueError(
                "SAGAN_TUTORIAL_DEVICE must name a torch device such as 'cpu' or 'cuda', "
                f"got {name!r}"
            ) from error
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"SAGAN_TUTORIAL_DEVICE={name!r} but CUDA is not available here")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def quick() -> bool:
    """True when ``SAGAN_TUTORIAL_QUICK`` is set to a true value: notebooks shorten long runs."""
    return os.environ.get("SAGAN_TUTORIAL_QUICK", "").strip().lower() in {"1", "true", "yes", "on"}
