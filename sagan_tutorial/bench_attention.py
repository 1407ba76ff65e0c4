"""Time and peak memory of every SelfAttention2d backend, as ratios to "bmm" from the same run.

    python -m sagan_tutorial.bench_attention        # CPU, and CUDA when present
    python -m sagan_tutorial.bench_attention --device cpu --repeats 9
    python -m sagan_tutorial.bench_attention --case 32,64,16 --keep-freed
    python benchmarks/attention.py                  # the same, from a clone

For each feature-map size the whole layer (three 1x1 convs, attention, residual) runs forward and
backward (gradients of the input and of every parameter), and forward alone under ``no_grad``.
Backends are run in turn within each repeat so that drift of the machine touches them alike, in a
new (seeded) order in each repeat so that none always follows the same one; the median time is
reported. Peak memory is what the step allocates above the tensors that exist
before it: on CUDA from ``torch.cuda.max_memory_allocated``, on the CPU from the process's peak
resident set (``VmHWM``, reset through ``/proc/self/clear_refs``; Linux with glibc only). For the
memory pass glibc is told to hand every block over 64 KiB straight back to the system, so that the
resident set follows what is allocated; all timings are taken before that, with default settings.

Ratios are "x faster" (bmm time / backend time) and "x less memory" (bmm peak / backend peak):
above 1 is better than the original code.

``--keep-freed`` times with glibc told to serve large blocks from its heap and keep what is freed
(``mallopt``). By default glibc hands every block over its threshold (at most 32 MiB) back to the
system when it is freed, and the next allocation of that size faults its pages in again: ``bmm``,
which allocates its N x N maps afresh on every call, pays that on each step, so its time, and every
ratio against it, depends on the allocator. Even so the heap can fragment when backends of
different sizes alternate, and a call then faults part of a map in again, which the median over
repeats damps. ``--case SIZE,CHANNELS,BATCH`` (repeatable) measures only the cases given.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import random
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .attention import SelfAttention2d
from .cli import Parser, guarded
from .config import bounded_int

__all__ = [
    "CASES",
    "QUICK_CASES",
    "Row",
    "allocator_settable",
    "device_name",
    "format_table",
    "keep_freed_memory",
    "main",
    "measure",
    "peak_memory",
]

# (height = width, channels, batch): the feature maps where SAGAN puts attention.
CASES = [(8, 64, 32), (16, 64, 16), (32, 64, 16), (64, 32, 4)]
MAX_CASE = (512, 4096, 4096)  # bounds of --case's three numbers
MAX_MAP = 1 << 28  # and of B * N * N, the floats of one attention map (1 GiB)
MAX_REPEATS = 1000
QUICK_CASES = [(8, 16, 2), (12, 8, 2)]
NAMES = ("bmm", "einsum", "sdpa", "blocked", "auto")


def _proc_bytes(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) * 1024


_LIBC = None
_KEPT = False  # keep_freed_memory() has run


def _glibc():
    """The C library if it is glibc (it has mallopt and malloc_trim), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except (OSError, TypeError):
        return None


def allocator_settable() -> bool:
    """Whether the C library is glibc, whose allocator keep_freed_memory() can set."""
    return _glibc() is not None


def keep_freed_memory() -> bool:
    """Have glibc serve every block from its heap and keep freed memory; False if refused.

    Call it before timing: from then on a tensor allocated again after being freed reuses memory
    whose pages are already mapped, as a caching allocator (CUDA's, jemalloc, tcmalloc) would.
    """
    global _KEPT
    libc = _glibc()
    if libc is None:
        return False
    # M_MMAP_MAX (-4) 0: no block gets a mapping of its own; M_TRIM_THRESHOLD (-1): never give
    # the heap's free top back. mallopt returns 1 on success.
    _KEPT = bool(libc.mallopt(-4, 0)) and bool(libc.mallopt(-1, 2**31 - 1))
    return _KEPT


def _cpu_peak_supported() -> bool:
    """Make the resident set follow allocations (glibc), and check that its peak can be reset."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = _glibc()
            if _LIBC is None:
                raise OSError("not glibc")
            Path("/proc/self/clear_refs").write_text("5")
            _proc_bytes("VmHWM")
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:  # (again after keep_freed_memory, which turns these off)
        _LIBC.mallopt(-4, 65536)  # M_MMAP_MAX, glibc's default: large blocks may be mapped
        _LIBC.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: large blocks come from mmap
        _LIBC.mallopt(-1, 64 * 1024)  # M_TRIM_THRESHOLD: give freed heap back promptly
    return bool(_LIBC)


def peak_memory(fn, device: torch.device) -> float | None:
    """Bytes allocated at the peak of ``fn()`` above what was allocated before it."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - base)
    if not _cpu_peak_supported():
        return None
    _LIBC.malloc_trim(0)
    base = _proc_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    fn()
    return float(_proc_bytes("VmHWM") - base)


def elapsed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


@dataclass
class Row:
    size: int
    channels: int
    batch: int
    backend: str
    resolved: str
    train_s: float
    train_mem: float | None
    infer_s: float
    infer_mem: float | None


def _setup(size, channels, batch, device):
    torch.manual_seed(0)
    layer = SelfAttention2d(channels).to(device)
    with torch.no_grad():
        layer.gamma.fill_(0.5)
    x = torch.randn(batch, channels, size, size, device=device, requires_grad=True)

    def train_step(name):
        def step():
            layer.backend = name
            layer(x).square().mean().backward()
            x.grad = None
            layer.zero_grad(set_to_none=True)

        return step

    def infer_step(name):
        def step():
            layer.backend = name
            with torch.no_grad():
                layer(x)

        return step

    return layer, x, train_step, infer_step


def time_case(size, channels, batch, device, repeats) -> list[Row]:
    layer, x, train_step, infer_step = _setup(size, channels, batch, device)
    times = {(name, mode): [] for name in NAMES for mode in ("train", "infer")}
    for name in NAMES:  # warm-up: allocator, kernels, lazy initialisation
        train_step(name)()
        infer_step(name)()
    for repeat in range(repeats):
        # A new order in each repeat (seeded): a backend run right after another inherits its
        # warm caches and freed blocks ("auto" right after "blocked", the same code, gains ~10%).
        for name in random.Random(repeat).sample(NAMES, len(NAMES)):
            times[name, "train"].append(elapsed(train_step(name), device))
            times[name, "infer"].append(elapsed(infer_step(name), device))
    rows = []
    for name in NAMES:
        layer.backend = name
        rows.append(
            Row(
                size,
                channels,
                batch,
                name,
                layer.resolve_backend(x),
                statistics.median(times[name, "train"]),
                None,
                statistics.median(times[name, "infer"]),
                None,
            )
        )
    return rows


def measure_memory(rows: list[Row], device: torch.device) -> None:
    """Fill in the peak memory of each row (after all timings: it changes malloc's settings)."""
    for row in rows:
        _, _, train_step, infer_step = _setup(row.size, row.channels, row.batch, device)
        row.train_mem = peak_memory(train_step(row.backend), device)
        row.infer_mem = peak_memory(infer_step(row.backend), device)


def _ratio(base: float | None, value: float | None) -> str:
    if base is None or value is None or value <= 0:
        return "n/a"
    return f"{base / value:.2f}x"


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.1f}"


def format_table(rows: list[Row], device: torch.device) -> str:
    """The device line, then two Markdown tables: time, and peak memory, each against bmm.

    A case is "size x size, C channels, batch B"; "x" ratios above 1 beat the original code.
    """
    base = {(r.size, r.channels, r.batch): r for r in rows if r.backend == "bmm"}
    time_lines = [
        "| case | backend | fwd+bwd ms | fwd+bwd speed | fwd ms | fwd speed |",
        "|" + "---|" * 6,
    ]
    memory_lines = [
        "| case | backend | fwd+bwd peak MiB | fwd+bwd memory | fwd peak MiB | fwd memory |",
        "|" + "---|" * 6,
    ]
    for r in rows:
        b = base[r.size, r.channels, r.batch]
        case = f"{r.size}x{r.size}, C {r.channels}, B {r.batch}"
        name = r.backend if r.backend != "auto" else f"auto ({r.resolved})"
        time_lines.append(
            f"| {case} | {name} | {r.train_s * 1e3:.1f} | {_ratio(b.train_s, r.train_s)} "
            f"| {r.infer_s * 1e3:.1f} | {_ratio(b.infer_s, r.infer_s)} |"
        )
        memory_lines.append(
            f"| {case} | {name} | {_mib(r.train_mem)} | {_ratio(b.train_mem, r.train_mem)} "
            f"| {_mib(r.infer_mem)} | {_ratio(b.infer_mem, r.infer_mem)} |"
        )
    device_line = (
        f"device: {device} ({device_name(device)}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
        + (", glibc keeping freed memory" if _KEPT and device.type == "cpu" else "")
    )
    return "\n\n".join([device_line, "\n".join(time_lines), "\n".join(memory_lines)])


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's vector instruction set (AVX2, AVX512, ...)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return torch.backends.cpu.get_cpu_capability()


def main(argv: list[str] | None = None) -> int:
    """Measure and print the tables; the exit status (2: bad arguments or out of memory)."""
    parser = Parser(
        prog="python -m sagan_tutorial.bench_attention", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--device",
        choices=["all", "cpu", "cuda"],
        default="all",
        help="where to measure (default: the CPU, and CUDA when present)",
    )
    parser.add_argument(
        "--repeats",
        type=bounded_int(1, MAX_REPEATS),
        default=7,
        help="timed runs per backend (median)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument(
        "--case",
        action="append",
        type=_case,
        metavar="SIZE,CHANNELS,BATCH",
        help="measure this case only (repeatable); e.g. 32,64,16",
    )
    parser.add_argument(
        "--keep-freed",
        action="store_true",
        help="time with glibc keeping freed memory (no page faults per large tensor)",
    )

    def body() -> int:
        args = parser.parse_args(argv)
        if args.quick and args.case:
            parser.error("--quick and --case choose the cases both: give one of them")
        if args.keep_freed and not keep_freed_memory():
            parser.error("--keep-freed needs glibc (Linux), whose mallopt accepts the settings")
        if args.device == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda asked for, but CUDA is not available here")
        devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
        devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
        for device in map(torch.device, devices):
            cases = list(dict.fromkeys(args.case or (QUICK_CASES if args.quick else CASES)))
            rows = measure(cases, device, args.repeats)
            print(format_table(rows, device), end="\n\n", flush=True)
        return 0

    return guarded(body, lambda: "smaller --case sizes")


def _case(text: str) -> tuple[int, int, int]:
    """'SIZE,CHANNELS,BATCH' -> (size, channels, batch), within MAX_CASE; channels >= 8."""
    parts = text.split(",")
    if len(parts) != 3 or not all(re.fullmatch(r"\s*[0-9]+\s*", p) for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected SIZE,CHANNELS,BATCH as three whole numbers, e.g. 32,64,16, got {text!r}"
        )
    case = tuple(int(p) for p in parts)
    names = ("SIZE", "CHANNELS", "BATCH")
    for name, value, low, high in zip(names, case, (1, 8, 1), MAX_CASE, strict=True):
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{name} must be in [{low}, {high}], got {value} (in {text!r})"
            )
    size, channels, batch = case
    if batch * size**4 > MAX_MAP:
        raise argparse.ArgumentTypeError(
            f"one attention map of {text!r} holds BATCH * (SIZE*SIZE)^2 = {batch * size**4:,} "
            f"floats; at most {MAX_MAP:,} (1 GiB), and bmm keeps several"
        )
    if batch * channels * size**2 > MAX_MAP:
        raise argparse.ArgumentTypeError(
            f"the input of {text!r} holds BATCH * CHANNELS * SIZE^2 = "
            f"{batch * channels * size**2:,} floats; at most {MAX_MAP:,} (1 GiB)"
        )
    return case


def measure(cases, device: torch.device, repeats: int = 7) -> list[Row]:
    """Time every backend on every (size, channels, batch) case, then measure peak memory.

    The memory pass leaves glibc handing large blocks back to the system at once, so call it
    once per process on the CPU: a second call would time with those settings.
    """
    rows = []
    for case in cases:
        rows += time_case(*case, torch.device(device), repeats)
    measure_memory(rows, torch.device(device))
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
