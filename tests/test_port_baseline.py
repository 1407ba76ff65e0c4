"""benchmarks/port_baseline.py: the port's computation, and the table that compares it."""

from pathlib import Path

import pytest
import torch
from conftest import load_script
from torch import nn

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "port_baseline.py"


@pytest.fixture(scope="module")
def port():
    return load_script(SCRIPT)


def test_the_port_has_the_package_defaults_shape(port):
    torch.manual_seed(0)
    theirs, ours = port.PortSteps(2), port.PackageSteps(2)
    assert port.count(theirs.generator) == port.count(ours.generator) == 3_603_509
    assert port.count(theirs.discriminator) == port.count(ours.discriminator) == 3_175_299
    z = torch.randn(2, port.Z_DIM)
    images, *g_maps = theirs.generator(z)
    assert images.shape == ours.generator(z).shape == (2, 3, 64, 64)
    logits, *d_maps = theirs.discriminator(images)
    assert logits.shape == (2,)  # and every layer hands its map back, as the port's do
    assert [m.shape for m in g_maps + d_maps] == [
        (2, 256, 256),
        (2, 1024, 1024),
        (2, 64, 64),
        (2, 16, 16),
    ]


def test_the_ports_spectral_norm_runs_one_power_iteration_per_forward(port):
    torch.manual_seed(0)
    layer = port.PortSpectralNorm(nn.Conv2d(3, 8, 3))
    conv = layer.module
    matrix = conv.weight_bar.detach().view(8, -1)
    u, v = conv.weight_u.clone(), conv.weight_v.clone()
    layer(torch.randn(1, 3, 5, 5))
    v = port._unit(matrix.t() @ u)
    u = port._unit(matrix @ v)
    torch.testing.assert_close(conv.weight_u, u)
    torch.testing.assert_close(conv.weight_v, v)
    sigma = u @ matrix @ v
    torch.testing.assert_close(conv.weight, conv.weight_bar / sigma)
    for _ in range(200):  # the iteration converges to the largest singular value
        layer(torch.randn(1, 3, 5, 5))
    largest = torch.linalg.matrix_norm(matrix, ord=2)
    torch.testing.assert_close(conv.weight_bar.norm() / conv.weight.norm(), largest)


def test_the_ports_attention_is_the_packages_bmm_form(port):
    from sagan_tutorial.attention import SelfAttention2d

    torch.manual_seed(0)
    theirs, ours = port.PortSelfAttention(16), SelfAttention2d(16, backend="blocked")
    ours.load_state_dict(theirs.state_dict())
    with torch.no_grad():
        theirs.gamma.fill_(0.7)
        ours.gamma.fill_(0.7)
    x = torch.randn(2, 16, 6, 6)
    out, attention = theirs(x)
    torch.testing.assert_close(ours(x), out)
    torch.testing.assert_close(ours(x, return_attention=True)[1], attention)


def test_the_table_gives_every_variant_against_the_port(port):
    rows = port.measure(batch=2, steps=1, repeats=1)
    names = [name for name, *_ in rows]
    assert names[:2] == ["the port (baseline)", "package default"]
    assert len(names) == 4 and all("(a floor)" in name for name in names[2:])
    assert all(seconds > 0 for _, seconds, _, _ in rows)
    table = port.format_table(rows)
    lines = table.splitlines()
    assert lines[0].startswith("| variant |") and lines[2].endswith("| 1.00x |")
    ratio = rows[0][1] / rows[1][1]
    assert lines[3].endswith(f"| {ratio:.2f}x |")
    assert "attention layers" in lines[-1] and "Twice the port's speed" in lines[-1]


@pytest.mark.parametrize(
    "arguments",
    [
        ["--steps=0"],
        ["--steps=101"],
        ["--mal"],
        ["--repeats=-1"],
        ["--batch-size=100000"],
        ["--malloc", "--keep-freed"],
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(port, arguments, capsys):
    with pytest.raises(SystemExit) as info:
        port.main(arguments)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_the_ports_d_update_runs_backward_through_g(port):
    # as the port's trainer does: its fakes are not detached, so G gets gradients from D's loss
    torch.manual_seed(0)
    steps = port.PortSteps(2)
    seen = []
    hook = steps.generator.l1[0].module.weight_bar.register_hook(lambda g: seen.append(g))
    steps.step(torch.rand(2, 3, 64, 64) * 2 - 1)
    hook.remove()
    assert len(seen) == 2  # once from D's update, once from G's
