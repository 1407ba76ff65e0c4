"""The training loop: TTUR, n_dis, samples, the log, resume, the run folder, signals, DDP."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from sagan_tutorial.checkpoint import load_checkpoint
from sagan_tutorial.files import RUN_FILES, RunExistsError, RunFolderBusyError, tensors_in
from sagan_tutorial.models import attention_layers, spectral_sigmas
from sagan_tutorial.restore import ResumeWarning
from sagan_tutorial.train import NonFiniteLossError, Trainer, train

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--g-width",
    "16",
    "--d-width",
    "16",
    "--batch-size",
    "8",
    "--no-progress",
    "--no-tensorboard",
    "--device",
    "cpu",
]
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


def assert_same_weights(a: dict, b: dict) -> None:
    for net in ("generator", "discriminator", "ema", "opt_g", "opt_d"):
        ta, tb = dict(tensors_in(a[net])), dict(tensors_in(b[net]))
        assert ta.keys() == tb.keys() and ta
        for name in ta:
            assert torch.equal(ta[name], tb[name]), f"{net}.{name} differs"


def test_ttur_adam_settings(tiny):
    trainer = Trainer(tiny())
    for optimizer, lr, net in (
        (trainer.opt_g, 1e-4, trainer.generator),
        (trainer.opt_d, 4e-4, trainer.discriminator),
    ):
        (group,) = optimizer.param_groups
        assert group["lr"] == lr and group["betas"] == (0.0, 0.9)
        assert all(isinstance(beta, float) for beta in group["betas"])
        assert {id(p) for p in group["params"]} == {id(p) for p in net.parameters()}
    assert not [name for name in RUN_FILES if (trainer.out / name).exists()]  # nothing written yet
    trainer.close()
    with pytest.raises(ValueError, match="amp 'fp16' needs a CUDA device, got 'cpu'"):
        Trainer(tiny(amp="fp16"))  # device 'cpu' even where CUDA is present


def test_the_training_stream_is_seeded_from_seed_and_rank(tiny):
    Trainer(tiny(seed=3)).close()
    after = torch.get_rng_state()
    torch.manual_seed(3 * 1_000_003 + 0)  # seed * 1000003 + rank, rank 0 of one process
    assert torch.equal(after, torch.get_rng_state())


def test_bf16_keeps_float32_weights_and_scales_no_loss(tiny):
    trainer = Trainer(tiny(steps=2, amp="bf16", channels_last=True))
    trainer.fit()
    for net in (trainer.generator, trainer.discriminator, trainer.ema):
        assert {p.dtype for p in net.parameters()} == {torch.float32}
    assert not trainer.scaler_g.is_enabled() and not trainer.scaler_d.is_enabled()  # fp16 only


def test_n_dis_discriminator_steps_per_generator_step(tiny):
    state = load_checkpoint(train(tiny(n_dis=3, steps=2)).checkpoint)
    adam_steps = {
        name: {float(s["step"]) for s in state[name]["state"].values()}
        for name in ("opt_d", "opt_g")
    }
    assert adam_steps == {"opt_d": {6.0}, "opt_g": {2.0}}
    assert state["step"] == 2 and state["batches_seen"] == 6


def test_sample_grids_are_written_with_the_right_size(tiny):
    result = train(tiny(steps=4, sample_every=2, n_samples=10))
    names = sorted(p.name for p in (result.out / "samples").iterdir())
    assert names == ["step_000000.png", "step_000002.png", "step_000004.png"]
    image = Image.open(result.out / "samples" / "step_000004.png")
    # 10 images, 4 per row (ceil(sqrt(10))), 3 rows of 32 px, 2 px between them
    assert image.size == (4 * 34 - 2, 3 * 34 - 2) and image.mode == "L"


def test_conditional_grid_has_a_row_per_class(tiny):
    result = train(tiny(steps=1, sample_every=1, n_samples=20, model={"num_classes": 10}))
    image = Image.open(result.out / "samples" / "step_000001.png")
    assert image.size == (2 * 34 - 2, 10 * 34 - 2)


def test_log_csv_has_losses_gammas_and_sigmas(tiny):
    seen = []
    trainer = Trainer(tiny(steps=4, log_every=2), callback=lambda t, row: seen.append(dict(row)))
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


def test_other_losses_conditional_and_mixed_precision_train(tmp_path):
    from conftest import tiny_config

    for i, options in enumerate(
        [
            {"loss": "wgan-gp", "n_dis": 2},
            {"loss": "nonsaturating", "model": {"num_classes": 10}},
            {"amp": "bf16", "channels_last": True},
        ]
    ):
        result = train(tiny_config(tmp_path / str(i), steps=2, **options))
        assert result.step == 2 and len(result.log) == 2
        assert all(math.isfinite(row["d_loss"] + row["g_loss"]) for row in result.log)


def test_a_folder_that_holds_a_run_is_not_reused_silently(tiny):
    first = train(tiny(steps=4, checkpoint_every=2))
    before = first.checkpoint.read_bytes()
    log_before = (first.out / "log.csv").read_bytes()
    with pytest.raises(RunExistsError, match=r"already holds a run.*--resume.*--overwrite"):
        train(tiny(steps=2))
    assert first.checkpoint.read_bytes() == before  # nothing was touched
    assert (first.out / "log.csv").read_bytes() == log_before
    replaced = train(tiny(steps=2), overwrite=True)
    assert load_checkpoint(replaced.checkpoint)["step"] == 2
    with pytest.raises(ValueError, match="exclude each other"):
        Trainer(tiny(), resume=True, overwrite=True)


def test_a_second_trainer_on_the_same_folder_is_refused(tiny):
    first = Trainer(tiny(steps=2))
    with pytest.raises(RunFolderBusyError, match=rf"process {os.getpid()}\) is using"):
        Trainer(tiny(steps=2))
    first.fit()  # the first is unharmed, and releases the folder when it ends
    Trainer(tiny(steps=4), resume=True).close()


def test_resume_refuses_other_options(tiny, tmp_path):
    train(tiny(steps=2))
    with pytest.raises(ValueError, match=r"cannot resume .*lr_d: 0.0004 in the checkpoint, 0.001"):
        Trainer(tiny(steps=4, lr_d=1e-3), resume=True)
    resumed = Trainer(tiny(steps=4, log_every=2), resume=True)  # logging may change
    assert resumed.step == 2 and resumed.config.log_every == 2
    resumed.close()
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        Trainer(tiny(out=str(tmp_path / "elsewhere")), resume=True)


def test_resume_in_process_matches_a_straight_run(tmp_path):
    from conftest import tiny_config

    straight = train(tiny_config(tmp_path / "a", steps=6, checkpoint_every=3))
    train(tiny_config(tmp_path / "b", steps=3))
    resumed = train(tiny_config(tmp_path / "b", steps=6), resume=True)
    assert resumed.step == 6
    assert_same_weights(load_checkpoint(straight.checkpoint), load_checkpoint(resumed.checkpoint))


def test_resume_warns_when_the_image_folder_changed(tmp_path):
    from conftest import tiny_config

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(16):
        Image.new("L", (32, 32), color=i * 8).save(folder / f"{i:02d}.png")
    config = tiny_config(tmp_path / "run", steps=2, dataset=str(folder), batch_size=4)
    train(config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(config, resume=True).close()  # unchanged: no warning
    Image.new("L", (32, 32)).save(folder / "new.png")
    with pytest.warns(ResumeWarning, match=r"changed since .* \(16 files, .* then, 17 files"):
        Trainer(config, resume=True).close()


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny):
    def poison(trainer, row):
        if row["step"] == 3:
            with torch.no_grad():
                next(trainer.discriminator.parameters()).fill_(float("nan"))

    config = tiny(steps=10, checkpoint_every=2)
    with pytest.raises(NonFiniteLossError, match=r"non-finite .* step 4.*checkpoint.pt\) is kept"):
        train(config, callback=poison)
    state = load_checkpoint(Path(config.out) / "checkpoint.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(t).all() for _, t in tensors_in(state["discriminator"]))


@pytest.mark.slow
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
    a, b = load_checkpoint(tmp_path / "straight" / "checkpoint.pt"), load_checkpoint(checkpoint)
    assert a["step"] == b["step"] == int(steps)
    assert_same_weights(a, b)
    with open(killed_dir / "log.csv", newline="") as file:
        logged = [int(row["step"]) for row in csv.DictReader(file)]
    assert logged == list(range(2, int(steps) + 1, 2))  # no step logged twice


@pytest.mark.slow
@pytest.mark.parametrize(("name", "status"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_saves_a_checkpoint_and_exits_non_zero(tmp_path, name, status):
    out = tmp_path / "run"
    args = [
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
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "sagan_tutorial", "train", *args],
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
    process.send_signal(getattr(signal, name))
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == status, stderr
    assert f"stopped by {name} at step" in stderr and "Traceback" not in stderr
    state = load_checkpoint(out / "checkpoint.pt")
    assert 3 <= state["step"] < 100000
    assert f"step {state['step']}:" in stdout


@pytest.mark.slow
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
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=ENV,
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
    assert state["batches_seen"] == 3  # every process drew its own shard of each batch
    assert (out / "samples" / "step_000003.png").exists()


def _expanded_moment(state):
    entry = state["state"][0]
    entry["exp_avg"] = torch.zeros(1).expand(entry["exp_avg"].shape)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s: s["state"][0].update(exp_avg=torch.zeros(3)), r"exp_avg of parameter 0 should"),
        (lambda s: s["param_groups"][0].update(betas=(0.5,)), r"betas must be two floats"),
        (lambda s: s["param_groups"][0].update(lr="fast"), r"lr must be a positive number"),
        (lambda s: s["state"][0].update(exp_avg_sq=-s["state"][0]["exp_avg_sq"] - 1), "negative"),
        # right shape over a one-number storage (stride 0): the fused kernel read past its end
        (_expanded_moment, r"exp_avg.* of parameter 0 should be a dense"),
        # moments paired with the wrong parameters corrupted the heap
        (
            lambda s: s["param_groups"][0].update(params=s["param_groups"][0]["params"][::-1]),
            "in order",
        ),
        (lambda s: s["param_groups"][0].update(amsgrad=True), r"amsgrad should be False"),
        (lambda s: s["param_groups"][0].update(weight_decay="x"), r"weight_decay should be 0"),
        (lambda s: s["param_groups"][0].update(weight_decay=math.nan), r"weight_decay should be 0"),
        (lambda s: s["param_groups"][0].update(differentiable=True), "differentiable should be"),
        (lambda s: s["state"][0].update(step=torch.tensor(-1.0)), r"whole number >= 0, got -1"),
        (lambda s: s["state"][0].update(max_exp_avg_sq=torch.zeros(1).expand(2**40)), "got \\["),
    ],
)
def test_a_damaged_optimizer_state_is_refused_before_torch_reads_it(tiny, damage, message):
    """A moment tensor of the wrong shape made the fused Adam kernel write out of bounds."""
    from sagan_tutorial.checkpoint import save_checkpoint

    first = train(tiny(steps=2))
    state = load_checkpoint(first.checkpoint)
    damage(state["opt_g"])
    save_checkpoint(state, first.checkpoint)
    before = first.checkpoint.read_bytes()
    with pytest.raises(
        ValueError, match=rf"checkpoint.pt: the generator's optimizer state .*{message}"
    ):
        Trainer(tiny(steps=4), resume=True)
    assert first.checkpoint.read_bytes() == before


@pytest.mark.parametrize(
    "options",
    [
        {"dataset": "no-such-data-set"},
        {"batch_size": 100_000},
        {"model": {"num_classes": 7}},
    ],
)
def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(tiny, options):
    first = train(tiny(steps=2))
    files = {p.name: p.read_bytes() for p in first.out.iterdir() if p.is_file()}
    with pytest.raises(ValueError):
        Trainer(tiny(steps=2, **options), overwrite=True)
    assert {p.name: p.read_bytes() for p in first.out.iterdir() if p.is_file()} == files


def test_overwrite_removes_the_run_files_and_nothing_else(tiny):
    first = train(tiny(steps=2, sample_every=1))
    (first.out / "notes.txt").write_text("mine")
    (first.out / "samples" / "my_notes.txt").write_text("mine too")
    (first.out / ".draft.tmp").write_text("an editor's")
    train(tiny(steps=1), overwrite=True)
    assert (first.out / "notes.txt").read_text() == "mine"
    assert (first.out / "samples" / "my_notes.txt").read_text() == "mine too"
    assert (first.out / ".draft.tmp").read_text() == "an editor's"
    assert not list((first.out / "samples").glob("step_*.png"))  # the old run's grids are gone


def test_n_dis_is_bounded(tiny):
    with pytest.raises(ValueError, match=r"n_dis must be between 1 and 100, got 1000000000"):
        tiny(n_dis=10**9)


@pytest.mark.slow
def test_compile_trains_the_same_networks_and_saves_plain_weights(tiny):
    """--compile wraps only the training forwards (static shapes, so D's 2B-image forward is
    not recompiled with symbolic sizes): the losses match the eager run's to float rounding,
    and the checkpoint holds the plain modules' state dicts."""
    eager = train(tiny(steps=2, out=tiny().out + "-eager"))
    compiled = train(tiny(steps=2, compile=True))
    for a, b in zip(eager.log, compiled.log, strict=True):
        assert a["d_loss"] == pytest.approx(b["d_loss"], rel=1e-3, abs=1e-4)
        assert a["g_loss"] == pytest.approx(b["g_loss"], rel=1e-3, abs=1e-4)
    state = load_checkpoint(compiled.checkpoint)
    assert not any("_orig_mod" in key for key in state["generator"])
    assert state["config"]["compile"] is True
