"""Training speed, measured: steps per second of several variants of one training, side by side.

From the plain training (the port's 'bmm' attention, per-parameter Adam), each variant adds one
speed-up to the one above it; the default training is marked. The variants are timed in the same
process, interleaved (a busy moment of the machine hits every variant), and the best of the
repeats is kept: other programs only ever slow a measurement down. Reported as ratios to the
first variant: ``python -m sagan_tutorial bench``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from ._checks import check_int
from .config import TrainConfig
from .runtime import resolve_device
from .train import Trainer

__all__ = ["VARIANTS", "bench", "format_bench"]

# (name, GANConfig changes, TrainConfig changes), each row on top of the ones before it.
VARIANTS = (
    (
        "plain: 'bmm' attention, per-parameter Adam",
        {"attention_backend": "bmm"},
        {"fused_adam": False},
    ),
    ("+ fused Adam", {"attention_backend": "bmm"}, {}),
    ("+ 'auto' attention (default)", {}, {}),
    ("+ channels_last", {}, {"channels_last": True}),
    ("+ bf16 autocast", {}, {"channels_last": True, "amp": "bf16"}),
)


def _time_steps(trainer: Trainer, steps: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for ``steps`` training steps.

    CPU time counts only this process's work, so it is the steadier figure on a shared machine.
    """
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(trainer.device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        trainer.train_step()
    if cuda:
        torch.cuda.synchronize(trainer.device)
    return time.perf_counter() - wall, time.process_time() - cpu


def bench(base: TrainConfig, *, steps: int = 10, repeats: int = 3) -> list[dict]:
    """Time every variant of ``base``; one dict per variant: name, steps/s, CPU s/step, ratios."""
    for name, value in (("steps", steps), ("repeats", repeats)):
        check_int(f"--{name}", value, minimum=1)
    with tempfile.TemporaryDirectory() as folder:
        trainers = []
        for i, (_, model, options) in enumerate(VARIANTS):
            out = str(Path(folder) / f"variant{i}")
            config = replace(base, out=out, model=replace(base.model, **model), **options)
            trainers.append(Trainer(config))
        for trainer in trainers:  # warm-up: the first steps allocate and pick kernels
            trainer.train_step()
        timings: list[list[tuple[float, float]]] = [[] for _ in trainers]
        for _ in range(repeats):
            for trainer, measured in zip(trainers, timings, strict=True):
                measured.append(_time_steps(trainer, steps))
        for trainer in trainers:
            trainer.close()
    rate = [steps / min(wall for wall, _ in measured) for measured in timings]
    cpu = [min(c for _, c in measured) / steps for measured in timings]
    return [
        {
            "variant": name,
            "steps_per_s": r,
            "speed": r / rate[0],
            "cpu_s_per_step": c,
            "cpu_speed": cpu[0] / c,
        }
        for (name, _, _), r, c in zip(VARIANTS, rate, cpu, strict=True)
    ]


def format_bench(rows: list[dict], base: TrainConfig, *, steps: int, repeats: int) -> str:
    """The Markdown table that ``python -m sagan_tutorial bench`` prints, with its set-up line."""
    lines = [
        f"device: {resolve_device(base.device)}, threads: {torch.get_num_threads()}, "
        f"batch {base.batch_size}, widths G {base.model.g_width} D {base.model.d_width}, "
        f"best of {repeats} x {steps} steps",
        "| variant | steps/s | vs plain | CPU s/step | vs plain |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['variant']} | {row['steps_per_s']:.2f} | {row['speed']:.2f}x | "
            f"{row['cpu_s_per_step']:.3f} | {row['cpu_speed']:.2f}x |"
        )
    return "\n".join(lines)
