"""Files written safely and read safely: the ground floor of checkpoints and pretrained files.

Writing (:func:`atomic_write`): the bytes go to a temporary file created exclusively under a
random name in the target's folder (so a planted link is never followed), are synced to disk,
and replace the old file in one rename, after which the folder itself is synced. A crash at any
moment leaves either the old file or the new one, whole.

Reading (:func:`read_torch_file`): ``torch.load(weights_only=True)``, which reads tensors and
plain values only and so cannot run code, with one-line errors that name the file.

A run folder (:func:`claim_run_folder`, :class:`RunLock`) holds one run: a trainer locks it for
as long as it writes there, and a folder that holds a run is not reused without saying so.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # not on Windows: there the run folder is not locked
    fcntl = None

__all__ = [
    "RUN_FILES",
    "RunExistsError",
    "RunFolderBusyError",
    "RunLock",
    "atomic_write",
    "claim_run_folder",
    "clear_run",
    "first_non_finite",
    "read_torch_file",
    "tensors_in",
]

LOCK_NAME = ".lock"
# What a run writes into its folder; overwriting a run removes exactly these.
RUN_FILES = ("checkpoint.pt", "log.csv", "replicas.txt", "samples", "tensorboard")


class RunFolderBusyError(ValueError):
    """Another process holds the lock of a run folder."""


class RunExistsError(ValueError):
    """The run folder already holds a run, and neither resume nor overwrite was asked for."""


def atomic_write(
    path: str | os.PathLike, data: bytes | memoryview, *, overwrite: bool = True
) -> Path:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, whole.

    The temporary file is created with O_EXCL under a random name in the target's folder (so a
    planted symlink is never followed), synced, then renamed over ``path``; the folder is synced
    after the rename. With ``overwrite=False`` an existing ``path`` is a FileExistsError, checked
    atomically (the file is linked into place, which fails if the name is taken).
    """
    path = Path(path)
    temp = None
    try:
        descriptor, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; use the usual mode
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if overwrite:
            os.replace(temp, path)
        else:
            os.link(temp, path)  # FileExistsError if the name is taken, even by a dangling link
            os.unlink(temp)
    except BaseException as error:
        if temp is not None:
            Path(temp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno is not None:
            # name the file asked for, not the temporary one
            raise type(error)(error.errno, error.strerror, str(path)) from None
        raise
    _sync_folder(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def tensors_in(value, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(dotted name, tensor) for every tensor in nested dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from tensors_in(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from tensors_in(item, f"{prefix}.{i}" if prefix else str(i))


def _elements(tensor: torch.Tensor) -> torch.Tensor:
    """The numbers ``tensor`` reads: itself, or, where it reads its storage more than once (a
    stride of 0, as ``expand`` makes), the storage itself, so that checking a hostile
    (1,) -> (2**40,) tensor costs one number, not terabytes."""
    storage = tensor.untyped_storage()
    stored = storage.nbytes() // tensor.element_size()
    if tensor.numel() <= stored:
        return tensor
    return torch.empty(0, dtype=tensor.dtype, device=tensor.device).set_(storage, 0, (stored,))


def first_non_finite(value) -> str | None:
    """The name of the first floating-point tensor in ``value`` with a NaN or inf, else None."""
    for name, tensor in tensors_in(value):
        if tensor.is_floating_point() and not bool(torch.isfinite(_elements(tensor)).all()):
            return name
    return None


def read_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> object:
    """``torch.load(path, weights_only=True)`` onto the CPU, with one-line errors naming the file.

    FileNotFoundError when there is no such file; ValueError when it cannot be read that way (a
    pickle that would run code, a truncated file, anything else but tensors and plain values).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols: noise to a reader
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{path} is not a {what} that can be read safely: torch.load(weights_only=True) "
            f"failed with {_refusal(error)}"
        ) from None


def _refusal(error: Exception) -> str:
    """The error's type and the line of torch's text that says what it refused.

    torch's message spans many lines and advises loading the file unsafely
    (``weights_only=False``); only the line that names what was refused is kept, e.g.
    "UnpicklingError: Unsupported global: GLOBAL posix.system".
    """
    advice = (
        "Weights only load failed",
        "(1)",
        "(2)",
        "Check the documentation",
        "WeightsUnpickler",
    )
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(advice) and "weights_only" not in line]
    return type(error).__name__ + (f": {said[0].split('. ')[0][:160]}" if said else "")


# ----------------------------------------------------------------------------------------------
# the run folder's lock


class RunLock:
    """An exclusive lock on a run folder (``<folder>/.lock``) while one process writes there.

    ``acquire()`` raises :class:`RunFolderBusyError` naming the process that holds it. The lock
    is the operating system's (``flock``): it ends with the process, however that ends, so a
    killed run never leaves the folder locked. Not available on Windows (no lock there).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._descriptor: int | None = None
        self.created = False  # set by claim_run_folder when it made the folder

    def abandon(self) -> None:
        """Release the lock after a failed start: a folder that was made for the run and holds
        nothing but the lock file is removed again."""
        self.release()
        if self.created:
            try:
                (self.folder / LOCK_NAME).unlink(missing_ok=True)
                self.folder.rmdir()  # only if empty: anything else stays
            except OSError:
                pass

    def acquire(self) -> RunLock:
        if fcntl is None or self._descriptor is not None:
            return self
        path = self.folder / LOCK_NAME
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            descriptor = os.open(path, flags, 0o644)
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise
            raise ValueError(
                f"{path} is a symbolic link: the run folder's lock must be a plain file "
                "(remove the link)"
            ) from None
        try:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise ValueError(f"{path} is not a regular file: cannot lock the run folder")
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise RunFolderBusyError(
                f"another run (process {holder}) is using {self.folder}: wait for it to end, "
                "or use another --out"
            ) from None
        except BaseException:
            os.close(descriptor)
            raise
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        self._descriptor = descriptor
        return self

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the file ends the lock
            self._descriptor = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


# The temporary files the package's writers leave when killed: ".<name>.<8 random>.tmp".
_TEMPORARY = re.compile(r"\.(checkpoint\.pt|log\.csv|replicas\.txt|step_\d{6}\.png)\.\w{8}\.tmp")
_GRID = re.compile(r"step_\d{6}\.png")


def claim_run_folder(out: Path, *, resume: bool, overwrite: bool, main: bool = True) -> RunLock:
    """Create and lock the run folder ``out`` for a trainer; returns the held lock.

    A folder that holds a run (any of :data:`RUN_FILES`) is refused with
    :class:`RunExistsError` unless the run is continued (``resume``) or to be replaced
    (``overwrite``: :func:`clear_run` removes it once the new run has been set up). Temporary
    files that a killed run of the package left are removed once the lock is held, and nothing
    else. Only the main process (rank 0) writes files: the others get a lock that holds nothing.
    """
    lock = RunLock(out)
    if not main:
        return lock
    lock.created = not os.path.lexists(out)
    if not lock.created and not out.is_dir():
        raise ValueError(f"{out} is not a folder: expected a folder for the run's files")
    out.mkdir(parents=True, exist_ok=True)
    lock.acquire()
    try:
        existing = [out / name for name in RUN_FILES if os.path.lexists(out / name)]
        if existing and not resume and not overwrite:
            names = ", ".join(path.name for path in existing)
            raise RunExistsError(
                f"{out} already holds a run ({names}): continue it with --resume (resume=True), "
                "or start over with another --out or with --overwrite (overwrite=True)"
            )
        for folder in (out, out / "samples"):  # nobody else writes here while the lock is held
            if folder.is_dir() and not folder.is_symlink():
                for stale in folder.iterdir():
                    if _TEMPORARY.fullmatch(stale.name) and stale.is_file():
                        stale.unlink(missing_ok=True)
    except BaseException:
        lock.abandon()
        raise
    return lock


def clear_run(out: Path) -> None:
    """Remove what a run of the package wrote into ``out`` and nothing else: checkpoint.pt,
    log.csv, replicas.txt, the sample grids ``samples/step_NNNNNN.png`` and TensorBoard's event
    files; the two folders go too when that leaves them empty (a link is removed, not followed).
    """
    for name in ("checkpoint.pt", "log.csv", "replicas.txt"):
        path = out / name
        if path.is_symlink() or path.is_file():
            path.unlink()
    for name, pattern in (("samples", _GRID), ("tensorboard", re.compile(r"events\.out\..*"))):
        folder = out / name
        if folder.is_symlink():
            folder.unlink()
        elif folder.is_dir():
            for path in folder.iterdir():
                if pattern.fullmatch(path.name) and (path.is_file() or path.is_symlink()):
                    path.unlink()
            if not any(folder.iterdir()):
                folder.rmdir()
