"""The tensors of the self-attention layer drawn from the tensors: one cell per element, its value
as colour, each block's sides in proportion to its sizes (``viz`` draws labelled boxes instead).

One drawing per step of ``SelfAttention2d._forward_bmm`` (``matrix``, ``view``, ``permute``,
``bmm``, ``softmax``, ``transpose``) and of G and D (``network_drawing``). Each returns a ``Figure``
at most 7 inches wide (a book column at dpi 100), its text >= 9 points; highlights are outlined
and carry a ``gid`` ("row", "column", ...) for tests to find them.
"""

from __future__ import annotations

import math
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import patheffects
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedLocator, MaxNLocator
from torch import Tensor, nn

from ._checks import check_int
from .shapes import trace_shapes

__all__ = ["bmm_drawing", "matrix_drawing", "network_drawing", "permute_drawing"]
__all__ += ["softmax_drawing", "transpose_drawing", "view_drawing"]

WIDTH, FONT = 7.0, 9  # inches: a book column at dpi 100; points: the smallest text anywhere
MARK = "#e66100"  # the highlighted axis, weights and links: orange, apart from both colormaps
_HALO = [patheffects.withStroke(linewidth=3, foreground="white")]  # outlines show on any colour
_CHAR = 0.068  # inches per character of 9-point text, to wrap labels to the room they have
_SIGN = {"fontsize": 16, "ha": "center", "va": "center"}  # the "@" and "=" between blocks


def _tensor(name: str, t, ndims: tuple[int, ...]) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in ndims or t.numel() == 0:
        want, shape = " or ".join(f"{d}-D" for d in ndims), tuple(t.shape)
        raise ValueError(f"{name} must be a non-empty {want} tensor, got shape {shape}")
    return t.detach().cpu().double()


def _index(name: str, value, size: int) -> int:
    return check_int(name, value, minimum=0, maximum=size - 1)


def _item(name: str, t, batch: int, expected: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """(matrix of item ``batch`` of a (B, R, C) or (R, C) tensor, B); checked if ``expected``."""
    t = _tensor(name, t, (2, 3))
    got = t.numpy() if t.dim() == 2 else t[_index("batch", batch, t.shape[0])].numpy()
    if expected is not None:  # a tensor the caller computed, against our own computation
        tol = 1e-5 * max(float(np.abs(expected).max()), 1e-3)
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=tol):
            raise ValueError(
                f"{name} {tuple(t.shape)} is not what the layer computes from its inputs"
            )
    return got, (1 if t.dim() == 2 else t.shape[0])


def _wrap(text: str, inches: float, char: float = _CHAR) -> str:
    width = max(8, int(inches / char))  # characters per line
    return "\n".join("\n".join(textwrap.wrap(line, width)) for line in text.split("\n"))


def _scale(values: np.ndarray) -> tuple[str, Normalize]:
    """Diverging around 0 for signed values (white = 0), sequential from 0 for non-negative."""
    top = float(np.abs(values).max()) or 1.0
    return ("RdBu_r", Normalize(-top, top)) if values.min() < 0 else ("viridis", Normalize(0, top))


def _axes(fig: Figure, x: float, top: float, w: float, h: float):
    """Axes at ``x`` inches from the left and ``top`` inches from the top, ``w`` x ``h`` inches."""
    fw, fh = fig.get_size_inches()
    return fig.add_axes((x / fw, 1 - (top + h) / fh, w / fw, h / fh))


def _text(fig: Figure, x: float, top: float, text: str, **options):
    fw, fh = fig.get_size_inches()  # x inches from the left, the text's top inches from the top
    return fig.text(x / fw, 1 - top / fh, text, **{"fontsize": FONT, "va": "top", **options})


def _panel(fig, x, top, a, s, title, xlabel, ylabel, *, norm=None, depth=1, xtop=False, tall=0):
    """Matrix ``a`` as s-inch cells (``tall``: rows stretched to that height), colour bar below,
    ``depth`` - 1 sheets behind (the batch), column ticks on top if ``xtop``; returns (axes, the
    first free height below it all, inches from the top)."""
    (rows, cols), cmap = a.shape, _scale(a)
    ax = _axes(fig, x, top, w := cols * s, h := tall or rows * s)
    im = ax.imshow(a, cmap=cmap[0], norm=norm or cmap[1], interpolation="nearest", aspect="auto")
    if s >= 0.04:  # white lines between cells, so that rows and columns can be counted
        ax.xaxis.set_minor_locator(FixedLocator(np.arange(cols + 1) - 0.5))
        ax.yaxis.set_minor_locator(FixedLocator(np.arange(rows + 1) - 0.5))
        ax.grid(which="minor", color="white", linewidth=0.4)
    ax.tick_params(which="minor", length=0)
    ax.tick_params(labelsize=FONT)
    for axis, bins in ((ax.xaxis, round(w / 0.35)), (ax.yaxis, round(h / 0.35))):  # 0.35" apart
        axis.set_major_locator(
            MaxNLocator(min(6, bins), integer=True) if bins else FixedLocator([0])
        )
    xlabel = _wrap(xlabel, max(w + 0.6, 1.2))
    ax.set_xlabel(xlabel, fontsize=FONT)
    ax.set_ylabel(_wrap(ylabel, max(h + 0.3, 1.0)), fontsize=FONT)
    ax.xaxis.set_ticks_position("top" if xtop else "bottom")
    ax.xaxis.set_label_position("top" if xtop else "bottom")
    for k in range(1, min(depth, 3)):  # sheets offset up and right: more of the batch behind
        sheet = Rectangle((x + 0.06 * k, fig.get_size_inches()[1] - top - h + 0.06 * k), w, h)
        sheet.set(transform=fig.dpi_scale_trans, zorder=-k, facecolor="#ddd", edgecolor="#777")
        fig.add_artist(sheet)
    ax.set_title(title, fontsize=10, pad=14 if depth > 1 else 6)
    cbar_top = top + h + (0.7 if xtop else 0.3 + 0.16 * (xlabel.count("\n") + 1))
    cw = min(max(w, 1.0), 3.0)
    cax = _axes(fig, x + (w - cw) / 2, cbar_top, cw, 0.09)
    bar = fig.colorbar(im, cax=cax, orientation="horizontal")
    bar.ax.tick_params(labelsize=FONT)
    bar.locator = MaxNLocator(3 if cw < 2 else 5)
    return ax, cbar_top + 0.35


def _bars(fig, box, values, gid, label, *, colour="#999999", across=False):
    """Bars beside a heat map, aligned with it: one per column, or per row (``across``)."""
    ax, n = _axes(fig, *box), len(values)
    if across:  # rows run downwards, as in the heat map
        ax.barh(np.arange(n), values, height=0.8, color=colour, gid=gid)
        ax.set(ylim=(n - 0.5, -0.5), yticks=[])
    else:
        ax.bar(np.arange(n), values, width=0.8, color=colour, gid=gid)
        ax.set(xlim=(-0.5, n - 0.5), xticks=[])
    (ax.set_xlabel if across else ax.set_ylabel)(label, fontsize=FONT)
    ax.tick_params(labelsize=FONT)
    return ax


def _outline(ax, col: float, row: float, w: float, h: float, gid: str, color="black"):
    """Outline the cells [row, row + h) x [col, col + w) of an imshow; ``gid`` names it."""
    rect = Rectangle((col - 0.5, row - 0.5), w, h, fill=False, edgecolor=color, linewidth=2)
    ax.add_patch(rect).set(path_effects=_HALO, gid=gid, clip_on=False, zorder=4)  # over the grid


def _title(name: str, shape: tuple[int, ...], batch: int) -> str:
    return f"{name}\n{shape}" + (f", batch item {batch}" if len(shape) == 3 else "")


def matrix_drawing(
    tensor: Tensor, name: str, *, rows: str = "rows = {}", cols: str = "columns = {}", batch=0
) -> Figure:
    """``tensor`` (B, R, C) or (R, C) as R x C cells coloured by value, with a colour bar: item
    ``batch``, the rest of the batch as sheets behind. ``rows``, ``cols``: the axes' names, "{}"
    standing for the size ("N = H*W = {} pixels (query i)")."""
    array, depth = _item(name, tensor, batch)
    (r, c), title = array.shape, _title(name, tuple(tensor.shape), batch)
    s = min(0.25, 3.6 / r, (WIDTH - 1.4) / c)
    fig = plt.figure(figsize=(min(WIDTH, max(2.6, c * s + 1.6)), r * s + 1.7), dpi=100)
    _panel(fig, 0.9, 0.75, array, s, title, cols.format(c), rows.format(r), depth=depth)
    return fig


def bmm_drawing(
    left: Tensor, right: Tensor, *, names=None, axes=None, i=0, j=0, batch=0, result=None
) -> Figure:
    """``torch.bmm(left, right)`` as row times column: left (B, n, k), right (B, k, m) (or 2-D) and
    the product (B, n, m) side by side in one cell size. ``names``: of the three; ``axes``: of n,
    k (the contracted axis, orange on both operands), m ("{}": the size). Row i, column j and cell
    (i, j) outlined, the dot product printed; ``result``: the layer's product (checked, drawn)."""
    names = names or ("left", "right", "left @ right")
    axes = axes or ("rows = {}", "k = {}", "columns = {}")
    (a, depth), (b, depth_b) = _item(names[0], left, batch), _item(names[1], right, batch)
    if left.dim() != right.dim() or depth != depth_b or a.shape[1] != b.shape[0]:
        shapes = f"{tuple(left.shape)} @ {tuple(right.shape)}"
        raise ValueError(f"bmm needs (B, n, k) @ (B, k, m) or (n, k) @ (k, m), got {shapes}")
    out = a @ b if result is None else _item(names[2], result, batch, a @ b)[0]
    (n, k), m = a.shape, b.shape[1]
    i, j = _index("i", i, n), _index("j", j, m)
    dot = float(a[i] @ b[:, j])
    if not math.isclose(dot, out[i, j], rel_tol=1e-4, abs_tol=1e-6):  # the picture's own claim
        raise RuntimeError(f"{names[2]}[{i}, {j}] = {out[i, j]} but the dot product is {dot}")
    side, gap = 0.65, 0.5  # inches for y ticks and name; for the "@" or "="; 0.45 for the sheets
    room, shapes = WIDTH - 2 * (side + gap) - 0.45, (left.shape, right.shape, (*left.shape[:-1], m))
    s = min(0.25, (room - 0.7) / (k + 2 * m), 3.2 / max(n, k))
    longest = max(map(len, _title(names[0], tuple(shapes[0]), batch).split("\n")))
    x = max(0.7, 0.15 + 0.042 * longest - k * s / 2)  # the title of a narrow left block fits
    s = min(s, (room - x) / (k + 2 * m))
    top, tall, panels = 0.75, max(n, k) * s, []
    fig = plt.figure(figsize=(WIDTH, top + tall + 1.75), dpi=100)
    labels = ((axes[1], axes[0]), (axes[2], axes[1]), (axes[2], axes[0]))
    for array, name, shape, (xl, yl) in zip((a, b, out), names, shapes, labels, strict=True):
        (rows, cols), title = array.shape, _title(name, tuple(shape), batch)
        xl, yl = xl.format(cols), yl.format(rows)
        panels.append(_panel(fig, x, top, array, s, title, xl, yl, depth=depth)[0])
        if len(panels) < 3:  # the operator between this block and the next
            sign = "@" if len(panels) == 1 else "="
            _text(fig, x + cols * s + 0.06 + gap / 2, top + n * s / 2, sign, **_SIGN)
        x += cols * s + side + gap
    for axis, edge in ((panels[0].xaxis, "bottom"), (panels[1].yaxis, "left")):
        axis.label.set(color=MARK, fontweight="bold")  # the contracted axis, summed over by bmm
        axis.axes.spines[edge].set(color=MARK, linewidth=4)
    _outline(panels[0], 0, i, k, 1, "row")
    _outline(panels[1], j, 0, 1, k, "column")
    _outline(panels[2], j, i, 1, 1, "cell")
    text = f"{names[2]}[{i}, {j}] = {names[0]}[{i}, :] · {names[1]}[:, {j}] = {dot:.4f}"
    text = _wrap(f"{text}  (the sum of {k} products)", WIDTH - 0.4, 0.072)  # 10-point text
    _text(fig, WIDTH / 2, top + tall + 1.3, text, fontsize=10, ha="center", gid="dot")
    return fig


def view_drawing(x: Tensor, *, name: str = "x", channel=0, batch=0, links=None) -> Figure:
    """``x.view(B, C, N)`` of x (B, C, H, W): the map ``x[batch, channel]`` (H x W, cell (h, w)
    numbered n = h*W + w) above the same channel after the view (N = H*W cells, cell n holding map
    cell (n // W, n % W)); cells ``links`` (raster numbers) outlined in the same colour in both."""
    t = _tensor(name, x, (4,))
    bsz, chans, h, w = t.shape
    b, c, n = _index("batch", batch, bsz), _index("channel", channel, chans), h * w
    links = (0, w - 1, w, n - 1) if links is None else links  # default: ends of two rows, last
    links = tuple(dict.fromkeys(_index("each of links", k, n) for k in links))
    grid, strip = t[b, c].numpy(), t.reshape(bsz, chans, n)[b, c].numpy()[None]  # 1 x N: view's
    s1, s2 = min(0.4, 2.4 / h, 3.0 / w), min(0.3, (WIDTH - 0.9) / n)
    fig = plt.figure(figsize=(WIDTH, h * s1 + max(s2, 0.2) + 2.9), dpi=100)
    norm = _scale(grid)[1]  # one colour scale: equal colours are equal values
    ax, bottom = _panel(fig, 0.9, 0.45, grid, s1, "", f"W = {w} (w)", f"H = {h} (h)", norm=norm)
    title = f"{name}[{b}, {c}]  ({h}, {w}): cell (h, w) holds n = h*W + w"
    ax.set_title(title, loc="left", fontsize=10)
    text = "view(B, -1, N) moves no data: it reads the map row after row. Same colour: same cell."
    _text(fig, 1.5 + w * s1, 0.75, _wrap(text, WIDTH - 1.7 - w * s1))
    xlabel, options = f"N = H*W = {n} (n = h*W + w)", {"norm": norm, "tall": max(s2, 0.2)}
    ax2, _ = _panel(fig, 0.45, bottom + 0.75, strip, s2, "", xlabel, "", **options)
    title = f"{name}.view(B, C, N)[{b}, {c}]  ({n},): the {h} rows of the map, end to end"
    ax2.set_title(title, loc="left", pad=22, fontsize=10)
    ax2.set_yticks([])
    for row in range(h):  # the map's rows, separated and named
        if row:
            ax2.axvline(row * w - 0.5, color="black", linewidth=2.5)
        if w * s2 > 0.45:
            ax2.text(row * w + (w - 1) / 2, -0.6, f"h = {row}", ha="center", fontsize=FONT)
    digits, halo = len(str(n - 1)), {"path_effects": _HALO, "ha": "center", "va": "center"}
    for k in range(n):
        if s1 > digits * _CHAR + 0.05:
            ax.text(k % w, k // w, str(k), gid="raster", fontsize=10, **halo)
        if s2 > digits * _CHAR + 0.02:
            ax2.text(k, 0, str(k), gid="raster", fontsize=FONT, **halo)
    for number, k in enumerate(links):  # the same cell in both: same colour, same number
        colour = (MARK, "#1b9e77", "#7570b3", "black")[number % 4]
        _outline(ax, k % w, k // w, 1, 1, f"link {k}", colour)
        _outline(ax2, k, 0, 1, 1, f"link {k}", colour)
    return fig


def permute_drawing(
    t: Tensor, *, name: str = "t", dims=None, pixel: int = 0, batch: int = 0
) -> Figure:
    """``t.permute(0, 2, 1)``, (B, R, N) -> (B, N, R): item ``batch`` before and after in one scale
    and cell size, the N axis numbered, pixel ``pixel`` outlined (a column, then a row), the real
    strides printed. ``dims`` names R and N ("{}": the size)."""
    dims = dims or ("C//8 = {} channels", "N = H*W = {} pixels")
    a, depth = _item(name, _tensor(name, t, (3,)), batch)
    after, _ = _item(name, t.permute(0, 2, 1), batch)  # the layer's permute, not our transpose
    (r, n), options = a.shape, {"norm": _scale(a)[1], "depth": depth}
    p = _index("pixel", pixel, n)
    s = min(0.25, (WIDTH - 2.6) / (n + r), 4.0 / max(n, r))
    fig = plt.figure(figsize=(WIDTH, max(n, r) * s + 2.0), dpi=100)
    pixels, rows = dims[1].format(n), dims[0].format(r)
    title = _title(name, tuple(t.shape), batch)
    ax, bottom = _panel(fig, 0.7, 0.9, a, s, title, pixels, rows, **options)
    title = _title(f"{name}\n.permute(0, 2, 1)", (t.shape[0], n, r), batch)
    ax2, _ = _panel(fig, 1.6 + n * s, 0.9, after, s, title, rows, pixels, **options)
    step = 5 * max(1, math.ceil(0.3 / s / 5))  # raster numbers every step, and the pixel's own
    ticks = sorted({k for k in range(0, n, step) if abs(k - p) >= step / 2} | {p})
    for axis in (ax.xaxis, ax2.yaxis):
        axis.set_major_locator(FixedLocator(ticks))
        axis.get_major_ticks(len(ticks))[ticks.index(p)].label1.set_color(MARK)
    _outline(ax, p, 0, 1, r, "pixel column", MARK)
    _outline(ax2, 0, p, r, 1, "pixel row", MARK)
    text = (
        f"permute(0, 2, 1) moves [c, n] to [n, c]: pixel {p}'s {r} values, a column on the left, "
    )
    text += "are a row on the right. No data moves: only the strides change."
    text = _wrap(text, max(n * s, 3.0))
    strides = f"\nstrides {tuple(t.stride())} -> {tuple(t.permute(0, 2, 1).stride())}"
    _text(fig, 0.7, bottom + 0.1, text + strides, gid="strides")
    return fig


def softmax_drawing(
    energy: Tensor, attention=None, *, i: int = 0, batch: int = 0, names=None
) -> Figure:
    """Row i of energy (B, N, M) or (N, M) before and after ``softmax(dim=-1)`` (``attention``,
    checked, else computed), as bars: positive weights that sum to 1 (printed), the top outlined."""
    names = names or ("energy", "attention")
    e, _ = _item(names[0], energy, batch)
    a = torch.softmax(torch.from_numpy(e), dim=-1).numpy()
    a = a if attention is None else _item(names[1], attention, batch, a)[0]
    i = _index("i", i, e.shape[0])
    (m, best), (cmap, norm) = (e.shape[1], int(np.argmax(e[i]))), _scale(e)
    fig = plt.figure(figsize=(WIDTH, 5.0), dpi=100)
    rows = (
        (e[i], plt.get_cmap(cmap)(norm(e[i])), f"{names[0]}[{i}, :]: query {i} against each key j"),
        (a[i], "#4c72b0", f"{names[1]}[{i}, :] = softmax({names[0]}[{i}, :]) = exp(e_j) / sum exp"),
    )
    for k, (values, colour, title) in enumerate(rows):
        ax = _axes(fig, 0.8, 0.45 + 2.35 * k, WIDTH - 1.0, 1.55)
        bars = ax.bar(np.arange(m), values, width=0.8, color=colour, edgecolor="#444444")
        bars[best].set(edgecolor=MARK, linewidth=2.5, gid="largest")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlim(-0.6, m - 0.4)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"key pixel j (of {m})", fontsize=FONT)
        ax.set_ylabel("weight" if k else "score", fontsize=FONT)
        ax.tick_params(labelsize=FONT)
        ax.xaxis.set_major_locator(MaxNLocator(10, integer=True))
    total = f"sum over j = {float(a[i].sum()):.4f}"
    ax.text(0.99, 0.95, total, transform=ax.transAxes, ha="right", va="top", fontsize=10, gid="sum")
    return fig


def transpose_drawing(
    attention: Tensor, value: Tensor, out=None, *, i: int = 0, batch: int = 0
) -> Figure:
    """Why ``out = bmm(proj_value, attention.permute(0, 2, 1))``: A (B, N, N), rows summing to 1,
    against A^T with their row and column sums; then column i of A^T weighting the columns of V
    (B, C, N) into out[:, i] (out (B, C, N), the layer's: checked; else computed)."""
    (a, _), (v, _) = _item("attention", attention, batch), _item("value", value, batch)
    n, c = a.shape[0], v.shape[0]
    if a.shape != (n, n) or v.shape[1] != n or attention.dim() != value.dim():
        shapes = f"{tuple(attention.shape)} and {tuple(value.shape)}"
        raise ValueError(f"expected attention (B, N, N) and value (B, C, N), got {shapes}")
    if not np.allclose(a.sum(1), 1, atol=1e-4):
        raise ValueError("the rows of attention must sum to 1 (a softmax over dim=-1)")
    at = _item("attention", attention.transpose(-1, -2), batch)[0]  # as the layer's permute
    o = v @ at if out is None else _item("out", out, batch, v @ at)[0]
    i = _index("i", i, n)
    error = float(np.abs(o[:, i] - v @ at[:, i]).max())
    s = min(0.2, 2.0 / n)
    s2, low = min(s, 2.4 / c, (WIDTH - 2.6) / (2 * n)), 0.85 + n * s + 1.75  # the lower row's top
    head = f"Column {i} of A^T (outlined above) weights the {n} columns of V = proj_value ({c}, "
    head += f"{n}): out[:, {i}] = V @ A^T[:, {i}] = sum_j A^T[j, {i}] V[:, j]; checked: the largest"
    head = _wrap(f"{head} difference is {error:.1e}.", WIDTH - 0.6, 0.078)
    mid = low + 0.35 + 0.17 * head.count("\n")  # the top of the weights, under the heading
    vh = max(c * s2, 1.0)  # V and out at least an inch tall: cells stretched when N is large
    fig = plt.figure(figsize=(WIDTH, mid + 1.55 + vh), dpi=100)
    norm, keys, queries = _scale(a)[1], f"N = {n} keys (j)", f"N = {n} queries (i)"
    for k, (arr, title) in enumerate(((a, "A = attention"), (at, "A^T = A.permute(0, 2, 1)"))):
        x, r, q = 0.7 + k * (n * s + 1.55), arr.sum(1), arr.sum(0)
        title, labels = f"{title}  ({n}, {n})", (keys, queries)[:: 1 - 2 * k]
        ax, _ = _panel(fig, x, 0.85, arr, s, title, *labels, norm=norm, xtop=True)
        box = (x + n * s + 0.08, 0.85, 0.5, n * s)
        right = _bars(fig, box, r, "row sums", "row sums", across=True)
        below = _bars(fig, (x, 0.91 + n * s, n * s, 0.4), q, "column sums", "column\nsums")
        right.set(xlim=(0, max(1.1, r.max())), xticks=[0, 1])
        below.set(ylim=(max(1.1, q.max()), 0), yticks=[0, 1])  # hanging from the matrix
        right.axvline(1, color=MARK, linewidth=1)
        below.axhline(1, color=MARK, linewidth=1)
        text = f"row sums {r.min():.3f} to {r.max():.3f}\ncolumn sums {q.min():.3f} to "
        _text(fig, x, 0.85 + n * s + 1.1, text + f"{q.max():.3f}", gid=f"sums {k}")
    _outline(ax, i, 0, 1, n, "column", MARK)
    _text(fig, 0.3, low, head, fontsize=10, gid="check")
    box = (0.9, mid, n * s2, 0.45)  # right above the columns of V that they weight
    bars = _bars(fig, box, at[:, i], "weights", f"A^T[j, {i}]", colour=MARK)
    bars.yaxis.set_major_locator(MaxNLocator(2))
    x2, pixels, channels = 0.9 + n * s2 + 1.1, f"N = {n} pixels (j)", f"C = {c} channels"
    ax, _ = _panel(fig, 0.9, mid + 0.6, v, s2, "", pixels, channels, tall=vh)
    _outline(ax, 0, 0, n, c, "value columns", MARK)
    _text(fig, 0.9 + n * s2 + 0.4, mid + 0.6 + vh / 2, "=", **_SIGN)
    ax, _ = _panel(fig, x2, mid + 0.6, o, s2, f"out  ({c}, {n})", pixels, channels, tall=vh)
    _outline(ax, i, 0, 1, c, "out column", MARK)
    return fig


def network_drawing(module: nn.Module, *inputs, title: str = "", depth: int = 1) -> Figure:
    """Every feature map (B, C, H, W) of ``module(*inputs)`` (the 4-D outputs of ``trace_shapes``
    rows, a 4-D input first) as a block, its height ∝ H, its width ∝ log2(C) + 1 (log scale),
    attention orange. The module runs once in eval mode; its modes are put back."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    modes = {m: m.training for m in module.modules()}
    module.eval()  # no BatchNorm statistics or spectral-norm vectors change for a picture
    try:
        table = trace_shapes(module, *inputs, depth=depth)
    finally:
        for m, mode in modes.items():
            m.training = mode
    x = inputs[0] if inputs else None
    maps = [("input", tuple(x.shape), False)] if isinstance(x, Tensor) and x.dim() == 4 else []
    for row in table:
        if len(row.outputs) == 1 and len(row.outputs[0]) == 4:
            maps.append((row.module or row.op, row.outputs[0], "attention" in row.op.lower()))
    if not maps:
        raise ValueError(f"{type(module).__name__} made no 4-D feature map to draw")
    labels = [f"{name}\n{'×'.join(map(str, shape[1:]))}" for name, shape, _ in maps]
    widths = [0.09 * (math.log2(max(shape[1], 1)) + 1) for _, shape, _ in maps]
    need = [_CHAR * max(map(len, label.split("\n"))) for label in labels]
    stagger = sum(max(w, t) + 0.3 for w, t in zip(widths, need, strict=True)) > WIDTH - 0.2
    slots = [max(w, t / (1 + stagger)) + 0.3 for w, t in zip(widths, need, strict=True)]
    spread = max(1.0, sum(slots) / (WIDTH - 0.2))  # squeeze the blocks in, rather than overflow
    side, tall, base = max(shape[2] for _, shape, _ in maps), 2.0, 0.4 + 0.4 * (1 + stagger)
    fig = plt.figure(figsize=(WIDTH, base + tall + 0.75), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1), xlim=(0, WIDTH), ylim=(0, base + tall + 0.75))
    ax.axis("off")
    previous, centre, x = 0.0, base + 0.1 + tall / 2, 0.1 + (WIDTH - 0.2 - sum(slots) / spread) / 2
    for k, (_, shape, attn) in enumerate(maps):
        width, height = widths[k], tall * shape[2] / side
        left = x + (slots[k] / spread - width) / 2
        block = Rectangle((left, centre - height / 2), width, height, edgecolor="#1f4e79")
        ax.add_patch(block).set(facecolor=MARK if attn else "#9ecae1", gid=f"map {k}")
        y = base - 0.05 - 0.4 * (stagger and k % 2)  # alternate label rows when crowded
        ax.text(left + width / 2, y, labels[k], ha="center", va="top", fontsize=FONT)
        if k:
            arrow = {"arrowstyle": "->", "color": "#444444"}
            ax.annotate("", (left - 0.02, centre), (previous + 0.02, centre), arrowprops=arrow)
        previous, x = left + width, x + slots[k] / spread
    name = title or type(module).__name__
    ax.text(WIDTH / 2, base + tall + 0.6, name, ha="center", va="top", fontsize=11)
    caption = "height ∝ side H;  width ∝ log2(channels) + 1 (log scale);  orange: self-attention"
    ax.text(WIDTH / 2, 0.08, caption, ha="center", va="bottom", fontsize=FONT)
    return fig
