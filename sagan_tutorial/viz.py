"""Pictures drawn from real tensors: shape diagrams, attention heat maps, image grids.

Every function returns a matplotlib ``Figure`` (or draws into the ``Axes`` it is given), so a
notebook shows it and a test can inspect its text.

A *shape diagram* draws each tensor as a labelled block with its actual sizes and the op that
leads from one tensor to the next::

    fig = shape_diagram([
        ("x", x, "B C H W"), "query_conv",
        ("query", q, "B C//8 H W"), "view",
        ("query", q.view(B, -1, N), "B C//8 N"),
    ])
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from ._checks import check_int
from .grids import image_grid

__all__ = [
    "attention_heatmaps",
    "image_grid",
    "index_grid",
    "op_arrow",
    "plot_images",
    "shape_diagram",
    "tensor_block",
]

BLOCK_WIDTH, BLOCK_HEIGHT = 2.6, 1.2  # in data units of the diagram's axes
_GAP = 2.5  # horizontal room for an op's arrow and name
_INCHES = 0.55  # figure inches per data unit: a chain of four blocks fits a book page


def _shape_of(tensor) -> tuple[int, ...]:
    if isinstance(tensor, torch.Tensor):
        return tuple(tensor.shape)
    if isinstance(tensor, Sequence) and all(isinstance(s, int) for s in tensor):
        return tuple(tensor)
    raise TypeError(f"expected a torch.Tensor or a tuple of sizes, got {type(tensor).__name__}")


def _dim_names(dims, shape: tuple[int, ...]) -> tuple[str, ...]:
    names = tuple(dims.split()) if isinstance(dims, str) else tuple(dims)
    if len(names) != len(shape):
        raise ValueError(
            f"expected {len(shape)} dimension names for shape {shape}, got {len(names)}: {names}"
        )
    return names


def tensor_block(
    ax: Axes,
    tensor,
    *,
    dims: str | Sequence[str] | None = None,
    label: str = "",
    xy: tuple[float, float] = (0.0, 0.0),
    color: str = "#dbe9f6",
) -> tuple[float, float, float]:
    """Draw one tensor as a block: its name, its dimension names and its sizes.

    Args:
        ax: the axes to draw into (data coordinates).
        tensor: a tensor, or a tuple of sizes.
        dims: one name per dimension, as a tuple or a space-separated string ("B C H W").
        label: the tensor's name, written in bold on top.
        xy: the block's lower-left corner.

    Returns:
        (left x, right x, centre y) of the block, where arrows attach.
    """
    shape = _shape_of(tensor)
    x, y = xy
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            BLOCK_WIDTH,
            BLOCK_HEIGHT,
            boxstyle="round,pad=0.05",
            facecolor=color,
            edgecolor="#1f4e79",
            linewidth=1.2,
        )
    )
    cx = x + BLOCK_WIDTH / 2
    lines = [" × ".join(str(s) for s in shape) or "scalar"]
    if dims is not None:
        lines.insert(0, " × ".join(_dim_names(dims, shape)))
    if label:
        ax.text(
            cx,
            y + BLOCK_HEIGHT * 0.78,
            label,
            ha="center",
            va="center",
            fontsize=_fit(label, 10, 14),
            fontweight="bold",
            family="monospace",
        )
    top = 0.45 if label else 0.62
    for k, line in enumerate(lines):
        ax.text(
            cx,
            y + BLOCK_HEIGHT * (top - 0.28 * k),
            line,
            ha="center",
            va="center",
            fontsize=_fit(line, 9, 18),
            family="monospace",
        )
    return x, x + BLOCK_WIDTH, y + BLOCK_HEIGHT / 2


def _fit(text: str, size: float, room: int) -> float:
    """A font size at which ``text`` fits where ``room`` characters of ``size`` points fit."""
    return size * min(1.0, room / max(len(text), 1))


def op_arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], op: str = "") -> None:
    """Draw an arrow from ``start`` to ``end`` with the op's name at its middle."""
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=14,
            color="#444444",
            linewidth=1.2,
            shrinkA=2,
            shrinkB=2,
        )
    )
    if op:
        horizontal = abs(end[1] - start[1]) < 1e-9
        mid = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + (0.1 if horizontal else 0))
        ax.text(
            *mid,
            op,
            ha="center",
            va="bottom" if horizontal else "center",
            fontsize=_fit(op, 8, 20),
            color="#9c2a00",
            family="monospace",
            bbox=None if horizontal else {"facecolor": "white", "edgecolor": "none"},
        )


def _as_group(step) -> list[tuple]:
    """A step is (label, tensor[, dims]) or a list of them (the operands of one op)."""
    group = step if isinstance(step, list) else [step]
    for item in group:
        if not isinstance(item, tuple) or len(item) not in (2, 3):
            raise TypeError(
                "expected each step to be (label, tensor) or (label, tensor, dims), "
                f"or a list of them, got {item!r}"
            )
    return [item if len(item) == 3 else (*item, None) for item in group]


def shape_diagram(steps: Sequence, *, title: str = "", per_row: int = 4) -> Figure:
    """Draw a chain of tensors and the ops between them, left to right.

    Args:
        steps: tensors and op names, alternating: ``[t0, op, t1, op, t2, ...]``. A tensor step is
            ``(label, tensor)`` or ``(label, tensor, dims)``; a list of such tuples stands for
            the operands of one op (``bmm`` of two tensors), drawn one above the other. An op
            is a string (``"view"``, ``"permute(0, 2, 1)"``, ``"bmm"``).
        title: written above the diagram.
        per_row: tensors per row before the chain wraps to the next row.

    Returns:
        The figure; each block's text names its tensor, its dimensions and their sizes.
    """
    steps = list(steps)
    if not steps or len(steps) % 2 == 0:
        raise ValueError(
            f"expected an odd number of steps (tensor, op, tensor, ...), got {len(steps)}"
        )
    groups = [_as_group(s) for s in steps[::2]]
    ops = steps[1::2]
    for op in ops:
        if not isinstance(op, str):
            raise TypeError(f"expected an op name (str) between tensors, got {op!r}")

    per_row = max(1, min(per_row, len(groups)))
    tallest = max(len(g) for g in groups)
    row_height = tallest * (BLOCK_HEIGHT + 0.5) + 0.6
    width = per_row * BLOCK_WIDTH + (per_row - 1) * _GAP
    fig, ax = plt.subplots()

    previous: list[tuple[float, float, float]] = []
    for k, group in enumerate(groups):
        row, col = divmod(k, per_row)
        x = col * (BLOCK_WIDTH + _GAP)
        y_mid = -row * row_height
        ys = [
            y_mid + (len(group) / 2 - i - 1) * (BLOCK_HEIGHT + 0.5) + 0.25
            for i in range(len(group))
        ]
        anchors = [
            tensor_block(ax, t, dims=d, label=name, xy=(x, y))
            for (name, t, d), y in zip(group, ys, strict=True)
        ]
        if previous:
            target = (anchors[0][0], sum(a[2] for a in anchors) / len(anchors))
            _connect(ax, previous, target, ops[k - 1], wrapped=col == 0)
        previous = anchors

    ax.set_xlim(-0.3, width + 0.3)
    bottoms = [p.get_y() for p in ax.patches if isinstance(p, FancyBboxPatch)]
    low, high = min(bottoms) - 0.2, max(bottoms) + BLOCK_HEIGHT + 0.45
    ax.set_ylim(low, high)
    # the figure's size follows the drawing, so that every diagram has the same text size
    fig.set_size_inches(_INCHES * (width + 0.6), _INCHES * (high - low) + (0.35 if title else 0.1))
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return fig


def _connect(ax, sources, target, op, wrapped):
    """Arrows from each source block to the target; a wrapped chain goes down a row first."""
    if wrapped:  # the next tensor starts a new row: one arrow from below the last block
        right, y = sources[-1][1], min(s[2] for s in sources) - BLOCK_HEIGHT / 2
        op_arrow(
            ax,
            (right - BLOCK_WIDTH / 2, y - 0.05),
            (target[0] + BLOCK_WIDTH / 2, target[1] + BLOCK_HEIGHT / 2 + 0.1),
            op,
        )
        return
    for _, right, y in sources:
        op_arrow(ax, (right + 0.08, y), (target[0] - 0.08, target[1]))
    if op:  # one name for the op however many operands, above the line into the target
        ax.text(
            target[0] - _GAP / 2,
            target[1] + 0.1,
            op,
            ha="center",
            va="bottom",
            fontsize=_fit(op, 8, 20),
            color="#9c2a00",
            family="monospace",
        )


def index_grid(height: int, width: int, *, ax: Axes | None = None) -> Figure:
    """An H x W grid whose cells hold the flat index n = h * W + w that ``view`` gives them."""
    for name, size in (("height", height), ("width", width)):
        check_int(name, size, minimum=1)
    if ax is None:
        _, ax = plt.subplots(figsize=(0.6 * width + 1.2, 0.6 * height + 0.8))
    index = np.arange(height * width).reshape(height, width)  # row-major: the order of view
    ax.imshow(index, cmap="Blues", alpha=0.5)
    for h in range(height):
        for w in range(width):
            ax.text(w, h, str(index[h, w]), ha="center", va="center", fontsize=9)
    ax.set_xticks(range(width), [f"w={w}" for w in range(width)], fontsize=8)
    ax.set_yticks(range(height), [f"h={h}" for h in range(height)], fontsize=8)
    ax.set_title(f"n = h * W + w  (H={height}, W={width})", fontsize=10)
    ax.figure.tight_layout()
    return ax.figure


def plot_images(
    images: torch.Tensor,
    *,
    titles: Sequence[str] | None = None,
    cmap: str = "gray",
    size: float = 1.8,
) -> Figure:
    """Show (K, H, W) images side by side, each with its optional title and no axes."""
    if not isinstance(images, torch.Tensor) or images.dim() != 3:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected images of shape (K, H, W), got {got}")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"expected {len(images)} titles, got {len(titles)}")
    fig, axes = plt.subplots(
        1, len(images), figsize=(size * len(images), size + 0.3), squeeze=False
    )
    for k, ax in enumerate(axes[0]):
        ax.imshow(images[k].detach().cpu().float().numpy(), cmap=cmap)
        ax.axis("off")
        if titles is not None:
            ax.set_title(titles[k], fontsize=9)
    fig.tight_layout()
    return fig


def attention_heatmaps(
    image: torch.Tensor,
    attention: torch.Tensor,
    queries: Sequence[tuple[int, int]],
    *,
    size: float = 2.0,
) -> Figure:
    """Where chosen query pixels look: one attention row per panel, over the image.

    Args:
        image: (H_img, W_img), the picture the feature map was computed from.
        attention: (N, N) with N = h * w for a feature map of size (h, w) that covers the image
            (h, w are read from the image's aspect: ``h * w == N`` and ``H_img / h == W_img / w``).
        queries: (row, column) positions on the feature map; each gets a panel with its row of
            the map upsampled over the image, the query marked with a cross, a colour bar from 0
            to the row's largest weight (in the title).
    """
    if image.dim() != 2:
        raise ValueError(f"expected an image of shape (H, W), got {tuple(image.shape)}")
    n = attention.shape[-1]
    if attention.dim() != 2 or attention.shape[0] != n:
        raise ValueError(f"expected an attention map of shape (N, N), got {tuple(attention.shape)}")
    scale = (image.numel() / n) ** 0.5
    h, w = round(image.shape[0] / scale), round(image.shape[1] / scale)
    if h * w != n:
        raise ValueError(
            f"an attention map over N={n} positions does not tile an image of shape "
            f"{tuple(image.shape)}"
        )
    fig, axes = plt.subplots(
        1, len(queries), figsize=((size + 0.7) * len(queries), size + 0.4), squeeze=False
    )
    for ax, (row, col) in zip(axes[0], queries, strict=True):
        if not (0 <= row < h and 0 <= col < w):
            raise ValueError(f"expected a query inside the {h} x {w} map, got ({row}, {col})")
        weights = attention[row * w + col].reshape(1, 1, h, w).detach().cpu().float()
        weights = F.interpolate(weights, size=tuple(image.shape), mode="nearest")[0, 0]
        ax.imshow(image.detach().cpu().float().numpy(), cmap="gray")
        # from 0, not from the row's minimum: a row that spreads evenly shows as evenly bright
        peak = weights.max().item()
        shown = ax.imshow(weights.numpy(), cmap="magma", alpha=0.6, vmin=0, vmax=peak)
        bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
        bar.set_label("weight", fontsize=9)
        bar.ax.tick_params(labelsize=9)
        ax.plot(
            (col + 0.5) * scale - 0.5,
            (row + 0.5) * scale - 0.5,
            "x",
            color="cyan",
            markersize=9,
            markeredgewidth=2,
        )
        ax.set_title(f"query ({row}, {col}), peak {peak:.2f}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig
