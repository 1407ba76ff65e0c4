"""The scaling-up appendix: its commands parse, and what it says about AMP and DDP holds."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.distributed.run import get_args_parser

from sagan_tutorial import train as train_module
from sagan_tutorial.cli import BENCH_VARIANTS, _build_parser, _given
from sagan_tutorial.models import GANConfig
from sagan_tutorial.train import ShuffledBatches, TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "book" / "15-scaling-up.ipynb"
TINY = {
    "model": GANConfig(g_width=16, d_width=16),
    "batch_size": 8,
    "progress": False,
    "tensorboard": False,
    "sample_every": 0,
}


def chapter_commands() -> list[list[str]]:
    """Every command of the chapter's ```bash blocks, continuation lines joined, as argv lists."""
    cells = json.loads(CHAPTER.read_text())["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                commands.append(shlex.split(line))
    return commands


COMMANDS = chapter_commands()


def train_argv(argv: list[str]) -> list[str]:
    """The package's part of a command: what follows ``-m sagan_tutorial``."""
    if argv[0] == "torchrun":
        launcher = get_args_parser().parse_args(argv[1:])  # torchrun's own options are valid
        assert launcher.module and launcher.training_script == "sagan_tutorial"
        return launcher.training_script_args
    assert argv[:3] == ["python", "-m", "sagan_tutorial"], argv
    return argv[3:]


def test_the_chapter_shows_the_commands_it_explains():
    flat = [" ".join(argv) for argv in COMMANDS]
    assert len(flat) >= 6
    for option in ("--amp bf16", "--amp fp16", "--channels-last", "--device cuda"):
        assert any(option in line for line in flat), option
    torchrun = [line for line in flat if line.startswith("torchrun")]
    for option in (
        "--standalone",
        "--nnodes=2",
        "--node_rank=0",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=",
        "--master_addr=",
    ):
        assert any(option in line for line in torchrun), option


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_every_command_parses_into_a_valid_config(argv):
    args = _build_parser().parse_args(train_argv(argv))
    assert args.command == "train"
    # what the train command builds, without starting a run
    config = TrainConfig(model=GANConfig(**_given(args, GANConfig)), **_given(args, TrainConfig))
    if "--amp" in argv:
        assert config.amp == argv[argv.index("--amp") + 1]
    assert config.channels_last == ("--channels-last" in argv)


def test_fp16_is_refused_on_the_cpu(tmp_path):
    with pytest.raises(ValueError, match=r"needs a CUDA device.*use 'bf16'"):
        Trainer(TrainConfig(device="cpu", amp="fp16", out=str(tmp_path)))


def test_bf16_autocast_on_the_cpu_keeps_float32_weights(tmp_path):
    trainer = Trainer(
        TrainConfig(
            **TINY,
            device="cpu",
            out=str(tmp_path),
            amp="bf16",
            channels_last=True,
            steps=2,
            log_every=1,
        )
    )
    result = trainer.fit()
    losses = torch.tensor([[row["d_loss"], row["g_loss"]] for row in result.log])
    assert losses.shape == (2, 2) and torch.isfinite(losses).all()
    assert {p.dtype for p in trainer.generator.parameters()} == {torch.float32}
    assert {p.dtype for p in trainer.discriminator.parameters()} == {torch.float32}
    conv = trainer.discriminator.blocks[0][0].parametrizations.weight.original
    assert conv.is_contiguous(memory_format=torch.channels_last)
    z = torch.randn(4, trainer.config.model.z_dim)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fake = trainer.generator(z)
        assert fake.dtype == torch.bfloat16
        assert trainer.discriminator(fake).dtype == torch.bfloat16
    # only fp16 scales the loss
    assert not trainer.scaler_g.is_enabled() and not trainer.scaler_d.is_enabled()


def test_bf16_changes_the_losses_a_little(tmp_path):
    losses = []
    for amp in ("none", "bf16"):
        trainer = Trainer(
            TrainConfig(
                **TINY, device="cpu", out=str(tmp_path / amp), amp=amp, steps=2, log_every=1
            )
        )
        losses.append(torch.tensor([[r["d_loss"], r["g_loss"]] for r in trainer.fit().log]))
    assert not torch.equal(losses[0], losses[1])
    assert torch.allclose(losses[0], losses[1], rtol=0.05)


def test_shards_are_disjoint_and_cover_each_epoch():
    stand_in = SimpleNamespace(images=torch.arange(4000), labels=torch.zeros(4000))
    one = ShuffledBatches(stand_in, batch_size=8, seed=0)
    shards = [ShuffledBatches(stand_in, batch_size=8, seed=0, rank=r, world=2) for r in range(2)]
    assert one.per_epoch == 500 and [s.per_epoch for s in shards] == [250, 250]
    for epoch in (0, 1):
        orders = [s.order(epoch) for s in shards]
        assert not set(orders[0].tolist()) & set(orders[1].tolist())
        assert set(orders[0].tolist()) | set(orders[1].tolist()) == set(range(4000))
        for rank, order in enumerate(orders):
            assert torch.equal(order, one.order(epoch)[rank::2])
    assert not torch.equal(shards[0].order(1), shards[0].order(0))
    images, _ = shards[1].batch(0)  # a batch holds batch_size images per process
    assert torch.equal(images, one.order(0)[1::2][:8])


@pytest.mark.parametrize(("device", "backend"), [("cpu", "gloo"), ("cuda", "nccl")])
def test_process_group_backend(monkeypatch, device, backend):
    started = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(train_module.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(
        train_module.dist, "init_process_group", lambda backend: started.update(backend=backend)
    )
    monkeypatch.setattr(train_module.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(train_module.dist, "get_world_size", lambda: 2)
    processes = train_module._start_processes(device)
    assert started["backend"] == backend
    assert (processes.rank, processes.world, processes.local_rank) == (1, 2, 1)
    assert not processes.main and processes.owned


def test_every_process_seeds_its_noise_from_seed_and_rank(tmp_path):
    Trainer(TrainConfig(**TINY, device="cpu", out=str(tmp_path), seed=3))
    after = torch.get_rng_state()
    torch.manual_seed(3 * 1_000_003 + 0)  # rank 0
    assert torch.equal(after, torch.get_rng_state())


def test_the_two_benchmark_tables_have_the_columns_the_chapter_reads():
    spec = importlib.util.spec_from_file_location(
        "attention_bench_15", ROOT / "benchmarks" / "attention.py"
    )
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    rows = [bench.Row(8, 16, 2, name, name, 0.002, 2e6, 0.001, 1e6) for name in ("bmm", "auto")]
    table = bench.format_table(rows, torch.device("cpu"))
    header = [cell.strip() for cell in table.splitlines()[2].strip("|").split("|")]
    assert header[0] == "map" and header[3] == "backend"
    assert header[5] == "fwd+bwd speed" and header[7] == "fwd+bwd memory"
    assert table.split("\n\n")[1].startswith("| map")
    # bench: each variant adds one speed-up to the one above; the default is the third
    names = [name for name, _, _ in BENCH_VARIANTS]
    assert names[0].startswith("plain") and "(default)" in names[2]
    assert names[3:] == ["+ channels_last", "+ bf16 autocast"]
    assert BENCH_VARIANTS[4][2] == {"channels_last": True, "amp": "bf16"}
