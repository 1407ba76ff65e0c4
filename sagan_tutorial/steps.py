"""One training step of the GAN: ``n_dis`` updates of D, then one of G and of its EMA.

:class:`GANSteps` holds the two networks, the EMA copy of G, their Adam optimizers with the two
time-scale learning rates of SAGAN (TTUR: 1e-4 for G, 4e-4 for D, betas (0.0, 0.9)) and, for
fp16, their gradient scalers. :class:`~sagan_tutorial.train.Trainer` builds on it with the data,
the loop, the log and the checkpoints.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .config import TrainConfig
from .distributed import Processes, broadcast_buffers
from .ema import ema_decay_at, update_ema
from .losses import discriminator_loss, generator_loss, gradient_penalty
from .models import Discriminator, GANConfig, Generator

__all__ = ["GANSteps"]


class GANSteps:
    """G, D, the EMA of G and their optimizers, built from ``config`` on ``device``.

    Every process of a torchrun run builds the same initial weights (seeded by ``config.seed``);
    under torchrun, ``g_train`` and ``d_train`` are the DistributedDataParallel wrappers that
    average the gradients. ``networks(model_config) -> (G, D)`` replaces the package's networks
    (for experiments: the book's gallery trains layers broken on purpose); they must take and
    return what :class:`Generator` and :class:`Discriminator` do.
    """

    def __init__(
        self,
        config: TrainConfig,
        device: torch.device,
        processes: Processes | None = None,
        networks: Callable[[GANConfig], tuple[nn.Module, nn.Module]] | None = None,
    ) -> None:
        self.config, self.device, self.processes = config, device, processes or Processes()
        config = self.config
        torch.manual_seed(config.seed)  # every process builds the same initial weights
        build = networks or (lambda model: (Generator(model), Discriminator(model)))
        built = build(config.model)
        if not (
            isinstance(built, tuple | list)
            and len(built) == 2
            and all(isinstance(net, nn.Module) for net in built)
        ):
            raise TypeError(f"networks must return (G, D), two nn.Modules, got {built!r:.100}")
        generator, discriminator = built
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
        if config.compile:
            # Static shapes: D's training forward sees 2B images (real and fake) and would
            # otherwise be recompiled with symbolic sizes, which Inductor (torch 2.13) cannot
            # lower here ("Cannot convert expression to float"). The modules themselves stay
            # plain, so their state dicts and the EMA are unchanged.
            self.g_train = torch.compile(self.g_train, dynamic=False)
            self.d_train = torch.compile(self.d_train, dynamic=False)
        # fused=True: one kernel updates every parameter (else torch's per-parameter default).
        adam = {"betas": (config.beta1, config.beta2), "fused": config.fused_adam or None}
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr_g, **adam)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr_d, **adam)
        fp16 = config.amp == "fp16"
        self.scaler_g = torch.amp.GradScaler(device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=fp16)

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

    def d_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One D update on a batch of real images (B, C, S, S) and their labels (B,), against
        as many fakes; returns the (detached) D loss."""
        config = self.config
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

    def g_step(self, step: int) -> torch.Tensor:
        """One G update through the (frozen) D, then the EMA update with the decay of ``step``
        (1-based, see :func:`~sagan_tutorial.ema.ema_decay_at`); returns the G loss."""
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
        broadcast_buffers(self.generator, self.processes)  # one set of BN statistics
        update_ema(self.ema, self.generator, ema_decay_at(step, self.config.ema_decay))
        return loss.detach()

    # -- samples --

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
