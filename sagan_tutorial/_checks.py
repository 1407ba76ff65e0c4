"""Argument checks shared by the package: one place for "is an int", "is a number", "one of".

Every check raises ``TypeError`` for a value of the wrong kind and ``ValueError`` for a value out
of range, and names the argument, what was expected and what came in.
"""

from __future__ import annotations

import math

MAX_SEED = 2**32 - 1  # seeds combine with the epoch and the rank: kept well inside 64 bits

__all__ = ["MAX_SEED", "check_choice", "check_int", "check_number"]


def check_int(
    name: str, value: object, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``value`` as an int within [minimum, maximum]; bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {_range(minimum, maximum)}, got {value}")
    return value


def check_number(
    name: str,
    value: object,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    open_min: bool = False,
    open_max: bool = False,
) -> float:
    """``value`` as a finite float in the interval from ``minimum`` to ``maximum``.

    Ints are accepted (1 is a fine learning rate to write), bools are not. ``open_min`` and
    ``open_max`` leave the bound itself out: ``check_number("lr", x, 0, open_min=True)`` is x > 0.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    below = minimum is not None and (value <= minimum if open_min else value < minimum)
    above = maximum is not None and (value >= maximum if open_max else value > maximum)
    if not math.isfinite(value) or below or above:
        low = "(-inf" if minimum is None else f"{'(' if open_min else '['}{minimum:g}"
        high = "inf)" if maximum is None else f"{maximum:g}{')' if open_max else ']'}"
        raise ValueError(f"{name} must be a finite number in {low}, {high}, got {value}")
    return value


def check_choice(name: str, value: object, choices: tuple) -> object:
    """``value`` if it is one of ``choices`` (compared with ==, and of the same type)."""
    if not any(type(value) is type(c) and value == c for c in choices):
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"between {minimum} and {maximum}"
    return f"at least {minimum}" if minimum is not None else f"at most {maximum}"
