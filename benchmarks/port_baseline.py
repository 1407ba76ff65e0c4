"""The PyTorch port's training step against the package's default, at 64 px: steps per second.

    python benchmarks/port_baseline.py                 # batch 16, best of 3 x 5 steps each
    python benchmarks/port_baseline.py --profile       # also: the package's step by kind of op
    python benchmarks/port_baseline.py --compile       # also: the package's step under --compile
    python benchmarks/port_baseline.py --malloc        # then again, glibc keeping freed memory
    python benchmarks/port_baseline.py --device cuda --compile --profile   # on a GPU

The baseline is written here from the port's algorithm (heykeetae/Self-Attention-GAN, commit
8714a54): its own spectral-norm wrapper, which runs one power iteration in every forward and
keeps u and v as parameters; its `bmm` attention with plain 1x1 convs (no spectral norm on
them), every layer handing its N x N map back; G and D at 64 px with its widths (conv_dim 64,
z 100 where the port's parameter.py says 128: G 3.60M and D 3.18M parameters) and attention in G
at 16x16 and 32x32, in D at 8x8 and 4x4; its loop (trainer.py): hinge loss, Adam (1e-4 for G,
4e-4 for D, betas (0.0, 0.9)), one D update on a real forward and a fake forward whose fakes
are not detached (D's backward runs through G as well), then one G update on fresh noise. The
package's side is its own training step (`GANSteps`, whose D update makes its fakes without
gradients) on a `GANConfig` of the same shape. Both run on the same random batches, in one
process, the variants interleaved (a busy moment of the machine hits each), keeping the best
repeat: other programs only ever slow a measurement down. The table gives the ratio to the port.

Two more rows are not the same model: the package's network without its attention layers, and
without attention and spectral norm. They say what those parts cost in the package's step, so
what any speed-up of them can buy (a floor, not a variant to train).

``--keep-freed`` times with glibc's allocator keeping freed memory (``mallopt``, as
``python -m sagan_tutorial.bench_attention --keep-freed`` does) instead of handing large blocks
back to the system and faulting them in again on the next allocation, which the port's 64 MiB
attention maps pay on every step; ``--malloc`` runs the measurement with the default allocator,
then again in a new process with ``--keep-freed``. Linux with glibc only.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from collections import defaultdict

import torch
from torch import nn
from torch.nn import functional as F

from sagan_tutorial.bench_attention import allocator_settable, device_name, keep_freed_memory
from sagan_tutorial.cli import Parser, guarded
from sagan_tutorial.config import TrainConfig, bounded_int
from sagan_tutorial.models import GANConfig
from sagan_tutorial.steps import GANSteps

Z_DIM, WIDTH = 100, 64
CPU = torch.device("cpu")


# --- the port's computation ------------------------------------------------------------------


def _unit(v: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return v / (v.norm() + eps)


class PortSpectralNorm(nn.Module):
    """The port's wrapper: the raw weight becomes ``weight_bar``; every forward runs one power
    iteration on it (flattened from dim 0) and sets ``weight = weight_bar / sigma``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        w = module.weight
        height = w.shape[0]
        u = _unit(w.detach().new_empty(height).normal_())
        v = _unit(w.detach().new_empty(w[0].numel()).normal_())
        del module._parameters["weight"]
        module.register_parameter("weight_bar", nn.Parameter(w.detach().clone()))
        module.register_parameter("weight_u", nn.Parameter(u, requires_grad=False))
        module.register_parameter("weight_v", nn.Parameter(v, requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        w = m.weight_bar.view(m.weight_bar.shape[0], -1)
        with torch.no_grad():
            m.weight_v.data = _unit(w.t().mv(m.weight_u))
            m.weight_u.data = _unit(w.mv(m.weight_v))
        sigma = m.weight_u.dot(w.mv(m.weight_v))
        m.weight = m.weight_bar / sigma
        return m(x)


class PortSelfAttention(nn.Module):
    """The port's layer: query and key C -> C/8, value C -> C, softmax over the keys, bmm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(channels, channels // 8, 1)
        self.key_conv = nn.Conv2d(channels, channels // 8, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        query = self.query_conv(x).view(b, -1, h * w).permute(0, 2, 1)  # (B, N, C/8)
        key = self.key_conv(x).view(b, -1, h * w)  # (B, C/8, N)
        attention = torch.softmax(torch.bmm(query, key), dim=-1)  # (B, N, N)
        value = self.value_conv(x).view(b, -1, h * w)  # (B, C, N)
        out = torch.bmm(value, attention.permute(0, 2, 1)).view(b, c, h, w)
        return self.gamma * out + x, attention  # the port hands every map back


def _up(cin: int, cout: int, first: bool = False) -> nn.Sequential:
    conv = nn.ConvTranspose2d(cin, cout, 4) if first else nn.ConvTranspose2d(cin, cout, 4, 2, 1)
    return nn.Sequential(PortSpectralNorm(conv), nn.BatchNorm2d(cout), nn.ReLU())


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(PortSpectralNorm(nn.Conv2d(cin, cout, 4, 2, 1)), nn.LeakyReLU(0.1))


class PortGenerator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = _up(Z_DIM, WIDTH * 8, first=True), _up(WIDTH * 8, WIDTH * 4)
        self.l3, self.l4 = _up(WIDTH * 4, WIDTH * 2), _up(WIDTH * 2, WIDTH)
        self.attn1, self.attn2 = PortSelfAttention(WIDTH * 2), PortSelfAttention(WIDTH)
        self.last = nn.Sequential(nn.ConvTranspose2d(WIDTH, 3, 4, 2, 1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.l3(self.l2(self.l1(z.view(z.shape[0], -1, 1, 1))))  # (B, 128, 16, 16)
        out, p1 = self.attn1(out)
        out, p2 = self.attn2(self.l4(out))  # (B, 64, 32, 32)
        return self.last(out), p1, p2  # (B, 3, 64, 64) and the two maps


class PortDiscriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = _down(3, WIDTH), _down(WIDTH, WIDTH * 2)
        self.l3, self.l4 = _down(WIDTH * 2, WIDTH * 4), _down(WIDTH * 4, WIDTH * 8)
        self.attn1, self.attn2 = PortSelfAttention(WIDTH * 4), PortSelfAttention(WIDTH * 8)
        self.last = nn.Conv2d(WIDTH * 8, 1, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out, p1 = self.attn1(self.l3(self.l2(self.l1(x))))  # (B, 256, 8, 8)
        out, p2 = self.attn2(self.l4(out))
        return self.last(out).flatten(), p1, p2  # (B,) and the two maps


class PortSteps:
    """The port's loop body (its trainer.py): a D update on real and fake forwards apart, then a
    G update on fresh noise.

    As in the port, the fakes of D's update are not detached, so D's backward runs through G
    too (the G gradients it makes are zeroed before G's update), and D's parameters get
    gradients in G's update (zeroed before the next D update). The maps that G and D hand back
    stay referenced until the next step overwrites them, as the trainer's loop variables do.
    """

    def __init__(self, batch: int, device: torch.device = CPU) -> None:
        torch.manual_seed(0)
        self.generator = PortGenerator().to(device)
        self.discriminator = PortDiscriminator().to(device)
        self.batch, self.device = batch, device
        adam = {"betas": (0.0, 0.9)}
        self.opt_g = torch.optim.Adam(
            (p for p in self.generator.parameters() if p.requires_grad), lr=1e-4, **adam
        )
        self.opt_d = torch.optim.Adam(
            (p for p in self.discriminator.parameters() if p.requires_grad), lr=4e-4, **adam
        )
        self.held: dict[str, object] = {}  # the trainer's loop variables

    def _noise(self) -> torch.Tensor:
        return torch.randn(self.batch, Z_DIM, device=self.device)

    def step(self, images: torch.Tensor) -> None:
        held = self.held
        d_out_real, *held["dr"] = self.discriminator(images)
        d_loss_real = F.relu(1.0 - d_out_real).mean()
        fake_images, *held["gf"] = self.generator(self._noise())
        d_out_fake, *held["df"] = self.discriminator(fake_images)
        d_loss = d_loss_real + F.relu(1.0 + d_out_fake).mean()
        self.opt_d.zero_grad()
        self.opt_g.zero_grad()
        d_loss.backward()
        self.opt_d.step()
        fake_images, *held["_"] = self.generator(self._noise())
        g_out_fake, *held["_"] = self.discriminator(fake_images)
        g_loss = -g_out_fake.mean()
        self.opt_d.zero_grad()
        self.opt_g.zero_grad()
        g_loss.backward()
        self.opt_g.step()


# --- the package's training step, same shape ------------------------------------------------


PACKAGE_MODEL = GANConfig(
    image_size=64,
    channels=3,
    z_dim=Z_DIM,
    g_width=WIDTH,
    d_width=WIDTH,
    g_attention=(16, 32),
    d_attention=(8, 4),
)
NO_ATTENTION = dataclasses.replace(PACKAGE_MODEL, g_attention=(), d_attention=())
NO_ATTENTION_NO_SN = dataclasses.replace(NO_ATTENTION, sn="none")


class PackageSteps:
    def __init__(
        self, batch: int, model: GANConfig = PACKAGE_MODEL, device: torch.device = CPU, **changes
    ) -> None:
        config = TrainConfig(model=model, batch_size=batch, **changes)
        self.steps, self.count = GANSteps(config, device), 0
        self.labels = torch.zeros(batch, dtype=torch.long, device=device)
        self.generator, self.discriminator = self.steps.generator, self.steps.discriminator

    def step(self, images: torch.Tensor) -> None:
        self.count += 1
        self.steps.d_step(images, self.labels)
        self.steps.g_step(self.count)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def variants(
    batch: int, compiled: bool = False, device: torch.device = CPU
) -> dict[str, PortSteps | PackageSteps]:
    runners = {
        "the port (baseline)": PortSteps(batch, device),
        "package default": PackageSteps(batch, device=device),
    }
    if compiled:  # torch.compile of G's and D's training forwards (compiled in the warm-up)
        runners["package default, --compile"] = PackageSteps(batch, device=device, compile=True)
    for name, model in (
        ("package, no attention layers (a floor)", NO_ATTENTION),
        ("package, no attention, no SN (a floor)", NO_ATTENTION_NO_SN),
    ):
        runners[name] = PackageSteps(batch, model, device)
    return runners


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    batch: int, steps: int, repeats: int, compiled: bool = False, device: torch.device = CPU
) -> list[tuple[str, float, int, int]]:
    """(variant, best seconds per step, G params, D params), the port first."""
    runners = variants(batch, compiled, device)
    # the same batches for every variant
    images = torch.rand(steps, batch, 3, 64, 64, device=device) * 2 - 1
    best = dict.fromkeys(runners, float("inf"))
    for runner in runners.values():  # warm-up: first calls allocate and pick kernels
        runner.step(images[0])
    for _ in range(repeats):
        for name, runner in runners.items():
            _sync(device)
            start = time.perf_counter()
            for k in range(steps):
                runner.step(images[k])
            _sync(device)
            best[name] = min(best[name], (time.perf_counter() - start) / steps)
    return [
        (name, best[name], count(runner.generator), count(runner.discriminator))
        for name, runner in runners.items()
    ]


def format_table(rows: list[tuple[str, float, int, int]]) -> str:
    port = rows[0][1]
    lines = [
        "| variant | G params | D params | steps/s | ms/step | vs the port |",
        "|---|---|---|---|---|---|",
    ]
    for name, seconds, g, d in rows:
        lines.append(
            f"| {name} | {g / 1e6:.2f}M | {d / 1e6:.2f}M | {1 / seconds:.2f} | "
            f"{1000 * seconds:.0f} | {port / seconds:.2f}x |"
        )
    times = {name: seconds for name, seconds, _, _ in rows}
    default = times["package default"]
    no_attention = times["package, no attention layers (a floor)"]
    bare = times["package, no attention, no SN (a floor)"]
    lines += [
        "",
        f"The package's step: {1000 * default:.0f} ms; attention layers "
        f"{1000 * (default - no_attention):.0f} ms, spectral norm "
        f"{1000 * (no_attention - bare):.0f} ms, the rest (convolutions, BatchNorm, Adam, EMA) "
        f"{1000 * bare:.0f} ms. Twice the port's speed is {500 * port:.0f} ms per step.",
    ]
    return "\n".join(lines)


# Kinds of op in the profile, by the name of the ATen op or autograd function.
KINDS = (
    ("convolutions", ("conv",)),
    ("attention products and softmax", ("bmm", "softmax", "blockedattention")),
    ("BatchNorm", ("batch_norm",)),
    ("Adam", ("adam",)),
)


def profile(batch: int, steps: int, device: torch.device = CPU) -> str:
    """The package's step in the profiler: self time per kind of op, then the top ops (on CUDA:
    the time of the GPU kernels)."""
    runner = PackageSteps(batch, device=device)
    images = torch.rand(batch, 3, 64, 64, device=device) * 2 - 1
    runner.step(images)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    _sync(device)
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            runner.step(images)
        _sync(device)
    wall = (time.perf_counter() - start) / steps
    events = prof.key_averages()
    kinds: dict[str, float] = defaultdict(float)
    for event in events:
        name = event.key.lower()
        kind = next((k for k, keys in KINDS if any(key in name for key in keys)), "other ops")
        own = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
        kinds[kind] += own / 1e6 / steps
    total = sum(kinds.values())
    lines = [
        f"Self time of the ops per step, {steps} profiled steps ({1000 * wall:.0f} ms per step "
        f"of wall time under the profiler; ops {100 * total / wall:.0f}% of it):",
        "",
        "| kind of op | ms/step | share |",
        "|---|---|---|",
    ]
    for kind, _ in (*KINDS, ("other ops", ())):
        lines.append(f"| {kind} | {1000 * kinds[kind]:.0f} | {100 * kinds[kind] / total:.0f}% |")
    order = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    lines += ["", events.table(sort_by=order, row_limit=15)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="benchmarks/port_baseline.py",
        description=__doc__.splitlines()[0],
        allow_abbrev=False,  # --malloc is passed on to the child process without itself
    )
    parser.add_argument("--batch-size", type=bounded_int(1, 256), default=16)
    parser.add_argument("--steps", type=bounded_int(1, 100), default=5)  # batches made ahead
    parser.add_argument("--repeats", type=bounded_int(1, 100), default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--keep-freed", action="store_true")
    which.add_argument("--malloc", action="store_true")
    argv = sys.argv[1:] if argv is None else argv

    def body() -> int:
        args = parser.parse_args(argv)
        if args.keep_freed and not keep_freed_memory():
            parser.error("--keep-freed needs glibc (Linux), whose mallopt accepts the settings")
        if args.malloc and not allocator_settable():
            parser.error("--malloc needs glibc (Linux), whose mallopt accepts the settings")
        if args.device == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda asked for, but CUDA is not available here")
        device = torch.device(args.device)
        rows = measure(args.batch_size, args.steps, args.repeats, args.compile, device)
        allocator = "glibc keeping freed memory" if args.keep_freed else "the default allocator"
        print(
            f"64 px, {device.type} ({device_name(device)}), batch {args.batch_size}, "
            f"{torch.get_num_threads()} CPU threads, torch "
            f"{torch.__version__}, {allocator}; best of {args.repeats} x {args.steps} steps\n"
        )
        print(format_table(rows))
        if args.profile:
            print()
            print(profile(args.batch_size, args.steps, device))
        if not args.malloc:
            return 0
        print("\nThe same in a new process, glibc keeping freed memory:\n", flush=True)
        child = [a for a in argv if a != "--malloc"]
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that finally runs
        with subprocess.Popen([sys.executable, __file__, *child, "--keep-freed"]) as run:
            try:
                return run.wait()
            finally:  # Ctrl-C or an error here: the child goes too
                if run.poll() is None:
                    run.terminate()

    return guarded(body, lambda: "a smaller --batch-size")


if __name__ == "__main__":
    raise SystemExit(main())
