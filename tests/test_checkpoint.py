"""The trainer's checkpoint: what it holds, checked loading, random states, load_generator."""

from __future__ import annotations

import random
import resource

import numpy as np
import pytest
import torch
from torch import nn

from sagan_tutorial.checkpoint import (
    NonFiniteStateError,
    build_generator,
    load_checkpoint,
    load_generator,
    save_checkpoint,
)
from sagan_tutorial.config import TrainConfig
from sagan_tutorial.restore import rng_state, set_rng_state
from sagan_tutorial.train import Trainer, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trainer after 2 steps and its checkpoint."""
    from conftest import tiny_config

    trainer = Trainer(tiny_config(tmp_path_factory.mktemp("ckpt") / "run", steps=2))
    trainer.fit()
    return trainer, trainer.checkpoint_path


def test_checkpoint_contents(run):
    trainer, path = run
    state = load_checkpoint(path)
    assert state["step"] == 2 and state["batches_seen"] == 2 and state["world_size"] == 1
    assert TrainConfig.from_dict(state["config"]) == trainer.config
    assert state["data"]["source"] == "mnist5k" and state["data"]["files"] == 1
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
    assert set(rng) == {"torch", "cuda", "numpy", "python"}
    assert rng["numpy"]["keys"].shape == (624,) and rng["python"]["internal"].shape == (625,)
    generator = load_generator(path, device="cpu")
    assert not generator.training
    ema = trainer.ema.state_dict()
    assert all(torch.equal(t, ema[name]) for name, t in generator.state_dict().items())


def test_random_states_round_trip(tmp_path):
    save_checkpoint({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"], "rng.pt")
    again = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1]) and expected[2] == again[2]


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s.update(torch=torch.zeros(3, dtype=torch.uint8)),
        lambda s: s.pop("numpy"),
        lambda s: s["python"].update(internal=torch.zeros(3, dtype=torch.int64)),
        lambda s: s.update(torch="abc"),
    ],
)
def test_malformed_random_states_are_named(damage):
    state = rng_state()
    damage(state)
    with pytest.raises(ValueError, match=r"^ckpt.pt: the random states do not fit \("):
        set_rng_state(state, "ckpt.pt")


def test_nothing_non_finite_is_written(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"w": torch.ones(2)}, path)
    before = path.read_bytes()
    with pytest.raises(NonFiniteStateError, match=r"generator\.w holds NaN"):
        save_checkpoint({"generator": {"w": torch.tensor([1.0, float("nan")])}}, path)
    assert path.read_bytes() == before


def _edit(path, tmp_path, name, edit):
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("ema"), r"is an incomplete checkpoint: missing \['ema'\]"),
        (lambda s: s.update(step="abc"), r"'step' should be a int, got str"),
        (lambda s: s.update(batches_seen=-5), r"'batches_seen' cannot be -5"),
        (lambda s: s.update(rng={}), r"'rng' should be a list, got dict"),
        (lambda s: s.update(format="other/1"), r"is not a sagan_tutorial checkpoint"),
    ],
)
def test_damaged_checkpoints_are_named(run, tmp_path, edit, message):
    path = _edit(run[1], tmp_path, "bad.pt", edit)
    with pytest.raises(ValueError, match=rf"bad\.pt.*{message}|{message}"):
        load_checkpoint(path)


def test_foreign_files(tmp_path):
    foreign = tmp_path / "linear.pt"
    torch.save(nn.Linear(2, 2).state_dict(), foreign)
    with pytest.raises(ValueError, match=r"linear\.pt is not a sagan_tutorial checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path)  # a folder


def test_weights_that_do_not_fit_or_are_not_finite(run, tmp_path):
    path = _edit(run[1], tmp_path, "wide.pt", lambda s: s["config"]["model"].update(g_width=32))
    with pytest.raises(ValueError, match=r"wide\.pt: the EMA generator weights do not fit .*shape"):
        load_generator(path, device="cpu")

    def poison(state):
        next(iter(state["ema"].values())).fill_(float("nan"))

    path = _edit(run[1], tmp_path, "nan.pt", poison)
    with pytest.raises(ValueError, match=r"nan\.pt: the EMA generator weights hold NaN"):
        load_generator(path, device="cpu")
    path = _edit(run[1], tmp_path, "cfg.pt", lambda s: s["config"]["model"].update(sn="x"))
    with pytest.raises(ValueError, match=r"cfg\.pt: its network config is invalid"):
        load_generator(path, device="cpu")


def test_a_hostile_config_fails_before_memory_is_allocated(run, tmp_path):
    """A config asking for the widest generator the config allows (g_width 1024: 8192 channels
    at S/16, gigabytes of weights) is refused by comparing shapes on the meta device: the process
    never holds the memory it asks for. A wider one is refused by the config itself."""

    def widen(state):
        state["config"]["model"].update(g_width=2**20)

    wider = _edit(run[1], tmp_path, "wider.pt", widen)
    with pytest.raises(ValueError, match=r"wider\.pt: .*g_width must be between 1 and 1024"):
        load_generator(wider, device="cpu")
    path = _edit(run[1], tmp_path, "huge.pt", lambda s: s["config"]["model"].update(g_width=1024))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match=r"huge\.pt: the EMA generator weights do not fit"):
        load_generator(path, device="cpu")
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 500_000  # far less than the gigabytes such a network needs


def test_build_generator_names_missing_and_extra_weights(run):
    state = load_checkpoint(run[1])
    weights = dict(state["ema"])
    weights.pop("to_image.bias")
    weights["stray"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"1 entries missing, 1 unexpected"):
        build_generator(state["config"]["model"], weights, "x.pt")


def test_a_run_that_made_non_finite_weights_keeps_its_last_good_checkpoint(tiny):
    from sagan_tutorial.train import NonFiniteLossError

    def poison_weights_after_the_loss(trainer, row):
        if row["step"] == 3:  # the loss of step 3 was finite; the weights written after it are not
            with torch.no_grad():
                next(trainer.generator.parameters()).fill_(float("inf"))

    config = tiny(steps=10, checkpoint_every=2, log_every=1)
    with pytest.raises(NonFiniteLossError, match=r"kept"):
        train(config, callback=poison_weights_after_the_loss)
    state = load_checkpoint(config.out + "/checkpoint.pt")
    assert state["step"] == 2
    assert all(
        torch.isfinite(t).all() for t in state["generator"].values() if t.is_floating_point()
    )
