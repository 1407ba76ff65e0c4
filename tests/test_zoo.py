"""The model zoo: shipped generators and their metadata, loading by name or path, errors, and
the export round trip (the ``export`` command's rules: nothing overwritten without asking)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import sagan_tutorial
from sagan_tutorial import zoo
from sagan_tutorial.checkpoint import load_checkpoint, load_generator, save_checkpoint
from sagan_tutorial.cli import _build_parser, _given, main
from sagan_tutorial.config import RESUMABLE, TrainConfig
from sagan_tutorial.models import GANConfig, Generator
from sagan_tutorial.train import train
from sagan_tutorial.zoo import available, export, pretrained, pretrained_info


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A 2-step run of a tiny model: a real trainer checkpoint in well under a second."""
    from conftest import tiny_config

    return train(tiny_config(tmp_path_factory.mktemp("run") / "run", steps=2)).checkpoint


# The generators the book loads, with the networks each must hold.
SHIPPED_MODELS = {
    "sagan-mnist32": GANConfig(),
    "sagan-mnist32-cond": GANConfig(num_classes=10),
    "sagan-mnist32-attn8": GANConfig(g_attention=(8,), d_attention=(8,)),
    "sagan-mnist32-attn16": GANConfig(g_attention=(16,), d_attention=(16,)),
    "sagan-mnist32-noattn": GANConfig(g_attention=(), d_attention=()),
}
ABLATION = [name for name in SHIPPED_MODELS if name != "sagan-mnist32-cond"]


def sample(G, n: int) -> torch.Tensor:
    torch.manual_seed(0)
    labels = torch.arange(n) % 10 if G.config.num_classes else None
    with torch.no_grad():
        return G(torch.randn(n, G.config.z_dim), labels)


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_shipped_generator_samples_digits_shaped_images(name):
    assert name in available()
    assert (zoo.WEIGHTS / f"{name}.pt").stat().st_size < 10e6
    G = pretrained(name, device="cpu")
    assert isinstance(G, Generator) and not G.training
    assert G.config == SHIPPED_MODELS[name]
    images = sample(G, 8)
    assert images.shape == (8, 1, 32, 32)
    assert images.min() >= -1 and images.max() <= 1
    assert images.std() > 0.1  # not a constant image
    assert (images[0] - images[1]).abs().mean() > 1e-3  # different noise, different images


def test_top_level_pretrained_is_the_loader():
    assert sagan_tutorial.pretrained is pretrained
    G = sagan_tutorial.pretrained("sagan-mnist32", device="cpu")
    assert G.config == GANConfig.from_dict(pretrained_info("sagan-mnist32")["config"])


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_shipped_file_loads_with_weights_only_and_holds_float32_weights(name):
    payload = torch.load(zoo.WEIGHTS / f"{name}.pt", map_location="cpu", weights_only=True)
    assert set(payload) == {"format", "generator", "config", "meta"}
    assert all(
        t.dtype == torch.float32 for t in payload["generator"].values() if t.is_floating_point()
    )
    assert GANConfig.from_dict(payload["config"]).image_size == 32


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_metadata_of_the_shipped_generator(name):
    info = pretrained_info(name)
    assert info["name"] == name
    assert info["step"] == 4000 and info["seed"] == 0 and info["batch_size"] == 64
    assert info["command"].startswith("python -m sagan_tutorial train")
    metrics = info["metrics"]
    assert {"fid", "fid_low", "fid_high", "kid_mean", "floor_fid", "n"} <= set(metrics)
    assert metrics["fid_low"] <= metrics["fid"] <= metrics["fid_high"]
    assert metrics["n"] == 1000 and metrics["fid"] > metrics["floor_fid"] > 0
    G = pretrained(name, device="cpu")
    assert GANConfig.from_dict(info["config"]) == G.config
    args = _build_parser().parse_args(info["command"].split()[3:])
    assert GANConfig(**_given(args, GANConfig)) == G.config  # the command makes these networks
    training = TrainConfig(**_given(args, TrainConfig))
    assert (training.steps, training.seed, training.batch_size) == (4000, 0, 64)


def test_the_ablation_differs_only_in_where_attention_sits():
    commands = {name: pretrained_info(name)["command"].split() for name in ABLATION}
    configs = {}
    for name, command in commands.items():
        args = _build_parser().parse_args(command[3:])
        # options that change neither the numbers nor their order (samples, logs, out) may differ
        options = {k: v for k, v in _given(args, TrainConfig).items() if k not in RESUMABLE}
        configs[name] = (TrainConfig(**options), GANConfig(**_given(args, GANConfig)))
    trainings = [training for training, _ in configs.values()]
    assert all(t == trainings[0] for t in trainings)  # same steps, seed, batch, losses, lrs
    widths = {(model.g_width, model.d_width, model.sn) for _, model in configs.values()}
    assert widths == {(32, 32, "port")}


def test_conditional_generator_draws_the_digit_asked_for():
    from sagan_tutorial.metrics import digit_classifier

    G = pretrained("sagan-mnist32-cond", device="cpu")
    images = sample(G, 100)  # labels 0..9, ten of each
    read = digit_classifier(device="cpu")(images).argmax(1)
    # The shipped model was measured at 99.2% over 1,000 samples; 100 samples and another
    # torch may lose a few, a generator that ignores its labels scores about 10%.
    assert (read == torch.arange(100) % 10).float().mean() >= 0.9
    metrics = pretrained_info("sagan-mnist32-cond")["metrics"]
    assert metrics["class_accuracy_low"] >= 0.9
    assert metrics["fid"] <= 1.5 * pretrained_info("sagan-mnist32")["metrics"]["fid"]


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="sagan-mnist32") as error:
        pretrained("sagan-nope")
    assert "sagan-nope" in str(error.value)
    with pytest.raises(TypeError, match="a name or a path"):
        pretrained_info(3)


def test_digit_classifier_is_not_listed_as_a_generator():
    assert "digit_features" not in available()
    with pytest.raises(ValueError, match="available"):
        pretrained("digit_features")


FORMAT = zoo.FORMAT


@pytest.mark.parametrize(
    "content",
    [
        b"not a torch file",
        {"weight": torch.zeros(2)},  # a readable file of the wrong kind: a bare state dict
        {"format": FORMAT, "generator": {}, "config": {}},  # no metadata
        {"format": FORMAT, "generator": {"w": torch.zeros(2)}, "config": {"z_dim": 8}, "meta": {}},
    ],
)
def test_corrupt_file_is_named(tmp_path, monkeypatch, content):
    path = tmp_path / "sagan-broken.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    monkeypatch.setattr(zoo, "WEIGHTS", tmp_path)
    assert available() == ("sagan-broken",)
    for name_or_path in ("sagan-broken", path, str(path)):
        with pytest.raises(ValueError, match=r"sagan-broken\.pt"):
            pretrained(name_or_path)


def test_export_round_trip_and_loading_by_path(tiny_checkpoint, tmp_path):
    out = export(
        tiny_checkpoint,
        tmp_path / "tiny.pt",
        name="sagan-tiny",
        command="train x",
        metrics={"fid": 1.5},
        notes="two steps",
    )
    G = pretrained(out, device="cpu")
    reference = load_generator(tiny_checkpoint, device="cpu")
    z = torch.randn(4, G.config.z_dim)
    with torch.no_grad():
        assert torch.equal(G(z), reference(z))  # the EMA weights, bit for bit
    info = pretrained_info(str(out))
    assert info["step"] == 2 and info["metrics"] == {"fid": 1.5} and info["notes"] == "two steps"
    assert info["command"] == "train x" and info["batch_size"] == 8
    assert out.stat().st_size < tiny_checkpoint.stat().st_size / 2  # no D, no optimizers
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.pt"]  # no temp file left


def test_export_never_overwrites_unasked(tiny_checkpoint, tmp_path):
    out = tmp_path / "g.pt"
    export(tiny_checkpoint, out, name="sagan-x", command="c")
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="exists: pass --overwrite"):
        export(tiny_checkpoint, out, name="sagan-x", command="c", notes="again")
    assert out.read_bytes() == before
    export(tiny_checkpoint, out, name="sagan-x", command="c", notes="again", overwrite=True)
    assert pretrained_info(out)["notes"] == "again"
    copy = tmp_path / "checkpoint.pt"
    copy.write_bytes(tiny_checkpoint.read_bytes())
    with pytest.raises(ValueError, match="is the checkpoint it would be made from"):
        export(copy, copy, name="sagan-x", command="c", overwrite=True)
    assert copy.read_bytes() == tiny_checkpoint.read_bytes()
    with pytest.raises(ValueError, match="expected a file to write, got the folder"):
        export(tiny_checkpoint, tmp_path, name="sagan-x", command="c", overwrite=True)
    # --overwrite replaces a generator file, never another file (the digit classifier, say)
    classifier = tmp_path / "digit_features.pt"
    classifier.write_bytes((zoo.WEIGHTS / "digit_features.pt").read_bytes())
    with pytest.raises(ValueError, match="is not a pretrained generator file: --overwrite"):
        export(tiny_checkpoint, classifier, name="sagan-x", command="c", overwrite=True)
    assert classifier.read_bytes() == (zoo.WEIGHTS / "digit_features.pt").read_bytes()


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"name": "../evil"}, ValueError, "sagan-mnist32"),
        ({"metrics": {"fid": "low"}}, ValueError, "finite numbers"),
        ({"metrics": {"fid": math.nan}}, ValueError, "finite numbers"),
        ({"metrics": [("fid", 1.0)]}, TypeError, "metrics must be a dict of names to numbers, got"),
        ({"overwrite": "no"}, TypeError, "overwrite must be a bool, got str"),
        ({"command": None}, TypeError, "command must be a str, got NoneType"),
        ({"notes": 3}, TypeError, "notes must be a str, got int"),
    ],
)
def test_export_rejects_bad_names_and_metrics(tiny_checkpoint, tmp_path, options, error, match):
    with pytest.raises(error, match=match):
        export(tiny_checkpoint, tmp_path / "x.pt", **{"name": "sagan-x", "command": "c", **options})
    assert not (tmp_path / "x.pt").exists()


def test_export_rejects_weights_that_do_not_fit_or_are_not_finite(tiny_checkpoint, tmp_path):
    state = load_checkpoint(tiny_checkpoint)
    state["config"]["model"]["g_width"] = 8
    save_checkpoint(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"checkpoint\.pt: the EMA generator weights do not fit"):
        export(tmp_path / "checkpoint.pt", tmp_path / "g.pt", name="sagan-x", command="c")
    state = torch.load(tiny_checkpoint, weights_only=True)
    next(iter(state["ema"].values())).fill_(math.inf)
    torch.save(state, tmp_path / "inf.pt")
    with pytest.raises(
        ValueError, match=r"inf\.pt: the EMA generator weights hold NaN or infinite"
    ):
        export(tmp_path / "inf.pt", tmp_path / "g.pt", name="sagan-x", command="c")
    assert not (tmp_path / "g.pt").exists()


def test_a_shipped_file_with_nan_weights_is_refused(tmp_path, monkeypatch):
    payload = torch.load(zoo.WEIGHTS / "sagan-mnist32.pt", weights_only=True)
    next(iter(payload["generator"].values())).fill_(math.nan)
    torch.save(payload, tmp_path / "sagan-mnist32.pt")
    monkeypatch.setattr(zoo, "WEIGHTS", tmp_path)
    with pytest.raises(ValueError, match="weights hold NaN"):
        pretrained("sagan-mnist32")


def test_cli_export_writes_here_by_default_not_into_the_package(
    tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    shipped = {path.name: path.read_bytes() for path in zoo.WEIGHTS.glob("*.pt")}
    monkeypatch.chdir(tmp_path)
    argv = [
        "export",
        "--checkpoint",
        str(tiny_checkpoint),
        "--name",
        "sagan-mnist32",
        "--metric",
        "fid=2.5",
        "--command",
        "python -m sagan_tutorial train --steps 2",
    ]
    assert main(argv) == 0
    meta = torch.load(tmp_path / "sagan-mnist32.pt", weights_only=True)["meta"]
    assert meta["metrics"] == {"fid": 2.5} and meta["command"].endswith("--steps 2")
    assert main(argv) == 2  # the second time the file exists
    assert "exists: pass --overwrite" in capsys.readouterr().err
    # into the package only when asked for by path, and with --overwrite for a shipped name
    assert main([*argv, "--out", str(zoo.WEIGHTS / "sagan-mnist32.pt")]) == 2
    assert {path.name: path.read_bytes() for path in zoo.WEIGHTS.glob("*.pt")} == shipped


def test_cli_export_evaluate_records_fid_and_floor(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "g.pt"
    argv = [
        "export",
        "--checkpoint",
        str(tiny_checkpoint),
        "--name",
        "sagan-tiny",
        "--out",
        str(out),
        "--evaluate",
        "--n",
        "100",
        "--metric",
        "fid=9",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    metrics = torch.load(out, weights_only=True)["meta"]["metrics"]
    assert metrics["fid"] == 9  # a figure given by hand wins over the measured one
    assert metrics["floor_fid"] < metrics["fid_low"]  # a 2-step G is far from the digits
    assert metrics["n"] == 100
    assert f"floor_fid {metrics['floor_fid']:g}" in capsys.readouterr().out
