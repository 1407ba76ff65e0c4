"""Trace a module on an input and tabulate the shapes that every op takes and returns.

``trace_shapes(module, x)`` runs ``module(x)`` once and records, in call order:

- every call of a submodule that is not opened up (PyTorch's own layers such as ``Conv2d`` or
  ``BatchNorm2d``, and any module deeper than ``depth``), as one row named by its qualified name;
- every torch function and tensor method that returns a tensor (``view``, ``permute``, ``bmm``,
  ``softmax``, ``+`` ...) called directly by the module or by an opened submodule.

Ops inside a row that is not opened up are not recorded, so a ``Conv2d`` is one row however it
computes its output (spectral-norm parametrisations included).
"""

from __future__ import annotations

import html
import inspect
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ._checks import check_int

__all__ = ["ShapeRow", "ShapeTable", "trace_shapes"]

# Containers only route calls to their children, so they are opened even though torch.nn owns them.
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_HEADER = ("#", "module", "op", "args", "inputs", "output")


@dataclass(frozen=True)
class ShapeRow:
    """One recorded call: where it ran, what it was, and the shapes of its tensors.

    ``module`` is the qualified name of the submodule called, or for a torch op the module that
    called it ("" for the traced module itself). ``args`` lists the op's arguments that are not
    tensors (``"2, -1, 30"`` for ``view(2, -1, 30)``). ``inputs`` and ``outputs`` hold one shape
    per tensor.
    """

    module: str
    op: str
    args: str
    inputs: tuple[tuple[int, ...], ...]
    outputs: tuple[tuple[int, ...], ...]

    def cells(self) -> tuple[str, ...]:
        """The row as text: module, op, args, inputs, output."""
        return (self.module, self.op, self.args, _shapes(self.inputs), _shapes(self.outputs))


@dataclass(frozen=True)
class ShapeTable:
    """The rows of a trace, printed as a plain text table (``str``) or HTML in a notebook."""

    rows: tuple[ShapeRow, ...]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[ShapeRow]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> ShapeRow:
        return self.rows[index]

    def _lines(self) -> list[tuple[str, ...]]:
        return [_HEADER, *((str(i), *row.cells()) for i, row in enumerate(self.rows, 1))]

    def __str__(self) -> str:
        lines = self._lines()
        widths = [max(len(line[k]) for line in lines) for k in range(len(_HEADER))]
        text = ("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines)
        return "\n".join(t.rstrip() for t in text)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        header, *body = self._lines()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
        rows = "".join(
            "<tr>" + "".join(f"<td><code>{html.escape(c)}</code></td>" for c in line) + "</tr>"
            for line in body
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _shapes(shapes: tuple[tuple[int, ...], ...]) -> str:
    return ", ".join(str(s) if len(s) != 1 else f"({s[0]},)" for s in shapes)


def _tensors(value) -> list[torch.Tensor]:
    """Every tensor in a (nested) structure of arguments or results, in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _shape_tuple(tensors: list[torch.Tensor]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(t.shape) for t in tensors)


def _defaults(func) -> dict:
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # builtins such as torch.bmm have no signature
        return {}
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _describe_args(func, args: tuple, kwargs: dict) -> str:
    """The arguments that are not tensors, as they would be written in code.

    Keyword arguments left at their default, None or False are dropped: wrappers such as
    ``F.max_pool2d`` pass all of them on, and the table would drown in them.
    """
    defaults = _defaults(func)
    parts = [repr(a) for a in args if not _tensors(a)]
    parts += [
        f"{k}={v!r}"
        for k, v in kwargs.items()
        if not _tensors(v) and v is not None and v is not False and defaults.get(k, ...) != v
    ]
    return ", ".join(parts)


def _op_name(func) -> str:
    name = getattr(func, "__name__", repr(func))
    if name == "__get__":  # a tensor property such as .T or .mT
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name.strip("_") or name


class _Recorder(TorchFunctionMode):
    """Records torch calls while the innermost running module is opened up."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[ShapeRow] = []
        # The running modules, outermost first: (qualified name, opened, shapes of its inputs).
        self.stack: list[tuple[str, bool, tuple[tuple[int, ...], ...]]] = []

    @property
    def recording(self) -> bool:
        return bool(self.stack) and all(opened for _, opened, _ in self.stack)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        outputs = _tensors(result)
        if self.recording and outputs:
            # A tensor method receives the tensor as its first argument: it is an input too.
            inputs = _tensors(args) + _tensors(kwargs)
            self.rows.append(
                ShapeRow(
                    module=self.stack[-1][0],
                    op=_op_name(func),
                    args=_describe_args(func, args, kwargs),
                    inputs=_shape_tuple(inputs),
                    outputs=_shape_tuple(outputs),
                )
            )
        return result


def _opened(module: nn.Module, depth: int, max_depth: int | None) -> bool:
    if depth == 0:
        return True
    if max_depth is not None and depth > max_depth:
        return False
    builtin = type(module).__module__.startswith("torch.")
    return not builtin or isinstance(module, _CONTAINERS)


def trace_shapes(module: nn.Module, *args, depth: int | None = None, **kwargs) -> ShapeTable:
    """Run ``module(*args, **kwargs)`` once and return the table of every op's shapes.

    Args:
        module: any ``nn.Module``. It runs once under ``torch.no_grad()``; in training mode its
            buffers update as in any forward pass (BatchNorm statistics, spectral-norm vectors),
            so call ``module.eval()`` first to leave them as they are.
        *args, **kwargs: its inputs.
        depth: open submodules only down to this many levels below ``module`` (``None``: all of
            them; ``0``: the module's own ops and one row per direct child).

    Returns:
        A :class:`ShapeTable`, one :class:`ShapeRow` per recorded call, in call order.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected an nn.Module to trace, got {type(module).__name__}")
    if depth is not None:
        check_int("depth", depth, minimum=0)

    recorder = _Recorder()
    handles = []
    for name, sub in module.named_modules():
        level = 0 if sub is module else name.count(".") + 1
        opened = _opened(sub, level, depth)
        enter, leave = _enter(recorder, name, opened), _leave(recorder)
        handles.append(sub.register_forward_pre_hook(enter, with_kwargs=True))
        handles.append(sub.register_forward_hook(leave, with_kwargs=True, always_call=True))
    try:
        with torch.no_grad(), recorder:
            module(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return ShapeTable(tuple(recorder.rows))


def _enter(recorder: _Recorder, name: str, opened: bool):
    def hook(module, args, kwargs):
        # The row of a closed module is written when it returns; keep its inputs until then.
        recorder.stack.append((name, opened, _shape_tuple(_tensors(args) + _tensors(kwargs))))

    return hook


def _leave(recorder: _Recorder):
    def hook(module, args, kwargs, output):
        name, opened, inputs = recorder.stack.pop()
        if not opened and recorder.recording:
            recorder.rows.append(
                ShapeRow(name, type(module).__name__, "", inputs, _shape_tuple(_tensors(output)))
            )

    return hook
