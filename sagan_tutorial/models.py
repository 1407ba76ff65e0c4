"""The SAGAN generator and discriminator, built from a :class:`GANConfig`.

The networks follow the widely used PyTorch port of SAGAN (DCGAN-like):

* G: a transposed conv takes z (seen as a 1x1 map) to 4x4, then blocks of ConvTranspose2d(4, stride
  2) + BatchNorm + ReLU double the size and halve the channels; a last transposed conv gives the
  image, squashed by tanh.
* D: blocks of Conv2d(4, stride 2) + LeakyReLU(0.1) halve the size and double the channels down to
  4x4; a last 4x4 conv gives one logit. No BatchNorm in D.
* Self-attention layers sit after the blocks that produce the feature-map sizes named in the config.
* Spectral norm (torch's parametrisation, one power iteration per training forward) sits where the
  preset ``sn`` puts it. ``"port"`` (default): on every conv of both networks, the attention
  layers' 1x1 convs included, but not on the last layer of G and of D, as the PyTorch port does.
  ``"all"``: on every layer, as the official TensorFlow code does. (The port also leaves its
  attention convs plain; the paper and the official code normalise them, and so do these
  presets.) ``"d"``: in D as under ``"port"``, nowhere in G (the placement of the original
  SN-GAN, which SAGAN extended to G). ``"none"``: nowhere.
* With ``num_classes > 0`` (not in the port; from the paper and the official code): conditional
  BatchNorm in G and a projection head in D (Miyato & Koyama 2018), whose class embedding carries
  spectral norm wherever D's body does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from itertools import pairwise

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._checks import check_choice, check_int
from .attention import SelfAttention2d
from .spectral import apply_spectral_norm, as_matrix

__all__ = [
    "ConditionalBatchNorm2d",
    "Discriminator",
    "GANConfig",
    "Generator",
    "attention_layers",
    "attention_maps",
    "set_attention_backend",
    "sn_placement",
    "spectral_sigmas",
]

IMAGE_SIZES = (32, 64, 128)
MAX_WIDTH = 1024  # z_dim, g_width, d_width: G has 8 * g_width channels at S/16
MAX_CLASSES = 100_000
SN_PRESETS = ("port", "all", "d", "none")
# Feature-map sizes with attention by default, per image size. G: the two largest maps (S/4, S/2),
# as the port has at 64 px. D: the port's 8x8 and 4x4 at 64 px; scaled to S/8, S/16 at 128 px;
# at 32 px D has no 2x2 map, so the two smallest it has.
DEFAULT_ATTENTION = {
    32: {"g": (8, 16), "d": (4, 8)},
    64: {"g": (16, 32), "d": (4, 8)},
    128: {"g": (32, 64), "d": (8, 16)},
}


@dataclass
class GANConfig:
    """Every hyper-parameter of the two networks.

    Feature maps run over sizes 4, 8, ..., S/2 (S = image_size); a map of size s has
    ``width * (S/2) / s`` channels, so ``g_width`` channels at S/2 in G and 8x as many at S/16.
    Default attention placement (``None``), as (G sizes; D sizes): 32 px (8, 16; 4, 8),
    64 px (16, 32; 4, 8) as in the port, 128 px (32, 64; 8, 16). An empty tuple: no attention.
    Sizes are stored sorted; each network applies its layers in the order it meets the sizes.

    The port uses widths of 64 (``conv_dim``); the default here is 32, which halves the cost of
    a training step, so that training on the CPU takes minutes.
    """

    image_size: int = 32  # 32, 64 or 128
    channels: int = 1  # image channels: 1 (grey) or 3 (RGB)
    z_dim: int = 128
    g_width: int = 32  # channels of G at its largest feature map (S/2)
    d_width: int = 32  # channels of D at its largest feature map (S/2)
    g_attention: tuple[int, ...] | None = None  # feature-map sizes with attention in G
    d_attention: tuple[int, ...] | None = None  # same for D
    sn: str = "port"  # "port": SN but on the last layers; "all"; "d": in D only; "none"
    num_classes: int = 0  # 0 = unconditional; >0: conditional BN in G, projection head in D
    attention_backend: str = "auto"  # see SelfAttention2d.BACKENDS

    def __post_init__(self) -> None:
        check_choice("image_size", self.image_size, IMAGE_SIZES)
        if not any(type(self.channels) is int and self.channels == c for c in (1, 3)):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels!r}")
        for name in ("z_dim", "g_width", "d_width"):  # bounded: a typo must not ask for 1 TB
            check_int(name, getattr(self, name), minimum=1, maximum=MAX_WIDTH)
        check_int("num_classes", self.num_classes, minimum=0, maximum=MAX_CLASSES)
        check_choice("sn", self.sn, SN_PRESETS)
        backends = ("auto", *SelfAttention2d.BACKENDS)
        if self.attention_backend not in backends:
            raise ValueError(
                f"attention_backend must be one of {backends}, got {self.attention_backend!r}"
            )
        defaults = DEFAULT_ATTENTION[self.image_size]
        for net, width in (("g", self.g_width), ("d", self.d_width)):
            name = f"{net}_attention"
            sizes = getattr(self, name)
            sizes = defaults[net] if sizes is None else sizes
            setattr(self, name, self._check_sizes(name, sizes, width))

    @property
    def feature_sizes(self) -> tuple[int, ...]:
        """The feature-map sizes of both networks: 4, 8, ..., image_size // 2."""
        return tuple(4 * 2**i for i in range(int(math.log2(self.image_size // 8)) + 1))

    def width_at(self, size: int, width: int) -> int:
        """Channels of a network with base ``width`` at its feature map of side ``size``."""
        return width * (self.image_size // 2) // size

    def _check_sizes(self, name: str, sizes, width: int) -> tuple[int, ...]:
        if not isinstance(sizes, (tuple, list)):
            raise TypeError(f"{name} must be a tuple of feature-map sizes, got {sizes!r}")
        for size in sizes:
            if type(size) is not int or size not in self.feature_sizes:
                raise ValueError(
                    f"{name}: the networks at image_size={self.image_size} have feature maps of "
                    f"sizes {self.feature_sizes}, got {size!r}"
                )
            if self.width_at(size, width) < 8:
                raise ValueError(
                    f"{name}: attention needs at least 8 channels, but the {size}x{size} map has "
                    f"{self.width_at(size, width)} (raise {name[0]}_width to at least "
                    f"{math.ceil(8 * size / (self.image_size // 2))})"
                )
        return tuple(sorted(set(sizes)))

    def to_dict(self) -> dict:
        """A JSON-able dict (tuples become lists), for checkpoints."""
        d = asdict(self)
        d["g_attention"] = list(self.g_attention)
        d["d_attention"] = list(self.d_attention)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> GANConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        if not isinstance(d, dict):
            raise TypeError(f"expected a dict of GANConfig fields, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown GANConfig keys {unknown}; the fields are {known}")
        d = dict(d)
        for name in ("g_attention", "d_attention"):
            if isinstance(d.get(name), list):
                d[name] = tuple(d[name])
        return cls(**d)


def _sn(layer: nn.Module, on: bool) -> nn.Module:
    return apply_spectral_norm(layer) if on else layer


def sn_placement(sn: str) -> dict[str, bool]:
    """Where preset ``sn`` puts spectral norm: G's body (blocks and attention), G's last layer,
    D's body (blocks, attention and class table), D's last layer."""
    check_choice("sn", sn, SN_PRESETS)
    return {
        "g_body": sn in ("port", "all"),
        "g_last": sn == "all",
        "d_body": sn in ("port", "all", "d"),
        "d_last": sn == "all",
    }


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose scale and shift are looked up per class: gamma[y] * bn(x) + beta[y].

    ``x`` (B, C, H, W), ``y`` (B,) long -> (B, C, H, W). Starts as BatchNorm (gamma 1, beta 0).
    """

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gamma = nn.Embedding(num_classes, num_features)
        self.beta = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gamma = self.gamma(y)[:, :, None, None]  # (B, C, 1, 1)
        beta = self.beta(y)[:, :, None, None]  # (B, C, 1, 1)
        return gamma * self.bn(x) + beta


class GBlock(nn.Module):
    """ConvTranspose2d + (conditional) BatchNorm + ReLU: (B, c_in, s, s) -> (B, c_out, 2s, 2s).

    ``first=True``: the 4x4 kernel without stride or padding that takes a 1x1 map to 4x4.
    """

    def __init__(
        self, c_in: int, c_out: int, num_classes: int, first: bool = False, sn: bool = True
    ) -> None:
        super().__init__()
        stride, padding = (1, 0) if first else (2, 1)
        self.conv = _sn(nn.ConvTranspose2d(c_in, c_out, 4, stride, padding), sn)
        if num_classes:
            self.bn = ConditionalBatchNorm2d(c_out, num_classes)
        else:
            self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = self.conv(x)
        h = self.bn(h) if y is None else self.bn(h, y)
        return torch.relu(h)


class DBlock(nn.Sequential):
    """Conv2d(4, stride 2) + LeakyReLU(0.1): (B, c_in, s, s) -> (B, c_out, s/2, s/2)."""

    def __init__(self, c_in: int, c_out: int, sn: bool = True) -> None:
        super().__init__(_sn(nn.Conv2d(c_in, c_out, 4, 2, 1), sn), nn.LeakyReLU(0.1))


def _attention(config: GANConfig, sizes, width: int, order, sn: bool) -> nn.ModuleDict:
    """Attention layers keyed by the size of the map they sit on ("8", "16", ...), in ``order``."""
    layers = nn.ModuleDict()
    for size in (s for s in order if s in sizes):
        layer = SelfAttention2d(config.width_at(size, width), backend=config.attention_backend)
        for conv in (layer.query_conv, layer.key_conv, layer.value_conv):
            _sn(conv, sn)
        layers[str(size)] = layer
    return layers


class Generator(nn.Module):
    """z (B, z_dim)[, y (B,) long] -> images (B, channels, S, S) in [-1, 1]."""

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = config
        c, sn = config.num_classes, sn_placement(config.sn)
        sizes = config.feature_sizes  # 4, 8, ..., S/2
        widths = [config.width_at(s, config.g_width) for s in sizes]
        blocks = [GBlock(config.z_dim, widths[0], c, first=True, sn=sn["g_body"])]
        blocks += [GBlock(a, b, c, sn=sn["g_body"]) for a, b in pairwise(widths)]
        self.blocks = nn.ModuleList(blocks)
        self.attention = _attention(config, config.g_attention, config.g_width, sizes, sn["g_body"])
        last = nn.ConvTranspose2d(widths[-1], config.channels, 4, 2, 1)
        self.to_image = _sn(last, sn["g_last"])

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        _check_batch("z", z, (self.config.z_dim,), "(B, z_dim)")
        _check_labels(y, z.shape[0], self.config.num_classes)
        h = z[:, :, None, None]  # (B, z_dim, 1, 1)
        for block in self.blocks:
            h = block(h, y)  # (B, width_at(s), s, s), s = 4, 8, ..., S/2
            key = str(h.shape[-1])
            if key in self.attention:
                h = self.attention[key](h)
        return torch.tanh(self.to_image(h))  # (B, channels, S, S)

    @torch.no_grad()
    def sample(
        self, n: int, labels: torch.Tensor | None = None, *, seed: int = 0, batch_size: int = 256
    ) -> torch.Tensor:
        """``n`` images (n, channels, S, S), float32 on the CPU, from noise seeded by ``seed``.

        Made ``batch_size`` at a time in eval mode (BatchNorm's running statistics), so memory
        stays bounded; the mode is put back afterwards. ``labels`` (n,): the classes of a
        conditional G. The same seed gives the same noise, whatever the device.
        """
        z = torch.randn(n, self.config.z_dim, generator=torch.Generator().manual_seed(seed))
        device, was_training = next(self.parameters()).device, self.training
        self.eval()
        try:
            parts = []
            for i in range(0, n, batch_size):
                y = None if labels is None else labels[i : i + batch_size].to(device)
                parts.append(self(z[i : i + batch_size].to(device), y).float().cpu())
        finally:
            self.train(was_training)
        size = self.config.image_size
        return torch.cat(parts) if parts else torch.empty(0, self.config.channels, size, size)


class Discriminator(nn.Module):
    """images (B, channels, S, S)[, y (B,) long] -> logits (B,).

    With classes, the projection head adds ``embed(y) . sum_hw(h)`` to the logit, where h is the
    last 4x4 feature map: the inner product of a class vector with the pooled features.
    """

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = config
        sizes, sn = config.feature_sizes[::-1], sn_placement(config.sn)  # S/2, ..., 8, 4
        widths = [config.width_at(s, config.d_width) for s in sizes]
        blocks = [DBlock(config.channels, widths[0], sn["d_body"])]
        blocks += [DBlock(a, b, sn["d_body"]) for a, b in pairwise(widths)]
        self.blocks = nn.ModuleList(blocks)
        self.attention = _attention(config, config.d_attention, config.d_width, sizes, sn["d_body"])
        self.to_logit = _sn(nn.Conv2d(widths[-1], 1, 4), sn["d_last"])  # 4x4 map -> 1x1
        self.embed = None
        if config.num_classes:
            # Spectral norm on the class table with D's body (the port has no projection head;
            # the official code and the projection discriminator's reference code normalise
            # it). Without it the N(0, 1) rows make the class term about a thousand times the
            # size of to_logit's at the start.
            self.embed = _sn(nn.Embedding(config.num_classes, widths[-1]), sn["d_body"])

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        size = self.config.image_size
        shape = (self.config.channels, size, size)
        _check_batch("x", x, shape, f"(B, {self.config.channels}, {size}, {size})")
        _check_labels(y, x.shape[0], self.config.num_classes)
        h = x
        for block in self.blocks:
            h = block(h)  # (B, width_at(s), s, s), s = S/2, ..., 4
            key = str(h.shape[-1])
            if key in self.attention:
                h = self.attention[key](h)
        logits = self.to_logit(h).flatten()  # (B,)
        if self.embed is not None:
            logits = logits + (self.embed(y) * h.sum(dim=(2, 3))).sum(dim=1)
        return logits


def _check_batch(name: str, t, shape: tuple[int, ...], expected: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of shape {expected}, got {type(t).__name__}")
    if t.dim() != len(shape) + 1 or tuple(t.shape[1:]) != shape:
        raise ValueError(f"{name} must have shape {expected}, got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def _check_labels(y, batch: int, num_classes: int) -> None:
    if num_classes == 0:
        if y is not None:
            raise ValueError("this model is unconditional (num_classes=0) but labels y were given")
        return
    if y is None:
        raise ValueError(f"this model is conditional (num_classes={num_classes}): pass labels y")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor of shape ({batch},), got {type(y).__name__}")
    if y.dtype != torch.long:
        raise TypeError(f"y must be an int64 (long) tensor of class indices, got dtype {y.dtype}")
    if tuple(y.shape) != (batch,):
        raise ValueError(f"y must have shape ({batch},), one label per image, got {tuple(y.shape)}")
    if y.numel() and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"y must hold class indices in [0, {num_classes - 1}], "
            f"got values from {int(y.min())} to {int(y.max())}"
        )


def attention_layers(module: nn.Module) -> list[tuple[str, SelfAttention2d]]:
    """Every :class:`SelfAttention2d` in ``module`` as (qualified name, layer), in order."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, SelfAttention2d)]


def attention_maps(module: nn.Module, *args, **kwargs) -> tuple[object, dict[str, torch.Tensor]]:
    """Run ``module(*args, **kwargs)`` without gradients and keep every attention map it makes.

    Returns (the module's output, {qualified layer name: attention (B, N, N)}), with N = H * W of
    that layer's feature map and row i the weights with which query position i reads every
    position. Each layer's map is computed from the input it received (the 'bmm' form), so the
    output is the one the module's own backends give. Call it on a model in eval mode: in
    training mode that second pass runs the attention convs' spectral-norm power iteration again.
    """
    maps: dict[str, torch.Tensor] = {}
    busy: set[str] = set()

    def keep(name):
        def hook(layer, inputs, output):
            if name in busy:  # the call below runs this hook once more
                return
            busy.add(name)
            try:
                maps[name] = layer(inputs[0], return_attention=True)[1]
            finally:
                busy.discard(name)

        return hook

    handles = [layer.register_forward_hook(keep(name)) for name, layer in attention_layers(module)]
    try:
        with torch.no_grad():
            output = module(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return output, maps


def set_attention_backend(module: nn.Module, name: str) -> None:
    """Set the backend of every attention layer in ``module`` (see SelfAttention2d.BACKENDS)."""
    for _, layer in attention_layers(module):
        layer.backend = name


def spectral_sigmas(module: nn.Module) -> dict[str, float]:
    """sigma = u . (W v) of every spectrally normalised layer, from its stored u and v.

    Keys are qualified module names. Reads torch's parametrisation and the teaching
    :class:`~sagan_tutorial.spectral.SpectralNorm`. No power iteration runs: nothing changes.
    """
    sigmas = {}
    for name, m in module.named_modules():
        if not parametrize.is_parametrized(m, "weight"):
            continue
        for p in m.parametrizations.weight:
            # torch's _SpectralNorm keeps _u, _v; the teaching SpectralNorm keeps u, v
            u, v = getattr(p, "_u", getattr(p, "u", None)), getattr(p, "_v", getattr(p, "v", None))
            if u is None or v is None:
                continue
            with torch.no_grad():
                matrix = as_matrix(m.parametrizations.weight.original, p.dim)
                sigmas[name] = float(torch.dot(u, matrix @ v))
    return sigmas
