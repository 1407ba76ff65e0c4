"""drawings: every figure's geometry, values and text, read back from the Figure."""

from __future__ import annotations

import re
from unittest import mock

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.text import Text

from sagan_tutorial import drawings
from sagan_tutorial.attention import SelfAttention2d
from sagan_tutorial.models import Discriminator, GANConfig, Generator
from sagan_tutorial.shapes import trace_shapes

B, C, H, W = 2, 64, 6, 5  # the book's demo sizes: all different, so a wrong transpose shows
N = H * W


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def layer_tensors(b, c, h, w):
    """The tensors of SelfAttention2d._forward_bmm on a random (b, c, h, w) input, line by line."""
    torch.manual_seed(0)
    x, n = torch.randn(b, c, h, w), h * w
    layer = SelfAttention2d(c, backend="bmm")
    with torch.no_grad():
        query = layer.query_conv(x)
        proj_query = query.view(b, -1, n).permute(0, 2, 1)
        proj_key = layer.key_conv(x).view(b, -1, n)
        energy = torch.bmm(proj_query, proj_key)
        attention = torch.softmax(energy, dim=-1)
        proj_value = layer.value_conv(x).view(b, -1, n)
        out = torch.bmm(proj_value, attention.permute(0, 2, 1))
    return dict(
        query=query,
        proj_query=proj_query,
        proj_key=proj_key,
        energy=energy,
        attention=attention,
        proj_value=proj_value,
        out=out,
    )


@pytest.fixture(scope="module")
def t():
    return layer_tensors(B, C, H, W)


def heat_axes(fig):
    """The axes that hold a heat map (colour bars hold none: they draw a mesh)."""
    return [ax for ax in fig.axes if ax.images]


def array(ax) -> np.ndarray:
    return np.asarray(ax.images[0].get_array())


def patch(ax, gid):
    found = [p for p in ax.patches if p.get_gid() == gid]
    assert len(found) == 1, f"expected one patch {gid!r}, found {len(found)}"
    return found[0]


def fig_text(fig, gid) -> str:
    found = [t for t in fig.findobj(Text) if t.get_gid() == gid]
    assert len(found) == 1, f"expected one text {gid!r}, found {len(found)}"
    return found[0].get_text()


def numbers(text: str) -> list[float]:
    return [float(n) for n in re.findall(r"-?\d+\.\d+(?:e[-+]\d+)?", text)]


def box(ax):
    """(width, height) of an axes in pixels."""
    b = ax.get_window_extent()
    return b.width, b.height


def assert_cells(ax, rows, cols):
    """The heat map has rows x cols cells, drawn square (its sides in proportion)."""
    assert array(ax).shape == (rows, cols)
    width, height = box(ax)
    assert width / height == pytest.approx(cols / rows, rel=0.02)


def drawn_texts(fig) -> list[tuple[Text, object]]:
    """Every text that a draw of ``fig`` puts on the page, with its extent in pixels.

    Read while drawing: an axis keeps labels for ticks outside its view, which are not drawn.
    """
    drawn, draw = [], Text.draw

    def spy(text, renderer):
        if text.get_visible() and text.get_text().strip():
            drawn.append((text, text.get_window_extent(renderer)))
        return draw(text, renderer)

    with mock.patch.object(Text, "draw", spy):
        fig.canvas.draw()
    return drawn


def assert_legible(fig):
    """Book-column width, text >= 9 pt and inside the figure, a colour bar on every heat map."""
    assert fig.get_size_inches()[0] <= 7.0 + 1e-9
    page = fig.bbox
    texts = drawn_texts(fig)
    assert texts
    for text, extent in texts:
        assert text.get_fontsize() >= 9, f"{text.get_text()!r} is {text.get_fontsize()} pt"
        inside = (
            extent.x0 >= page.x0 - 1
            and extent.x1 <= page.x1 + 1
            and extent.y0 >= page.y0 - 1
            and extent.y1 <= page.y1 + 1
        )
        assert inside, f"{text.get_text()!r} is clipped: {extent} outside {page}"
    for ax in heat_axes(fig):
        assert ax.images[0].colorbar is not None, f"no colour bar on {ax.get_title()!r}"


def all_figures(t):
    n = t["energy"].shape[-1]
    return {
        "matrix": drawings.matrix_drawing(t["proj_query"], "proj_query"),
        "bmm": drawings.bmm_drawing(t["proj_query"], t["proj_key"], i=7 % n, j=12 % n),
        "bmm_out": drawings.bmm_drawing(
            t["proj_value"],
            t["attention"].permute(0, 2, 1),
            names=("proj_value", "attention.permute(0, 2, 1)", "out"),
            axes=("C = {} channels", "N = {} pixels (key j)", "N = {} pixels (query i)"),
            result=t["out"],
        ),
        "view": drawings.view_drawing(t["query"], name="query_conv(x)"),
        "permute": drawings.permute_drawing(t["query"].flatten(2), name="query"),
        "softmax": drawings.softmax_drawing(t["energy"], t["attention"], i=3 % n),
        "transpose": drawings.transpose_drawing(t["attention"], t["proj_value"], t["out"], i=4 % n),
        "G": drawings.network_drawing(Generator(GANConfig()), torch.randn(2, 128)),
        "D": drawings.network_drawing(Discriminator(GANConfig()), torch.randn(2, 1, 32, 32)),
    }


@pytest.mark.parametrize("sizes", [(B, C, H, W), (1, 16, 8, 8), (3, 32, 3, 7)])
def test_every_figure_is_legible(sizes):
    """At the demo sizes and others: wide or tall maps, a batch of one, two query channels."""
    for name, fig in all_figures(layer_tensors(*sizes)).items():
        try:
            assert_legible(fig)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None


def test_legibility_check_can_fail(t):
    fig = drawings.matrix_drawing(t["proj_query"], "proj_query")
    fig.axes[0].set_xlabel("tiny", fontsize=6)
    with pytest.raises(AssertionError, match="6"):
        assert_legible(fig)
    fig = drawings.matrix_drawing(t["proj_query"], "proj_query")
    fig.axes[0].images[0].colorbar = None
    with pytest.raises(AssertionError, match="colour bar"):
        assert_legible(fig)


def test_matrix_drawing_has_one_cell_per_element(t):
    fig = drawings.matrix_drawing(
        t["proj_query"],
        "proj_query",
        rows="N = H*W = {} pixels (query i)",
        cols="C//8 = {} channels",
        batch=1,
    )
    (ax,) = heat_axes(fig)
    assert_cells(ax, N, C // 8)
    np.testing.assert_allclose(array(ax), t["proj_query"][1].numpy())
    assert ax.get_ylabel() == "N = H*W = 30 pixels (query i)"
    assert ax.get_xlabel() == "C//8 = 8 channels"
    assert "proj_query" in ax.get_title() and "(2, 30, 8)" in ax.get_title()
    assert len(fig.artists) == 1  # one sheet behind: the other item of the batch
    fig = drawings.matrix_drawing(t["proj_key"][0], "k")  # 2-D: no batch, no sheets
    assert_cells(heat_axes(fig)[0], C // 8, N)
    assert not fig.artists


def test_matrix_drawing_colours_signed_values_around_zero(t):
    ax = heat_axes(drawings.matrix_drawing(t["proj_key"], "k"))[0]
    norm = ax.images[0].norm
    assert norm.vmin == -norm.vmax and ax.images[0].get_cmap().name == "RdBu_r"
    ax = heat_axes(drawings.matrix_drawing(t["attention"], "A"))[0]
    assert ax.images[0].norm.vmin == 0


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda t: drawings.matrix_drawing(t["proj_key"].numpy(), "k"), TypeError, "torch.Tensor"),
        (lambda t: drawings.matrix_drawing(t["query"], "q"), ValueError, r"2-D or 3-D.*\(2, 8"),
        (lambda t: drawings.matrix_drawing(t["proj_key"], "k", batch=2), ValueError, "1, got 2"),
        (lambda t: drawings.matrix_drawing(t["proj_key"], "k", batch=0.0), TypeError, "float"),
        (lambda t: drawings.matrix_drawing(torch.zeros(2, 0, 3), "k"), ValueError, "non-empty"),
    ],
)
def test_matrix_drawing_validates(t, call, error, match):
    with pytest.raises(error, match=match):
        call(t)


@pytest.mark.parametrize(("i", "j"), [(7, 12), (0, 29), (29, 0)])
def test_bmm_drawing_traces_row_times_column(t, i, j):
    q, k, e = t["proj_query"], t["proj_key"], t["energy"]
    fig = drawings.bmm_drawing(
        q, k, names=("proj_query", "proj_key", "energy"), i=i, j=j, batch=1, result=e
    )
    left, right, result = heat_axes(fig)
    assert_cells(left, N, C // 8)
    assert_cells(right, C // 8, N)
    assert_cells(result, N, N)
    for ax, expected in ((left, q[1]), (right, k[1]), (result, e[1])):
        np.testing.assert_allclose(array(ax), expected.numpy(), rtol=1e-6)
    # one cell size for all three blocks: their real proportions to one another
    sizes = [box(ax)[0] / array(ax).shape[1] for ax in (left, right, result)]
    assert sizes == pytest.approx([sizes[0]] * 3, rel=0.02)
    row, column, cell = patch(left, "row"), patch(right, "column"), patch(result, "cell")
    assert (row.get_x(), row.get_y(), row.get_width(), row.get_height()) == (-0.5, i - 0.5, 8, 1)
    assert (column.get_x(), column.get_y()) == (j - 0.5, -0.5)
    assert (column.get_width(), column.get_height()) == (1, 8)
    assert (cell.get_x(), cell.get_y(), cell.get_width(), cell.get_height()) == (
        j - 0.5,
        i - 0.5,
        1,
        1,
    )
    # the contracted axis (C//8) is marked on both operands
    assert left.xaxis.label.get_color() == drawings.MARK
    assert right.yaxis.label.get_color() == drawings.MARK
    assert left.yaxis.label.get_color() != drawings.MARK
    # the printed dot product is the output cell, and is the dot product
    printed = numbers(fig_text(fig, "dot"))[-1]
    dot = float(q[1, i].double() @ k[1, :, j].double())
    assert printed == pytest.approx(dot, abs=1e-4)
    assert printed == pytest.approx(float(e[1, i, j]), abs=1e-4)
    assert f"energy[{i}, {j}]" in fig_text(fig, "dot")


def test_bmm_drawing_of_the_output_uses_the_transposed_map(t):
    a_t = t["attention"].permute(0, 2, 1)
    fig = drawings.bmm_drawing(t["proj_value"], a_t, i=3, j=7, result=t["out"])
    left, right, result = heat_axes(fig)
    assert_cells(left, C, N)
    np.testing.assert_allclose(array(right), t["attention"][0].T.numpy())
    np.testing.assert_allclose(array(result), t["out"][0].numpy(), rtol=1e-6)
    printed = numbers(fig_text(fig, "dot"))[-1]
    assert printed == pytest.approx(float(t["out"][0, 3, 7]), abs=1e-4)


def test_bmm_drawing_refuses_a_wrong_product(t):
    q, k, e = t["proj_query"], t["proj_key"], t["energy"]
    with pytest.raises(ValueError, match="is not"):
        drawings.bmm_drawing(q, k, result=e.transpose(1, 2))  # the same shape, transposed
    with pytest.raises(ValueError, match=r"\(2, 30, 8\) @ \(2, 30, 8\)"):
        drawings.bmm_drawing(q, q)
    with pytest.raises(ValueError, match="j must be between 0 and"):
        drawings.bmm_drawing(q, k, j=30)
    with pytest.raises(TypeError, match=r"right must be a torch\.Tensor"):
        drawings.bmm_drawing(q, [[1.0]])


def test_view_drawing_numbers_each_cell_in_raster_order(t):
    query = t["query"]
    fig = drawings.view_drawing(query, name="query", channel=3, batch=1, links=(0, 6, 29))
    grid, strip = heat_axes(fig)
    assert_cells(grid, H, W)
    assert_cells(strip, 1, N)
    np.testing.assert_allclose(array(grid), query[1, 3].numpy())
    np.testing.assert_allclose(array(strip)[0], query.view(B, -1, N)[1, 3].numpy())
    raster = [t for t in grid.texts if t.get_gid() == "raster"]
    assert len(raster) == N
    for text in raster:
        w, h = text.get_position()
        assert int(text.get_text()) == round(h) * W + round(w)
    raster = [t for t in strip.texts if t.get_gid() == "raster"]
    assert sorted(int(t.get_text()) for t in raster) == list(range(N))
    assert all(int(t.get_text()) == round(t.get_position()[0]) for t in raster)
    for n in (0, 6, 29):  # the linked cells: the same cell and colour in both
        a, b = patch(grid, f"link {n}"), patch(strip, f"link {n}")
        assert (a.get_x() + 0.5, a.get_y() + 0.5) == (n % W, n // W)
        assert (b.get_x() + 0.5, b.get_y() + 0.5) == (n, 0)
        assert a.get_edgecolor() == b.get_edgecolor()
        assert array(strip)[0, n] == array(grid)[n // W, n % W]


def test_view_drawing_reads_a_non_contiguous_map_as_view_would(t):
    query = t["query"].contiguous(memory_format=torch.channels_last)
    _, strip = heat_axes(drawings.view_drawing(query))
    np.testing.assert_allclose(array(strip)[0], t["query"].reshape(B, C // 8, N)[0, 0].numpy())


def test_view_drawing_validates(t):
    with pytest.raises(ValueError, match=r"4-D tensor, got shape \(2, 8, 30\)"):
        drawings.view_drawing(t["proj_key"])
    with pytest.raises(ValueError, match="channel must be between 0 and"):
        drawings.view_drawing(t["query"], channel=8)
    with pytest.raises(ValueError, match="each of links"):
        drawings.view_drawing(t["query"], links=(30,))


def test_permute_drawing_swaps_rows_and_columns(t):
    key = t["proj_key"]
    fig = drawings.permute_drawing(key, name="proj_key", pixel=13, batch=1)
    before, after = heat_axes(fig)
    assert_cells(before, C // 8, N)
    assert_cells(after, N, C // 8)
    np.testing.assert_allclose(array(before), key[1].numpy())
    np.testing.assert_allclose(array(after), key.permute(0, 2, 1)[1].numpy())
    column, row = patch(before, "pixel column"), patch(after, "pixel row")
    assert (column.get_x(), column.get_width(), column.get_height()) == (12.5, 1, C // 8)
    assert (row.get_y(), row.get_width(), row.get_height()) == (12.5, C // 8, 1)
    # the raster numbers label the N axis: columns before, rows after, the pixel among them
    assert list(before.get_xticks()) == list(after.get_yticks())
    assert 13 in before.get_xticks()
    text = fig_text(fig, "strides")
    assert str(tuple(key.stride())) in text
    assert str(tuple(key.permute(0, 2, 1).stride())) in text


def test_permute_drawing_validates(t):
    with pytest.raises(ValueError, match="3-D"):
        drawings.permute_drawing(t["proj_key"][0])
    with pytest.raises(ValueError, match="pixel must be between 0 and"):
        drawings.permute_drawing(t["proj_key"], pixel=-1)


def test_softmax_drawing_shows_one_row_before_and_after(t):
    e, a = t["energy"], t["attention"]
    fig = drawings.softmax_drawing(e, a, i=3, batch=1)
    before, after = fig.axes
    heights = [[p.get_height() for p in ax.patches] for ax in (before, after)]
    np.testing.assert_allclose(heights[0], e[1, 3].numpy(), rtol=1e-6)
    np.testing.assert_allclose(heights[1], a[1, 3].numpy(), rtol=1e-6)
    assert numbers(fig_text(fig, "sum"))[0] == pytest.approx(float(a[1, 3].sum()), abs=1e-4)
    assert numbers(fig_text(fig, "sum"))[0] == pytest.approx(1.0, abs=1e-4)
    best = int(e[1, 3].argmax())
    for ax in (before, after):
        assert [k for k, p in enumerate(ax.patches) if p.get_gid() == "largest"] == [best]
    with pytest.raises(ValueError, match="is not what the layer computes"):
        drawings.softmax_drawing(e, a.transpose(1, 2))
    with pytest.raises(ValueError, match="i must be between 0 and"):
        drawings.softmax_drawing(e, i=N)


def test_transpose_drawing_puts_a_beside_its_transpose(t):
    a, v, out = t["attention"], t["proj_value"], t["out"]
    i = 11
    fig = drawings.transpose_drawing(a, v, out, i=i, batch=1)
    heat_a, heat_at, heat_v, heat_out = heat_axes(fig)
    np.testing.assert_allclose(array(heat_a), a[1].numpy())
    np.testing.assert_allclose(array(heat_at), a[1].T.numpy())
    assert_cells(heat_v, C, N)
    assert_cells(heat_out, C, N)
    np.testing.assert_allclose(array(heat_out), out[1].numpy(), rtol=1e-6)
    assert heat_a.images[0].norm.vmax == heat_at.images[0].norm.vmax  # one colour scale
    for k, matrix in enumerate((a[1].double(), a[1].double().T)):
        rows = [p for ax in fig.axes for p in ax.patches if p.get_gid() == "row sums"]
        cols = [p for ax in fig.axes for p in ax.patches if p.get_gid() == "column sums"]
        drawn_rows = [p.get_width() for p in rows[k * N : (k + 1) * N]]
        drawn_cols = [p.get_height() for p in cols[k * N : (k + 1) * N]]
        np.testing.assert_allclose(drawn_rows, matrix.sum(1).numpy(), rtol=1e-6)
        np.testing.assert_allclose(drawn_cols, matrix.sum(0).numpy(), rtol=1e-6)
        r, c = matrix.sum(1), matrix.sum(0)
        expected = [float(r.min()), float(r.max()), float(c.min()), float(c.max())]
        assert numbers(fig_text(fig, f"sums {k}")) == pytest.approx(expected, abs=5e-4)
    # rows of A and columns of A^T sum to 1; the other sums do not, here
    assert numbers(fig_text(fig, "sums 0"))[:2] == [1.0, 1.0]
    assert numbers(fig_text(fig, "sums 1"))[2:] == [1.0, 1.0]
    assert numbers(fig_text(fig, "sums 0"))[2] < 0.9
    column = patch(heat_at, "column")
    assert (column.get_x(), column.get_width(), column.get_height()) == (i - 0.5, 1, N)
    column = patch(heat_out, "out column")
    assert (column.get_x(), column.get_width(), column.get_height()) == (i - 0.5, 1, C)
    weights = [p.get_height() for ax in fig.axes for p in ax.patches if p.get_gid() == "weights"]
    np.testing.assert_allclose(weights, a[1].T[:, i].numpy(), rtol=1e-6)
    expected = (v[1].double() @ a[1].double().T[:, i]).numpy()
    np.testing.assert_allclose(array(heat_out)[:, i], expected, rtol=1e-4, atol=1e-6)
    assert numbers(fig_text(fig, "check"))[-1] < 1e-5


def test_transpose_drawing_refuses_an_output_made_without_the_transpose(t):
    a, v = t["attention"], t["proj_value"]
    wrong = torch.bmm(v, a)  # the bug the drawing is about: no permute
    with pytest.raises(ValueError, match="is not what the layer computes"):
        drawings.transpose_drawing(a, v, wrong)
    with pytest.raises(ValueError, match="must sum to 1"):
        drawings.transpose_drawing(t["energy"], v)
    with pytest.raises(ValueError, match=r"\(B, C, N\)"):
        drawings.transpose_drawing(a, v[:, :, :20])


def feature_maps(module, *inputs):
    shapes = [tuple(inputs[0].shape)] if inputs[0].dim() == 4 else []
    table = trace_shapes(module.eval(), *inputs, depth=1)
    return shapes + [row.outputs[0] for row in table if len(row.outputs[0]) == 4]


@pytest.mark.parametrize("net", ["G", "D"])
def test_network_drawing_has_one_block_per_feature_map(net):
    config = GANConfig()
    module = Generator(config) if net == "G" else Discriminator(config)
    x = torch.randn(2, 128) if net == "G" else torch.randn(2, 1, 32, 32)
    bn_before = [b.clone() for b in module.buffers()]
    fig = drawings.network_drawing(module, x)
    assert module.training  # put back as it was
    for before, after in zip(bn_before, module.buffers(), strict=True):
        assert torch.equal(before, after)
    maps = feature_maps(module, x)
    blocks = [p for p in fig.axes[0].patches if str(p.get_gid()).startswith("map")]
    assert len(blocks) == len(maps) == (8 if net == "G" else 7)
    heights = np.array([b.get_height() for b in blocks])
    sides = np.array([shape[2] for shape in maps], dtype=float)
    np.testing.assert_allclose(heights / heights.max(), sides / sides.max())
    widths = np.array([b.get_width() for b in blocks])
    logs = np.log2([shape[1] for shape in maps]) + 1
    np.testing.assert_allclose(widths / widths.max(), logs / logs.max())
    orange = [b for b in blocks if matplotlib.colors.same_color(b.get_facecolor(), drawings.MARK)]
    sizes = config.g_attention if net == "G" else config.d_attention
    assert len(orange) == len(sizes) == 2
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert any(label.startswith("attention.8\n64×8×8") for label in labels)
    assert blocks == sorted(blocks, key=lambda b: b.get_x())  # in the order they are made


def test_network_drawing_validates():
    with pytest.raises(TypeError, match=r"nn\.Module"):
        drawings.network_drawing("G", torch.randn(2, 128))
    with pytest.raises(ValueError, match="no 4-D feature map"):
        drawings.network_drawing(torch.nn.Linear(3, 2), torch.randn(2, 3))
