"""An attention explorer: pick a pixel of a generated digit, see where each attention layer looks.

``attention_explorer(G)`` returns an :class:`IPython.display.HTML` object that shows one digit of
``G`` (by default ``G.sample(1, seed=seed)``) and, for every attention layer of ``G``, the row of
its attention map for the query position under the selected pixel, upsampled to the image and
drawn as a heat map over the digit (colour scale from 0 to the row's largest weight). The image
pixel (r, c) of an S x S image sits over position (r // (S // H), c // (S // W)) of an H x W map:
on a 32 x 32 digit, 2 x 2 pixels per position of the 16 x 16 map, 4 x 4 of the 8 x 8 map. The
readout gives, per layer, that query position, the layer's ``gamma`` and the size of the attention
branch there, ||gamma * o_i|| / ||x_i|| (o: the attention output before the residual, x: the
layer's input, both at position i).

Everything is embedded in the HTML (no kernel, no network, no library): plain JavaScript draws on
canvases, so the same output works in a running notebook and in the built static book. The data
(a JSON ``<script type="application/json" class="sagan-explorer-data">``): the image as uint8,
each attention map as uint8 per row (row i holds ``round(255 * A[i] / max(A[i]))``, the row
maxima as float32; both base64), gammas and branch sizes: ~100 KB of data (~110 KB of HTML) for
a 32 x 32 generator with maps on 8 x 8 and 16 x 16. The maps grow as N^2: generators whose maps
hold more than ``MAX_MAP_BYTES`` weights in all are refused.

Reader controls: hover the digit to explore, click (or tap) to pin a pixel, arrow keys move the
pixel when the digit has the focus (Shift: 4 pixels at a time), Escape lets the hover take over.

DOM contract (kept stable for automated browser tests):

* The root is ``<div class="sagan-explorer" id=ID>`` (``ID`` unique per call unless
  ``element_id`` is given); its script sets ``data-ready="1"`` on it once it has drawn (an error
  sets ``data-ready="error"`` and shows the message in the readout).
* ``canvas.sagan-explorer-image``: the digit, S*z x S*z canvas pixels (z = zoom, 6 for 32 px).
  A click at a point of it selects the image pixel under it.
* The root's ``data-query`` is ``"row,col"``: the selected image pixel (0-based; set at start
  too, to a bright pixel near the centre).
* ``.sagan-explorer-readout`` (``aria-live="polite"``): a text readout: first a line with the
  pixel, then an ``li[data-layer]`` per layer, whose text reads
  ``"<layer name> (HxW map): query position (r, c); gamma = <g>; branch size = <b> (...)"``,
  numbers to 3 significant digits; each ``li`` also has ``data-position="r,c"``,
  ``data-gamma`` and ``data-branch`` (full precision; ``data-branch`` is empty where x_i = 0).
* ``canvas.sagan-explorer-map[data-layer]``: one heat map per layer.
"""

from __future__ import annotations

import base64
import html
import json
import re
import uuid
from pathlib import Path

import numpy as np
import torch

from ._checks import check_int
from .models import Generator, attention_layers, attention_maps

__all__ = ["MAX_MAP_BYTES", "attention_explorer", "explorer_data", "explorer_html"]

MAX_MAP_BYTES = 1 << 21  # uint8 attention weights embedded in all (a 64 px G needs ~1.1 MB)
_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
# matplotlib's viridis at 16 evenly spaced stops, as hex RGB.
_VIRIDIS = (
    "440154481a6c472f7d41448739568c31688e2a788e23888e"
    "1f988b22a88435b77954c5687ad151a5db36d2e21bfde725"
)


def _check_generator(generator) -> list:
    if not isinstance(generator, Generator):
        raise TypeError(
            f"generator must be a sagan_tutorial.models.Generator, got {type(generator).__name__}"
        )
    layers = attention_layers(generator)
    if not layers:
        raise ValueError("this generator has no attention layer: there is nothing to explore")
    return layers


def _check_z(generator: Generator, z, seed: int) -> torch.Tensor:
    z_dim = generator.config.z_dim
    if z is None:
        return torch.randn(1, z_dim, generator=torch.Generator().manual_seed(seed))
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"z must be a tensor of shape ({z_dim},) or (1, {z_dim}), got {z!r:.60}")
    if not z.is_floating_point():
        raise TypeError(f"z must be a floating-point tensor, got dtype {z.dtype}")
    if tuple(z.shape) not in ((z_dim,), (1, z_dim)):
        raise ValueError(
            f"z must have shape ({z_dim},) or (1, {z_dim}): the explorer shows one digit, "
            f"got {tuple(z.shape)}"
        )
    if not torch.isfinite(z).all():
        raise ValueError("z must be finite (it holds NaN or infinity)")
    return z.reshape(1, z_dim)


def _check_y(generator: Generator, y) -> int | None:
    classes = generator.config.num_classes
    if classes == 0:
        if y is not None:
            raise ValueError("this generator is unconditional (num_classes=0): y must be None")
        return None
    if y is None:
        raise ValueError(f"this generator is conditional ({classes} classes): pass y, a class")
    if isinstance(y, torch.Tensor):
        if y.dtype != torch.long:
            raise TypeError(f"y must be an int or an int64 tensor, got dtype {y.dtype}")
        if y.numel() != 1 or y.dim() > 1:
            raise ValueError(f"y must be one class index, got shape {tuple(y.shape)}")
        y = int(y.reshape(()).item())
    return check_int("y", y, minimum=0, maximum=classes - 1)


def explorer_data(generator: Generator, z=None, y=None, *, seed: int = 0) -> dict:
    """The explorer's numbers, unquantised, for one digit of ``generator``.

    ``z``: (z_dim,) or (1, z_dim); None: drawn from ``seed`` as ``generator.sample`` does, so the
    digit is ``generator.sample(1, seed=seed)``. ``y``: the class (int) of a conditional G.
    Returns ``{"image": (S, S, C) float32 in [-1, 1], "z": (1, z_dim), "y", "layers": [...]}``
    with per layer (in G's order) ``name``, ``height``, ``width``, ``gamma`` (float),
    ``attention`` (N, N) float32 (row i: query position i) and ``branch`` (N,) float32,
    ||gamma * o_i|| / ||x_i|| (NaN where x_i = 0). G runs in eval mode; its mode is restored.
    """
    layers = _check_generator(generator)
    check_int("seed", seed, minimum=0)
    z, y = _check_z(generator, z, seed), _check_y(generator, y)
    device, was_training = next(generator.parameters()).device, generator.training
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(name):
        def hook(layer, inputs, output):  # attention_maps calls the layer again: keep the first
            if name not in seen and isinstance(output, torch.Tensor):
                seen[name] = (inputs[0].detach(), output.detach())

        return hook

    handles = [layer.register_forward_hook(keep(name)) for name, layer in layers]
    generator.eval()
    try:
        labels = None if y is None else torch.tensor([y], device=device)
        image, maps = attention_maps(generator, z.to(device), labels)
    finally:
        generator.train(was_training)
        for handle in handles:
            handle.remove()
    out = []
    for name, layer in layers:
        x, output = seen[name]
        branch = (output - x).float().norm(dim=1) / x.float().norm(dim=1)  # (1, H, W)
        branch = torch.where(x.float().norm(dim=1) > 0, branch, torch.nan)
        _, _, height, width = x.shape
        out.append(
            {
                "name": name,
                "height": height,
                "width": width,
                "gamma": float(layer.gamma.detach().reshape(-1)[0]),
                "attention": maps[name][0].float().cpu().numpy(),
                "branch": branch.reshape(-1).cpu().numpy(),
            }
        )
    image = image[0].float().cpu().permute(1, 2, 0).numpy()
    return {"image": image, "z": z.detach().cpu(), "y": y, "layers": out}


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _number(value: float) -> float | None:
    return float(f"{value:.6g}") if np.isfinite(value) else None


def _payload(data: dict, zoom: int) -> dict:
    image = np.rint((np.clip(data["image"], -1, 1) + 1) * 127.5).astype(np.uint8)
    grey = image.mean(axis=2)
    size = grey.shape[0]
    rows, cols = np.nonzero(grey >= (grey.min() + grey.max()) / 2)
    start = [size // 2, size // 2]
    if len(rows):  # a bright pixel near the centre
        k = int(np.argmin((rows - (size - 1) / 2) ** 2 + (cols - (size - 1) / 2) ** 2))
        start = [int(rows[k]), int(cols[k])]
    layers = []
    for layer in data["layers"]:
        attention = layer["attention"]
        peak = attention.max(axis=1).astype("<f4")  # > 0: a softmax row sums to 1
        q = np.rint(attention / peak[:, None] * 255).clip(0, 255).astype(np.uint8)
        layers.append(
            {
                "name": layer["name"],
                "height": layer["height"],
                "width": layer["width"],
                "gamma": float(layer["gamma"]),
                "map": _b64(q),  # row i: round(255 * A[i] / max(A[i]))
                "scale": _b64(peak),  # max(A[i]), float32
                "branch": [_number(v) for v in layer["branch"].tolist()],
            }
        )
    head = {"version": 1, "size": size, "channels": image.shape[2], "zoom": zoom}
    return {**head, "image": _b64(image), "start": start, "layers": layers}


def explorer_html(
    generator: Generator, z=None, y=None, *, seed: int = 0, element_id: str | None = None
) -> str:
    """The explorer as an HTML string (see :func:`attention_explorer`)."""
    if element_id is None:
        element_id = f"sagan-explorer-{uuid.uuid4().hex[:12]}"
    elif not isinstance(element_id, str):
        raise TypeError(f"element_id must be a str or None, got {type(element_id).__name__}")
    elif not _ID.fullmatch(element_id):
        raise ValueError(
            "element_id must start with a letter and hold only letters, digits, '-' and '_' "
            f"(64 characters at most), got {element_id!r}"
        )
    _check_generator(generator)
    total = sum(size**4 for size in generator.config.g_attention)  # N^2 weights per layer
    if total > MAX_MAP_BYTES:
        raise ValueError(
            f"the attention maps of this generator hold {total} weights, more than the "
            f"explorer embeds (MAX_MAP_BYTES = {MAX_MAP_BYTES}): use a smaller image size"
        )
    data = explorer_data(generator, z, y, seed=seed)
    size = data["image"].shape[0]
    zoom = max(1, round(192 / size))
    payload = json.dumps(_payload(data, zoom), separators=(",", ":"))
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    source = f"seed {seed}" if z is None else "the given z"
    caption = f"{size}×{size} digit, z from {source}" + (
        "" if data["y"] is None else f", class {data['y']}"
    )
    figure = f'<figure style="width:{size * zoom}px">'
    maps = "".join(
        f'{figure}<canvas class="sagan-explorer-map" data-layer="{html.escape(layer["name"])}" '
        f'width="{size * zoom}" height="{size * zoom}" role="img" '
        f'aria-label="attention of {html.escape(layer["name"])}"></canvas>'
        f'<canvas class="sagan-explorer-bar" width="{size * zoom}" height="8"></canvas>'
        f'<div class="sagan-explorer-scale"><span>0</span><span class="sagan-explorer-max">'
        f"</span></div><figcaption>{html.escape(layer['name'])} · {layer['height']}×"
        f"{layer['width']} map: where the pixel attends</figcaption></figure>"
        for layer in data["layers"]
    )
    return (
        f'<div class="sagan-explorer" id="{element_id}" data-ready="0" data-query="">'
        f"<style>{_CSS}</style>"
        '<p class="sagan-explorer-help">Hover the digit to see where each attention layer looks '
        "from that pixel; click to pin a pixel (Esc releases it); arrow keys move it "
        "(Shift: 4 pixels).</p>"
        f'<div class="sagan-explorer-panels">{figure}'
        f'<canvas class="sagan-explorer-image" width="{size * zoom}" height="{size * zoom}" '
        'tabindex="0" role="application" aria-label="Generated digit: pick a pixel with the '
        f'arrow keys" aria-describedby="{element_id}-readout"></canvas>'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>{maps}</div>"
        f'<div class="sagan-explorer-readout" id="{element_id}-readout" aria-live="polite">'
        "The attention explorer needs JavaScript; it shows nothing more where scripts do not "
        "run (in GitHub's notebook view, say).</div>"
        f'<script type="application/json" class="sagan-explorer-data">{payload}</script>'
        f'<script>({_JS})(document.currentScript, "{element_id}");</script></div>'
    )


def attention_explorer(
    generator: Generator, z=None, y=None, *, seed: int = 0, element_id: str | None = None
):
    """An interactive attention explorer for one digit of ``generator`` (IPython HTML output).

    ``z`` (z_dim,) or (1, z_dim): the noise; None: drawn from ``seed`` (the digit of
    ``generator.sample(1, seed=seed)``). ``y``: the class (int) of a conditional generator.
    ``element_id``: the root element's id (default: a fresh unique one). See the module docstring
    for what it shows and for its DOM contract; :func:`explorer_data` gives the numbers.
    """
    from IPython.display import HTML

    return HTML(explorer_html(generator, z, y, seed=seed, element_id=element_id))


# The explorer's style and script: plain CSS and JavaScript files beside this module.
_CSS = " ".join(Path(__file__).with_name("explorer.css").read_text().split())
_JS = Path(__file__).with_name("explorer.js").read_text().replace("%VIRIDIS%", _VIRIDIS)
