"""The SAGAN self-attention layer, written several equivalent ways.

``SelfAttention2d`` is the layer of the widely used PyTorch port of SAGAN: three 1x1 convolutions
(query and key C -> C//8, value C -> C), a softmax over ``energy = q_i . k_j`` with no 1/sqrt(d)
scale, and a residual ``gamma * out + x`` with ``gamma`` starting at 0. Its submodule names match
the port's ``Self_Attn``, so a state dict of that layer loads unchanged.

The forward pass can be computed by several *backends* that give the same numbers:

``"bmm"``      the original sequence of ops, line for line (view, permute, bmm, softmax, bmm).
``"einsum"``   the same contractions with named axes (einops), which document themselves.
``"sdpa"``     ``torch.nn.functional.scaled_dot_product_attention`` with ``scale=1.0``.
``"blocked"``  the three 1x1 convs as one conv, then queries processed in blocks that fit in
               cache, with a hand-written backward that recomputes each block's attention instead
               of storing the N x N map (the idea of FlashAttention, in plain PyTorch). Never
               holds more than one block of the map (a map small enough to be one block is kept
               for backward).

All of them compute in the input's precision, but at least float32: float64 is exact (equal to
``"bmm"`` to rounding, so ``torch.autograd.gradcheck`` passes on every backend), and bfloat16 or
float16 under autocast accumulate in float32.

``"auto"`` (the default) picks the fastest exact backend for the input: ``"bmm"`` when the
attention map is requested (it must exist anyway), else ``"sdpa"`` on CUDA (fused kernels) and
``"blocked"`` on the CPU.
``benchmarks/attention.py`` measures them.

``PooledSelfAttention2d`` is the other form, used by the official TensorFlow SAGAN code and by
BigGAN: keys and values are max-pooled 2x2 and the values have C//2 channels, brought back to C
by an output 1x1 convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import nn

from ._checks import check_int

__all__ = ["PooledSelfAttention2d", "SelfAttention2d", "attention_blocked"]

# Target number of attention-map elements per block: 1 MiB in float32, which stays in a core's L2
# cache (blocks of 2^18 to 2^21 elements were timed; 2^18 was fastest on a 2-core x86 CPU).
_BLOCK_ELEMENTS = 1 << 18


def _check_in_channels(in_channels: object, minimum: int) -> int:
    check_int("in_channels", in_channels)
    if in_channels < minimum:
        raise ValueError(
            f"in_channels must be at least {minimum} (the query and key convs have "
            f"in_channels // 8 channels), got {in_channels}"
        )
    return in_channels


def _check_input(x: object, layer: nn.Module, even: bool = False) -> None:
    in_channels = layer.in_channels
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"expected a 4-D tensor (B, C, H, W) with C={in_channels}, got shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            f"expected {in_channels} channels (B, {in_channels}, H, W), got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got dtype {x.dtype}")
    weight = layer.gamma  # every parameter of the layer has the same dtype and device
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(
            f"expected a {weight.dtype} tensor like the layer's parameters (or autocast), "
            f"got dtype {x.dtype}"
        )
    if x.shape[2] == 0 or x.shape[3] == 0:
        # An empty batch is fine (an empty output), but a softmax over zero positions is not.
        raise ValueError(
            f"expected a feature map with at least one position (H >= 1 and W >= 1: attention "
            f"over zero positions has no meaning), got shape {tuple(x.shape)}"
        )
    if even and (x.shape[2] % 2 or x.shape[3] % 2):
        raise ValueError(
            f"expected an even height and width (keys and values are max-pooled 2x2), "
            f"got shape {tuple(x.shape)}"
        )


class SelfAttention2d(nn.Module):
    """Self-attention over the H*W positions of a feature map (SAGAN, Zhang et al. 2019).

    Args:
        in_channels: C, at least 8 (query and key have C // 8 channels).
        backend: one of ``"auto"`` or :attr:`BACKENDS`; can be changed later through the
            ``backend`` attribute.

    Shapes: ``x`` (B, C, H, W) -> ``out`` (B, C, H, W), and with ``return_attention=True`` also
    ``attention`` (B, N, N) with N = H*W, row i holding the weights query pixel i puts on every
    pixel (pixel n is at row n // W, column n % W); each row sums to 1.
    """

    BACKENDS: tuple[str, ...] = ("bmm", "einsum", "sdpa", "blocked")

    def __init__(self, in_channels: int, *, backend: str = "auto") -> None:
        super().__init__()
        self.in_channels = _check_in_channels(in_channels, 8)
        self.query_conv = nn.Conv2d(in_channels, in_channels // 8, kernel_size=1)
        self.key_conv = nn.Conv2d(in_channels, in_channels // 8, kernel_size=1)
        self.value_conv = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        # gamma = 0: the layer starts as the identity and the network learns how much to attend.
        self.gamma = nn.Parameter(torch.zeros(1))
        self.backend = backend

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        choices = ("auto", *self.BACKENDS)
        if name not in choices:
            raise ValueError(f"backend must be one of {choices}, got {name!r}")
        self._backend = name

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, backend={self.backend!r}"

    def resolve_backend(self, x: torch.Tensor, return_attention: bool = False) -> str:
        """The backend that ``forward`` uses for input ``x`` (resolves ``"auto"``).

        An empty batch goes through ``"einsum"`` whatever the backend: the port's
        ``view(B, -1, N)`` cannot infer the -1 from zero elements, and every form gives the same
        empty answer anyway.
        """
        if x.shape[0] == 0:
            return "einsum"
        if self.backend != "auto":
            return self.backend
        if return_attention:
            return "bmm"
        # Measured by benchmarks/attention.py and `python -m sagan_tutorial bench`: on the CPU the
        # blocked form trains faster than bmm at every size tried (8x8 to 64x64 maps): it reads
        # each block of the map while it is in cache, and it never allocates the N x N map,
        # which glibc maps and faults in afresh on every call (--keep-freed measures without
        # that: what is left is small, can go either way, and sdpa is then as fast, but only
        # the blocked form saves the memory); on CUDA the fused kernels win.
        return "sdpa" if x.device.type == "cuda" else "blocked"

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        _check_input(x, self)
        backend = self.resolve_backend(x, return_attention)
        out, attention = getattr(self, f"_forward_{backend}")(x, return_attention)
        out = self.gamma * out + x
        return (out, attention) if return_attention else out

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """query, key (B, C//8, N) and value (B, C, N) from one conv with the three weights.

        A 1x1 conv is a per-pixel matrix product, so stacking the three weight matrices gives the
        three projections in one pass over ``x`` (exact; works with spectral-norm parametrised
        convs, whose ``weight`` is the normalised one).
        """
        convs = (self.query_conv, self.key_conv, self.value_conv)
        weight = torch.cat([conv.weight for conv in convs])  # (2 * C//8 + C) x C x 1 x 1
        bias = torch.cat([conv.bias for conv in convs])
        qkv = F.conv2d(x, weight, bias).flatten(2)  # B x (2 * C//8 + C) x N
        return qkv.split([conv.out_channels for conv in convs], dim=1)

    def _forward_bmm(self, x: torch.Tensor, return_attention: bool):
        # The port writes `m_batchsize, C, width, height = x.size()`; PyTorch's order is (H, W),
        # but both sizes are flattened into N and restored in the same order, so no harm is done.
        batch, channels, height, width = x.size()
        n = height * width
        proj_query = self.query_conv(x).view(batch, -1, n).permute(0, 2, 1)  # B x N x C//8
        proj_key = self.key_conv(x).view(batch, -1, n)  # B x C//8 x N
        energy = torch.bmm(proj_query, proj_key)  # B x N x N, energy[i, j] = q_i . k_j
        attention = torch.softmax(energy, dim=-1)  # B x N x N, rows sum to 1
        proj_value = self.value_conv(x).view(batch, -1, n)  # B x C x N
        out = torch.bmm(proj_value, attention.permute(0, 2, 1))  # B x C x N
        out = out.view(batch, channels, height, width)  # B x C x H x W
        return out, attention

    def _forward_einsum(self, x: torch.Tensor, return_attention: bool):
        height = x.shape[2]
        query = rearrange(self.query_conv(x), "b c h w -> b c (h w)")
        key = rearrange(self.key_conv(x), "b c h w -> b c (h w)")
        value = rearrange(self.value_conv(x), "b c h w -> b c (h w)")
        energy = einsum(query, key, "b c i, b c j -> b i j")  # i: query pixel, j: key pixel
        attention = energy.softmax(dim=-1)
        out = einsum(value, attention, "b c j, b i j -> b c i")
        return rearrange(out, "b c (h w) -> b c h w", h=height), attention

    def _forward_sdpa(self, x: torch.Tensor, return_attention: bool):
        height = x.shape[2]
        # scaled_dot_product_attention wants (batch, heads, sequence, features); one head here.
        query = rearrange(self.query_conv(x), "b c h w -> b 1 (h w) c")
        key = rearrange(self.key_conv(x), "b c h w -> b 1 (h w) c")
        value = rearrange(self.value_conv(x), "b c h w -> b 1 (h w) c")
        out = F.scaled_dot_product_attention(query, key, value, scale=1.0)  # SAGAN: no 1/sqrt(d)
        out = rearrange(out, "b 1 (h w) c -> b c h w", h=height)
        attention = None
        if return_attention:  # the fused kernel never forms the map: compute it separately
            attention = torch.softmax(query[:, 0] @ key[:, 0].transpose(1, 2), dim=-1)
        return out, attention

    def _forward_blocked(self, x: torch.Tensor, return_attention: bool):
        batch, channels, height, width = x.shape
        query, key, value = self._project(x)
        out = attention_blocked(query, key, value).view(batch, channels, height, width)
        attention = None
        if return_attention:
            attention = torch.softmax(query.transpose(1, 2) @ key, dim=-1)
        return out, attention


def _block_plan(batch: int, n: int) -> tuple[int, int]:
    """(batch items, query rows) per block so that a block of the map has ~_BLOCK_ELEMENTS."""
    rows = max(1, _BLOCK_ELEMENTS // n)
    if rows >= n:
        return max(1, min(batch, rows // n)), n
    return 1, rows


def _single_block(batch: int, n: int, plan: tuple[int, int]) -> bool:
    """Whether ``plan`` covers the whole B x N x N map in one block."""
    return plan[0] >= batch and plan[1] >= n


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The input's precision, but at least float32 (float64 stays float64, half types widen)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _attention_reference(query, key, value):
    """Differentiable (B, C, N) attention, used when a gradient of the gradient is needed."""
    attention = torch.softmax(query.transpose(1, 2) @ key, dim=-1)
    return value @ attention.transpose(1, 2)


class _BlockedAttention(torch.autograd.Function):
    """out[b, :, i] = sum_j softmax_j(q_i . k_j) v_j, computed one block of queries at a time.

    No more than one block of the map is kept for backward: it recomputes each block, which costs
    one small bmm with C//8 channels (cheap next to the bmm with the C value channels), and uses
    the identity sum_j dA_ij A_ij = dout_i . out_i, so the softmax backward needs no extra pass.
    When the whole map is one block (small maps), that block is kept for backward instead of
    recomputed: it costs one block (at most _BLOCK_ELEMENTS numbers) until the backward pass, as
    bmm keeps its map, and saves the recomputation, which made the 8 x 8 maps about as slow as bmm.
    """

    @staticmethod
    def forward(ctx, query, key, value):  # (B, C8, N), (B, C8, N), (B, C, N)
        ctx.plan = _block_plan(query.shape[0], query.shape[2])
        # the backward pass works in the accumulation dtype: a block in another dtype is redone
        keep = _single_block(query.shape[0], query.shape[2], ctx.plan)
        keep = keep and value.dtype == _accumulation_dtype(value.dtype)
        out = value.new_empty(value.shape)
        kept = []  # the map, when it is one block
        for bs, rows, attention in _attention_blocks(query, key, ctx.plan, value.dtype):
            torch.bmm(value[bs], attention.transpose(1, 2), out=out[bs, :, rows])
            if keep:
                kept.append(attention)
        ctx.save_for_backward(query, key, value, out, *kept)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, out, *kept = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True (a gradient penalty, say): take the gradient of the reference form
            # so that it can be differentiated again.
            inputs = (query, key, value)
            return torch.autograd.grad(
                _attention_reference(*inputs), inputs, grad_out, create_graph=True
            )
        with torch.autocast(query.device.type, enabled=False):
            dtype = value.dtype
            acc = _accumulation_dtype(dtype)  # for float32 every .to(acc) below is a no-op
            grad_out = grad_out.to(dtype)
            grad_query = torch.empty_like(query)
            grad_key = torch.zeros_like(key, dtype=acc)
            grad_value = torch.zeros_like(value, dtype=acc)
            delta = (grad_out.to(acc) * out.to(acc)).sum(1)  # B x N: sum_j dA_ij A_ij
            query_t = query.transpose(1, 2)
            if kept:  # the forward's one block: every image, every row
                blocks = [(slice(None), slice(None), kept[0])]
            else:
                blocks = _attention_blocks(query, key, ctx.plan, acc)
            for bs, rows, attention in blocks:
                d_out = grad_out[bs, :, rows]  # b x C x rows
                grad_value[bs].baddbmm_(d_out.to(acc), attention)
                d_attention = torch.bmm(d_out.transpose(1, 2), value[bs]).to(acc)  # b x rows x N
                d_energy = d_attention.sub_(delta[bs, rows].unsqueeze(-1)).mul_(attention)
                torch.bmm(key[bs], d_energy.to(dtype).transpose(1, 2), out=grad_query[bs, :, rows])
                grad_key[bs].baddbmm_(query_t[bs, rows].transpose(1, 2).to(acc), d_energy)
        return grad_query, grad_key.to(dtype), grad_value.to(dtype)


def _attention_blocks(query, key, plan, dtype):
    """Yield (batch slice, query-row slice, softmax block of the map in ``dtype``).

    The softmax runs in the accumulation dtype of the input, so float64 is never rounded.
    """
    batch, _, n = query.shape
    acc = _accumulation_dtype(query.dtype)
    step_b, step_n = plan
    query_t = query.transpose(1, 2)  # B x N x C8
    for b in range(0, batch, step_b):
        bs = slice(b, b + step_b)
        for i in range(0, n, step_n):
            rows = slice(i, i + step_n)
            energy = torch.bmm(query_t[bs, rows], key[bs])  # b x rows x N
            yield bs, rows, torch.softmax(energy, dim=-1, dtype=acc).to(dtype)


def attention_blocked(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """SAGAN attention on flattened maps without ever holding the full N x N map.

    Args:
        query, key: (B, C', N); value: (B, C, N).
    Returns:
        (B, C, N): ``value @ softmax(query^T key, dim=-1)^T``, as the ``"bmm"`` backend computes it.
    """
    # Under autocast the convs hand us low-precision tensors; the blocks keep their dtype and do
    # the softmax in float32, as autocast does for the bmm form (float64 stays float64).
    dtype = value.dtype
    with torch.autocast(query.device.type, enabled=False):
        return _BlockedAttention.apply(*(_dense_rows(t.to(dtype)) for t in (query, key, value)))


def _dense_rows(t: torch.Tensor) -> torch.Tensor:
    """``t``, copied if its positions are strided: a channels-last input leaves the projections
    with stride 1 on the channels, a layout for which batched products in bf16 have no fast
    kernel (training steps 4x slower)."""
    return t if t.stride(-1) == 1 else t.contiguous()


class PooledSelfAttention2d(nn.Module):
    """The attention form of the official SAGAN code and of BigGAN.

    It differs from :class:`SelfAttention2d` in four ways: keys (``phi``) and values (``g``) are
    max-pooled 2x2, so every query attends to N/4 positions and the map is N x N/4; the values
    have C//2 channels; an output 1x1 conv ``o`` maps them back to C; the convs have no bias.
    Submodule names follow BigGAN-PyTorch (``theta``, ``phi``, ``g``, ``o``, ``gamma``).
    H and W must be even.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.in_channels = _check_in_channels(in_channels, 8)
        c = in_channels
        self.theta = nn.Conv2d(c, c // 8, kernel_size=1, bias=False)
        self.phi = nn.Conv2d(c, c // 8, kernel_size=1, bias=False)
        self.g = nn.Conv2d(c, c // 2, kernel_size=1, bias=False)
        self.o = nn.Conv2d(c // 2, c, kernel_size=1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}"

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        _check_input(x, self, even=True)
        batch, channels, height, width = x.shape
        # flatten, not view(batch, -1, ...): the -1 of an empty batch cannot be inferred.
        theta = self.theta(x).flatten(2)  # B x C//8 x N
        phi = F.max_pool2d(self.phi(x), 2).flatten(2)  # B x C//8 x N/4
        g = F.max_pool2d(self.g(x), 2).flatten(2)  # B x C//2 x N/4
        attention = torch.softmax(torch.bmm(theta.transpose(1, 2), phi), dim=-1)  # B x N x N/4
        out = torch.bmm(g, attention.transpose(1, 2)).view(batch, channels // 2, height, width)
        out = self.gamma * self.o(out) + x
        return (out, attention) if return_attention else out
