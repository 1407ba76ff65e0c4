"""The command line: ``python -m sagan_tutorial train | sample | evaluate | export | bench``.

Every option of :class:`~sagan_tutorial.config.TrainConfig` and of the networks'
:class:`~sagan_tutorial.models.GANConfig` is a flag of ``train``. Each handler reads its flags and
calls the package. Wrong flags, missing files and impossible settings end with one line on
stderr and exit status 2; a run stopped by SIGINT or SIGTERM exits with 130 or 143 after saving.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import torch

from .config import (
    MAX_SEED,
    TrainConfig,
    add_flags,
    bounded_int,
    checkpoint_config,
    resumed_config,
)
from .models import GANConfig

__all__ = ["main"]

MAX_GRID = 1024  # images in one sample grid


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, as every error of the command line is."""

    def error(self, message: str):  # one line, no usage block
        self.exit(2, f"error: {self.prog}: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m sagan_tutorial",
        description="Train, sample, evaluate and benchmark the SAGAN of the book.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    device = {"default": "auto", "help": "'auto' (SAGAN_TUTORIAL_DEVICE, else CUDA, else CPU), "
              "'cpu', 'cuda', 'cuda:N' or 'mps'"}  # fmt: skip
    seed = {"type": bounded_int(0, MAX_SEED), "default": 0, "help": "seed of the noise"}
    overwrite = {"action": "store_true", "help": "replace what is there already"}

    train = commands.add_parser(
        "train",
        help="train a GAN (defaults: 32x32 MNIST)",
        description="Train a SAGAN. Under torchrun: several processes.",
    )
    start = train.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (its options; only --steps, --device and the logging "
        "options may change)",
    )
    start.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    defaults = TrainConfig()
    add_flags(train.add_argument_group("training"), TrainConfig, defaults)
    add_flags(train.add_argument_group("networks"), GANConfig, defaults.model)
    train.set_defaults(run=_train)

    sample = commands.add_parser("sample", help="save a grid of samples from a checkpoint")
    sample.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint.pt")
    sample.add_argument("--out", type=Path, default=Path("samples.png"), help="image to write")
    sample.add_argument(
        "--n", type=bounded_int(1, MAX_GRID), default=64,
        help=f"images, at most {MAX_GRID} (conditional, without --class: per class row)",
    )  # fmt: skip
    sample.add_argument("--seed", **seed)
    sample.add_argument(
        "--class", dest="label", type=int, default=None,
        help="conditional models: only this class (default: a row per class)",
    )  # fmt: skip
    sample.add_argument(
        "--ema", action=argparse.BooleanOptionalAction, default=True,
        help="use the EMA generator (default) or G itself",
    )  # fmt: skip
    sample.add_argument("--overwrite", **overwrite)
    sample.add_argument("--device", **device)
    sample.set_defaults(run=_sample)

    evaluate = commands.add_parser(
        "evaluate", help="FID and KID of a checkpoint's generator, with intervals and the floor"
    )
    evaluate.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint.pt")
    _evaluation_options(evaluate, seed, device)
    evaluate.add_argument(
        "--ema", action=argparse.BooleanOptionalAction, default=True,
        help="evaluate the EMA generator (default) or G itself",
    )  # fmt: skip
    evaluate.set_defaults(run=_evaluate)

    export = commands.add_parser(
        "export",
        help="write a checkpoint's EMA generator as a small pretrained file",
        description="Write the EMA generator of a trainer checkpoint, its config and metadata "
        "(step, seed, training command, figures) as a file that "
        "sagan_tutorial.pretrained(PATH) loads.",
    )
    export.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint.pt")
    export.add_argument("--name", required=True, help="e.g. sagan-mine")
    export.add_argument("--out", type=Path, help="the file to write (default: NAME.pt here)")
    export.add_argument("--overwrite", **overwrite)
    export.add_argument(
        "--evaluate", action="store_true",
        help="measure FID and KID with intervals and the floor (as evaluate does) and record them",
    )  # fmt: skip
    _evaluation_options(export, seed, device)
    export.add_argument(
        "--command",
        help="the training command to record (default: rebuilt from the checkpoint's config)",
    )
    export.add_argument("--notes", default="", help="free text to record")
    export.add_argument(
        "--metric", type=_metric, action="append", default=[], metavar="NAME=NUMBER",
        help="a figure measured elsewhere to record (repeatable)",
    )  # fmt: skip
    export.set_defaults(run=_export)

    bench = commands.add_parser(
        "bench",
        help="training steps per second: default vs plain",
        description="Steps per second of the default training against the same model with the "
        "'bmm' attention and no other speed-ups, measured in the same run.",
    )
    bench.add_argument("--steps", type=bounded_int(1, 10**6), default=10, help="timed steps")
    bench.add_argument(
        "--repeats", type=bounded_int(1, 1000), default=3,
        help="measurements per variant, interleaved (the best is kept)",
    )  # fmt: skip
    bench.add_argument(
        "--batch-size", type=int, default=None,
        help=f"images per step (default: {defaults.batch_size})",
    )  # fmt: skip
    bench.add_argument("--device", **device)
    bench.add_argument("--quick", action="store_true", help="a tiny model, for a smoke test")
    bench.set_defaults(run=_bench)
    return parser


def _evaluation_options(parser, seed: dict, device: dict) -> None:
    parser.add_argument(
        "--n", type=int, default=1000,
        help="generated and held-out images to compare (at most the held-out split's size)",
    )  # fmt: skip
    parser.add_argument("--seed", **seed)
    parser.add_argument(
        "--features", choices=("digits", "inception"), default="digits",
        help="the feature space: the shipped digit classifier (32x32 grey digits) or the "
        "FID Inception-v3 network (any images; needs its weights file)",
    )  # fmt: skip
    parser.add_argument(
        "--inception-weights", type=Path, default=None,
        help="pt_inception-2015-12-05-6726825d.pth (default: torch's hub cache)",
    )  # fmt: skip
    parser.add_argument(
        "--dataset", default=None,
        help="the real images (default: the data set the checkpoint was trained on)",
    )  # fmt: skip
    parser.add_argument("--device", **device)


def _given(args: argparse.Namespace, cls) -> dict:
    return {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}


def _train(args: argparse.Namespace) -> int:
    from .checkpoint import CHECKPOINT_NAME, load_checkpoint
    from .train import NonFiniteLossError, Trainer

    options, network = _given(args, TrainConfig), _given(args, GANConfig)
    if args.resume:  # the checkpoint's options; only the flags given here change
        path = Path(options.get("out", TrainConfig.out)) / CHECKPOINT_NAME
        saved = checkpoint_config(load_checkpoint(path), path)
        config = resumed_config(saved, {**options, **network}, path)
    else:
        config = TrainConfig(model=GANConfig(**network), **options)
    trainer = Trainer(config, resume=args.resume, overwrite=args.overwrite)
    if trainer.processes.main:
        print(
            f"training to step {config.steps} from step {trainer.step} on {trainer.device}; "
            f"writing {trainer.out}",
            file=sys.stderr,
        )
    try:
        result = trainer.fit()
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if trainer.processes.main:
        if result.stopped_by:
            print(
                f"stopped by {result.stopped_by} at step {result.step}; saved "
                f"{result.checkpoint} (continue with --resume)",
                file=sys.stderr,
            )
        samples = f", samples in {result.out / 'samples'}" if config.sample_every else ""
        speed = f", {result.steps_per_second:.2f} steps/s" if result.log else ""
        print(f"step {result.step}: {result.checkpoint}{samples}{speed}, {result.seconds:.0f} s")
    return result.exit_status


def _sample(args: argparse.Namespace) -> int:
    from .checkpoint import load_generator
    from .grids import check_image_path, save_grid

    out = check_image_path(args.out, overwrite=args.overwrite)
    generator = load_generator(args.checkpoint, ema=args.ema, device=args.device)
    classes = generator.config.num_classes
    if args.label is not None and not classes:
        raise ValueError("--class needs a conditional model; this one has num_classes=0")
    if args.label is not None and not 0 <= args.label < classes:
        raise ValueError(
            f"--class must be a class of this conditional model (0 to {classes - 1}), "
            f"got {args.label}"
        )
    if classes and args.label is None:  # one row per class
        labels, columns = torch.arange(classes).repeat_interleave(args.n), args.n
        if len(labels) > MAX_GRID:
            raise ValueError(
                f"--n {args.n} per class makes {len(labels)} images; at most {MAX_GRID}"
            )
    else:
        labels = torch.full((args.n,), args.label) if classes else None
        columns = math.ceil(math.sqrt(args.n))
    images = generator.sample(len(labels) if classes else args.n, labels, seed=args.seed)
    path = save_grid(images, out, columns, overwrite=args.overwrite)
    print(f"wrote {path} ({len(images)} samples)")
    return 0


def _report(args: argparse.Namespace, generator, dataset: str):
    from .metrics import check_sample_size, evaluation_report

    dataset = args.dataset or dataset
    check_sample_size(args.n, dataset)
    return evaluation_report(
        generator, dataset=dataset, n=args.n, seed=args.seed, features=args.features,
        inception_weights=args.inception_weights, device=args.device,
    )  # fmt: skip


def _evaluate(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint, load_generator
    from .metrics import format_report

    dataset = checkpoint_config(load_checkpoint(args.checkpoint), args.checkpoint).dataset
    generator = load_generator(args.checkpoint, ema=args.ema, device=args.device)
    report = _report(args, generator, dataset)
    which = "EMA generator" if args.ema else "generator"
    print(format_report(report, f"{which} of {args.checkpoint}"))
    return 0


def _metric(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    try:
        number = float(value)
        if not sep or not key or not math.isfinite(number):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NAME=NUMBER with a finite number, such as fid=0.35, got {text!r}"
        ) from None
    return key, number


def _export(args: argparse.Namespace) -> int:
    from . import zoo
    from .checkpoint import load_checkpoint, load_generator
    from .config import train_command

    zoo.check_name(args.name)
    out = args.out or Path(f"{args.name}.pt")
    config = checkpoint_config(load_checkpoint(args.checkpoint), args.checkpoint)
    metrics = {}
    if args.evaluate:
        generator = load_generator(args.checkpoint, device=args.device)
        report = _report(args, generator, config.dataset)
        metrics = {
            key: value
            for key, value in report.items()
            if isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
        }
    metrics.update(args.metric)  # figures given by hand win
    path = zoo.export(
        args.checkpoint, out, name=args.name, command=args.command or train_command(config),
        notes=args.notes, metrics=metrics, overwrite=args.overwrite,
    )  # fmt: skip
    shown = ", ".join(f"{key} {value:g}" for key, value in metrics.items())
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB){'; ' + shown if shown else ''}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .bench import bench, format_bench

    base = TrainConfig(device=args.device, progress=False, tensorboard=False)
    if args.quick:
        base = replace(base, model=GANConfig(g_width=16, d_width=16), batch_size=8)
    if args.batch_size is not None:
        base = replace(base, batch_size=args.batch_size)
    rows = bench(base, steps=args.steps, repeats=args.repeats)
    print(format_bench(rows, base, steps=args.steps, repeats=args.repeats))
    return 0


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, MemoryError | torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError)
        and ("can't allocate memory" in text or "DefaultCPUAllocator" in text)
    )


def main(argv: list[str] | None = None) -> int:
    """Run a command; returns the exit status (2: bad arguments, files or settings)."""
    command = []

    def body() -> int:
        args = _build_parser().parse_args(argv)
        command.append(args.run.__name__.strip("_"))
        return args.run(args)

    def hint() -> str:
        small_batch = command and command[0] in ("train", "bench")
        return "a smaller --batch-size" if small_batch else "fewer images with --n"

    return guarded(body, hint)


def guarded(body: Callable[[], int], hint: Callable[[], str]) -> int:
    """``body()``'s exit status, with every expected failure as one line on stderr: 130 for
    Ctrl-C, 2 for bad arguments, files or settings and for out of memory (``hint()`` says what
    to ask for less of); anything else is a bug and keeps its traceback."""
    for stream in (sys.stdout, sys.stderr):  # a path that is not UTF-8 must not fail a print
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    show = warnings.showwarning
    warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
    try:
        return body()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError) as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:  # ours carry a message; the system's an errno and a file name
        if error.errno is None or error.strerror is None:
            message = _one_line(error)
        else:
            where = f"{error.filename}: " if error.filename else ""
            message = f"{where}{error.strerror}"
        print(f"error: {message}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as error:
        if not _out_of_memory(error):
            raise
        print(f"error: out of memory (try {hint()}): {_one_line(error)[:200]}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = show
