"""The command line: ``python -m sagan_tutorial train | sample | evaluate | export | bench``.

Every option of :class:`~sagan_tutorial.train.TrainConfig` and of the networks'
:class:`~sagan_tutorial.models.GANConfig` is a flag of ``train``. Wrong flags, missing files and
impossible settings end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

from .models import GANConfig
from .train import (
    CHECKPOINT_NAME,
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    load_checkpoint,
    load_generator,
    resolve_device,
    save_grid,
)

__all__ = ["main"]

# The networks' options, as the train command shows them (GANConfig documents them in comments).
MODEL_HELP = {
    "image_size": "image side in pixels: 32, 64 or 128",
    "channels": "image channels: 1 (grey) or 3 (RGB)",
    "z_dim": "length of the noise vector z",
    "g_width": "channels of G at its largest feature map",
    "d_width": "channels of D at its largest feature map",
    "g_attention": "feature-map sizes with attention in G, e.g. 8,16 ('none': no attention; "
    "the default depends on the image size)",
    "d_attention": "the same for D",
    "sn": "spectral-norm placement: 'port' (not on the last layers) or 'all'",
    "num_classes": "0: unconditional; 10 for conditional MNIST (conditional BN, projection D)",
    "attention_backend": "'auto', 'bmm', 'einsum', 'sdpa' or 'blocked' (same numbers)",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        self.exit(2, f"error: {self.prog}: {message}\n")


def _sizes(text: str) -> tuple[int, ...]:
    """'8,16' -> (8, 16); 'none' or '' -> () (no attention)."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated feature-map sizes such as 8,16 or 'none', got {text!r}"
        ) from None


def _add_dataclass_options(group, cls, helps: dict[str, str], defaults) -> None:
    """A flag for every field of ``cls``; defaults are SUPPRESSed so that only given flags count."""
    for f in fields(cls):
        if f.name == "model":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help = f"{helps.get(f.name) or f.metadata.get('help', '')} (default: {shown})"
        if f.type == "bool":
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help
            )
        elif f.name in ("g_attention", "d_attention"):
            group.add_argument(
                flag, type=_sizes, default=argparse.SUPPRESS, metavar="SIZES", help=help
            )
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            group.add_argument(
                flag, type=kind, default=argparse.SUPPRESS, metavar=f.name.upper(), help=help
            )


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m sagan_tutorial",
        description="Train, sample, evaluate and benchmark the SAGAN of the book.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser(
        "train",
        help="train a GAN (defaults: 32x32 MNIST on a CPU)",
        description="Train a SAGAN. Under torchrun: several processes.",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help=f"continue from <out>/{CHECKPOINT_NAME} (its options; only --steps, "
        "--device and the logging options may change)",
    )
    defaults = TrainConfig()
    _add_dataclass_options(train.add_argument_group("training"), TrainConfig, {}, defaults)
    _add_dataclass_options(
        train.add_argument_group("networks"), GANConfig, MODEL_HELP, defaults.model
    )
    train.set_defaults(run=_train)

    sample = commands.add_parser("sample", help="save a grid of samples from a checkpoint")
    sample.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint.pt")
    sample.add_argument("--out", type=Path, default=Path("samples.png"), help="PNG to write")
    sample.add_argument(
        "--n", type=int, default=64, help="images (conditional, without --class: per class row)"
    )
    sample.add_argument("--seed", type=int, default=0, help="seed of the noise")
    sample.add_argument(
        "--class",
        dest="label",
        type=int,
        default=None,
        help="conditional models: only this class (default: a row per class)",
    )
    sample.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="use the EMA generator (default) or G itself",
    )
    sample.add_argument("--device", default="auto", help="'auto' or a torch device")
    sample.set_defaults(run=_sample)

    evaluate = commands.add_parser("evaluate", help="FID and KID of a checkpoint's EMA generator")
    evaluate.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint.pt")
    evaluate.add_argument(
        "--n", type=int, default=1000, help="samples and held-out digits to compare (at most 1000)"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the noise")
    evaluate.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="evaluate the EMA generator (default) or G itself",
    )
    evaluate.add_argument("--device", default="auto", help="'auto' or a torch device")
    evaluate.set_defaults(run=_evaluate)

    export = commands.add_parser(
        "export",
        help="write a checkpoint's EMA generator as a small pretrained file",
        description="Write the EMA generator of a trainer checkpoint, its config and metadata "
        "(step, seed, training command, figures) as a pretrained file that "
        "sagan_tutorial.pretrained(NAME) loads.",
    )
    export.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint.pt")
    export.add_argument("--name", required=True, help="e.g. sagan-mnist32")
    export.add_argument(
        "--out",
        type=Path,
        help="the file to write (default: weights/NAME.pt "
        "inside the package, where pretrained(NAME) finds it)",
    )
    export.add_argument(
        "--evaluate",
        action="store_true",
        help="measure FID and KID (as the evaluate command does, seed 0) and the "
        "real-vs-real floor, and record them",
    )
    export.add_argument(
        "--command",
        help="the training command to record (default: rebuilt from the checkpoint's config)",
    )
    export.add_argument("--notes", default="", help="free text to record")
    export.add_argument(
        "--metric",
        type=_metric,
        action="append",
        default=[],
        metavar="NAME=NUMBER",
        help="a figure measured elsewhere to record (repeatable)",
    )
    export.add_argument("--device", default="auto", help="'auto' or a torch device (--evaluate)")
    export.set_defaults(run=_export)

    bench = commands.add_parser(
        "bench",
        help="training steps per second: default vs plain",
        description="Steps per second of the default training against "
        "the same model with the 'bmm' attention and no "
        "other speed-ups, measured in the same run.",
    )
    bench.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    bench.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="measurements per variant, interleaved (the best is kept)",
    )
    bench.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"images per step (default: {defaults.batch_size})",
    )
    bench.add_argument("--device", default="auto", help="'auto' or a torch device")
    bench.add_argument("--quick", action="store_true", help="a tiny model, for a smoke test")
    bench.set_defaults(run=_bench)
    return parser


def _given(args: argparse.Namespace, cls) -> dict:
    return {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}


def _train(args: argparse.Namespace) -> int:
    options, network = _given(args, TrainConfig), _given(args, GANConfig)
    if args.resume:
        # Start from the checkpoint's options: only the flags given on this command line change.
        out = Path(options.get("out", TrainConfig.out))
        saved = TrainConfig.from_dict(load_checkpoint(out / CHECKPOINT_NAME)["config"])
        config = replace(saved, **options, model=replace(saved.model, **network))
    else:
        config = TrainConfig(model=GANConfig(**network), **options)
    trainer = Trainer(config, resume=args.resume)
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
        print(
            f"step {result.step}: {result.checkpoint}, samples in {result.out / 'samples'}, "
            f"{result.steps_per_second:.2f} steps/s, {result.seconds:.0f} s"
        )
    return 0


def _sample(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    device = resolve_device(args.device)
    generator = load_generator(args.checkpoint, ema=args.ema, device=device)
    classes = generator.config.num_classes
    noise = torch.Generator().manual_seed(args.seed)
    if args.label is not None and not classes:
        raise ValueError("--class needs a conditional model; this one has num_classes=0")
    if args.label is not None and not 0 <= args.label < classes:
        raise ValueError(
            f"--class must be a class of this conditional model (0 to "
            f"{classes - 1}), got {args.label}"
        )
    if classes and args.label is None:  # one row per class
        labels = torch.arange(classes).repeat_interleave(args.n)
        columns = args.n
    else:
        labels = torch.full((args.n,), args.label) if classes else None
        columns = math.ceil(math.sqrt(args.n))
    z = torch.randn(
        len(labels) if labels is not None else args.n, generator.config.z_dim, generator=noise
    )
    with torch.no_grad():
        images = generator(z.to(device), None if labels is None else labels.to(device))
    path = save_grid(images, args.out, columns)
    print(f"wrote {path} ({len(images)} samples)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .metrics import evaluate_generator, real_vs_real_floor  # torchmetrics: slow to import

    if not 4 <= args.n <= 1000:
        raise ValueError(f"--n must be between 4 and 1000 (the held-out digits), got {args.n}")
    device = resolve_device(args.device)
    generator = load_generator(args.checkpoint, ema=args.ema, device=device)
    scores = evaluate_generator(generator, "test", n=args.n, seed=args.seed, device=device)
    floor = real_vs_real_floor("test", device=device)
    which = "EMA generator" if args.ema else "generator"
    print(f"{which} of {args.checkpoint} against {scores['n']} held-out digits (test split)")
    print("| | FID | KID (x 1e3) |")
    print("|---|---|---|")
    for name, values in ((which, scores), ("real vs real (floor)", floor)):
        print(
            f"| {name} | {values['fid']:.3f} | "
            f"{values['kid_mean'] * 1e3:.3f} ± {values['kid_std'] * 1e3:.3f} |"
        )
    if "class_accuracy" in scores:
        print(f"class accuracy of the samples (digit classifier): {scores['class_accuracy']:.3f}")
    return 0


def _metric(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    try:
        if not sep or not key:
            raise ValueError
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NAME=NUMBER such as fid=0.35, got {text!r}"
        ) from None


def _export(args: argparse.Namespace) -> int:
    from . import zoo

    out = args.out or zoo.WEIGHTS / f"{zoo.check_name(args.name)}.pt"
    metrics = {}
    if args.evaluate:
        from .metrics import evaluate_generator, real_vs_real_floor

        device = resolve_device(args.device)
        generator = load_generator(args.checkpoint, ema=True, device=device)
        scores = evaluate_generator(generator, "test", seed=0, device=device)
        floor = real_vs_real_floor("test", device=device)
        for prefix, values in (("", scores), ("floor_", floor)):
            metrics[f"{prefix}fid"] = round(values["fid"], 4)
            metrics[f"{prefix}kid_x1e3"] = round(values["kid_mean"] * 1e3, 3)
            metrics[f"{prefix}kid_x1e3_std"] = round(values["kid_std"] * 1e3, 3)
        if "class_accuracy" in scores:
            metrics["class_accuracy"] = round(scores["class_accuracy"], 4)
    metrics.update(args.metric)  # figures given by hand win
    try:
        path = zoo.export(
            args.checkpoint,
            out,
            name=args.name,
            command=args.command,
            notes=args.notes,
            metrics=metrics,
        )
    except FileNotFoundError:
        raise
    except OSError as error:  # e.g. an unwritable --out
        raise ValueError(f"cannot write {out}: {error.strerror or error}") from error
    shown = ", ".join(f"{key} {value:g}" for key, value in metrics.items())
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB){'; ' + shown if shown else ''}")
    return 0


# bench: from the plain training (the port's 'bmm' attention, per-parameter Adam), each row adds
# one speed-up to the row above; the default training is marked.
BENCH_VARIANTS = (
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


def _bench(args: argparse.Namespace) -> int:
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    base = TrainConfig(device=args.device, progress=False, tensorboard=False)
    if args.quick:
        base = replace(base, model=GANConfig(g_width=16, d_width=16), batch_size=8)
    if args.batch_size is not None:
        base = replace(base, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as out:
        trainers = []
        for _, model, options in BENCH_VARIANTS:
            config = replace(base, out=out, model=replace(base.model, **model), **options)
            trainers.append(Trainer(config))
        for trainer in trainers:  # warm-up: first steps allocate and pick kernels
            trainer.train_step()
        timings = [[] for _ in trainers]
        for _ in range(args.repeats):  # interleaved, so that a busy moment hits every variant
            for trainer, measured in zip(trainers, timings, strict=True):
                measured.append(_time_steps(trainer, args.steps))
    # The best of the repeats: other programs only ever slow a measurement down.
    wall = [args.steps / min(w for w, _ in measured) for measured in timings]
    cpu = [min(c for _, c in measured) / args.steps for measured in timings]
    print(
        f"device: {trainers[0].device}, threads: {torch.get_num_threads()}, "
        f"batch {base.batch_size}, widths G {base.model.g_width} D {base.model.d_width}, "
        f"best of {args.repeats} x {args.steps} steps"
    )
    print("| variant | steps/s | vs plain | CPU s/step | vs plain |")
    print("|---|---|---|---|---|")
    for (name, _, _), rate, seconds in zip(BENCH_VARIANTS, wall, cpu, strict=True):
        print(
            f"| {name} | {rate:.2f} | {rate / wall[0]:.2f}x | {seconds:.3f} | "
            f"{cpu[0] / seconds:.2f}x |"
        )
    return 0


def _time_steps(trainer: Trainer, steps: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for ``steps`` training steps.

    CPU time counts only this process's work, so it is the steadier figure on a shared machine.
    """
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        trainer.train_step()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    trainer._pending, trainer._checked = [], 0  # losses that no log row will show
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    """Run a command; returns the exit status (2: bad arguments, files or settings)."""
    args = _build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        message = " ".join(str(error).split())  # one line
        print(f"error: {message}", file=sys.stderr)
        return 2
