"""What a run reports as it goes: ``log.csv``, TensorBoard, and the progress bar.

``log.csv`` has one row every ``log_every`` steps: the mean losses since the last row, every
attention ``gamma``, every spectral-norm sigma and the speed. A row is flushed as soon as it is
written. A resumed run rewrites the file from its checkpoint's step whatever state the file is
in (a lost header, rows past the checkpoint, a damaged last row, NUL bytes after a power loss):
the rows up to that step that can be read are kept, the rest is dropped, and the new file
replaces the old one atomically.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm  # text bar: also in notebooks, without ipywidgets

from .files import atomic_write
from .models import attention_layers, spectral_sigmas

__all__ = ["LOG_NAME", "LossMeter", "RunLog", "network_scalars", "progress_bar", "read_log"]

LOG_NAME = "log.csv"


def read_log(
    path: str | Path, columns: list[str] | None = None, *, up_to: float = math.inf
) -> list[dict]:
    """The readable rows of a ``log.csv`` with ``step <= up_to``, as dicts of numbers.

    Rows that cannot be read are skipped: a wrong number of fields, a step that is not a whole
    number or does not increase, a value that is not a number, a last line without its newline
    (a row cut short by a kill). When the header is missing, rows with as many fields as
    ``columns`` are read in that order. Lines longer than 64 KiB are skipped without being held
    in memory.
    """
    path = Path(path)
    if not path.is_file():
        return []
    header, kept, last = columns, [], 0
    with open(path, encoding="utf-8", errors="replace", newline="") as file:
        for number, line in enumerate(_lines(file)):
            row = None if line is None else _fields(line)
            if number == 0 and row is not None and row[:1] == ["step"]:
                header = row
                continue
            if row is None or header is None or len(row) != len(header):
                continue
            try:
                values = {key: float(value) for key, value in zip(header, row, strict=True)}
                step = int(row[0])
            except ValueError:
                continue
            if last < step <= up_to:
                kept.append({**values, "step": step})
                last = step
    return kept


MAX_LINE = 65536


def _lines(file) -> Iterator[str | None]:
    """Each whole line of ``file``; None for a line over MAX_LINE characters (read in pieces
    and dropped) and for a last line that does not end in a newline."""
    while True:
        line = file.readline(MAX_LINE + 1)
        if not line:
            return
        if line.endswith(("\n", "\r")):
            yield line
            continue
        if len(line) <= MAX_LINE:  # the end of the file, inside a row
            yield None
            return
        while line and not line.endswith(("\n", "\r")):  # the rest of an overlong line
            line = file.readline(MAX_LINE + 1)
        yield None


def _fields(line: str) -> list[str] | None:
    """The comma-separated fields of one line; None for a line that is not a CSV row.

    Each line is parsed alone, so a stray quote or a NUL byte costs one row, never the rest.
    """
    if "\0" in line or len(line) > MAX_LINE:
        return None
    try:
        rows = list(csv.reader([line.rstrip("\r\n")]))
    except csv.Error:
        return None
    return rows[0] if len(rows) == 1 else None


class LossMeter:
    """The (D, G) losses of the steps since the last log row, kept on the device.

    Reading a loss makes the host wait for the device; the meter reads them once per row.
    """

    def __init__(self) -> None:
        self._losses: list[torch.Tensor] = []
        self._checked = 0  # how many of them are known to be finite

    def __len__(self) -> int:
        return len(self._losses)

    def add(self, losses: torch.Tensor) -> None:
        """One step's (2,) tensor: D loss, G loss."""
        self._losses.append(losses)

    def first_non_finite(self) -> tuple[int, float, float] | None:
        """(steps back from the latest, D loss, G loss) of the first unchecked NaN or inf."""
        unchecked = self._losses[self._checked :]
        self._checked = len(self._losses)
        if not unchecked:
            return None
        losses = torch.stack(unchecked)  # (steps, 2)
        bad = (~torch.isfinite(losses)).any(dim=1)
        if not bad.any():
            return None
        first = int(bad.int().argmax())
        d_loss, g_loss = losses[first].tolist()
        return len(losses) - 1 - first, d_loss, g_loss

    def mean_and_clear(self) -> tuple[float, float]:
        """The mean D and G loss over the steps held; the meter starts again empty."""
        d_loss, g_loss = torch.stack(self._losses).mean(0).tolist()
        self._losses, self._checked = [], 0
        return d_loss, g_loss


class RunLog:
    """``<out>/log.csv`` (appended and flushed row by row) and, when installed, TensorBoard.

    ``step`` is where the run starts: 0 starts a new log; a resumed run keeps the readable rows
    up to its step (see :func:`read_log`) and drops the others.
    """

    def __init__(self, out: Path, columns: list[str], *, step: int, tensorboard: bool) -> None:
        self.path = Path(out) / LOG_NAME
        self.columns = columns
        kept = read_log(self.path, columns, up_to=step) if step > 0 else []
        text = io.StringIO(newline="")
        writer = csv.DictWriter(
            text, fieldnames=columns, extrasaction="ignore", lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(kept)
        atomic_write(self.path, text.getvalue().encode())
        self.file = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(
            self.file, fieldnames=columns, extrasaction="ignore", lineterminator="\n"
        )
        self.board = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                pass
            else:
                self.board = SummaryWriter(str(Path(out) / "tensorboard"), purge_step=step + 1)

    def write(self, row: dict) -> None:
        try:
            self.writer.writerow(row)
            self.file.flush()
        except OSError as error:  # a full disk, a folder gone
            raise OSError(
                error.errno, f"cannot write the training log {self.path}: {error.strerror}"
            ) from error
        if self.board is not None:
            for key, value in row.items():
                if key != "step":
                    self.board.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self.file.close()
        if self.board is not None:
            self.board.close()


def network_scalars(generator: nn.Module, discriminator: nn.Module) -> dict[str, float]:
    """``gamma/G.<layer>`` (each attention layer's residual weight) and ``sigma/G.<layer>``
    (each spectral-norm layer's estimate of its weight's largest singular value), G's then D's.
    """
    networks = (("G", generator), ("D", discriminator))
    gammas = {
        f"gamma/{tag}.{name}": float(layer.gamma.detach().float().reshape(-1)[0])
        for tag, net in networks
        for name, layer in attention_layers(net)
    }
    sigmas = {
        f"sigma/{tag}.{name}": float(value)
        for tag, net in networks
        for name, value in spectral_sigmas(net).items()
    }
    return {**gammas, **sigmas}


def in_notebook() -> bool:
    """True inside a Jupyter kernel (the book's notebooks), where stderr is not a terminal."""
    shell = sys.modules.get("IPython")
    ipython = getattr(shell, "get_ipython", lambda: None)()
    return type(ipython).__name__ == "ZMQInteractiveShell"


def progress_bar(total: int, initial: int, enabled: bool) -> tqdm:
    """A text progress bar on stderr: on a terminal, or in a notebook; off in a log file.

    In a terminal it redraws freely. In a notebook every redraw stays in the cell's output (a
    built book shows each one as a line), so there it redraws at each tenth of the run only.
    """
    terminal = sys.stderr.isatty()
    redraw = (
        {"mininterval": 0.1} if terminal else {"mininterval": 0, "miniters": max(1, total // 10)}
    )
    return tqdm(
        total=total,
        initial=initial,
        desc="train",
        dynamic_ncols=True,
        disable=not (enabled and (terminal or in_notebook())),
        **redraw,
    )
