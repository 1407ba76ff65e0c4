"""Several processes (torchrun), agreement between them, and the signals that stop a run.

Under ``torchrun`` every process runs the same trainer: :func:`start_processes` joins the process
group (NCCL on CUDA, Gloo on the CPU), and the helpers here keep the processes in step: they
stop together (:func:`any_process`), gather their random states for the checkpoint
(:func:`gather`), share rank 0's BatchNorm statistics (:func:`broadcast_buffers`) and prove at
the end that every replica holds the same weights (:func:`check_replicas`).

:func:`catch_signals` turns SIGINT and SIGTERM into a request to stop after the current step;
the trainer then writes a checkpoint, and the command line exits with 128 + the signal number.
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .files import atomic_write
from .runtime import resolve_device

__all__ = [
    "Processes",
    "any_process",
    "broadcast_buffers",
    "catch_signals",
    "check_replicas",
    "end_processes",
    "gather",
    "start_processes",
    "weights_digest",
]


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes of a run (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this module started the process group and ends it

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, str(default)).strip()
    try:
        value = int(text)
    except ValueError:
        raise ValueError(
            f"{name} must be a whole number (torchrun sets it), got {text!r}"
        ) from None
    if value < 0:
        raise ValueError(f"{name} must be 0 or more, got {value}")
    return value


def start_processes(device_name: str) -> Processes:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else one process."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Processes()
    local_rank = _env_int("LOCAL_RANK", 0)
    rank = _env_int("RANK", 0)
    if rank >= world:
        raise ValueError(f"RANK must be below WORLD_SIZE={world}, got {rank}")
    owned = not dist.is_initialized()
    if owned:
        cuda = resolve_device(device_name).type == "cuda"
        try:
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        except (RuntimeError, ValueError) as error:  # e.g. RANK missing outside torchrun
            raise ValueError(" ".join(str(error).split())) from None
    return Processes(dist.get_rank(), dist.get_world_size(), local_rank, owned)


def end_processes(processes: Processes) -> None:
    if processes.owned and dist.is_initialized():
        dist.destroy_process_group()


def any_process(flag: bool, processes: Processes, device: torch.device) -> bool:
    """True on every process when ``flag`` is True on any (one process: ``flag`` itself)."""
    if processes.world == 1:
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather(value: object, processes: Processes) -> list:
    """Every process's ``value``, in rank order (one process: ``[value]``)."""
    if processes.world == 1:
        return [value]
    values = [None] * processes.world
    dist.all_gather_object(values, value)
    return values


def broadcast_buffers(module: nn.Module, processes: Processes) -> None:
    """Copy rank 0's buffers (BatchNorm statistics, spectral-norm vectors) to every process.

    Without SyncBatchNorm (the CPU) each process has its own BN statistics; taking rank 0's keeps
    every replica, and its EMA, identical.
    """
    if processes.world > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def weights_digest(modules: Iterable[nn.Module]) -> str:
    """SHA-256 of every tensor of ``modules`` (the same on every replica of a DDP run)."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_replicas(modules: Iterable[nn.Module], processes: Processes, out: Path) -> None:
    """Under torchrun: every process hashes its weights; rank 0 writes ``replicas.txt``."""
    if processes.world == 1:
        return
    digests = gather(weights_digest(modules), processes)
    if processes.main:
        atomic_write(out / "replicas.txt", ("\n".join(digests) + "\n").encode())
        if len(set(digests)) != 1:
            raise RuntimeError(f"the processes ended with different weights: {digests}")


def catch_signals(on_signal: Callable[[str], None]) -> Callable[[], None]:
    """Call ``on_signal("SIGINT" | "SIGTERM")`` instead of stopping; returns the undo function.

    A second signal raises KeyboardInterrupt at once: a step that never ends can still be stopped.

    Outside the main thread signals cannot be caught: they are left alone.
    """
    previous = {}

    requested = []

    def handler(number, frame):
        if requested:  # a second signal: stop now, without the checkpoint
            raise KeyboardInterrupt
        requested.append(number)
        on_signal(signal.Signals(number).name)

    try:
        for number in (signal.SIGINT, signal.SIGTERM):
            previous[number] = signal.signal(number, handler)
    except ValueError:  # not the main thread
        pass

    def restore() -> None:
        for number, old in previous.items():
            signal.signal(number, old)

    return restore
