"""Restoring a run from its checkpoint: random states, optimizer states, the data it saw.

A resumed run continues bit for bit only if every random generator, both optimizers and the
data order are what they were; and the states read back from a file are checked before torch
uses them (a moment tensor of the wrong shape would make the fused Adam kernel write out of
bounds). What cannot go on bit for bit (another number of processes, a changed image folder)
goes on with a :class:`ResumeWarning` saying so.
"""

from __future__ import annotations

import random
import warnings

import numpy as np
import torch

from .checkpoint import check_tensors

__all__ = [
    "ResumeWarning",
    "check_data",
    "check_optimizer_state",
    "restore_random_states",
    "rng_state",
    "set_rng_state",
]


class ResumeWarning(UserWarning):
    """A resumed run goes on, but not bit for bit (another data set, another process count)."""


MOMENTS = ("exp_avg", "exp_avg_sq")


def check_optimizer_state(
    optimizer: torch.optim.Optimizer, saved: object, what: str, where
) -> dict:
    """A clean copy of ``saved`` for ``optimizer.load_state_dict``; ValueError naming ``where``
    unless ``saved`` is an Adam state that fits ``optimizer``.

    Torch trusts what it loads: a moment tensor of the wrong shape, or of the right shape over
    a smaller storage (stride 0), makes the fused Adam kernel read and write out of bounds, and
    a reordered parameter list pairs moments with the wrong parameters. So the copy is rebuilt
    from the live optimizer's layout: its parameter groups and settings must equal the saved
    ones (only ``lr`` may differ, as a float), each state entry holds exactly ``step``,
    ``exp_avg`` and ``exp_avg_sq``, and the moments are copied into fresh contiguous tensors of
    the parameter's shape and dtype.
    """

    def bad(reason: str) -> ValueError:
        return ValueError(f"{where}: the {what} optimizer state does not fit ({reason})")

    if not isinstance(saved, dict) or not isinstance(saved.get("param_groups"), list):
        raise bad("expected a dict with 'state' and 'param_groups'")
    live = optimizer.state_dict()
    groups = saved["param_groups"]
    if len(groups) != len(live["param_groups"]) or not all(isinstance(g, dict) for g in groups):
        raise bad(f"expected {len(live['param_groups'])} parameter group(s)")
    clean_groups = []
    for group, expected in zip(groups, live["param_groups"], strict=True):
        if group.get("params") != expected["params"]:
            raise bad("its parameter indices do not match the network, in order")
        lr = group.get("lr")
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < float("inf"):
            raise bad(f"lr must be a positive number, got {lr!r}")
        betas = group.get("betas")
        if not (
            isinstance(betas, tuple | list)
            and len(betas) == 2
            and all(isinstance(b, float) and 0 <= b < 1 for b in betas)
        ):
            raise bad(f"betas must be two floats in [0, 1), got {betas!r}")
        for key, value in expected.items():  # every other setting: exactly the run's
            if key in ("params", "lr", "betas"):
                continue
            if key not in group or type(group[key]) is not type(value) or group[key] != value:
                raise bad(f"{key} should be {value!r} as in this run, got {group.get(key)!r}")
        extra = sorted(set(group) - set(expected), key=str)
        if extra:
            raise bad(f"unexpected settings {extra}")
        clean_groups.append({**expected, "lr": float(lr), "betas": tuple(betas)})
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = saved.get("state")
    if not isinstance(state, dict):
        raise bad("'state' should be a dict")
    clean_state = {}
    for index, entry in state.items():
        if not (isinstance(index, int) and 0 <= index < len(params)) or not isinstance(entry, dict):
            raise bad(f"unexpected state entry {index!r}")
        if set(entry) != {"step", *MOMENTS}:
            raise bad(
                f"parameter {index} should have step, exp_avg and exp_avg_sq, got {sorted(entry)}"
            )
        param = params[index]
        for key in MOMENTS:
            tensor = entry[key]
            if not (
                isinstance(tensor, torch.Tensor)
                and tensor.layout == torch.strided
                and tensor.is_contiguous()  # not a stride-0 view of a smaller storage
            ):
                raise bad(
                    f"{key} of parameter {index} should be a dense, contiguous tensor, "
                    f"got {tensor.layout if isinstance(tensor, torch.Tensor) else type(tensor)}"
                    + (
                        f" with strides {tensor.stride()}"
                        if isinstance(tensor, torch.Tensor)
                        else ""
                    )
                )
            if tensor.shape != param.shape or tensor.dtype != param.dtype:
                raise bad(
                    f"{key} of parameter {index} should be {param.dtype} of shape "
                    f"{tuple(param.shape)}, got {tensor.dtype} of shape {tuple(tensor.shape)}"
                )
        step = entry["step"]
        if not isinstance(step, torch.Tensor) or step.numel() != 1 or step.is_complex():
            raise bad(f"the step of parameter {index} should be one number")
        check_tensors({f"{index}.{k}": v for k, v in entry.items()}, what + " optimizer", where)
        if step.item() < 0 or step.item() != int(step.item()):
            raise bad(
                f"the step of parameter {index} should be a whole number >= 0, got {step.item()}"
            )
        if (entry["exp_avg_sq"] < 0).any():
            raise bad(f"exp_avg_sq of parameter {index} is negative")
        clean_state[index] = {
            "step": torch.tensor(float(step.item()), dtype=torch.float32),
            **{
                key: entry[key].detach().clone(memory_format=torch.contiguous_format)
                for key in MOMENTS
            },
        }
    return {"state": clean_state, "param_groups": clean_groups}


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
        if not 0 <= int(mt["pos"]) <= 624 or int(mt["has_gauss"]) not in (0, 1):
            raise ValueError("numpy's position or gauss flag is out of range")
        if state["python"]["gauss_next"] is not None:
            float(state["python"]["gauss_next"])
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
    except (
        KeyError,
        TypeError,
        ValueError,
        RuntimeError,
        AttributeError,
        IndexError,
        OverflowError,
    ) as error:
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
