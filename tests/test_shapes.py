"""trace_shapes: the table of every op's shapes, for the attention layer and for any module."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from sagan_tutorial import PooledSelfAttention2d, SelfAttention2d
from sagan_tutorial.shapes import ShapeRow, trace_shapes

# The layer's "bmm" forward on the book's demo tensor (B=2, C=64, H=6, W=5, N=30, C//8=8).
LAYER_ROWS = [
    ("query_conv", "Conv2d", "", ((2, 64, 6, 5),), ((2, 8, 6, 5),)),
    ("", "view", "2, -1, 30", ((2, 8, 6, 5),), ((2, 8, 30),)),
    ("", "permute", "0, 2, 1", ((2, 8, 30),), ((2, 30, 8),)),
    ("key_conv", "Conv2d", "", ((2, 64, 6, 5),), ((2, 8, 6, 5),)),
    ("", "view", "2, -1, 30", ((2, 8, 6, 5),), ((2, 8, 30),)),
    ("", "bmm", "", ((2, 30, 8), (2, 8, 30)), ((2, 30, 30),)),
    ("", "softmax", "dim=-1", ((2, 30, 30),), ((2, 30, 30),)),
    ("value_conv", "Conv2d", "", ((2, 64, 6, 5),), ((2, 64, 6, 5),)),
    ("", "view", "2, -1, 30", ((2, 64, 6, 5),), ((2, 64, 30),)),
    ("", "permute", "0, 2, 1", ((2, 30, 30),), ((2, 30, 30),)),
    ("", "bmm", "", ((2, 64, 30), (2, 30, 30)), ((2, 64, 30),)),
    ("", "view", "2, 64, 6, 5", ((2, 64, 30),), ((2, 64, 6, 5),)),
    ("", "mul", "", ((1,), (2, 64, 6, 5)), ((2, 64, 6, 5),)),
    ("", "add", "", ((2, 64, 6, 5), (2, 64, 6, 5)), ((2, 64, 6, 5),)),
]


def test_attention_layer_table_row_by_row():
    layer = SelfAttention2d(64, backend="bmm")
    table = trace_shapes(layer, torch.randn(2, 64, 6, 5))
    assert [tuple(vars(row).values()) for row in table] == LAYER_ROWS


def test_table_text_and_html():
    table = trace_shapes(SelfAttention2d(64, backend="bmm"), torch.randn(2, 64, 6, 5))
    lines = str(table).splitlines()
    assert lines[0].split() == ["#", "module", "op", "args", "inputs", "output"]
    assert len(lines) == 1 + len(LAYER_ROWS)
    assert lines[1].split() == [
        "1",
        "query_conv",
        "Conv2d",
        "(2,",
        "64,",
        "6,",
        "5)",
        "(2,",
        "8,",
        "6,",
        "5)",
    ]
    assert "(2, 30, 8), (2, 8, 30)" in lines[6] and "(2, 30, 30)" in lines[6]
    assert lines[13].split()[:2] == ["13", "mul"] and "(1,)" in lines[13]
    html = table._repr_html_()
    assert html.count("<tr>") == 1 + len(LAYER_ROWS)
    assert "<code>permute</code>" in html


def test_return_attention_and_module_state_unchanged():
    layer = SelfAttention2d(16, backend="bmm")
    table = trace_shapes(layer, torch.randn(3, 16, 4, 7), return_attention=True)
    assert table[5] == ShapeRow("", "bmm", "", ((3, 28, 2), (3, 2, 28)), ((3, 28, 28),))
    # the hooks are gone: running again records nothing and gives the plain output
    assert not layer._forward_pre_hooks and not layer.query_conv._forward_hooks
    assert layer(torch.zeros(1, 16, 2, 2)).shape == (1, 16, 2, 2)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = spectral_norm(nn.Conv2d(4, 8, 3, padding=1))
        self.norm = nn.BatchNorm2d(8)

    def forward(self, x):
        return torch.relu(self.norm(self.conv(x))) + x.repeat(1, 2, 1, 1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(Block(), nn.Upsample(scale_factor=2))
        self.head = nn.Linear(8 * 6 * 10, 1)

    def forward(self, x):
        return self.head(self.blocks(x).flatten(1))


def test_any_module_with_qualified_names_and_depth():
    net = Net()
    x = torch.randn(2, 4, 3, 5)
    rows = [(r.module, r.op, r.outputs) for r in trace_shapes(net, x)]
    assert rows == [
        # spectral norm's power iteration runs inside the conv's row, not as rows of its own
        ("blocks.0.conv", "ParametrizedConv2d", ((2, 8, 3, 5),)),
        ("blocks.0.norm", "BatchNorm2d", ((2, 8, 3, 5),)),
        ("blocks.0", "relu", ((2, 8, 3, 5),)),
        ("blocks.0", "repeat", ((2, 8, 3, 5),)),
        ("blocks.0", "add", ((2, 8, 3, 5),)),
        ("blocks.1", "Upsample", ((2, 8, 6, 10),)),
        ("", "flatten", ((2, 480),)),
        ("head", "Linear", ((2, 1),)),
    ]
    shallow = trace_shapes(net, x, depth=1)
    assert [(r.module, r.op) for r in shallow][:2] == [
        ("blocks.0", "Block"),
        ("blocks.1", "Upsample"),
    ]
    top = trace_shapes(net, x, depth=0)
    assert [(r.module, r.op, r.inputs) for r in top] == [
        ("blocks", "Sequential", ((2, 4, 3, 5),)),
        ("", "flatten", ((2, 8, 6, 10),)),
        ("head", "Linear", ((2, 480),)),
    ]


def test_bad_arguments():
    with pytest.raises(TypeError, match=r"expected an nn\.Module to trace, got builtin_function"):
        trace_shapes(torch.relu, torch.zeros(1))
    with pytest.raises(ValueError, match=r"depth must be at least 0, got -1"):
        trace_shapes(nn.ReLU(), torch.zeros(1), depth=-1)


def test_hooks_removed_after_an_error():
    layer = SelfAttention2d(8)
    with pytest.raises(ValueError, match="expected 8 channels"):
        trace_shapes(layer, torch.zeros(1, 4, 2, 2))
    assert not layer._forward_pre_hooks and not layer._forward_hooks


def test_default_keyword_arguments_are_left_out():
    table = trace_shapes(PooledSelfAttention2d(16), torch.randn(1, 16, 4, 6))
    pools = [row for row in table if row.op == "max_pool2d"]
    assert [(r.module, r.args, r.outputs) for r in pools] == [
        ("", "2, padding=0, dilation=1", ((1, 2, 2, 3),)),
        ("", "2, padding=0, dilation=1", ((1, 8, 2, 3),)),
    ]
    assert next(r for r in table if r.op == "softmax").outputs == ((1, 24, 6),)
