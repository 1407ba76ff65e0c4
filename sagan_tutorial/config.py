"""The run configuration: :class:`TrainConfig`, and the one place the resume rule lives.

A :class:`TrainConfig` holds every option of a training run, with the networks' options in its
``model`` field (a :class:`~sagan_tutorial.models.GANConfig`). Each field is checked against its
annotated type and range when the config is made, so a bad value fails at once with a message
that names it. The command line turns every field into a flag (``lr_g`` -> ``--lr-g``), and
:func:`train_command` turns a config back into the command that makes it.

The resume rule (:func:`resumed_config`): a resumed run continues the run in the checkpoint, so
only the options in :data:`RESUMABLE` may change (they change neither the numbers nor the order
in which they are computed); any other difference is an error.
"""

from __future__ import annotations

import argparse
import os
import shlex
import typing
from dataclasses import dataclass, field, fields, replace

from ._checks import MAX_SEED, check_choice, check_int, check_number
from .losses import LOSSES
from .models import GANConfig

__all__ = [
    "AMP_MODES",
    "MAX_SEED",
    "MODEL_HELP",
    "RESUMABLE",
    "TrainConfig",
    "add_flags",
    "attention_sizes",
    "bounded_int",
    "checkpoint_config",
    "flag",
    "resumed_config",
    "train_command",
]

AMP_MODES = ("none", "bf16", "fp16")
MAX_SAMPLES = 1024  # images in one sample grid
MAX_N_DIS = 100  # D updates per G update; the papers use 1 to 5
# Options that may differ between a checkpoint and the run that resumes it: they change neither
# the numbers nor the order in which they are computed (on the same device).
RESUMABLE = frozenset(
    {"steps", "out", "device", "progress", "tensorboard", "sample_every", "log_every"}
    | {"checkpoint_every"}
)


# The networks' options as the command line shows them (GANConfig documents them in comments).
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


def _option(default, help: str):
    """A dataclass field whose help text the command line shows."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every option of a training run. The defaults train the book's 32x32 MNIST GAN."""

    # GANConfig's defaults (widths 32). `python -m sagan_tutorial train` builds the same model.
    model: GANConfig = field(default_factory=GANConfig)
    dataset: str = _option("mnist5k", "'mnist5k' (embedded), an image folder or an idx file")
    out: str = _option("runs/default", "directory for checkpoint.pt, log.csv and samples/")
    steps: int = _option(4000, "generator updates in total (each after n_dis D updates)")
    batch_size: int = _option(64, "images per D update, per process under torchrun")
    seed: int = _option(0, f"seeds the weights, the noise and the data order (0 to {MAX_SEED})")
    loss: str = _option("hinge", f"one of {LOSSES}")
    lr_g: float = _option(1e-4, "Adam learning rate of G (TTUR: D learns 4x faster)")
    lr_d: float = _option(4e-4, "Adam learning rate of D")
    beta1: float = _option(0.0, "Adam beta1 for both networks")
    beta2: float = _option(0.9, "Adam beta2 for both networks")
    n_dis: int = _option(1, f"D updates per G update (at most {MAX_N_DIS})")
    gp_weight: float = _option(10.0, "gradient-penalty weight (loss 'wgan-gp' only)")
    ema_decay: float = _option(0.999, "EMA decay of G's weights (warmed up over the first steps)")
    sample_every: int = _option(250, "save a grid of EMA samples every this many steps (0: never)")
    n_samples: int = _option(
        64, f"images per sample grid, at most {MAX_SAMPLES} (conditional: split over class rows)"
    )
    log_every: int = _option(25, "append a row to log.csv every this many steps")
    checkpoint_every: int = _option(250, "write checkpoint.pt every this many steps (0: at end)")
    device: str = _option("auto", "'auto' (SAGAN_TUTORIAL_DEVICE, else CUDA, else CPU) or a name")
    amp: str = _option("none", f"autocast precision, one of {AMP_MODES} (fp16: CUDA only)")
    channels_last: bool = _option(False, "NHWC memory layout (helps convs on recent GPUs)")
    fused_adam: bool = _option(True, "fused Adam kernels (one kernel for all parameters)")
    compile: bool = _option(
        False, "torch.compile the training forwards of G and D (static shapes; no gain on a CPU)"
    )
    progress: bool = _option(True, "show a progress bar (on a terminal or in a notebook)")
    tensorboard: bool = _option(True, "also log to TensorBoard when it is installed")

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = GANConfig.from_dict(self.model)
        if not isinstance(self.model, GANConfig):
            raise TypeError(f"model must be a GANConfig or a dict, got {type(self.model).__name__}")
        for name in ("dataset", "out"):  # paths are welcome; the config stores plain strings
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        for f in fields(self):
            if f.name != "model":
                setattr(self, f.name, _typed(f.name, getattr(self, f.name), _types()[f.name]))
        self._check_values()

    def _check_values(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("n_dis", self.n_dis, minimum=1, maximum=MAX_N_DIS)
        check_int("n_samples", self.n_samples, minimum=1, maximum=MAX_SAMPLES)
        for name in ("sample_every", "checkpoint_every"):
            check_int(name, getattr(self, name), minimum=0)
        check_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        for name in ("lr_g", "lr_d", "gp_weight"):
            check_number(name, getattr(self, name), 0, open_min=True)
        for name in ("beta1", "beta2", "ema_decay"):
            check_number(name, getattr(self, name), 0, 1, open_max=True)
        check_choice("loss", self.loss, LOSSES)
        check_choice("amp", self.amp, AMP_MODES)
        for name in ("dataset", "out", "device"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")

    def to_dict(self) -> dict:
        """Plain types only (the checkpoint stores this)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        return {"model": self.model.to_dict(), **values}

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        if not isinstance(values, dict):
            raise TypeError(f"expected a dict of TrainConfig fields, got {type(values).__name__}")
        unknown = sorted(set(values) - {f.name for f in fields(cls)}, key=str)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}")
        return cls(**values)


def _types() -> dict[str, type]:
    """The real annotated types of TrainConfig's fields (``from __future__`` makes them strings)."""
    return typing.get_type_hints(TrainConfig)


def _typed(name: str, value, kind: type):
    """``value`` checked against the field's type; an int is a fine float (1 for a rate)."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{name} must be {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def checkpoint_config(state: dict, where: object) -> TrainConfig:
    """The TrainConfig stored in a checkpoint's ``state``; ValueError naming ``where``."""
    try:
        return TrainConfig.from_dict(state["config"])
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f"{where}: its config is invalid ({error})") from None


def resumed_config(saved: TrainConfig, changes: TrainConfig | dict, where: object) -> TrainConfig:
    """The config of a resumed run: ``saved`` (the checkpoint's) with ``changes`` applied.

    ``changes`` is either a whole TrainConfig (the Python API: every field is compared) or a dict
    of the options given on a command line (``{"steps": 8000}``, model options under their own
    names, e.g. ``{"g_width": 32}``). Only the options in :data:`RESUMABLE` may differ from the
    checkpoint; any other difference is a ValueError that names it and ``where`` (the file).
    """
    if isinstance(changes, TrainConfig):
        changes = _flat(changes)
    ours = _flat(saved)
    unknown = sorted(set(changes) - set(ours))
    if unknown:
        raise ValueError(f"unknown options {unknown}")
    changed = {
        key: (ours[key], value)
        for key, value in changes.items()
        if key not in RESUMABLE and _normal(ours[key]) != _normal(value)
    }
    if changed:
        listed = ", ".join(
            f"{key}: {a!r} in the checkpoint, {b!r} given" for key, (a, b) in changed.items()
        )
        raise ValueError(
            f"cannot resume {where} with other options ({listed}); only {sorted(RESUMABLE)} "
            "may change"
        )
    return replace(saved, **{key: value for key, value in changes.items() if key in RESUMABLE})


def _flat(config: TrainConfig) -> dict:
    """Every option by name, the model's beside the run's (their names do not overlap)."""
    values = {f.name: getattr(config, f.name) for f in fields(config) if f.name != "model"}
    model = {f.name: getattr(config.model, f.name) for f in fields(config.model)}
    return {**values, **model}


def _normal(value):
    """Attention sizes compare the way GANConfig stores them (sorted tuples)."""
    return tuple(sorted(set(value))) if isinstance(value, list | tuple) else value


def flag(name: str) -> str:
    """The command-line flag of an option: ``lr_g`` -> ``--lr-g``."""
    return "--" + name.replace("_", "-")


def _flag_words(name: str, value) -> list[str]:
    if isinstance(value, bool):
        return [flag(name) if value else "--no-" + flag(name)[2:]]
    if isinstance(value, tuple):
        return [flag(name), ",".join(map(str, value)) or "none"]
    return [flag(name), str(value)]


def train_command(config: TrainConfig) -> str:
    """The ``python -m sagan_tutorial train`` line that reproduces ``config``.

    Only options that differ from the defaults are listed. A network option is listed when it
    differs from either GANConfig's default or TrainConfig's, so the line gives the same
    networks whichever of the two the command line starts from.
    """
    defaults = TrainConfig()
    words = [flag("out"), config.out]
    for f in fields(GANConfig):
        value = getattr(config.model, f.name)
        if any(value != getattr(model, f.name) for model in (GANConfig(), defaults.model)):
            words += _flag_words(f.name, value)
    for f in fields(TrainConfig):
        value = getattr(config, f.name)
        if f.name not in ("model", "out") and value != getattr(defaults, f.name):
            words += _flag_words(f.name, value)
    return shlex.join(["python", "-m", "sagan_tutorial", "train", *words])


def attention_sizes(text: str) -> tuple[int, ...]:
    """'8,16' -> (8, 16); 'none' or '' -> () (no attention)."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated feature-map sizes such as 8,16 or 'none', got {text!r}"
        ) from None


def bounded_int(low: int, high: int):
    """An argparse type: an int in [low, high], or one line naming the bounds."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {low} to {high}, got {value}")
        return value

    return parse


def add_flags(group, cls: type, defaults) -> None:
    """A flag on ``group`` (argparse) for every field of ``cls`` (TrainConfig or GANConfig),
    typed by its annotation, shown with its value in ``defaults``. Defaults are SUPPRESSed so
    that only the flags given count (a resumed run takes the rest from its checkpoint)."""
    types = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name == "model":
            continue
        default = getattr(defaults, f.name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help = f"{MODEL_HELP.get(f.name) or f.metadata.get('help', '')} (default: {shown})"
        kind = types[f.name]
        options = {"default": argparse.SUPPRESS, "help": help}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif f.name in ("g_attention", "d_attention"):
            options.update(type=attention_sizes, metavar="SIZES")
        elif f.name == "seed":
            options.update(type=bounded_int(0, MAX_SEED), metavar="SEED")
        else:
            options.update(type=kind if kind in (int, float) else str, metavar=f.name.upper())
        group.add_argument(flag(f.name), **options)
