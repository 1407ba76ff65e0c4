"""The book's experiments: trainings that differ in one choice, over several seeds, measured alike.

An experiment is a set of *variants* (changes to the default run) trained with every seed it
names; each run's EMA generator is evaluated the same way (FID, KID and, for conditional models,
class accuracy with bootstrap intervals, against the floor at the same n; see
:func:`sagan_tutorial.metrics.evaluation_report`). Each run writes ``result.json`` in its folder,
so runs can go on in several processes at once and a killed experiment continues where it
stopped; :func:`collect` gathers them into one results file, which the chapters read::

    python -m sagan_tutorial.experiments attention --out runs/attention --seeds 0 1 2
    python -m sagan_tutorial.experiments choices --out runs/choices --seeds 0 1
    python -m sagan_tutorial.experiments gallery --out runs/gallery --seeds 0 --steps 1500

:func:`summarize` turns a results file into one row per variant: the per-seed values, their mean
and standard deviation, and a 95% interval for the mean over seeds (Student's t); two variants
differ only where the 95% interval of the difference of their means (Welch's t) excludes zero
(:func:`differs`, :func:`compare`).

The gallery trains the attention layer broken one detail at a time
(:mod:`sagan_tutorial.gallery`).
"""

from __future__ import annotations

import json
import platform
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from ._checks import MAX_SEED
from .checkpoint import CHECKPOINT_NAME, load_generator
from .cli import Parser, guarded
from .config import TrainConfig, bounded_int, train_command
from .distances import MIN_IMAGES
from .ema import standing_statistics
from .files import atomic_write
from .gallery import BROKEN, broken_networks
from .grids import save_grid
from .metrics import check_sample_size, evaluation_report
from .models import attention_layers
from .runlog import LOG_NAME, read_log
from .stats import compare, difference_interval, differs, mean_interval, summarize
from .train import Trainer

__all__ = [  # the statistics (stats.py) are here too, as the chapters use them
    "EXPERIMENTS",
    "RESULTS",
    "collect",
    "compare",
    "difference_interval",
    "differs",
    "grid_of",
    "load_results",
    "log_of",
    "mean_interval",
    "run",
    "ship",
    "summarize",
]

RESULTS = Path(__file__).parent / "results"  # the shipped results files the chapters read


# name: (what it measures, default seeds, default steps, {variant: changes})
EXPERIMENTS = {
    "attention": (
        "where attention sits (the paper's ablation, on digits)",
        (0, 1, 2),
        4000,
        {
            "default (G 8+16, D 4+8)": {},
            "8x8 only": {"g_attention": (8,), "d_attention": (8,)},
            "16x16 only": {"g_attention": (16,), "d_attention": (16,)},
            "no attention": {"g_attention": (), "d_attention": ()},
        },
    ),
    "choices": (
        "the choices of Part II, one at a time",
        (0, 1),
        2000,  # half the default length: eight runs fit in under two hours of one CPU core
        {
            "default": {},
            "no spectral norm in G": {"sn": "d"},
            "non-saturating loss": {"loss": "nonsaturating"},
            "equal learning rates (1e-4)": {"lr_d": 1e-4},
            "equal learning rates (4e-4)": {"lr_g": 4e-4},  # what the conditional model needed
        },
    ),
    "gallery": (
        "the attention layer broken one detail at a time",
        (0,),
        1500,
        {
            "correct layer": {},
            "softmax over the wrong axis": {"layer": "wrong_axis"},
            "no transpose in the second bmm": {"layer": "no_transpose"},
            "gamma starts at 1": {"layer": "gamma_one"},
            "1/sqrt(d) scale": {"layer": "scaled"},
            "no spectral norm anywhere": {"sn": "none"},
        },
    ),
}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _config(base: TrainConfig, changes: dict, seed: int, steps: int, out: Path) -> TrainConfig:
    model_fields = set(base.model.to_dict())
    model = {k: v for k, v in changes.items() if k in model_fields}
    run = {k: v for k, v in changes.items() if k not in model_fields and k != "layer"}
    return replace(
        base, model=replace(base.model, **model), seed=seed, steps=steps, out=str(out), **run
    )


def run_one(config: TrainConfig, layer: str | None, *, n: int, seed_eval: int = 0) -> dict:
    """Train one run (or finish it, after a kill) and evaluate its EMA generator."""
    out = Path(config.out)
    done = out / "result.json"
    if done.exists():
        return _read_result(done)
    networks = broken_networks(layer) if layer else None
    resume = (out / "checkpoint.pt").exists()
    started = time.perf_counter()
    trainer = Trainer(config, resume=resume, overwrite=not resume, networks=networks)
    result = trainer.fit()
    if result.stopped_by:
        raise KeyboardInterrupt(result.stopped_by)
    generator = load_generator(result.checkpoint, device=trainer.device)
    if layer and layer != "gamma_one":  # the EMA copy is a plain Generator: break it alike
        for _, attention in attention_layers(generator):
            attention.__class__ = BROKEN[layer]
            attention.backend = "bmm"
    report = evaluation_report(generator, n=n, seed=seed_eval, device=trainer.device)
    last = result.log[-max(1, len(result.log) // 4) :]  # the last quarter of the run
    record = {k: v for k, v in report.items() if isinstance(v, int | float | str)}
    record["eval_seed"] = record.pop("seed")
    record.update(
        command=train_command(config) + (f"  # attention layer: {layer}" if layer else ""),
        seed=config.seed,
        steps=result.step,
        minutes=(time.perf_counter() - started) / 60,
        d_loss_last_quarter=sum(row["d_loss"] for row in last) / len(last),
        g_loss_last_quarter=sum(row["g_loss"] for row in last) / len(last),
        gammas={k: v for k, v in result.log[-1].items() if k.startswith("gamma/")},
    )
    atomic_write(done, json.dumps(record, indent=1).encode())
    return record


def _generator(folder: Path, layer: str | None, *, ema: bool = True):
    generator = load_generator(folder / CHECKPOINT_NAME, ema=ema, device="cpu")
    if layer and layer != "gamma_one":  # the stored networks are plain: break them alike
        for _, attention in attention_layers(generator):
            attention.__class__ = BROKEN[layer]
            attention.backend = "bmm"
    return generator


def finish_run(
    folder: str | Path, layer: str | None = None, *, n: int = 1000, standing: int = 4096
) -> dict:
    """After a run: a grid of 64 EMA samples (``grid.png``) and the EMA study in result.json.

    The EMA study scores G itself and the EMA generator with BatchNorm statistics recomputed
    from its own activations (:func:`~sagan_tutorial.ema.standing_statistics`), beside the EMA
    generator as the trainer leaves it (with G's statistics), all at the same n and seed.
    """
    folder = Path(folder)
    record = json.loads((folder / "result.json").read_text())
    ema = _generator(folder, layer)
    classes = ema.config.num_classes
    if not (folder / "grid.png").exists():
        labels = torch.arange(classes).repeat_interleave(64 // classes) if classes else None
        images = ema.sample(len(labels) if classes else 64, labels, seed=0)
        save_grid(images, folder / "grid.png", 64 // classes if classes else 8)
    if "ema_study" not in record:
        raw = _generator(folder, layer, ema=False)
        noise = torch.randn(standing, ema.config.z_dim, generator=torch.Generator().manual_seed(1))
        labels = torch.arange(standing) % classes if classes else None
        standing = standing_statistics(_generator(folder, layer), noise, labels, batch_size=64)
        keys = ("fid", "fid_low", "fid_high", "class_accuracy")
        study = {}
        for name, generator in (("raw G", raw), ("EMA, standing statistics", standing)):
            report = evaluation_report(generator, n=n, seed=record.get("eval_seed", 0))
            study[name] = {k: report[k] for k in keys if k in report}
        study["EMA, G's statistics"] = {k: record[k] for k in keys if k in record}
        record["ema_study"] = study
        atomic_write(folder / "result.json", json.dumps(record, indent=1).encode())
    return record


def run(
    name: str,
    out: str | Path,
    *,
    seeds=None,
    steps: int | None = None,
    n: int = 1000,
    base: TrainConfig | None = None,
    variants: list[str] | None = None,
    standing: int = 4096,
) -> dict:
    """Every (variant, seed) run of experiment ``name`` under ``out``; returns :func:`collect`."""
    _, default_seeds, default_steps, table = EXPERIMENTS[name]
    base = base or TrainConfig(progress=False, tensorboard=False, sample_every=0)
    for variant, changes in table.items():
        if variants and variant not in variants:
            continue
        for seed in seeds if seeds is not None else default_seeds:
            folder = Path(out) / slug(variant) / f"seed{seed}"
            config = _config(base, changes, seed, steps or default_steps, folder)
            run_one(config, changes.get("layer"), n=n)
            finish_run(folder, changes.get("layer"), n=n, standing=standing)
    return collect(name, out)


def _check_results_path(path: Path, name: str) -> None:
    """ValueError before any training unless ``path`` can take experiment ``name``'s results:
    a new file in a folder that exists, or a results file of the same experiment (which it
    replaces). Any other file there is the user's, and is not overwritten."""
    if path.is_dir():
        raise ValueError(f"--results: expected a file name, got the folder {str(path)!r}")
    if path.parent != Path() and path.parent.exists() and not path.parent.is_dir():
        raise ValueError(f"--results: {str(path.parent)!r} is not a folder")
    if path.exists():
        try:
            previous = json.loads(path.read_bytes()[: 64 * 2**20])
        except (OSError, ValueError):
            previous = None
        if not (isinstance(previous, dict) and previous.get("experiment") == name):
            raise ValueError(
                f"--results: {str(path)!r} exists and is not a results file of the {name!r} "
                "experiment; choose another name (it is not overwritten)"
            )


def _read_result(path: Path) -> dict:
    """One run's result.json; ValueError naming it when it is not one (damaged, edited)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable result file ({error})") from None
    if not (isinstance(record, dict) and isinstance(record.get("seed"), int)):
        raise ValueError(
            f"{path}: expected a run's result with its seed; delete it to rerun the run"
        )
    return record


def collect(name: str, out: str | Path) -> dict:
    """The results of every finished run of experiment ``name`` under ``out``, by variant."""
    what, _, _, table = EXPERIMENTS[name]
    variants = {}
    for variant in table:
        runs = sorted(Path(out).glob(f"{slug(variant)}/seed*/result.json"))
        records = [_read_result(path) for path in runs]
        variants[variant] = sorted(records, key=lambda record: record["seed"])
    return {
        "experiment": name,
        "measures": what,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "variants": variants,
    }


def ship(name: str, out: str | Path, dest: str | Path = RESULTS) -> Path:
    """Write experiment ``name``'s results into ``dest`` (default: the package's results
    folder), with the sample grid of each variant's first seed as ``<name>/<variant>.png``."""
    results, dest = collect(name, out), Path(dest)
    (dest / name).mkdir(parents=True, exist_ok=True)
    for variant, records in results["variants"].items():
        if records:
            grid = Path(out) / slug(variant) / f"seed{records[0]['seed']}" / "grid.png"
            atomic_write(dest / name / f"{slug(variant)}.png", grid.read_bytes())
        for record in records:
            run_folder = Path(out) / slug(variant) / f"seed{record['seed']}"
            log = _short_log(run_folder / LOG_NAME)
            atomic_write(dest / name / f"{slug(variant)}-seed{record['seed']}.csv", log)
    return atomic_write(dest / f"{name}.json", (json.dumps(results, indent=1) + "\n").encode())


def _short_log(path: Path) -> bytes:
    """A run's log.csv, losses and gammas only (the sigmas stay in the run folder), 4 digits."""
    rows = read_log(path)
    keys = [k for k in rows[0] if k == "step" or "loss" in k or k.startswith("gamma/")]
    lines = [",".join(keys)]
    lines += [
        ",".join(f"{row[k]:.4g}" if k != "step" else str(row[k]) for k in keys) for row in rows
    ]
    return ("\n".join(lines) + "\n").encode()


def log_of(name: str, variant: str, seed: int, results_dir: str | Path = RESULTS) -> list[dict]:
    """The shipped log (step, losses, gammas) of one run of an experiment."""
    return read_log(Path(results_dir) / name / f"{slug(variant)}-seed{seed}.csv")


def grid_of(name: str, variant: str, results_dir: str | Path = RESULTS) -> Path:
    """The shipped sample grid (64 EMA samples, noise seed 0) of a variant's first seed."""
    return Path(results_dir) / name / f"{slug(variant)}.png"


def load_results(name: str, path: str | Path | None = None) -> dict:
    """A results file: ``path``, else the one shipped with the package for experiment ``name``."""
    path = Path(path) if path is not None else RESULTS / f"{name}.json"
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    return guarded(lambda: _main(argv), lambda: "fewer images with --n")


def _main(argv: list[str] | None) -> int:
    parser = Parser(
        prog="python -m sagan_tutorial.experiments",
        description="Run one of the book's experiments.",
    )
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("--out", type=Path, required=True, help="a folder for the runs")
    parser.add_argument(
        "--seeds",
        type=bounded_int(0, MAX_SEED),
        nargs="+",
        help="training seeds (default: its own)",
    )
    parser.add_argument(
        "--steps", type=bounded_int(1, 10**7), help="steps per run (default: its own)"
    )
    parser.add_argument("--variants", nargs="+", help="only these variants")
    parser.add_argument(
        "--n", type=bounded_int(MIN_IMAGES, 10**5), default=1000, help="images for FID/KID"
    )
    parser.add_argument(
        "--sample-every", type=bounded_int(0, 10**7), default=0, help="sample grids every N steps"
    )
    parser.add_argument(
        "--results", type=Path, help="write the results here (default: OUT/results.json)"
    )
    parser.add_argument(
        "--ship", action="store_true", help="also write them into the package's results folder"
    )
    args = parser.parse_args(argv)
    table = EXPERIMENTS[args.experiment][3]
    if unknown := [v for v in args.variants or () if v not in table]:
        raise ValueError(
            f"unknown variants {unknown} of {args.experiment}: expected some of {list(table)}"
        )
    check_sample_size(args.n, name="--n")
    path = args.results or args.out / "results.json"
    _check_results_path(path, args.experiment)
    base = TrainConfig(progress=False, tensorboard=False, sample_every=args.sample_every)
    results = run(
        args.experiment,
        args.out,
        seeds=args.seeds,
        steps=args.steps,
        n=args.n,
        variants=args.variants,
        base=base,
    )
    atomic_write(path, (json.dumps(results, indent=1) + "\n").encode())
    for row in summarize(results):
        print(
            f"{row['variant']}: FID {row['mean']:.3f} +- {row['std']:.3f} over seeds {row['seeds']}"
        )
    print(f"wrote {path}", file=sys.stderr)
    if args.ship:
        print(f"wrote {ship(args.experiment, args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
