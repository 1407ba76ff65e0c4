"""The trainer: TTUR, n_dis, an EMA of G, sample grids, a CSV log, checkpoints that resume exactly.

One training *step* is ``n_dis`` discriminator updates followed by one generator update (Adam with
the two time-scale learning rates of SAGAN: 1e-4 for G, 4e-4 for D, betas (0.0, 0.9)). After every
G update an exponential moving average (EMA) of G's weights is refreshed; samples and evaluation
use the EMA copy, which is smoother than G itself.

Everything that decides what happens next is in the checkpoint: the weights of G, D and the EMA,
both optimizers, the step, the random number generators of every process, and how many batches
were drawn. The data order is a pure function of ``(seed, epoch)``, so a run killed at any moment
and resumed from its last checkpoint ends with the same weights, bit for bit (on the CPU), as a run
that was never interrupted. Checkpoints are written atomically: a crash while writing leaves the
previous one intact.

Under ``torchrun`` the same code trains with DistributedDataParallel: each process draws its own
shard of every epoch, gradients are averaged, and only rank 0 writes files.

Use it from Python::

    from sagan_tutorial.models import GANConfig
    from sagan_tutorial.train import TrainConfig, train

    result = train(TrainConfig(model=GANConfig(g_width=32, d_width=32), steps=500, out="runs/a"))
    result.log[-1]  # the last row of runs/a/log.csv as a dict
"""

from __future__ import annotations

import copy
import csv
import hashlib
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm  # text bar: also in notebooks, without ipywidgets

from .data import load_dataset
from .losses import LOSSES, discriminator_loss, generator_loss, gradient_penalty
from .models import (
    Discriminator,
    GANConfig,
    Generator,
    attention_layers,
    spectral_sigmas,
)
from .runtime import default_device
from .viz import image_grid

__all__ = [
    "AMP_MODES",
    "CHECKPOINT_NAME",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "load_checkpoint",
    "load_generator",
    "resolve_device",
    "save_checkpoint",
    "save_grid",
    "train",
    "update_ema",
]

AMP_MODES = ("none", "bf16", "fp16")
CHECKPOINT_NAME = "checkpoint.pt"
_FORMAT = "sagan_tutorial.checkpoint/1"
_REQUIRED = (
    "step",
    "batches_seen",
    "world_size",
    "config",
    "generator",
    "discriminator",
    "ema",
    "opt_g",
    "opt_d",
    "rng",
)
# Options that may differ between a checkpoint and the run that resumes it: they change neither
# the numbers nor the order in which they are computed (on the same device).
_RESUMABLE = {
    "steps",
    "out",
    "device",
    "progress",
    "tensorboard",
    "sample_every",
    "log_every",
    "checkpoint_every",
}


def _option(default, help: str):
    """A dataclass field whose help text the command line shows."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every option of a training run. The defaults train a 32x32 MNIST GAN on a CPU in minutes."""

    # GANConfig's defaults (widths 32): recognisable digits in under 10 minutes on two CPU cores.
    # `python -m sagan_tutorial train` builds the same model from the same defaults.
    model: GANConfig = field(default_factory=GANConfig)
    dataset: str = _option("mnist5k", "'mnist5k' (embedded), an image folder or an idx file")
    out: str = _option("runs/default", "directory for checkpoint.pt, log.csv and samples/")
    steps: int = _option(4000, "generator updates in total (each after n_dis D updates)")
    batch_size: int = _option(64, "images per D update, per process under torchrun")
    seed: int = _option(0, "seeds the weights, the noise and the data order")
    loss: str = _option("hinge", f"one of {LOSSES}")
    lr_g: float = _option(1e-4, "Adam learning rate of G (TTUR: D learns 4x faster)")
    lr_d: float = _option(4e-4, "Adam learning rate of D")
    beta1: float = _option(0.0, "Adam beta1 for both networks")
    beta2: float = _option(0.9, "Adam beta2 for both networks")
    n_dis: int = _option(1, "D updates per G update")
    gp_weight: float = _option(10.0, "gradient-penalty weight (loss 'wgan-gp' only)")
    ema_decay: float = _option(0.999, "EMA decay of G's weights (warmed up over the first steps)")
    sample_every: int = _option(250, "save a grid of EMA samples every this many steps (0: never)")
    n_samples: int = _option(64, "images per sample grid (conditional: split over class rows)")
    log_every: int = _option(25, "append a row to log.csv every this many steps")
    checkpoint_every: int = _option(250, "write checkpoint.pt every this many steps (0: at end)")
    device: str = _option("auto", "'auto' (SAGAN_TUTORIAL_DEVICE, else CUDA, else CPU) or a name")
    amp: str = _option("none", f"autocast precision, one of {AMP_MODES} (fp16: CUDA only)")
    channels_last: bool = _option(False, "NHWC memory layout (helps convs on recent GPUs)")
    fused_adam: bool = _option(True, "fused Adam kernels (one kernel for all parameters)")
    progress: bool = _option(True, "show a progress bar (on a terminal or in a notebook)")
    tensorboard: bool = _option(True, "also log to TensorBoard when it is installed")

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = GANConfig.from_dict(self.model)
        if not isinstance(self.model, GANConfig):
            raise TypeError(f"model must be a GANConfig or a dict, got {type(self.model).__name__}")
        for f in fields(self):
            if f.name == "model":
                continue
            value, kind = getattr(self, f.name), f.type
            if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)  # 1 is a fine learning rate to write; keep floats float
                setattr(self, f.name, value)
            expected = {"int": int, "float": float, "str": str, "bool": bool}[kind]
            if not isinstance(value, expected) or (kind == "int" and isinstance(value, bool)):
                raise TypeError(f"{f.name} must be {kind}, got {type(value).__name__} {value!r}")
        self._check_values()

    def _check_values(self) -> None:
        positive = ("steps", "batch_size", "n_dis", "n_samples", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("sample_every", "checkpoint_every", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        for name in ("lr_g", "lr_d", "gp_weight"):
            if not getattr(self, name) > 0 or not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)}")
        for name in ("beta1", "beta2", "ema_decay"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")

    def to_dict(self) -> dict:
        """Plain types only (the checkpoint stores this)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        return {"model": self.model.to_dict(), **values}

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        if not isinstance(values, dict):
            raise TypeError(f"expected a dict of TrainConfig fields, got {type(values).__name__}")
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}")
        return cls(**values)


@dataclass
class TrainResult:
    """What :func:`train` returns: where the run stands and its log (the rows of log.csv)."""

    step: int
    out: Path
    checkpoint: Path
    log: list[dict]
    seconds: float
    stopped_by: str | None = None  # "SIGINT" or "SIGTERM" when a signal ended the run early

    @property
    def steps_per_second(self) -> float:
        rows = [row for row in self.log if "steps_per_s" in row]
        return rows[-1]["steps_per_s"] if rows else float("nan")


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite: training stopped without overwriting the checkpoint."""


# ----------------------------------------------------------------------------------------------
# the pieces: EMA, the data order, distributed set-up, random states


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (the book's notebooks), where stderr is not a terminal."""
    shell = sys.modules.get("IPython")
    ipython = getattr(shell, "get_ipython", lambda: None)()
    return type(ipython).__name__ == "ZMQInteractiveShell"


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model`` for every parameter; buffers are copied.

    Buffers (BatchNorm statistics, spectral-norm vectors) are not averaged: the EMA network then
    normalises exactly as the current G would, which is what sampling from it needs.
    """
    ema_params, params = list(ema.parameters()), list(model.parameters())
    if len(ema_params) != len(params):
        raise ValueError(f"ema has {len(ema_params)} parameters, the model {len(params)}")
    torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


def ema_decay_at(step: int, decay: float) -> float:
    """The decay used at ``step`` (1-based): ``min(decay, (1 + step) / (10 + step))``.

    A warm-up: early on, when G changes fast and its first weights are noise, the average forgets
    quickly; after ~10,000 steps the configured decay (0.999) applies.
    """
    return min(decay, (1 + step) / (10 + step))


class ShuffledBatches:
    """The training set held as tensors, served in an order that depends only on (seed, epoch).

    Batch ``index`` (counted from the start of training) is found without replaying the batches
    before it, so resuming needs nothing but the count. Under torchrun every process takes every
    ``world``-th image of the epoch's permutation, starting at its ``rank``.
    """

    def __init__(self, dataset, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if hasattr(dataset, "images") and hasattr(dataset, "labels"):  # held in memory already
            self.images, self.labels = dataset.images, dataset.labels.long()
        else:
            images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
            self.images = torch.stack(images)  # (M, C, S, S)
            self.labels = torch.stack([torch.as_tensor(y) for y in labels]).long()  # (M,)
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.per_epoch = len(self.images) // world // batch_size
        if self.per_epoch == 0:
            raise ValueError(
                f"the data set has {len(self.images)} images, fewer than one batch of "
                f"{batch_size} per process ({world} processes)"
            )
        self._epoch, self._order = -1, None

    def order(self, epoch: int) -> torch.Tensor:
        """This process's image indices for ``epoch``: (per_epoch * batch_size,)."""
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(len(self.images), generator=generator)
            self._epoch, self._order = epoch, order[self.rank :: self.world]
        return self._order

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number ``index``: images (B, C, S, S) and labels (B,)."""
        epoch, i = divmod(index, self.per_epoch)
        picked = self.order(epoch)[i * self.batch_size : (i + 1) * self.batch_size]
        return self.images[picked], self.labels[picked]


@dataclass(frozen=True)
class _Processes:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this module started the process group and ends it

    @property
    def main(self) -> bool:
        return self.rank == 0


def _start_processes(device_name: str) -> _Processes:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _Processes()
    owned = not dist.is_initialized()
    if owned:
        cuda = device_name.startswith("cuda") or (
            device_name == "auto" and default_device().type == "cuda"
        )
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return _Processes(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owned
    )


def resolve_device(name: str, processes: _Processes = _Processes()) -> torch.device:
    """``"auto"`` or a torch device name -> the device (ValueError for CUDA without CUDA)."""
    device = default_device() if name == "auto" else torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asks for CUDA, which is not available here")
        if processes.world > 1:
            device = torch.device("cuda", processes.local_rank)
        torch.cuda.set_device(device)
    return device


def _rng_state() -> dict:
    """Every random generator this process uses, as tensors and ints (weights_only-loadable)."""
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


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    mt = state["numpy"]
    keys = mt["keys"].numpy().astype(np.uint32)
    legacy = ("MT19937", keys, mt["pos"], mt["has_gauss"], mt["cached_gaussian"])
    np.random.set_state(legacy)  # noqa: NPY002
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss_next"]))


# ----------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: a temp file in the same directory, fsync, rename.

    A crash or an error while writing leaves the previous file untouched and no temp file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by :class:`Trainer`, with ``torch.load(weights_only=True)``.

    Raises ``FileNotFoundError`` when there is no file and ``ValueError`` naming the file when
    it is not such a checkpoint (another file, a bare state dict, a missing entry).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        # torch's own message for a weights_only failure suggests loading unsafely: not repeated.
        raise ValueError(
            f"{path} is not a checkpoint written by sagan_tutorial: torch.load(weights_only=True) "
            f"failed with {type(error).__name__}"
        ) from error
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        got = (
            f"a dict with keys {sorted(state)[:6]}"
            if isinstance(state, dict)
            else (f"a {type(state).__name__}")
        )
        raise ValueError(
            f"{path} is not a sagan_tutorial checkpoint: expected a dict with "
            f"format={_FORMAT!r}, got {got}"
        )
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise ValueError(f"{path} is an incomplete checkpoint: missing {missing}")
    return state


def _load_weights(module: nn.Module, weights, what: str, path) -> None:
    try:
        result = module.load_state_dict(weights, strict=False)
    except (RuntimeError, TypeError, AttributeError, KeyError) as error:
        detail = " ".join(str(error).split())[:300]
        raise ValueError(f"{path}: the {what} weights do not fit its config ({detail})") from error
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:
        examples = ", ".join(repr(key) for key in (missing[:1] + unexpected[:1]))
        raise ValueError(
            f"{path}: the {what} weights do not fit its config: {len(missing)} entries missing, "
            f"{len(unexpected)} unexpected (e.g. {examples}); was it written by another version "
            "of the package?"
        )


def load_generator(path: str | os.PathLike, *, ema: bool = True, device=None) -> Generator:
    """The (EMA, by default) generator stored in a checkpoint, in eval mode on ``device``."""
    state = load_checkpoint(path)
    try:
        config = TrainConfig.from_dict(state["config"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: its config is invalid ({error})") from error
    generator = Generator(config.model)
    _load_weights(generator, state["ema" if ema else "generator"], "generator", path)
    return generator.to(device or default_device()).eval()


# ----------------------------------------------------------------------------------------------
# the trainer


class Trainer:
    """Holds the networks, optimizers and data of one run; :meth:`fit` trains to ``config.steps``.

    ``callback(trainer, row)`` is called with every row written to log.csv; the book uses it to
    watch a run. With ``resume=True`` the run continues from ``<out>/checkpoint.pt``.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        resume: bool = False,
        callback: Callable[[Trainer, dict], None] | None = None,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"expected a TrainConfig, got {type(config).__name__}")
        self.out = Path(config.out)
        self.checkpoint_path = self.out / CHECKPOINT_NAME
        saved = load_checkpoint(self.checkpoint_path) if resume else None
        if saved is not None:
            config = _resumed_config(saved["config"], config, self.checkpoint_path)
        self.config, self.callback = config, callback
        self.processes = _start_processes(config.device)
        self.device = resolve_device(config.device, self.processes)
        if config.amp == "fp16" and self.device.type != "cuda":
            raise ValueError(
                f"amp 'fp16' needs a CUDA device, got {self.device.type!r} (use 'bf16' or 'none')"
            )
        self._build_networks()
        self.batches = self._load_data()
        self.step, self.batches_seen = 0, 0
        self.log: list[dict] = []
        self._pending: list[torch.Tensor] = []  # per-step (D, G) losses since the last log row
        self._checked = 0  # how many of them are known to be finite
        self._saved_step = -1
        self._stop_signal: str | None = None
        # The fixed noise for sample grids has its own generator: sampling never moves the
        # training's random stream.
        self.fixed_z, self.fixed_y = self._fixed_noise()
        if self.processes.main:  # a run killed while writing a checkpoint leaves its temp file
            for stale in self.out.glob(f".{CHECKPOINT_NAME}.*.tmp"):
                stale.unlink(missing_ok=True)
        if saved is not None:
            self._restore(saved)
        else:
            torch.manual_seed(config.seed * 1_000_003 + self.processes.rank)

    # -- set-up --

    def _build_networks(self) -> None:
        config, device = self.config, self.device
        torch.manual_seed(config.seed)  # every process builds the same initial weights
        generator, discriminator = Generator(config.model), Discriminator(config.model)
        if self.processes.world > 1 and device.type == "cuda":
            generator = nn.SyncBatchNorm.convert_sync_batchnorm(generator)
        memory = torch.channels_last if config.channels_last else torch.preserve_format
        self.generator = generator.to(device, memory_format=memory)
        self.discriminator = discriminator.to(device, memory_format=memory)
        self.ema = copy.deepcopy(self.generator).eval().requires_grad_(False)
        self.g_train, self.d_train = self.generator, self.discriminator
        if self.processes.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.g_train = DistributedDataParallel(self.generator, device_ids=ids)
            self.d_train = DistributedDataParallel(self.discriminator, device_ids=ids)
        # fused=True: one kernel updates every parameter (else torch's per-parameter default).
        adam = {"betas": (config.beta1, config.beta2), "fused": config.fused_adam or None}
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr_g, **adam)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr_d, **adam)
        fp16 = config.amp == "fp16"
        self.scaler_g = torch.amp.GradScaler(device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=fp16)

    def _load_data(self) -> ShuffledBatches:
        model = self.config.model
        dataset = load_dataset(
            self.config.dataset, split="train", image_size=model.image_size, channels=model.channels
        )
        classes = getattr(dataset, "num_classes", 0)
        if model.num_classes and model.num_classes != classes:
            raise ValueError(
                f"the model has num_classes={model.num_classes} but the data set "
                f"{self.config.dataset!r} has {classes} classes"
            )
        return ShuffledBatches(
            dataset,
            self.config.batch_size,
            self.config.seed,
            self.processes.rank,
            self.processes.world,
        )

    def _fixed_noise(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        config, classes = self.config, self.config.model.num_classes
        generator = torch.Generator().manual_seed(config.seed)
        labels = None
        if classes:  # one row per class
            per_class = max(1, config.n_samples // classes)
            labels = torch.arange(classes).repeat_interleave(per_class).to(self.device)
        n = config.n_samples if labels is None else len(labels)
        z = torch.randn(n, config.model.z_dim, generator=generator).to(self.device)
        return z, labels

    # -- one step --

    def _autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.amp)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _noise(self, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = torch.randn(batch, self.config.model.z_dim, device=self.device)
        classes = self.config.model.num_classes
        y = torch.randint(classes, (batch,), device=self.device) if classes else None
        return z, y

    def d_step(self) -> torch.Tensor:
        """One D update on the next batch; returns the (detached) D loss."""
        config = self.config
        images, labels = self.batches.batch(self.batches_seen)
        self.batches_seen += 1
        real = self._inputs(images)
        y = labels.to(self.device) if config.model.num_classes else None
        z, _ = self._noise(len(real))
        with torch.no_grad(), self._autocast():
            fake = self.generator(z, y)  # fakes of the real images' classes
        with self._autocast():
            # real and fake in one forward pass: DDP expects one forward per backward.
            both_y = None if y is None else torch.cat([y, y])
            logits = self.d_train(torch.cat([real, fake.to(real.dtype)]), both_y)
            real_logits, fake_logits = logits.float().chunk(2)
            loss = discriminator_loss(config.loss, real_logits, fake_logits)
        if config.loss == "wgan-gp":  # in float32: a gradient of fp16 logits could underflow
            loss = loss + gradient_penalty(
                self.discriminator, real, fake.to(real.dtype), y, weight=config.gp_weight
            )
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(loss).backward()
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()
        return loss.detach()

    def g_step(self) -> torch.Tensor:
        """One G update through the (frozen) D, then the EMA update; returns the G loss."""
        z, y = self._noise(self.config.batch_size)
        self.discriminator.requires_grad_(False)  # only G's gradients are needed
        try:
            with self._autocast():
                fake = self.g_train(z, y)
                loss = generator_loss(self.config.loss, self.discriminator(fake, y).float())
            self.opt_g.zero_grad(set_to_none=True)
            self.scaler_g.scale(loss).backward()
        finally:
            self.discriminator.requires_grad_(True)
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        if self.processes.world > 1:
            # Without SyncBatchNorm (CPU) each process has its own BN statistics; take rank 0's
            # so that every replica (and its EMA) stays identical.
            for buffer in self.generator.buffers():
                dist.broadcast(buffer, 0)
        update_ema(self.ema, self.generator, ema_decay_at(self.step + 1, self.config.ema_decay))
        return loss.detach()

    def train_step(self) -> None:
        """``n_dis`` D updates and one G update: the unit that ``config.steps`` counts."""
        d_losses = [self.d_step() for _ in range(self.config.n_dis)]
        g_loss = self.g_step()
        self.step += 1
        self._pending.append(torch.stack([torch.stack(d_losses).mean(), g_loss]))

    # -- the loop --

    def fit(self) -> TrainResult:
        """Train until ``config.steps``; returns the log. Stops early (with a checkpoint) on
        SIGINT or SIGTERM, and raises :class:`NonFiniteLossError` on a NaN or infinite loss."""
        config, main = self.config, self.processes.main
        started = time.perf_counter()
        writer = (
            _LogWriter(self.out, self._columns(), self.step, config.tensorboard) if main else None
        )
        if main and self.step == 0 and config.sample_every:
            self.save_samples()
        terminal = sys.stderr.isatty()
        # In a terminal the bar redraws freely; in a notebook every redraw is kept in the cell's
        # output (a built book shows each one as a line), so there it redraws at each tenth of
        # the run only. In a log file it stays off.
        redraw = (
            {"mininterval": 0.1}
            if terminal
            else {"mininterval": 0, "miniters": max(1, config.steps // 10)}
        )
        bar = tqdm(
            total=config.steps,
            initial=self.step,
            desc="train",
            dynamic_ncols=True,
            disable=not (main and config.progress and (terminal or _in_notebook())),
            **redraw,
        )
        self._last = (self.step, time.perf_counter())
        previous = _catch_signals(self)
        try:
            while self.step < config.steps and not self._stopping():
                self.train_step()
                bar.update(1)
                self._after_step(writer, bar)
            if self._pending:
                self._log(writer, bar)
            if self._saved_step != self.step:
                self.save()
            self._check_replicas()
        finally:
            _restore_signals(previous)
            bar.close()
            if writer is not None:
                writer.close()
            if self.processes.owned:
                dist.destroy_process_group()
        return TrainResult(
            self.step,
            self.out,
            self.checkpoint_path,
            self.log,
            time.perf_counter() - started,
            self._stop_signal,
        )

    def _after_step(self, writer, bar) -> None:
        config, step = self.config, self.step
        if step % config.log_every == 0 or step == config.steps:
            self._log(writer, bar)
        if (
            self.processes.main
            and config.sample_every
            and (step % config.sample_every == 0 or step == config.steps)
        ):
            self.save_samples()
        if config.checkpoint_every and step % config.checkpoint_every == 0:
            self.save()

    def _check_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` naming the first step whose loss is NaN or inf.

        The losses stay on the device between checks: one host sync for many steps.
        """
        unchecked = self._pending[self._checked :]
        self._checked = len(self._pending)
        if not unchecked:
            return
        losses = torch.stack(unchecked)  # (steps, 2): D loss, G loss
        bad = (~torch.isfinite(losses)).any(dim=1).int()  # (steps,)
        if self.processes.world > 1:  # all processes stop together, or the others would hang
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        losses, bad = losses.cpu(), bad.cpu().nonzero()
        if len(bad):
            first = int(bad[0])
            step = self.step - len(losses) + 1 + first
            d_loss, g_loss = losses[first].tolist()
            kept = (
                f"the last good checkpoint ({self.checkpoint_path}) is kept"
                if self.checkpoint_path.exists()
                else "no checkpoint was written"
            )
            raise NonFiniteLossError(
                f"non-finite loss at step {step} (d_loss={d_loss}, g_loss={g_loss}); training "
                f"stopped and {kept}"
            )

    def _log(self, writer, bar) -> None:
        """Append the mean losses since the last row, the gammas and the sigmas to the log."""
        self._check_finite()
        d_loss, g_loss = torch.stack(self._pending).mean(0).tolist()
        self._pending, self._checked = [], 0
        now = time.perf_counter()
        steps_per_s = (self.step - self._last[0]) / max(now - self._last[1], 1e-9)
        self._last = (self.step, now)
        row = {
            "step": self.step,
            "d_loss": d_loss,
            "g_loss": g_loss,
            **self.gammas(),
            **self.sigmas(),
            "steps_per_s": steps_per_s,
        }
        self.log.append(row)
        bar.set_postfix(d=f"{d_loss:.3f}", g=f"{g_loss:.3f}", refresh=False)
        if writer is not None:
            writer.write(row)
        if self.callback is not None:
            self.callback(self, row)

    def _columns(self) -> list[str]:
        return ["step", "d_loss", "g_loss", *self.gammas(), *self.sigmas(), "steps_per_s"]

    def gammas(self) -> dict[str, float]:
        """``gamma/G.<layer>`` and ``gamma/D.<layer>``: each attention layer's residual weight."""
        return {
            f"gamma/{tag}.{name}": float(layer.gamma.detach().float().reshape(-1)[0])
            for tag, net in (("G", self.generator), ("D", self.discriminator))
            for name, layer in attention_layers(net)
        }

    def sigmas(self) -> dict[str, float]:
        """``sigma/G.<layer>`` and ``sigma/D.<layer>``: each SN layer's spectral norm estimate."""
        return {
            f"sigma/{tag}.{name}": float(value)
            for tag, net in (("G", self.generator), ("D", self.discriminator))
            for name, value in spectral_sigmas(net).items()
        }

    # -- signals, checkpoints, samples --

    def _stopping(self) -> bool:
        if self.processes.world == 1:
            return self._stop_signal is not None
        # A signal may reach one process only: agree, or the others would wait for it forever.
        flag = torch.tensor([self._stop_signal is not None], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag)
        if flag.item() and self._stop_signal is None:
            self._stop_signal = "signal on another process"
        return bool(flag.item())

    def state_dict(self) -> dict:
        """Everything a resumed run needs; the random states of every process."""
        rng = _rng_state()
        if self.processes.world > 1:
            states = [None] * self.processes.world
            dist.all_gather_object(states, rng)
            rng = states
        else:
            rng = [rng]
        return {
            "format": _FORMAT,
            "step": self.step,
            "batches_seen": self.batches_seen,
            "world_size": self.processes.world,
            "config": self.config.to_dict(),
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "ema": self.ema.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "rng": rng,
        }

    def save(self) -> None:
        """Write ``<out>/checkpoint.pt``, after checking that no loss since the last check is
        NaN or infinite (a bad state never replaces the last good one)."""
        self._check_finite()
        state = self.state_dict()  # every process takes part: it gathers the RNG states
        if self.processes.main:
            save_checkpoint(state, self.checkpoint_path)
        self._saved_step = self.step

    def _restore(self, state: dict) -> None:
        path = self.checkpoint_path
        for module, key in (
            (self.generator, "generator"),
            (self.discriminator, "discriminator"),
            (self.ema, "ema"),
        ):
            _load_weights(module, state[key], key, path)
        try:
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
            for scaler, key in ((self.scaler_g, "scaler_g"), (self.scaler_d, "scaler_d")):
                if state.get(key):
                    scaler.load_state_dict(state[key])
        except (ValueError, KeyError, RuntimeError) as error:
            raise ValueError(f"{path}: the optimizer states do not fit ({error})") from error
        self.step, self.batches_seen = int(state["step"]), int(state["batches_seen"])
        self._saved_step = self.step
        rng = state["rng"]
        if len(rng) == self.processes.world:
            _set_rng_state(rng[self.processes.rank])
        else:  # another number of processes: the run goes on, no longer bit for bit
            torch.manual_seed(self.config.seed * 1_000_003 + self.processes.rank + self.step)
        self._drop_log_rows_after(self.step)

    def _drop_log_rows_after(self, step: int) -> None:
        """A killed run may have logged steps past its checkpoint: they will be redone."""
        path = self.out / "log.csv"
        if not self.processes.main or not path.exists():
            return
        with open(path, newline="") as file:
            rows = list(csv.reader(file))
        kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) <= step]
        with open(path, "w", newline="") as file:
            csv.writer(file).writerows(kept)

    @torch.no_grad()
    def sample(
        self, z: torch.Tensor | None = None, y: torch.Tensor | None = None, ema: bool = True
    ) -> torch.Tensor:
        """Images (N, C, S, S) in [-1, 1] from the EMA generator (default: the fixed noise)."""
        if z is None:
            z, y = self.fixed_z, self.fixed_y
        network = self.ema if ema else self.generator
        was_training = network.training
        network.eval()
        try:
            return network(z, y).float()
        finally:
            network.train(was_training)

    def save_samples(self) -> Path:
        """``samples/step_NNNNNN.png``: the fixed noise through the EMA G (rows: classes)."""
        images = self.sample()
        columns = (
            len(images) // self.config.model.num_classes
            if self.fixed_y is not None
            else math.ceil(math.sqrt(len(images)))
        )
        return save_grid(images, self.out / "samples" / f"step_{self.step:06d}.png", columns)

    def _check_replicas(self) -> None:
        """Under torchrun: every process hashes its weights; rank 0 writes replicas.txt."""
        if self.processes.world == 1:
            return
        digests = [None] * self.processes.world
        dist.all_gather_object(digests, weights_digest(self))
        if self.processes.main:
            (self.out / "replicas.txt").write_text("\n".join(digests) + "\n")
            if len(set(digests)) != 1:
                raise RuntimeError(f"the processes ended with different weights: {digests}")


def weights_digest(trainer: Trainer) -> str:
    """SHA-256 of every tensor of G, D and the EMA (the same on every replica of a DDP run)."""
    digest = hashlib.sha256()
    for net in (trainer.generator, trainer.discriminator, trainer.ema):
        for name, tensor in net.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_grid(images: torch.Tensor, path: str | os.PathLike, columns: int) -> Path:
    """Tile images (N, C, S, S) in [-1, 1] into a PNG, ``columns`` per row, 2 px apart."""
    from PIL import Image

    grid = image_grid((images.detach().float().cpu().clamp(-1, 1) + 1) / 2, nrow=columns, pad=2)
    pixels = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (H', W', C)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(path)
    return path


class _LogWriter:
    """log.csv (appended, flushed every row) and, when installed, TensorBoard."""

    def __init__(self, out: Path, columns: list[str], step: int, tensorboard: bool) -> None:
        out.mkdir(parents=True, exist_ok=True)
        path = out / "log.csv"
        fresh = step == 0 or not path.exists()
        self.file = open(path, "w" if fresh else "a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=columns)
        if fresh:
            self.writer.writeheader()
        self.board = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                pass
            else:
                self.board = SummaryWriter(str(out / "tensorboard"), purge_step=step + 1)

    def write(self, row: dict) -> None:
        self.writer.writerow(row)
        self.file.flush()
        if self.board is not None:
            for key, value in row.items():
                if key != "step":
                    self.board.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self.file.close()
        if self.board is not None:
            self.board.close()


def _catch_signals(trainer: Trainer) -> dict:
    """Turn SIGINT and SIGTERM into 'stop after this step' (the loop then saves a checkpoint)."""

    def handler(number, frame):
        trainer._stop_signal = signal.Signals(number).name

    previous = {}
    try:
        for number in (signal.SIGINT, signal.SIGTERM):
            previous[number] = signal.signal(number, handler)
    except ValueError:  # not the main thread: leave signals alone
        pass
    return previous


def _restore_signals(previous: dict) -> None:
    for number, handler in previous.items():
        signal.signal(number, handler)


def _resumed_config(saved: dict, given: TrainConfig, path: Path) -> TrainConfig:
    """The checkpoint's config, with the options that may change on resume taken from ``given``.

    Any other difference is an error: the resumed run would not be the run that was started.
    """
    try:
        config = TrainConfig.from_dict(saved)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: its config is invalid ({error})") from error
    ours, theirs = asdict(config), asdict(given)
    changed = {
        key: (ours[key], theirs[key])
        for key in ours
        if key not in _RESUMABLE and ours[key] != theirs[key]
    }
    if changed:
        listed = ", ".join(
            f"{key}: {a!r} in the checkpoint, {b!r} given" for key, (a, b) in changed.items()
        )
        raise ValueError(
            f"cannot resume {path} with other options ({listed}); only "
            f"{sorted(_RESUMABLE)} may change"
        )
    return replace(config, **{name: getattr(given, name) for name in _RESUMABLE})


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    callback: Callable[[Trainer, dict], None] | None = None,
) -> TrainResult:
    """Train with ``config`` (optionally resuming ``<out>/checkpoint.pt``); see :class:`Trainer`."""
    return Trainer(config, resume=resume, callback=callback).fit()
