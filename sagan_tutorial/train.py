"""The training loop: TTUR, n_dis, an EMA of G, sample grids; :func:`train`.

One training *step* is ``n_dis`` discriminator updates followed by one generator update (Adam with
the two time-scale learning rates of SAGAN: 1e-4 for G, 4e-4 for D, betas (0.0, 0.9)). After every
G update an exponential moving average (EMA) of G's weights is refreshed; samples and evaluation
use the EMA copy, which is smoother than G itself.

Everything that decides what happens next is in the checkpoint (:mod:`sagan_tutorial.checkpoint`):
the weights, both optimizers, the step, the random states of every process, and how many batches
were drawn. The data order is a pure function of ``(seed, epoch)``, so a run killed at any moment
and resumed from its last checkpoint ends with the same weights, bit for bit (on the CPU), as a run
that was never interrupted. A run folder holds one run: a trainer locks it, refuses a folder that
holds another run unless told to continue it (``resume``) or replace it (``overwrite``), and a
checkpoint is only written when every number in it is finite.

Under ``torchrun`` the same code trains with DistributedDataParallel (:mod:`.distributed`): each
process draws its own shard of every epoch, gradients are averaged, and only rank 0 writes files.

Use it from Python::

    from sagan_tutorial.config import TrainConfig
    from sagan_tutorial.models import GANConfig
    from sagan_tutorial.train import train

    result = train(TrainConfig(model=GANConfig(g_width=32, d_width=32), steps=500, out="runs/a"))
    result.log[-1]  # the last row of runs/a/log.csv as a dict
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import (
    CHECKPOINT_NAME,
    FORMAT,
    NonFiniteStateError,
    check_fits,
    load_checkpoint,
    load_weights,
    model_config,
    save_checkpoint,
)
from .config import TrainConfig, checkpoint_config, resumed_config
from .data import ShuffledBatches, data_fingerprint, load_dataset
from .distributed import (
    any_process,
    catch_signals,
    check_replicas,
    end_processes,
    gather,
    start_processes,
)
from .files import claim_run_folder, clear_run
from .grids import save_grid
from .models import Discriminator, Generator
from .restore import check_data, check_optimizer_state, restore_random_states, rng_state
from .runlog import LossMeter, RunLog, network_scalars, progress_bar
from .runtime import resolve_device
from .steps import GANSteps

__all__ = [
    "NonFiniteLossError",
    "TrainResult",
    "Trainer",
    "train",
]

EXIT_STATUS = {None: 0, "SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number


class NonFiniteLossError(RuntimeError):
    """A loss or a weight became NaN or infinite: training stopped, the last checkpoint is kept."""


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

    @property
    def exit_status(self) -> int:
        """0 for a finished run; 130 (SIGINT) or 143 (SIGTERM) for a run stopped by a signal."""
        return EXIT_STATUS.get(self.stopped_by, 143)


class Trainer(GANSteps):
    """One run: its folder, data, log and checkpoints around :class:`~.steps.GANSteps` (the
    networks, optimizers and one training step); :meth:`fit` trains to ``config.steps``.

    ``resume=True`` continues the run in ``<out>/checkpoint.pt`` (only the options in
    :data:`sagan_tutorial.config.RESUMABLE` may differ from its config); ``overwrite=True``
    removes the run files that ``<out>`` holds and starts afresh; with neither, a folder that
    holds a run is refused (:class:`RunExistsError`). ``callback(trainer, row)`` is called with
    every row written to log.csv; the book uses it to watch a run. ``networks``: see
    :class:`~sagan_tutorial.steps.GANSteps` (a resumed run needs the same one again).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        resume: bool = False,
        overwrite: bool = False,
        callback: Callable[[Trainer, dict], None] | None = None,
        networks: Callable | None = None,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"expected a TrainConfig, got {type(config).__name__}")
        for name, value in (("resume", resume), ("overwrite", overwrite)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
        for name, value in (("callback", callback), ("networks", networks)):
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")
        if resume and overwrite:
            raise ValueError(
                "resume and overwrite exclude each other: continue a run, or replace it"
            )
        self.out = Path(config.out)
        self.checkpoint_path = self.out / CHECKPOINT_NAME
        saved = load_checkpoint(self.checkpoint_path) if resume else None
        if saved is not None:
            config = resumed_config(
                checkpoint_config(saved, self.checkpoint_path), config, self.checkpoint_path
            )
            # the stored weights against the networks the config makes, before building them
            model = model_config(saved["config"].get("model"), self.checkpoint_path)
            for network, key in (
                (Generator, "generator"),
                (Generator, "ema"),
                (Discriminator, "discriminator"),
            ):
                check_fits(network, model, saved[key], key, self.checkpoint_path)
        self.config, self.callback = config, callback
        self.processes = start_processes(config.device)
        local_rank = self.processes.local_rank if self.processes.world > 1 else None
        self.device = resolve_device(config.device, local_rank=local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if config.amp == "fp16" and self.device.type != "cuda":
            raise ValueError(
                f"amp 'fp16' needs a CUDA device, got {self.device.type!r} (use 'bf16' or 'none')"
            )
        # Rank 0 writes the files: it alone locks the folder and checks what it holds.
        self._lock = claim_run_folder(
            self.out, resume=resume, overwrite=overwrite, main=self.processes.main
        )
        try:
            super().__init__(config, self.device, self.processes, networks)
            self.batches = self._load_data()
            self.step, self.batches_seen = 0, 0
            self.log: list[dict] = []
            self.losses = LossMeter()  # the (D, G) losses of the steps since the last row
            self._saved_step = -1
            self.stopped_by: str | None = None
            # The fixed noise for sample grids has its own generator: sampling never moves the
            # training's random stream.
            self.fixed_z, self.fixed_y = self._fixed_noise()
            if saved is not None:
                self._restore(saved)
            else:
                torch.manual_seed(config.seed * 1_000_003 + self.processes.rank)
            if overwrite and self.processes.main:  # only now that the new run is set up
                clear_run(self.out)
        except BaseException:
            self._lock.abandon()
            raise

    # -- set-up --

    def _load_data(self) -> ShuffledBatches:
        model = self.config.model
        dataset = load_dataset(
            self.config.dataset, split="train", image_size=model.image_size, channels=model.channels
        )
        self.data_fingerprint = data_fingerprint(self.config.dataset)
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

    def close(self) -> None:
        """Let another process use the run folder (:meth:`fit` calls it when it ends)."""
        self._lock.release() if hasattr(self, "_lock") else None

    def train_step(self) -> torch.Tensor:
        """``n_dis`` D updates and one G update: the unit that ``config.steps`` counts.

        Returns the (2,) tensor of the mean D loss and the G loss, on the device (no host sync).
        """
        d_losses = []
        for _ in range(self.config.n_dis):
            d_losses.append(self.d_step(*self.batches.batch(self.batches_seen)))
            self.batches_seen += 1
        g_loss = self.g_step(self.step + 1)
        self.step += 1
        return torch.stack([torch.stack(d_losses).mean(), g_loss])

    # -- the loop --

    def fit(self) -> TrainResult:
        """Train until ``config.steps``; returns the log. Stops early (with a checkpoint) on
        SIGINT or SIGTERM, and raises :class:`NonFiniteLossError` on a NaN or infinite loss."""
        config, main = self.config, self.processes.main
        started = time.perf_counter()
        if main:
            self._lock.acquire()  # again, if an earlier fit ended
        log = (
            RunLog(self.out, self._columns(), step=self.step, tensorboard=config.tensorboard)
            if main
            else None
        )
        if main and self.step == 0 and config.sample_every:
            self.save_samples()
        bar = progress_bar(config.steps, self.step, main and config.progress)
        self._last = (self.step, time.perf_counter())
        restore_signals = catch_signals(self._stop_on_signal)
        try:
            while self.step < config.steps and not self._stopping():
                self.losses.add(self.train_step())
                bar.update(1)
                self._after_step(log, bar)
            if self.losses:
                self._log(log, bar)
            if self._saved_step != self.step:
                self.save()
            check_replicas((self.generator, self.discriminator, self.ema), self.processes, self.out)
        finally:
            restore_signals()
            bar.close()
            if log is not None:
                log.close()
            end_processes(self.processes)
            self.close()
        seconds = time.perf_counter() - started
        return TrainResult(
            self.step, self.out, self.checkpoint_path, self.log, seconds, self.stopped_by
        )

    def _stop_on_signal(self, name: str) -> None:
        self.stopped_by = name

    def _stopping(self) -> bool:
        # A signal may reach one process only: agree, or the others would wait for it forever.
        stop = any_process(self.stopped_by is not None, self.processes, self.device)
        if stop and self.stopped_by is None:
            self.stopped_by = "signal on another process"
        return stop

    def _after_step(self, log: RunLog | None, bar) -> None:
        config, step = self.config, self.step
        if step % config.log_every == 0 or step == config.steps:
            self._log(log, bar)
        if (
            self.processes.main
            and config.sample_every
            and (step % config.sample_every == 0 or step == config.steps)
        ):
            self.save_samples()
        if config.checkpoint_every and step % config.checkpoint_every == 0:
            self.save()

    def _check_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` naming the first step whose loss is NaN or inf."""
        bad = self.losses.first_non_finite()
        if any_process(bad is not None, self.processes, self.device):
            back, d_loss, g_loss = bad or (0, math.nan, math.nan)  # another process saw it
            raise NonFiniteLossError(
                f"non-finite loss at step {self.step - back} (d_loss={d_loss}, g_loss={g_loss}); "
                f"training stopped and {self._kept()}"
            )

    def _kept(self) -> str:
        if self._saved_step >= 0 or self.checkpoint_path.exists():
            return f"the last good checkpoint ({self.checkpoint_path}) is kept"
        return "no checkpoint was written"

    def _log(self, log: RunLog | None, bar) -> None:
        """Append the mean losses since the last row, the gammas and the sigmas to the log."""
        self._check_finite()
        d_loss, g_loss = self.losses.mean_and_clear()
        now = time.perf_counter()
        steps_per_s = (self.step - self._last[0]) / max(now - self._last[1], 1e-9)
        self._last = (self.step, now)
        row = {"step": self.step, "d_loss": d_loss, "g_loss": g_loss, **self.scalars()}
        row["steps_per_s"] = steps_per_s
        self.log.append(row)
        bar.set_postfix(d=f"{d_loss:.3f}", g=f"{g_loss:.3f}", refresh=False)
        if log is not None:
            log.write(row)
        if self.callback is not None:
            self.callback(self, row)

    def _columns(self) -> list[str]:
        return ["step", "d_loss", "g_loss", *self.scalars(), "steps_per_s"]

    def scalars(self) -> dict[str, float]:
        """Every attention gamma and spectral-norm sigma of G and D, as log.csv names them."""
        return network_scalars(self.generator, self.discriminator)

    # -- checkpoints --

    def state_dict(self) -> dict:
        """Everything a resumed run needs; the random states of every process."""
        return {
            "format": FORMAT,
            "step": self.step,
            "batches_seen": self.batches_seen,
            "world_size": self.processes.world,
            "config": self.config.to_dict(),
            "data": self.data_fingerprint,
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "ema": self.ema.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "rng": gather(rng_state(), self.processes),  # every process takes part
        }

    def save(self) -> None:
        """Write ``<out>/checkpoint.pt``, unless a loss since the last check or a number in the
        state is NaN or infinite: a bad state never replaces the last good one."""
        self._check_finite()
        state = self.state_dict()
        if self.processes.main:
            try:
                save_checkpoint(state, self.checkpoint_path)
            except NonFiniteStateError as error:
                raise NonFiniteLossError(
                    f"non-finite weights at step {self.step} ({error}); training stopped and "
                    f"{self._kept()}"
                ) from None
        self._saved_step = self.step

    def _restore(self, state: dict) -> None:
        path = self.checkpoint_path
        for module, key in (
            (self.generator, "generator"),
            (self.discriminator, "discriminator"),
            (self.ema, "ema"),
        ):
            load_weights(module, state[key], key, path)
        opt_g = check_optimizer_state(self.opt_g, state["opt_g"], "generator's", path)
        opt_d = check_optimizer_state(self.opt_d, state["opt_d"], "discriminator's", path)
        try:
            self.opt_g.load_state_dict(opt_g)
            self.opt_d.load_state_dict(opt_d)
            for scaler, key in ((self.scaler_g, "scaler_g"), (self.scaler_d, "scaler_d")):
                if state.get(key):
                    scaler.load_state_dict(state[key])
        except (ValueError, KeyError, RuntimeError, TypeError) as error:
            detail = " ".join(str(error).split())[:200]
            raise ValueError(f"{path}: the optimizer states do not fit ({detail})") from None
        self.step, self.batches_seen = state["step"], state["batches_seen"]
        self._saved_step = self.step
        restore_random_states(state["rng"], self.processes.rank, self.processes.world, path)
        check_data(state.get("data"), self.data_fingerprint, path)

    # -- samples --

    def save_samples(self) -> Path:
        """``samples/step_NNNNNN.png``: the fixed noise through the EMA G (rows: classes)."""
        images = self.sample()
        columns = (
            len(images) // self.config.model.num_classes
            if self.fixed_y is not None
            else math.ceil(math.sqrt(len(images)))
        )
        return save_grid(images, self.out / "samples" / f"step_{self.step:06d}.png", columns)


def train(config: TrainConfig, **options) -> TrainResult:
    """Train with ``config``; ``options`` are :class:`Trainer`'s (resume, overwrite, callback,
    networks)."""
    return Trainer(config, **options).fit()
