"""Exact receptive fields of rectangles (patches) through graphs of spatial operators.

Tensors are NHWC with batch 1; only rows (H) and columns (W) matter. A node maps one
or two input tensors to one output tensor:

- ``window``: CONV_2D, DEPTHWISE_CONV_2D, MAX_POOL_2D, AVERAGE_POOL_2D (padding resolved
  into ``Window.pad_top``/``pad_left``; bottom/right padding follows from the sizes),
- ``pad``: PAD/PADV2 with constant (top, bottom, left, right) paddings,
- ``pointwise``: element-wise ops that keep H and W,
- ``add``: two inputs with the same H and W as the output.

``input_rect`` gives, for a rectangle of a node's output, the smallest rectangle of an
input holding every input element the output rectangle reads (padding positions are
not data and are never part of it). ``required_rects`` propagates a rectangle of one
tensor backwards through a graph: every upstream tensor gets the bounding box of what
all of its consumers need, i.e. what a patch-based executor must compute (or read) of
it when it computes each upstream rectangle in full; with ``exact=True`` it gets the
bounding box of what the target rectangle really depends on (minimal, sometimes
smaller). Window padding must follow TFLite's SAME or VALID rule (``same_padding``,
``valid_out_size``); other paddings are written as an explicit ``pad`` node.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

NodeKind = Literal["window", "pad", "pointwise", "add"]
NODE_KINDS: tuple[NodeKind, ...] = ("window", "pad", "pointwise", "add")


@dataclass(frozen=True)
class Rect:
    """Half-open rows [y0, y1) x columns [x0, x1); empty when y0 >= y1 or x0 >= x1."""

    y0: int
    y1: int
    x0: int
    x1: int

    @classmethod
    def full(cls, h: int, w: int) -> Rect:
        """The whole of an h x w tensor."""
        _check_size("height", h)
        _check_size("width", w)
        return cls(0, h, 0, w)

    @classmethod
    def empty(cls) -> Rect:
        """The canonical empty rectangle."""
        return cls(0, 0, 0, 0)

    @property
    def height(self) -> int:
        return max(self.y1 - self.y0, 0)

    @property
    def width(self) -> int:
        return max(self.x1 - self.x0, 0)

    @property
    def area(self) -> int:
        return self.height * self.width

    @property
    def is_empty(self) -> bool:
        return self.y0 >= self.y1 or self.x0 >= self.x1

    def union(self, other: Rect) -> Rect:
        """Bounding box of both (an empty rectangle contributes nothing)."""
        if self.is_empty:
            return Rect.empty() if other.is_empty else other
        if other.is_empty:
            return self
        return Rect(min(self.y0, other.y0), max(self.y1, other.y1),
                    min(self.x0, other.x0), max(self.x1, other.x1))

    def intersect(self, other: Rect) -> Rect:
        """Common part (the canonical empty rectangle when they do not overlap)."""
        r = Rect(max(self.y0, other.y0), min(self.y1, other.y1),
                 max(self.x0, other.x0), min(self.x1, other.x1))
        return Rect.empty() if r.is_empty else r

    def contains(self, other: Rect) -> bool:
        """True when every element of `other` is in this rectangle."""
        if other.is_empty:
            return True
        return (self.y0 <= other.y0 and other.y1 <= self.y1
                and self.x0 <= other.x0 and other.x1 <= self.x1)

    def __str__(self) -> str:
        return f"rows [{self.y0}, {self.y1}) x cols [{self.x0}, {self.x1})"


def _check_size(what: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{what} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")


def _check_rect_inside(rect: Rect, hw: tuple[int, int], what: str) -> None:
    if rect.is_empty:
        return
    if not Rect.full(*hw).contains(rect):
        raise ValueError(f"{what}: {rect} is outside the {hw[0]}x{hw[1]} tensor")


def same_padding(in_size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int, int]:
    """TFLite SAME padding along one axis: (out_size, pad_before, pad_after)."""
    _check_size("input size", in_size)
    _check_size("kernel", kernel)
    _check_size("stride", stride)
    _check_size("dilation", dilation)
    out = -(-in_size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - in_size, 0)
    before = total // 2
    return out, before, total - before


def valid_out_size(in_size: int, kernel: int, stride: int, dilation: int = 1) -> int:
    """TFLite VALID output size along one axis; ValueError when the kernel does not fit."""
    _check_size("input size", in_size)
    _check_size("kernel", kernel)
    _check_size("stride", stride)
    _check_size("dilation", dilation)
    span = (kernel - 1) * dilation + 1
    if span > in_size:
        raise ValueError(f"VALID window spans {span} > input size {in_size}")
    return (in_size - span) // stride + 1


@dataclass(frozen=True)
class Window:
    """Conv / depthwise / pool geometry with the padding already resolved."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad_top: int
    pad_left: int

    def __post_init__(self) -> None:
        for what, pair in (("kernel", self.kernel), ("stride", self.stride),
                           ("dilation", self.dilation)):
            if len(pair) != 2:
                raise ValueError(f"window {what} must be (h, w), got {pair!r}")
            for v in pair:
                _check_size(f"window {what}", v)
        _check_size("window pad_top", self.pad_top, 0)
        _check_size("window pad_left", self.pad_left, 0)

    def span(self, axis: int) -> int:
        """Extent of the dilated kernel along axis 0 (rows) or 1 (columns)."""
        return (self.kernel[axis] - 1) * self.dilation[axis] + 1


def _axis_consistent(in_size: int, out_size: int, k: int, s: int, d: int, before: int) -> bool:
    """Does the axis follow TFLite's SAME or VALID rule (TFLite has no other padding)?"""
    if (out_size, before) == same_padding(in_size, k, s, d)[:2]:
        return True
    return before == 0 and (k - 1) * d + 1 <= in_size and out_size == valid_out_size(
        in_size, k, s, d)


@dataclass(frozen=True)
class SpatialNode:
    """One operator seen through H and W only; tensors are named by strings."""

    name: str
    kind: NodeKind
    inputs: tuple[str, ...]
    output: str
    in_hw: tuple[tuple[int, int], ...]
    out_hw: tuple[int, int]
    window: Window | None = None
    pads: tuple[int, int, int, int] | None = None  # (top, bottom, left, right)

    def __post_init__(self) -> None:
        self._validate()

    def _err(self, msg: str) -> ValueError:
        return ValueError(f"node {self.name!r} ({self.kind}): {msg}")

    def _validate(self) -> None:
        if self.kind not in NODE_KINDS:
            raise self._err(f"unknown kind, expected one of {', '.join(NODE_KINDS)}")
        n_inputs = 2 if self.kind == "add" else 1
        if len(self.inputs) != n_inputs or len(self.in_hw) != n_inputs:
            raise self._err(f"needs {n_inputs} input(s) and as many in_hw, got "
                            f"{len(self.inputs)} and {len(self.in_hw)}")
        for hw in (*self.in_hw, self.out_hw):
            if len(hw) != 2:
                raise self._err(f"sizes must be (h, w), got {hw!r}")
            _check_size(f"node {self.name!r} height", hw[0])
            _check_size(f"node {self.name!r} width", hw[1])
        if (self.window is not None) != (self.kind == "window"):
            raise self._err("a window is required for kind 'window' and only for it")
        if (self.pads is not None) != (self.kind == "pad"):
            raise self._err("pads are required for kind 'pad' and only for it")
        if self.kind == "window":
            self._validate_window()
        elif self.kind == "pad":
            self._validate_pads()
        elif any(hw != self.out_hw for hw in self.in_hw):
            raise self._err(f"input sizes {list(self.in_hw)} differ from output size "
                            f"{self.out_hw}")

    def _validate_window(self) -> None:
        w = self.window
        assert w is not None
        before = (w.pad_top, w.pad_left)
        for axis, label in ((0, "height"), (1, "width")):
            if not _axis_consistent(self.in_hw[0][axis], self.out_hw[axis], w.kernel[axis],
                                    w.stride[axis], w.dilation[axis], before[axis]):
                raise self._err(
                    f"output {label} {self.out_hw[axis]} is inconsistent with input "
                    f"{label} {self.in_hw[0][axis]}, kernel {w.kernel[axis]}, stride "
                    f"{w.stride[axis]}, dilation {w.dilation[axis]}, padding before "
                    f"{before[axis]} (neither TFLite SAME nor VALID)")

    def _validate_pads(self) -> None:
        pads = self.pads
        assert pads is not None
        if len(pads) != 4:
            raise self._err(f"pads must be (top, bottom, left, right), got {pads!r}")
        for p in pads:
            _check_size("padding", p, 0)
        top, bottom, left, right = pads
        expect = (self.in_hw[0][0] + top + bottom, self.in_hw[0][1] + left + right)
        if self.out_hw != expect:
            raise self._err(f"output size {self.out_hw} != padded input size {expect}")


@lru_cache(maxsize=1 << 16)  # the planner asks for the same bands of the same layers often
def _window_axis(o0: int, o1: int, n: int, k: int, s: int, d: int, before: int
                 ) -> tuple[int, int] | None:
    """Smallest [lo, hi) of input positions in [0, n) read by outputs [o0, o1)."""
    lo: int | None = None
    hi: int | None = None
    for j in range(k):
        c = j * d - before  # tap j of output o reads input o * s + c
        first = max(o0, -(c // s))  # smallest o >= o0 with o*s + c >= 0
        if first < o1 and first * s + c < n:
            lo = first * s + c if lo is None else min(lo, first * s + c)
        last = min(o1 - 1, (n - 1 - c) // s)  # largest o < o1 with o*s + c <= n-1
        if last >= o0 and last * s + c >= 0:
            hi = last * s + c + 1 if hi is None else max(hi, last * s + c + 1)
    if lo is None or hi is None:
        return None
    return lo, hi


def input_rect(node: SpatialNode, out_rect: Rect, input_index: int = 0) -> Rect:
    """The rectangle of input `input_index` that `out_rect` of the output reads.

    Clipped to the input's bounds: padding positions are not data. An empty
    `out_rect` (or one that reads only padding) gives the canonical empty rectangle.
    """
    if not 0 <= input_index < len(node.inputs):
        raise ValueError(f"node {node.name!r} has no input {input_index}")
    _check_rect_inside(out_rect, node.out_hw, f"node {node.name!r} output rect")
    if out_rect.is_empty:
        return Rect.empty()
    in_h, in_w = node.in_hw[input_index]
    if node.kind in ("pointwise", "add"):
        return out_rect
    if node.kind == "pad":
        assert node.pads is not None
        top, _, left, _ = node.pads
        r = Rect(out_rect.y0 - top, out_rect.y1 - top, out_rect.x0 - left, out_rect.x1 - left)
        return r.intersect(Rect.full(in_h, in_w))
    w = node.window
    assert w is not None
    rows = _window_axis(out_rect.y0, out_rect.y1, in_h, w.kernel[0], w.stride[0],
                        w.dilation[0], w.pad_top)
    cols = _window_axis(out_rect.x0, out_rect.x1, in_w, w.kernel[1], w.stride[1],
                        w.dilation[1], w.pad_left)
    if rows is None or cols is None:
        return Rect.empty()
    return Rect(rows[0], rows[1], cols[0], cols[1])


def tensor_sizes(nodes: Iterable[SpatialNode]) -> dict[str, tuple[int, int]]:
    """(h, w) of every tensor the nodes mention; ValueError when nodes disagree."""
    sizes: dict[str, tuple[int, int]] = {}
    for node in nodes:
        for tensor, hw in (*zip(node.inputs, node.in_hw, strict=True),
                           (node.output, node.out_hw)):
            seen = sizes.setdefault(tensor, (hw[0], hw[1]))
            if seen != (hw[0], hw[1]):
                raise ValueError(f"tensor {tensor!r} is {seen} in one node and {hw} in "
                                 f"node {node.name!r}")
    return sizes


def _check_topological(nodes: Sequence[SpatialNode]) -> None:
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        if node.output in producer:
            raise ValueError(f"tensor {node.output!r} is produced by two nodes")
        producer[node.output] = i
    for i, node in enumerate(nodes):
        for tensor in node.inputs:
            if producer.get(tensor, -1) >= i:
                raise ValueError(f"nodes are not in topological order: node "
                                 f"{node.name!r} reads {tensor!r} before it is produced")


def required_rects(nodes: Sequence[SpatialNode], target: str, rect: Rect, *,
                   exact: bool = False) -> dict[str, Rect]:
    """Rectangle of every tensor upstream of `target` (itself included) needed for `rect`.

    `nodes` are in topological order; tensors not upstream of `target` are absent, an
    upstream tensor that `rect` does not read at all gets the canonical empty rectangle.

    exact=False (what a patch executor computing every rectangle in full needs): each
    upstream tensor gets the bounding box of `input_rect` of all its consumers (on a
    path to `target`) applied to their own full rectangles.

    exact=True (minimal): each upstream tensor gets the bounding box of the elements
    `rect` really depends on. It can be smaller when a consumer's rectangle holds
    elements `rect` does not read (a 1x1 stride-2 conv or a dilated window reads every
    other row) and those elements read rows the others do not (near a padded border).
    """
    sizes = tensor_sizes(nodes)
    if target not in sizes:
        raise ValueError(f"target tensor {target!r} is not in the graph")
    _check_topological(nodes)
    _check_rect_inside(rect, sizes[target], f"target {target!r}")
    if exact:
        return _exact_rects(nodes, target, rect, sizes[target])
    needed: dict[str, Rect] = {target: rect if not rect.is_empty else Rect.empty()}
    for node in reversed(nodes):
        out = needed.get(node.output)
        if out is None:
            continue
        for i, tensor in enumerate(node.inputs):
            r = input_rect(node, out, i)
            needed[tensor] = needed[tensor].union(r) if tensor in needed else r
    return needed


def _exact_rects(nodes: Sequence[SpatialNode], target: str, rect: Rect,
                 hw: tuple[int, int]) -> dict[str, Rect]:
    """Propagate the exact set of needed elements (a boolean mask per tensor)."""
    start = np.zeros(hw, dtype=bool)
    if not rect.is_empty:
        start[rect.y0:rect.y1, rect.x0:rect.x1] = True
    masks: dict[str, np.ndarray] = {target: start}
    for node in reversed(nodes):
        out = masks.get(node.output)
        if out is None:
            continue
        for i, tensor in enumerate(node.inputs):
            m = _input_mask(node, out, i)
            masks[tensor] = masks[tensor] | m if tensor in masks else m
    return {tensor: _bounding_rect(m) for tensor, m in masks.items()}


def _bounding_rect(mask: np.ndarray) -> Rect:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return Rect.empty()
    return Rect(int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


def _tap_slices(n_out: int, n_in: int, s: int, c: int) -> tuple[slice, slice] | None:
    """Outputs o with 0 <= o*s + c < n_in, and the inputs they read, as slices."""
    lo = max(0, -(c // s))
    hi = min(n_out, (n_in - 1 - c) // s + 1)
    if lo >= hi:
        return None
    return slice(lo, hi), slice(lo * s + c, (hi - 1) * s + c + 1, s)


def _input_mask(node: SpatialNode, out_mask: np.ndarray, input_index: int) -> np.ndarray:
    """Elements of input `input_index` read by the elements of `out_mask`."""
    in_h, in_w = node.in_hw[input_index]
    if node.kind in ("pointwise", "add"):
        return out_mask.copy()
    if node.kind == "pad":
        assert node.pads is not None
        top, _, left, _ = node.pads
        return out_mask[top:top + in_h, left:left + in_w].copy()
    w = node.window
    assert w is not None
    out_h, out_w = node.out_hw
    mask = np.zeros((in_h, in_w), dtype=bool)
    for i in range(w.kernel[0]):
        rows = _tap_slices(out_h, in_h, w.stride[0], i * w.dilation[0] - w.pad_top)
        if rows is None:
            continue
        for j in range(w.kernel[1]):
            cols = _tap_slices(out_w, in_w, w.stride[1], j * w.dilation[1] - w.pad_left)
            if cols is not None:
                mask[rows[1], cols[1]] |= out_mask[rows[0], cols[0]]
    return mask
