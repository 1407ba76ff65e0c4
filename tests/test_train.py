"""The trainer: TTUR, n_dis, EMA, sample grids, the CSV log, checkpoints, resume, signals, DDP."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from sagan_tutorial.models import GANConfig, attention_layers, spectral_sigmas
from sagan_tutorial.train import (
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    ema_decay_at,
    load_checkpoint,
    load_generator,
    save_checkpoint,
    train,
    update_ema,
)

ROOT = Path(__file__).resolve().parents[1]
# A tiny model and batch: every test here trains for a handful of steps in well under a second.
TINY = [
    "--g-width",
    "16",
    "--d-width",
    "16",
    "--batch-size",
    "8",
    "--no-progress",
    "--no-tensorboard",
]


def tiny(tmp_path, **options) -> TrainConfig:
    values = {
        "model": GANConfig(g_width=16, d_width=16),
        "batch_size": 8,
        "steps": 4,
        "out": str(tmp_path / "run"),
        "progress": False,
        "tensorboard": False,
        "log_every": 1,
        "sample_every": 0,
        "checkpoint_every": 0,
    }
    model = options.pop("model", {})
    values["model"] = GANConfig(**{**values["model"].to_dict(), **model})
    return TrainConfig(**{**values, **options})


# One thread per training process: the runs compared bit for bit use the same count, and two
# processes on a busy machine do not spin against each other.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sagan_tutorial", *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def tensors(state: dict, prefix: str = ""):
    """(name, tensor) for every tensor in a nested checkpoint entry."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            yield prefix + str(key), value
        elif isinstance(value, dict):
            yield from tensors(value, f"{prefix}{key}.")


def assert_same_weights(a: dict, b: dict) -> None:
    for net in ("generator", "discriminator", "ema", "opt_g", "opt_d"):
        ta, tb = dict(tensors(a[net])), dict(tensors(b[net]))
        assert ta.keys() == tb.keys() and ta
        for name in ta:
            assert torch.equal(ta[name], tb[name]), f"{net}.{name} differs"


# ----------------------------------------------------------------------------------------------
# configuration and optimizers


def test_ttur_adam_settings(tmp_path):
    trainer = Trainer(tiny(tmp_path))
    for optimizer, lr, net in (
        (trainer.opt_g, 1e-4, trainer.generator),
        (trainer.opt_d, 4e-4, trainer.discriminator),
    ):
        (group,) = optimizer.param_groups
        assert group["lr"] == lr and group["betas"] == (0.0, 0.9)
        assert all(isinstance(beta, float) for beta in group["betas"])
        assert {id(p) for p in group["params"]} == {id(p) for p in net.parameters()}


def test_config_checks_its_values(tmp_path):
    with pytest.raises(ValueError, match=r"loss must be one of .* got 'hinj'"):
        tiny(tmp_path, loss="hinj")
    with pytest.raises(ValueError, match="n_dis must be at least 1, got 0"):
        tiny(tmp_path, n_dis=0)
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\), got 1.5"):
        tiny(tmp_path, ema_decay=1.5)
    with pytest.raises(TypeError, match="steps must be int, got str"):
        tiny(tmp_path, steps="10")
    with pytest.raises(ValueError, match="amp must be one of"):
        tiny(tmp_path, amp="fp8")
    assert tiny(tmp_path, lr_g=1).lr_g == 1.0 and isinstance(tiny(tmp_path, lr_g=1).lr_g, float)
    config = tiny(tmp_path, model={"num_classes": 10})
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields \['colour'\]"):
        TrainConfig.from_dict({**config.to_dict(), "colour": 1})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="amp 'fp16' needs a CUDA device, got 'cpu'"):
            Trainer(tiny(tmp_path, amp="fp16", device="cpu"))


def test_n_dis_discriminator_steps_per_generator_step(tmp_path):
    result = train(tiny(tmp_path, n_dis=3, steps=2))
    state = load_checkpoint(result.checkpoint)
    adam_steps = {
        name: {float(s["step"]) for s in state[name]["state"].values()}
        for name in ("opt_d", "opt_g")
    }
    assert adam_steps == {"opt_d": {6.0}, "opt_g": {2.0}}
    assert state["step"] == 2 and state["batches_seen"] == 6


# ----------------------------------------------------------------------------------------------
# EMA


def test_update_ema_math():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model(torch.randn(5, 3))  # moves the BatchNorm statistics away from ema's
    before = [p.detach().clone() for p in ema.parameters()]
    update_ema(ema, model, 0.9)
    for old, new, p in zip(before, ema.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * p, rtol=0, atol=1e-7)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        assert torch.equal(ema_buffer, buffer)  # copied, not averaged
    assert ema_decay_at(1, 0.999) == pytest.approx(2 / 11)
    assert ema_decay_at(100_000, 0.999) == 0.999
    with pytest.raises(ValueError, match="ema has 2 parameters, the model 4"):
        update_ema(nn.Linear(2, 2), model, 0.9)


def test_trainer_ema_after_one_step(tmp_path):
    trainer = Trainer(tiny(tmp_path, steps=1, ema_decay=0.5))
    initial = [p.detach().clone() for p in trainer.ema.parameters()]
    pairs = zip(initial, trainer.generator.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)  # the EMA starts as a copy of G
    trainer.fit()
    decay = ema_decay_at(1, 0.5)  # 2/11 < 0.5: the warm-up applies
    triples = zip(initial, trainer.ema.parameters(), trainer.generator.parameters(), strict=True)
    for old, ema, g in triples:
        torch.testing.assert_close(ema, decay * old + (1 - decay) * g.detach())
    assert not all(
        torch.equal(a, b) for a, b in zip(initial, trainer.ema.parameters(), strict=True)
    )


# ----------------------------------------------------------------------------------------------
# samples and the log


def test_sample_grids_are_written_with_the_right_size(tmp_path):
    result = train(tiny(tmp_path, steps=4, sample_every=2, n_samples=10))
    names = sorted(p.name for p in (result.out / "samples").iterdir())
    assert names == ["step_000000.png", "step_000002.png", "step_000004.png"]
    image = Image.open(result.out / "samples" / "step_000004.png")
    # 10 images, 4 per row (ceil(sqrt(10))), 3 rows of 32 px, 2 px between them
    assert image.size == (4 * 34 - 2, 3 * 34 - 2) and image.mode == "L"


def test_conditional_grid_has_a_row_per_class(tmp_path):
    result = train(tiny(tmp_path, steps=1, sample_every=1, n_samples=20, model={"num_classes": 10}))
    image = Image.open(result.out / "samples" / "step_000001.png")
    assert image.size == (2 * 34 - 2, 10 * 34 - 2)


def test_log_csv_has_losses_gammas_and_sigmas(tmp_path):
    seen = []
    trainer = Trainer(
        tiny(tmp_path, steps=4, log_every=2), callback=lambda t, row: seen.append(dict(row))
    )
    result = trainer.fit()
    with open(result.out / "log.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    g, d = trainer.generator, trainer.discriminator
    expected = (
        ["step", "d_loss", "g_loss"]
        + [f"gamma/G.{name}" for name, _ in attention_layers(g)]
        + [f"gamma/D.{name}" for name, _ in attention_layers(d)]
        + [f"sigma/G.{name}" for name in spectral_sigmas(g)]
        + [f"sigma/D.{name}" for name in spectral_sigmas(d)]
        + ["steps_per_s"]
    )
    assert list(rows[0]) == expected
    assert len(attention_layers(g)) == 2 and len(spectral_sigmas(d)) >= 3
    assert [int(row["step"]) for row in rows] == [2, 4]
    assert all(math.isfinite(float(v)) for row in rows for v in row.values())
    assert seen == result.log and [row["step"] for row in seen] == [2, 4]
    for name, layer in attention_layers(g):  # the last row holds the gammas at the end
        assert float(rows[-1][f"gamma/G.{name}"]) == pytest.approx(float(layer.gamma.detach()))
        assert float(layer.gamma.detach()) != 0.0  # trained away from its initial 0
    for name, sigma in spectral_sigmas(d).items():
        assert float(rows[-1][f"sigma/D.{name}"]) == pytest.approx(sigma)


def test_other_losses_conditional_and_mixed_precision_train(tmp_path):
    for i, options in enumerate(
        [
            {"loss": "wgan-gp", "n_dis": 2},
            {"loss": "nonsaturating", "model": {"num_classes": 10}},
            {"amp": "bf16", "channels_last": True},
        ]
    ):
        result = train(tiny(tmp_path / str(i), steps=2, **options))
        assert result.step == 2 and len(result.log) == 2
        assert all(math.isfinite(row["d_loss"] + row["g_loss"]) for row in result.log)


# ----------------------------------------------------------------------------------------------
# checkpoints


def test_checkpoint_contents(tmp_path):
    config = tiny(tmp_path, steps=2)
    trainer = Trainer(config)
    trainer.fit()
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 2 and state["batches_seen"] == 2 and state["world_size"] == 1
    assert TrainConfig.from_dict(state["config"]) == config
    for key, net in (
        ("generator", trainer.generator),
        ("discriminator", trainer.discriminator),
        ("ema", trainer.ema),
    ):
        own = net.state_dict()
        assert state[key].keys() == own.keys()
        assert all(torch.equal(state[key][name], own[name]) for name in own)
    assert state["opt_g"]["param_groups"][0]["lr"] == 1e-4
    (rng,) = state["rng"]
    assert rng["torch"].dtype == torch.uint8 and torch.equal(rng["torch"], torch.get_rng_state())
    assert set(rng) == {"torch", "cuda", "numpy", "python"}
    assert rng["numpy"]["keys"].shape == (624,) and rng["python"]["internal"].shape == (625,)
    generator = load_generator(tmp_path / "run" / "checkpoint.pt", device="cpu")
    assert not generator.training
    ema = trainer.ema.state_dict()
    assert all(torch.equal(tensor, ema[name]) for name, tensor in generator.state_dict().items())


def test_random_states_round_trip_through_a_checkpoint(tmp_path):
    import random

    import numpy as np

    from sagan_tutorial.train import _rng_state, _set_rng_state

    save_checkpoint({"rng": _rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    _set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_atomic_write_leaves_the_old_file_when_saving_fails(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"old": torch.ones(3)}, path)
    before = path.read_bytes()

    def broken_save(obj, file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"new": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left


def test_corrupt_and_foreign_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "absent.pt")
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(1000))
    with pytest.raises(ValueError, match=r"noise\.pt is not a checkpoint written by"):
        load_checkpoint(noise)
    foreign = tmp_path / "linear.pt"
    torch.save(nn.Linear(2, 2).state_dict(), foreign)
    with pytest.raises(ValueError, match=r"linear\.pt is not a sagan_tutorial checkpoint"):
        load_checkpoint(foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": object}, pickled)  # not loadable with weights_only=True
    with pytest.raises(ValueError, match=r"pickled\.pt is not a checkpoint written by"):
        load_checkpoint(pickled)

    result = train(tiny(tmp_path, steps=1))
    state = torch.load(result.checkpoint, weights_only=True)
    del state["ema"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"partial\.pt is an incomplete checkpoint: .*'ema'"):
        load_checkpoint(tmp_path / "partial.pt")
    state = torch.load(result.checkpoint, weights_only=True)
    state["config"]["model"]["g_width"] = 32  # the weights no longer fit the config
    torch.save(state, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match=r"mismatch\.pt: the generator weights do not fit"):
        load_generator(tmp_path / "mismatch.pt", device="cpu")


def test_resume_refuses_other_options(tmp_path):
    train(tiny(tmp_path, steps=2))
    with pytest.raises(ValueError, match=r"cannot resume .*lr_d: 0.0004 in the checkpoint, 0.001"):
        Trainer(tiny(tmp_path, steps=4, lr_d=1e-3), resume=True)
    resumed = Trainer(tiny(tmp_path, steps=4, log_every=2), resume=True)  # logging may change
    assert resumed.step == 2 and resumed.config.log_every == 2
    with pytest.raises(FileNotFoundError):
        Trainer(tiny(tmp_path / "elsewhere"), resume=True)


def test_resume_in_process_matches_a_straight_run(tmp_path):
    straight = train(tiny(tmp_path / "a", steps=6, checkpoint_every=3))
    train(tiny(tmp_path / "b", steps=3))
    resumed = train(tiny(tmp_path / "b", steps=6), resume=True)
    assert resumed.step == 6
    assert_same_weights(load_checkpoint(straight.checkpoint), load_checkpoint(resumed.checkpoint))


def test_resume_after_sigkill_is_bit_exact(tmp_path):
    """Kill a run (SIGKILL) after a checkpoint, resume it: the same weights as a straight run."""
    steps = "30"
    args = [
        *TINY,
        "--steps",
        steps,
        "--checkpoint-every",
        "1",
        "--sample-every",
        "5",
        "--log-every",
        "2",
    ]
    straight = cli("train", *args, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "sagan_tutorial", "train", *args, "--out", str(killed_dir)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint, deadline = killed_dir / "checkpoint.pt", time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if checkpoint.exists() and load_checkpoint(checkpoint)["step"] >= 3:
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    killed_at = load_checkpoint(checkpoint)["step"]
    assert process.returncode == -signal.SIGKILL
    assert 3 <= killed_at < int(steps), "the run must be killed part-way"
    resumed = cli("train", *args, "--out", str(killed_dir), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(checkpoint)
    assert a["step"] == b["step"] == int(steps)
    assert_same_weights(a, b)
    with open(killed_dir / "log.csv", newline="") as file:
        logged = [int(row["step"]) for row in csv.DictReader(file)]
    assert logged == list(range(2, int(steps) + 1, 2))  # no step logged twice


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    def poison(trainer, row):
        if row["step"] == 3:
            with torch.no_grad():
                next(trainer.discriminator.parameters()).fill_(float("nan"))

    config = tiny(tmp_path, steps=10, checkpoint_every=2)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 4 .*checkpoint.pt"):
        train(config, callback=poison)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(t).all() for _, t in tensors(state["discriminator"]))


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sagan_tutorial",
            "train",
            *TINY,
            "--steps",
            "100000",
            "--checkpoint-every",
            "0",
            "--log-every",
            "1",
            "--sample-every",
            "0",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        log = out / "log.csv"
        if log.exists() and len(log.read_text().splitlines()) > 3:  # training is under way
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "stopped by SIGTERM at step" in stderr and "Traceback" not in stderr
    state = load_checkpoint(out / "checkpoint.pt")
    assert 3 <= state["step"] < 100000
    assert f"step {state['step']}:" in stdout


def test_torchrun_two_processes_end_with_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "sagan_tutorial",
            "train",
            *TINY,
            "--steps",
            "3",
            "--log-every",
            "1",
            "--sample-every",
            "3",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    digests = (out / "replicas.txt").read_text().split()
    assert len(digests) == 2 and digests[0] == digests[1]  # each process hashed its own weights
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 3 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # own noise
    # 2 processes x batch 8 per D step: every process drew its own shard
    assert state["batches_seen"] == 3
    assert (out / "samples" / "step_000003.png").exists()


def test_progress_bar_shows_in_a_notebook_kernel_only(monkeypatch):
    from sagan_tutorial.train import _in_notebook

    class ZMQInteractiveShell:  # the class name of the shell inside a Jupyter kernel
        pass

    class TerminalInteractiveShell:
        pass

    fake = types.ModuleType("IPython")
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert not _in_notebook()  # IPython imported but no running shell
    fake.get_ipython = TerminalInteractiveShell
    assert not _in_notebook()
    fake.get_ipython = ZMQInteractiveShell
    assert _in_notebook()
    monkeypatch.delitem(sys.modules, "IPython")
    assert not _in_notebook()
