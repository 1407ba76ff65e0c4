"""TrainConfig: typed, checked fields; the resume rule; the command that makes a config."""

from __future__ import annotations

import shlex
from dataclasses import fields
from pathlib import Path

import pytest

from sagan_tutorial.cli import _build_parser, _given
from sagan_tutorial.config import (
    MAX_SEED,
    RESUMABLE,
    TrainConfig,
    checkpoint_config,
    resumed_config,
    train_command,
)
from sagan_tutorial.models import GANConfig


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"loss": "hinj"}, ValueError, r"loss must be one of .* got 'hinj'"),
        ({"n_dis": 0}, ValueError, "n_dis must be between 1 and 100, got 0"),
        ({"ema_decay": 1.5}, ValueError, r"ema_decay must be a finite number in \[0, 1\)"),
        ({"lr_g": float("nan")}, ValueError, r"lr_g must be a finite number in \(0, inf\)"),
        ({"lr_d": 0}, ValueError, r"lr_d must be a finite number in \(0, inf\), got 0.0"),
        ({"steps": "10"}, TypeError, "steps must be int, got str '10'"),
        ({"steps": True}, TypeError, "steps must be int, got bool"),
        ({"progress": 1}, TypeError, "progress must be bool, got int"),
        ({"seed": MAX_SEED + 1}, ValueError, f"seed must be between 0 and {MAX_SEED}"),
        ({"seed": -1}, ValueError, "seed must be between 0"),
        ({"n_samples": 10**6}, ValueError, "n_samples must be between 1 and 1024"),
        ({"amp": "fp8"}, ValueError, "amp must be one of"),
        ({"out": ""}, ValueError, "out must not be empty"),
        ({"model": 3}, TypeError, "model must be a GANConfig or a dict, got int"),
    ],
)
def test_fields_are_checked(options, error, message):
    with pytest.raises(error, match=message):
        TrainConfig(**options)


def test_types_that_are_welcome():
    config = TrainConfig(lr_g=1, out=Path("runs") / "a", dataset=Path("digits"))
    assert config.lr_g == 1.0 and isinstance(config.lr_g, float)
    assert config.out == "runs/a" and config.dataset == "digits"
    conditional = TrainConfig(model={"num_classes": 10})
    assert TrainConfig.from_dict(conditional.to_dict()) == conditional
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields \['colour'\]"):
        TrainConfig.from_dict({**conditional.to_dict(), "colour": 1})


def test_checkpoint_config_names_the_file():
    with pytest.raises(ValueError, match=r"^c\.pt: its config is invalid"):
        checkpoint_config({"config": {"steps": -1}}, "c.pt")
    with pytest.raises(ValueError, match=r"^c\.pt: its config is invalid"):
        checkpoint_config({}, "c.pt")


def test_the_resume_rule_for_a_whole_config_and_for_flags():
    saved = TrainConfig(steps=100, model=GANConfig(g_width=16))
    # the Python API passes a whole config: the resumable fields are taken from it
    resumed = resumed_config(
        saved, TrainConfig(steps=200, log_every=5, model=GANConfig(g_width=16)), "c"
    )
    assert resumed.steps == 200 and resumed.log_every == 5 and resumed.model.g_width == 16
    with pytest.raises(ValueError, match=r"cannot resume c .*lr_d: 0.0004 in the checkpoint, 0.1"):
        resumed_config(saved, TrainConfig(lr_d=0.1, model=GANConfig(g_width=16)), "c")
    with pytest.raises(ValueError, match=r"g_width: 16 in the checkpoint, 32 given"):
        resumed_config(saved, TrainConfig(), "c")  # another network
    # the command line passes only what was given
    assert resumed_config(saved, {"steps": 300}, "c").steps == 300
    assert resumed_config(saved, {"g_width": 16, "g_attention": [16, 8]}, "c") == saved
    with pytest.raises(ValueError, match="g_width: 16 in the checkpoint, 32 given"):
        resumed_config(saved, {"g_width": 32}, "c")
    assert {"steps", "out", "device"} <= RESUMABLE and "seed" not in RESUMABLE


def test_train_command_lists_only_the_options_that_differ():
    assert train_command(TrainConfig()) == "python -m sagan_tutorial train --out runs/default"
    config = TrainConfig(
        out="runs/my run", steps=10, model=GANConfig(g_attention=(), num_classes=10)
    )
    words = shlex.split(train_command(config))
    assert words[words.index("--out") + 1] == "runs/my run"  # quoted for the shell
    assert "--g-attention" in words and words[words.index("--g-attention") + 1] == "none"


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(),
        TrainConfig(steps=10, lr_d=1e-3, progress=False, amp="bf16", out="a b"),
        TrainConfig(model=GANConfig(image_size=64, channels=3, g_attention=(16,), sn="all")),
        TrainConfig(model=GANConfig(num_classes=10, g_width=16, d_attention=())),
    ],
)
def test_train_command_parses_back_to_the_same_config(config):
    args = _build_parser().parse_args(shlex.split(train_command(config))[3:])
    rebuilt = TrainConfig(model=GANConfig(**_given(args, GANConfig)), **_given(args, TrainConfig))
    assert rebuilt == config


def test_every_field_has_help_and_a_flag():
    parser = _build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    flags = {option for action in train._actions for option in action.option_strings}
    for f in fields(TrainConfig):
        if f.name != "model":
            assert f.metadata["help"], f.name
            assert "--" + f.name.replace("_", "-") in flags
    for f in fields(GANConfig):
        assert "--" + f.name.replace("_", "-") in flags
