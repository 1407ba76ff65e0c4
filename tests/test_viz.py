"""viz: shape diagrams, index grid, image grids and heat maps, read back from the Figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch

from sagan_tutorial import viz


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_shape_diagram_labels_every_block_and_op():
    x = torch.randn(2, 64, 6, 5)
    query = torch.randn(2, 8, 6, 5)
    fig = viz.shape_diagram(
        [
            ("x", x, "B C H W"),
            "query_conv",
            ("query", query, ("B", "C//8", "H", "W")),
            "view(B, -1, N)",
            ("proj_query", query.view(2, 8, 30), "B C//8 N"),
        ],
        title="the query",
    )
    assert texts(fig) == [
        "x",
        "B × C × H × W",
        "2 × 64 × 6 × 5",
        "query",
        "B × C//8 × H × W",
        "2 × 8 × 6 × 5",
        "query_conv",
        "proj_query",
        "B × C//8 × N",
        "2 × 8 × 30",
        "view(B, -1, N)",
    ]
    assert fig.axes[0].get_title() == "the query"
    assert len(fig.axes[0].patches) == 3 + 2  # three blocks, two arrows


def test_shape_diagram_operands_side_by_side_and_wrapping():
    q, k, e = torch.zeros(2, 30, 8), torch.zeros(2, 8, 30), torch.zeros(2, 30, 30)
    fig = viz.shape_diagram([[("proj_query", q, "B N C'"), ("proj_key", k)], "bmm", ("energy", e)])
    found = texts(fig)
    assert found.count("bmm") == 1
    assert {"proj_query", "proj_key", "energy", "2 × 30 × 8", "2 × 8 × 30", "2 × 30 × 30"} <= set(
        found
    )
    assert len(fig.axes[0].patches) == 3 + 2  # both operands get an arrow into energy
    chain = [("a", (1, 2)), "f", ("b", (3,)), "g", ("c", (4, 5, 6))]
    fig = viz.shape_diagram(chain, per_row=2)
    blocks = [p for p in fig.axes[0].patches if type(p).__name__ == "FancyBboxPatch"]
    assert blocks[0].get_y() > blocks[2].get_y()  # the third block wrapped to a lower row
    assert "4 × 5 × 6" in texts(fig)


def test_shape_diagram_bad_steps():
    with pytest.raises(ValueError, match="odd number of steps"):
        viz.shape_diagram([("x", torch.zeros(1)), "view"])
    with pytest.raises(TypeError, match=r"op name \(str\).*got 3"):
        viz.shape_diagram([("x", torch.zeros(1)), 3, ("y", torch.zeros(1))])
    with pytest.raises(ValueError, match=r"expected 2 dimension names for shape \(2, 3\), got 3"):
        viz.shape_diagram([("x", torch.zeros(2, 3), "B C N")])
    with pytest.raises(TypeError, match=r"expected a torch\.Tensor or a tuple of sizes, got str"):
        viz.shape_diagram([("x", "not a tensor")])


def test_tensor_block_returns_attachment_points():
    _, ax = plt.subplots()
    left, right, mid = viz.tensor_block(ax, (2, 30, 30), dims="B N N", label="energy", xy=(1, 2))
    assert (left, right, mid) == (1, 1 + viz.BLOCK_WIDTH, 2 + viz.BLOCK_HEIGHT / 2)
    assert [t.get_text() for t in ax.texts] == ["energy", "B × N × N", "2 × 30 × 30"]
    viz.op_arrow(ax, (0, 0), (1, 0), "softmax")
    assert ax.texts[-1].get_text() == "softmax"


def test_index_grid_holds_flat_indices():
    fig = viz.index_grid(6, 5)
    numbers = [t.get_text() for t in fig.axes[0].texts]
    assert numbers == [str(n) for n in range(30)]
    # pixel (h=1, w=0) is n = 1 * W + 0 = 5, drawn at x=0, y=1
    five = fig.axes[0].texts[5]
    assert five.get_position() == (0, 1)
    with pytest.raises(ValueError, match="width must be at least 1, got 0"):
        viz.index_grid(3, 0)


def test_image_grid_places_images_row_by_row():
    images = torch.arange(1, 6).float().view(5, 1, 1).expand(5, 2, 3)  # image k is all k+1
    grid = viz.image_grid(images, nrow=2, pad=1)
    assert grid.shape == (3 * 2 + 2, 2 * 3 + 1)
    assert grid[0, 0] == 1 and grid[0, 4] == 2 and grid[3, 0] == 3 and grid[6, 0] == 5
    assert grid[6, 4] == 0  # the missing sixth image stays blank
    assert grid[2, 0] == 0 and grid[0, 3] == 0  # padding between images
    color = viz.image_grid(torch.rand(4, 3, 5, 5), nrow=4, pad=0)
    assert color.shape == (3, 5, 20)
    with pytest.raises(ValueError, match=r"expected images of shape .* got \(5, 5\)"):
        viz.image_grid(torch.zeros(5, 5), nrow=1)
    with pytest.raises(ValueError, match="nrow must be at least 1, got 0"):
        viz.image_grid(images, nrow=0)


def test_plot_images_titles():
    fig = viz.plot_images(torch.rand(3, 4, 4), titles=["a", "b", "c"])
    assert [ax.get_title() for ax in fig.axes] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="expected 3 titles, got 1"):
        viz.plot_images(torch.rand(3, 4, 4), titles=["a"])


def test_attention_heatmaps_upsample_the_query_row():
    image = torch.rand(32, 24)
    attention = torch.softmax(torch.randn(12, 12), dim=-1)  # a 4 x 3 map over the 32 x 24 image
    fig = viz.attention_heatmaps(image, attention, [(0, 0), (3, 2)])
    panels = [ax for ax in fig.axes if ax.images]  # the others are the colour bars
    peaks = [attention[i].max().item() for i in (0, 11)]
    assert [ax.get_title() for ax in panels] == [
        f"query (0, 0), peak {peaks[0]:.2f}",
        f"query (3, 2), peak {peaks[1]:.2f}",
    ]
    assert len(fig.axes) == 4  # every panel has a colour bar
    overlay = panels[1].images[1].get_array()
    assert panels[1].images[1].get_clim() == (0, pytest.approx(peaks[1]))
    assert overlay.shape == (32, 24)
    # query (3, 2) is row 3 * 3 + 2 = 11 of the map; its weight for pixel (1, 0) fills an 8x8 patch
    assert (
        overlay[8:16, 0:8].min()
        == overlay[8:16, 0:8].max()
        == pytest.approx(attention[11, 3].item())
    )
    with pytest.raises(ValueError, match=r"query inside the 4 x 3 map, got \(4, 0\)"):
        viz.attention_heatmaps(image, attention, [(4, 0)])
    with pytest.raises(ValueError, match="does not tile an image"):
        viz.attention_heatmaps(torch.rand(10, 10), attention, [(0, 0)])
