"""Receptive fields against brute force on an exact integer reference of the ops.

The reference below (written here, independent of tflm_patch) computes conv, depthwise
conv, max pool, average pool (integer sum over the non-padding elements: the divisor of
TFLite's average pool depends only on the position, so the sum carries the same
dependencies exactly), PAD with a constant, ADD and a strictly increasing pointwise op
on Python-int arrays. Weights are positive and nothing is clamped, so every dependency
shows as a change of value.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import pytest

from tflm_patch.receptive_field import (
    Rect,
    SpatialNode,
    Window,
    input_rect,
    required_rects,
    same_padding,
    valid_out_size,
)

# ---------------------------------------------------------------- reference ops

Array = np.ndarray  # (H, W, C), dtype=object (Python ints: no overflow)


@dataclass
class RefOp:
    """One op of the reference graph: what it computes, with explicit geometry."""

    kind: str  # conv, dwconv, maxpool, avgpool, pad, add, pointwise
    inputs: tuple[str, ...]
    output: str
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    pad_before: tuple[int, int] = (0, 0)  # (top, left) for window ops
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # (top, bottom, left, right) for pad
    pad_value: int = 0
    weights: Array | None = None  # (kh, kw, cin, cout) for conv, (kh, kw, c) for dwconv
    out_hw: tuple[int, int] = (0, 0)


def _windows(x: Array, op: RefOp, fill: int) -> list[tuple[tuple[int, int], Array]]:
    """(tap, input values read by every output at that tap), padding filled with `fill`."""
    h, w, c = x.shape
    (kh, kw), (sh, sw), (dh, dw) = op.kernel, op.stride, op.dilation
    (pt, pl), (oh, ow) = op.pad_before, op.out_hw
    need_h = (oh - 1) * sh + (kh - 1) * dh + 1
    need_w = (ow - 1) * sw + (kw - 1) * dw + 1
    big = np.full((max(need_h, pt + h), max(need_w, pl + w), c), fill, dtype=object)
    big[pt:pt + h, pl:pl + w] = x
    taps = []
    for i in range(kh):
        for j in range(kw):
            sl = big[i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
            taps.append(((i, j), sl))
    return taps


def ref_apply(op: RefOp, xs: list[Array]) -> Array:
    x = xs[0]
    if op.kind == "add":
        return xs[0] + xs[1]
    if op.kind == "pointwise":
        return x * 2 + 1
    if op.kind == "pad":
        t, b, left, r = op.pads
        out = np.full((x.shape[0] + t + b, x.shape[1] + left + r, x.shape[2]), op.pad_value,
                      dtype=object)
        out[t:t + x.shape[0], left:left + x.shape[1]] = x
        return out
    if op.kind == "maxpool":
        taps = _windows(x, op, -1)  # data is >= 0, so -1 never wins over a data element
        out = taps[0][1].copy()
        for _, sl in taps[1:]:
            out = np.maximum(out, sl)
        assert (out >= 0).all(), "a max-pool window read only padding"
        return out
    taps = _windows(x, op, 0)
    if op.kind == "avgpool":
        return sum((sl for _, sl in taps[1:]), taps[0][1].copy())
    assert op.weights is not None
    if op.kind == "dwconv":
        return sum((sl * op.weights[i, j] for (i, j), sl in taps[1:]),
                   taps[0][1] * op.weights[taps[0][0]])
    out = np.zeros((*op.out_hw, op.weights.shape[3]), dtype=object)
    for (i, j), sl in taps:
        out = out + (sl[:, :, :, None] * op.weights[i, j][None, None]).sum(axis=2)
    return out


def ref_run(ops: list[RefOp], inputs: dict[str, Array],
            override: dict[str, Array] | None = None) -> dict[str, Array]:
    """All tensors; a tensor in `override` is replaced by the given values."""
    override = override or {}
    vals = {k: override.get(k, v) for k, v in inputs.items()}
    for op in ops:
        vals[op.output] = override.get(op.output, ref_apply(op, [vals[t] for t in op.inputs]))
    return vals


# ---------------------------------------------------------------- random graphs

def _ref_same(n: int, k: int, s: int, d: int) -> tuple[int, int]:
    """(out, pad_before) of TFLite SAME, written independently of the module."""
    out = (n + s - 1) // s
    span = d * (k - 1) + 1
    total = (out - 1) * s + span - n
    return out, max(total, 0) // 2


@dataclass
class Builder:
    rng: random.Random
    ops: list[RefOp] = field(default_factory=list)
    shapes: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    count: int = 0

    def new(self) -> str:
        self.count += 1
        return f"t{self.count}"

    def window(self, x: str, kind: str, same: bool, k: tuple[int, int], s: tuple[int, int],
               d: tuple[int, int] = (1, 1), cout: int | None = None) -> str:
        h, w, c = self.shapes[x]
        size, before = [], []
        for n, kk, ss, dd in zip((h, w), k, s, d, strict=True):
            if same:
                o, p = _ref_same(n, kk, ss, dd)
            else:
                o, p = (n - dd * (kk - 1) - 1) // ss + 1, 0
            size.append(o)
            before.append(p)
        weights = None
        if kind == "conv":
            cout = cout or self.rng.randint(1, 2)
            weights = np.array([[[[self.rng.randint(1, 3) for _ in range(cout)]
                                  for _ in range(c)] for _ in range(k[1])]
                                for _ in range(k[0])], dtype=object)
        elif kind == "dwconv":
            weights = np.array([[[self.rng.randint(1, 3) for _ in range(c)]
                                 for _ in range(k[1])] for _ in range(k[0])], dtype=object)
        out = self.new()
        self.ops.append(RefOp(kind, (x,), out, k, s, d, (before[0], before[1]),
                              weights=weights, out_hw=(size[0], size[1])))
        self.shapes[out] = (size[0], size[1], cout if kind == "conv" and cout else c)
        return out

    def pad(self, x: str, pads: tuple[int, int, int, int]) -> str:
        h, w, c = self.shapes[x]
        out = self.new()
        self.ops.append(RefOp("pad", (x,), out, pads=pads, pad_value=self.rng.randint(0, 9)))
        self.shapes[out] = (h + pads[0] + pads[1], w + pads[2] + pads[3], c)
        return out

    def add(self, a: str, b: str) -> str:
        assert self.shapes[a][:2] == self.shapes[b][:2]
        out = self.new()
        c = max(self.shapes[a][2], self.shapes[b][2])
        if self.shapes[a][2] != self.shapes[b][2]:  # make channels agree with a 1x1 conv
            a = self.window(a, "conv", True, (1, 1), (1, 1), cout=c)
            b = self.window(b, "conv", True, (1, 1), (1, 1), cout=c)
        self.ops.append(RefOp("add", (a, b), out))
        self.shapes[out] = (*self.shapes[a][:2], c)
        return out

    def pointwise(self, x: str) -> str:
        out = self.new()
        self.ops.append(RefOp("pointwise", (x,), out))
        self.shapes[out] = self.shapes[x]
        return out

    # ------------------------------------------------ blocks

    def rand_k(self, hi: int = 7) -> tuple[int, int]:
        k = self.rng.randint(1, hi)
        return (k, k) if self.rng.random() < 0.7 else (k, self.rng.randint(1, hi))

    def fits(self, x: str, k: tuple[int, int], d: tuple[int, int]) -> bool:
        h, w, _ = self.shapes[x]
        return d[0] * (k[0] - 1) + 1 <= h and d[1] * (k[1] - 1) + 1 <= w

    def size_keeping(self, x: str) -> str:
        """A branch keeping H and W: SAME stride 1 conv/dw (any k, d), or PAD + VALID."""
        r = self.rng.random()
        if r < 0.15:
            return self.pointwise(x)
        k, d = self.rand_k(), (self.rng.randint(1, 2), self.rng.randint(1, 2))
        if r < 0.45:
            spans = [dd * (kk - 1) for kk, dd in zip(k, d, strict=True)]
            top, left = self.rng.randint(0, spans[0]), self.rng.randint(0, spans[1])
            p = self.pad(x, (top, spans[0] - top, left, spans[1] - left))
            return self.window(p, self.rng.choice(["conv", "dwconv"]), False, k, (1, 1), d)
        return self.window(x, self.rng.choice(["conv", "dwconv"]), True, k, (1, 1), d)

    def block(self, x: str) -> str:
        r = self.rng.random()
        if r < 0.25:  # residual: branches differ (identity or another size-keeping op)
            a = self.size_keeping(x)
            if self.rng.random() < 0.5:
                a = self.size_keeping(a)
            b = x if self.rng.random() < 0.4 else self.size_keeping(x)
            return self.add(a, b)
        if r < 0.4:  # explicit PAD followed by a VALID conv
            p = self.pad(x, tuple(self.rng.randint(0, 3) for _ in range(4)))  # type: ignore[arg-type]
            k, s = self.rand_k(), (self.rng.randint(1, 2), self.rng.randint(1, 2))
            d = (self.rng.randint(1, 2), self.rng.randint(1, 2))
            if not self.fits(p, k, d):
                k, d = (1, 1), (1, 1)
            return self.window(p, "conv", False, k, s, d)
        if r < 0.55:  # pool
            kind = self.rng.choice(["maxpool", "avgpool"])
            k, s = self.rand_k(3), (self.rng.randint(1, 2), self.rng.randint(1, 2))
            same = self.rng.random() < 0.5 or not self.fits(x, k, (1, 1))
            return self.window(x, kind, same, k, s)
        if r < 0.6:
            return self.pointwise(x)
        kind = self.rng.choice(["conv", "dwconv"])
        k = self.rand_k()
        s = (self.rng.randint(1, 2), self.rng.randint(1, 2))
        d = (self.rng.randint(1, 2), self.rng.randint(1, 2))
        same = self.rng.random() < 0.6 or not self.fits(x, k, d)
        return self.window(x, kind, same, k, s, d)


def to_node(op: RefOp, shapes: dict[str, tuple[int, int, int]]) -> SpatialNode:
    in_hw = tuple(shapes[t][:2] for t in op.inputs)
    out_hw = shapes[op.output][:2]
    if op.kind in ("conv", "dwconv", "maxpool", "avgpool"):
        win = Window(op.kernel, op.stride, op.dilation, op.pad_before[0], op.pad_before[1])
        return SpatialNode(op.output, "window", op.inputs, op.output, in_hw, out_hw, window=win)
    if op.kind == "pad":
        return SpatialNode(op.output, "pad", op.inputs, op.output, in_hw, out_hw, pads=op.pads)
    if op.kind == "add":
        return SpatialNode(op.output, "add", op.inputs, op.output, in_hw, out_hw)
    return SpatialNode(op.output, "pointwise", op.inputs, op.output, in_hw, out_hw)


@dataclass
class Case:
    ops: list[RefOp]
    shapes: dict[str, tuple[int, int, int]]
    nodes: list[SpatialNode]
    inputs: dict[str, Array]
    target: str
    rect: Rect


def make_case(seed: int) -> Case:
    rng = random.Random(seed)
    b = Builder(rng)
    b.shapes["in"] = (rng.randint(5, 24), rng.randint(5, 24), rng.randint(1, 2))
    x = "in"
    for _ in range(rng.randint(2, 7)):
        x = b.block(x)
    tensors = [op.output for op in b.ops]
    # mostly the last tensor; sometimes an intermediate one (later ops are not upstream)
    target = tensors[-1] if rng.random() < 0.8 else rng.choice(tensors)
    h, w, _ = b.shapes[target]
    y0, x0 = rng.randrange(h), rng.randrange(w)
    rect = Rect(y0, rng.randint(y0 + 1, h), x0, rng.randint(x0 + 1, w))
    np_rng = np.random.default_rng(seed)
    h0, w0, c0 = b.shapes["in"]
    inputs = {"in": np_rng.integers(0, 10, (h0, w0, c0)).astype(object)}
    nodes = [to_node(op, b.shapes) for op in b.ops]
    return Case(b.ops, b.shapes, nodes, inputs, target, rect)


def upstream(ops: list[RefOp], target: str) -> set[str]:
    """Tensors with a path to `target`, by graph traversal (independent of the module)."""
    found, todo = {target}, [target]
    producer = {op.output: op for op in ops}
    while todo:
        t = todo.pop()
        if t in producer:
            for i in producer[t].inputs:
                if i not in found:
                    found.add(i)
                    todo.append(i)
    return found


def crop(a: Array, r: Rect) -> Array:
    return a[r.y0:r.y1, r.x0:r.x1]


def outside_mask(shape: tuple[int, ...], r: Rect) -> np.ndarray:
    m = np.ones(shape[:2], dtype=bool)
    if not r.is_empty:
        m[r.y0:r.y1, r.x0:r.x1] = False
    return m


def boundary_sides(r: Rect) -> dict[str, Rect]:
    return {"top": Rect(r.y0, r.y0 + 1, r.x0, r.x1), "bottom": Rect(r.y1 - 1, r.y1, r.x0, r.x1),
            "left": Rect(r.y0, r.y1, r.x0, r.x0 + 1), "right": Rect(r.y0, r.y1, r.x1 - 1, r.x1)}


SEEDS = range(40)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_graph_sound_and_minimal(seed: int) -> None:
    """For every tensor t upstream of the target (input and intermediates):
    sound: random values outside rect(t) leave the target rect and every rect computed
    from t unchanged; minimal: each boundary row/column segment of rect(t), raised by a
    large value, changes what some consumer of t computes of its own rect. (Minimality is
    per consumer because required_rects gives bounding boxes that the patch computes in
    full; see test_bbox_of_consumer_rect_can_exceed_what_target_reads.)"""
    case = make_case(seed)
    rects = required_rects(case.nodes, case.target, case.rect)
    assert set(rects) == upstream(case.ops, case.target)
    assert rects[case.target] == case.rect
    base = ref_run(case.ops, case.inputs)
    exact = required_rects(case.nodes, case.target, case.rect, exact=True)
    for t, r in rects.items():
        assert Rect.full(*case.shapes[t][:2]).contains(r), (t, r)
        assert r.contains(exact[t]), (t, r, exact[t])
    rng = np.random.default_rng(1000 + seed)
    for t, r in rects.items():
        if t == case.target:
            continue
        _check_sound(case, rects, base, t, r, rng)
        _check_minimal(case, rects, base, t, r)


def _check_sound(case: Case, rects: dict[str, Rect], base: dict[str, Array], t: str, r: Rect,
                 rng: np.random.Generator) -> None:
    """Random values outside rect(t) change no upstream rect's values, nor the target's."""
    mask = outside_mask(base[t].shape, r)
    hi = int(np.max(base[t])) + 10
    for _ in range(3):
        pert = base[t].copy()
        noise = rng.integers(0, hi, base[t].shape).astype(object)
        pert[mask] = noise[mask]
        if t == "in":
            vals = ref_run(case.ops, {"in": pert})
        else:
            vals = ref_run(case.ops, case.inputs, override={t: pert})
        for u, ru in rects.items():
            if u not in upstream(case.ops, t):  # t and what feeds it are not recomputed
                assert (crop(vals[u], ru) == crop(base[u], ru)).all(), \
                    f"{t} outside {r} changed {u} inside {ru}"


def _check_minimal(case: Case, rects: dict[str, Rect], base: dict[str, Array], t: str,
                   r: Rect) -> None:
    """Each boundary row/column of rect(t) changes what a consumer computes of its rect."""
    if r.is_empty:
        return
    consumers = [op for op in case.ops if t in op.inputs and op.output in rects]
    assert consumers, f"{t} is upstream of the target but has no consumer on the way"
    big = 2 * int(np.max(base[t])) + 1  # beats every value of t (max pool shows it too)
    for side, rs in boundary_sides(r).items():
        pert = base[t].copy()
        pert[rs.y0:rs.y1, rs.x0:rs.x1] += big
        changed = False
        for op in consumers:
            out = ref_apply(op, [pert if i == t else base[i] for i in op.inputs])
            ro = rects[op.output]
            changed |= bool((crop(out, ro) != crop(base[op.output], ro)).any())
        assert changed, f"{side} side of {t} rect {r} is not needed by its consumers"


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_random_graph_exact_rects_sound_and_minimal_for_target(seed: int) -> None:
    """exact=True: for every upstream tensor (input and intermediates), random values
    outside its rect never change the target rect, and each of the 4 boundary
    rows/columns of its rect, raised by a value larger than anything in the graph,
    changes the target rect."""
    case = make_case(seed)
    rects = required_rects(case.nodes, case.target, case.rect, exact=True)
    assert set(rects) == upstream(case.ops, case.target)
    assert rects[case.target] == case.rect
    base = ref_run(case.ops, case.inputs)
    want = crop(base[case.target], case.rect)
    # each max pool on the way may eat up to max(graph) of an increase: stay far above
    big = (1 + max(int(np.max(v)) for v in base.values())) * (len(case.ops) + 2)
    rng = np.random.default_rng(2000 + seed)
    for t, r in rects.items():
        if t == case.target:
            continue
        assert Rect.full(*case.shapes[t][:2]).contains(r), (t, r)
        mask = outside_mask(base[t].shape, r)
        for trial in range(3):
            pert = base[t].copy()
            noise = rng.integers(0, 10 ** 6, base[t].shape).astype(object)
            pert[mask] = noise[mask]
            got = crop(_run_with(case, t, pert)[case.target], case.rect)
            assert (got == want).all(), f"trial {trial}: {t} outside {r} changed the target"
        if r.is_empty:
            continue
        for side, rs in boundary_sides(r).items():
            pert = base[t].copy()
            pert[rs.y0:rs.y1, rs.x0:rs.x1] += big
            got = crop(_run_with(case, t, pert)[case.target], case.rect)
            assert (got != want).any(), f"{side} side of {t} rect {r} is not needed"


def _run_with(case: Case, t: str, values: Array) -> dict[str, Array]:
    if t in case.inputs:
        return ref_run(case.ops, {**case.inputs, t: values})
    return ref_run(case.ops, case.inputs, override={t: values})


# ---------------------------------------------------------------- bounding-box semantics

def test_bbox_of_consumer_rect_can_exceed_what_target_reads() -> None:
    """PAD(top=1) then 1x1 stride-2 conv: target rows {0,1,2} read padded rows {0,2,4} =
    input rows {1,3}; the executor computes padded rows [0,5) in full, which reads input
    rows [0,4). That is what required_rects gives (the bounding box the patch needs), not
    the smaller set the target alone depends on."""
    pad = SpatialNode("p", "pad", ("a",), "b", ((6, 1),), (7, 1), pads=(1, 0, 0, 0))
    conv = SpatialNode("c", "window", ("b",), "c", ((7, 1),), (4, 1),
                       window=Window((1, 1), (2, 1), (1, 1), 0, 0))
    rects = required_rects([pad, conv], "c", Rect(0, 3, 0, 1))
    assert rects["b"] == Rect(0, 5, 0, 1)
    assert rects["a"] == Rect(0, 4, 0, 1)
    exact = required_rects([pad, conv], "c", Rect(0, 3, 0, 1), exact=True)
    assert exact == {"c": Rect(0, 3, 0, 1), "b": Rect(0, 5, 0, 1), "a": Rect(1, 4, 0, 1)}
    # a target row reading only padding: nothing of "a" is needed
    assert required_rects([pad, conv], "c", Rect(0, 1, 0, 1), exact=True)["a"].is_empty


# ---------------------------------------------------------------- hand-derived cases

@pytest.mark.parametrize(("args", "expected"), [
    ((97, 3, 2), (49, 1, 1)),
    ((96, 3, 2), (48, 0, 1)),
    ((224, 3, 1), (224, 1, 1)),
    ((10, 5, 1, 2), (10, 4, 4)),  # span 9: total 8
    ((11, 5, 2, 2), (6, 4, 4)),  # out 6: total 5*2 + 9 - 11 = 8
    ((7, 1, 2), (4, 0, 0)),  # total max(6 + 1 - 7, 0) = 0
    ((8, 1, 3), (3, 0, 0)),  # total max(6 + 1 - 8, 0) = 0
    ((1, 7, 1), (1, 3, 3)),
    ((6, 4, 1), (6, 1, 2)),  # even kernel: the extra row goes after
    ((5, 2, 1, 3), (5, 1, 2)),  # span 4: total 3
])
def test_same_padding_hand_cases(args: tuple[int, ...], expected: tuple[int, int, int]) -> None:
    assert same_padding(*args) == expected


@pytest.mark.parametrize(("args", "expected"), [
    ((224, 3, 2), 111), ((7, 7, 1), 1), ((10, 3, 1, 2), 6), ((9, 1, 3), 3), ((5, 2, 2), 2),
])
def test_valid_out_size_hand_cases(args: tuple[int, ...], expected: int) -> None:
    assert valid_out_size(*args) == expected


def _node(in_hw: tuple[int, int], out_hw: tuple[int, int], win: Window) -> SpatialNode:
    return SpatialNode("n", "window", ("a",), "b", (in_hw,), out_hw, window=win)


def test_input_rect_hand_cases() -> None:
    # 3x3 stride 2 SAME on 97: pad 1; output rows [0, 2) read rows [-1, 4) -> [0, 4)
    n = _node((97, 97), (49, 49), Window((3, 3), (2, 2), (1, 1), 1, 1))
    assert input_rect(n, Rect(0, 2, 48, 49)) == Rect(0, 4, 95, 97)
    # k=2 dilation 2 SAME on 8: span 3, total pad 2, pad_top 1; output row 0 reads rows
    # -1 and 1 (row 0 is not read), rows [0, 2) read -1, 1, 0, 2
    n = _node((8, 8), (8, 8), Window((2, 1), (1, 1), (2, 1), 1, 0))
    assert input_rect(n, Rect(0, 1, 2, 3)) == Rect(1, 2, 2, 3)
    assert input_rect(n, Rect(0, 2, 2, 3)) == Rect(0, 3, 2, 3)
    assert input_rect(n, Rect(7, 8, 0, 8)) == Rect(6, 7, 0, 8)  # rows 6 and 8 (padding)
    # k=2 d=3 on a 1-row input, SAME: out 1, pad 1: taps -1 and 2 are both padding
    n = _node((1, 4), (1, 4), Window((2, 1), (1, 1), (3, 1), 1, 0))
    assert input_rect(n, Rect(0, 1, 0, 4)).is_empty
    # 1x1 stride 2: rows 0, 2, 4 -> bounding box [0, 5)
    n = _node((6, 6), (3, 3), Window((1, 1), (2, 2), (1, 1), 0, 0))
    assert input_rect(n, Rect(0, 3, 1, 2)) == Rect(0, 5, 2, 3)
    pad = SpatialNode("p", "pad", ("a",), "b", ((4, 4),), (7, 8), pads=(1, 2, 3, 1))
    assert input_rect(pad, Rect(0, 2, 0, 8)) == Rect(0, 1, 0, 4)
    assert input_rect(pad, Rect(5, 7, 0, 3)).is_empty
    assert input_rect(pad, Rect(3, 3, 0, 3)) == Rect.empty()
    add = SpatialNode("s", "add", ("a", "c"), "b", ((4, 4), (4, 4)), (4, 4))
    assert input_rect(add, Rect(1, 2, 0, 3), 1) == Rect(1, 2, 0, 3)


def test_required_rects_residual_and_absent_tensors() -> None:
    conv = SpatialNode("c", "window", ("x",), "y", ((8, 8),), (8, 8),
                       window=Window((5, 5), (1, 1), (1, 1), 2, 2))
    add = SpatialNode("a", "add", ("y", "x"), "z", ((8, 8), (8, 8)), (8, 8))
    tail = SpatialNode("t", "pointwise", ("z",), "w", ((8, 8),), (8, 8))
    rects = required_rects([conv, add, tail], "z", Rect(3, 4, 6, 8))
    assert rects == {"z": Rect(3, 4, 6, 8), "y": Rect(3, 4, 6, 8), "x": Rect(1, 6, 4, 8)}
    assert required_rects([conv, add], "z", Rect(3, 3, 0, 8)) == {
        "z": Rect.empty(), "y": Rect.empty(), "x": Rect.empty()}


def test_rect_helpers() -> None:
    a, b = Rect(0, 2, 1, 3), Rect(5, 6, 0, 1)
    assert a.union(b) == Rect(0, 6, 0, 3)
    assert a.intersect(b).is_empty and a.intersect(b) == Rect.empty()
    assert a.intersect(Rect(1, 9, 2, 9)) == Rect(1, 2, 2, 3)
    assert (a.height, a.width, a.area) == (2, 2, 4)
    assert Rect(3, 1, 0, 5).area == 0 and Rect(3, 1, 0, 5).is_empty
    assert Rect(3, 1, 0, 5).union(a) == a and a.union(Rect(0, 0, 0, 0)) == a
    assert Rect.full(4, 5) == Rect(0, 4, 0, 5)


# ---------------------------------------------------------------- validation

def test_validation_errors() -> None:
    with pytest.raises(ValueError, match="input size"):
        same_padding(-1, 3, 1)
    with pytest.raises(ValueError, match="stride"):
        same_padding(5, 3, 0)
    with pytest.raises(ValueError, match="spans"):
        valid_out_size(4, 3, 1, 2)
    with pytest.raises(ValueError, match="height"):
        Rect.full(-2, 3)
    with pytest.raises(ValueError, match="pad_top"):
        Window((3, 3), (1, 1), (1, 1), -1, 0)
    with pytest.raises(ValueError, match="inconsistent"):  # after-padding would be 3 > 2
        _node((9, 9), (9, 11), Window((3, 3), (1, 1), (1, 1), 1, 1))
    with pytest.raises(ValueError, match="inconsistent"):  # after-padding would be -2
        _node((9, 9), (9, 6), Window((3, 3), (1, 1), (1, 1), 1, 1))
    with pytest.raises(ValueError, match="inconsistent"):  # first window all padding
        _node((9, 9), (9, 9), Window((3, 3), (1, 1), (1, 1), 3, 1))
    with pytest.raises(ValueError, match="inconsistent"):  # VALID gives 7, not 6
        _node((9, 9), (6, 6), Window((3, 3), (1, 1), (1, 1), 0, 0))
    with pytest.raises(ValueError, match="neither TFLite SAME nor VALID"):  # SAME pads 1
        _node((10, 10), (10, 10), Window((3, 3), (1, 1), (1, 1), 0, 1))
    with pytest.raises(ValueError, match="inconsistent"):  # SAME on 10, stride 2: out 5
        _node((10, 10), (6, 5), Window((3, 3), (2, 2), (1, 1), 1, 0))
    with pytest.raises(ValueError, match="inconsistent"):  # VALID: span 5 > 4
        _node((4, 9), (1, 7), Window((3, 3), (1, 1), (2, 1), 0, 0))
    with pytest.raises(ValueError, match="padded input size"):
        SpatialNode("p", "pad", ("a",), "b", ((4, 4),), (6, 5), pads=(1, 1, 0, 0))
    with pytest.raises(ValueError, match="differ"):
        SpatialNode("s", "add", ("a", "c"), "b", ((4, 4), (4, 3)), (4, 4))
    with pytest.raises(ValueError, match="must be >= 1"):
        SpatialNode("q", "pointwise", ("a",), "b", ((0, 4),), (0, 4))
    n = _node((9, 9), (9, 9), Window((3, 3), (1, 1), (1, 1), 1, 1))
    with pytest.raises(ValueError, match="outside"):
        input_rect(n, Rect(0, 10, 0, 1))
    with pytest.raises(ValueError, match="outside"):
        required_rects([n], "b", Rect(-1, 2, 0, 1))
    with pytest.raises(ValueError, match="not in the graph"):
        required_rects([n], "zz", Rect(0, 1, 0, 1))
    later = SpatialNode("m", "pointwise", ("c",), "a", ((9, 9),), (9, 9))
    with pytest.raises(ValueError, match="topological"):
        required_rects([n, later], "b", Rect(0, 1, 0, 1))
    other = SpatialNode("m", "pointwise", ("b",), "c", ((9, 8),), (9, 8))
    with pytest.raises(ValueError, match="tensor 'b' is"):
        required_rects([n, other], "c", Rect(0, 1, 0, 1))


# ---------------------------------------------------------------- TensorFlow's SAME

@pytest.mark.slow
@pytest.mark.parametrize(("stride", "dilation"), [(1, 1), (2, 1), (3, 1), (1, 2), (1, 3)])
def test_same_padding_matches_tensorflow(stride: int, dilation: int) -> None:
    """Output size of tf.nn.conv2d SAME, and its padding: SAME equals explicit
    (before, after) padding followed by VALID, on random data."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(stride * 10 + dilation)
    bad = []
    for n in range(1, 13):
        for k in range(1, 8):
            x = tf.constant(rng.integers(-5, 6, (1, n, 1, 1)).astype(np.float32))
            f = tf.constant(rng.integers(1, 4, (k, 1, 1, 1)).astype(np.float32))
            y = tf.nn.conv2d(x, f, strides=[1, stride, 1, 1], padding="SAME",
                             dilations=[1, dilation, 1, 1])
            out, before, after = same_padding(n, k, stride, dilation)
            z = tf.nn.conv2d(x, f, strides=[1, stride, 1, 1],
                             padding=[[0, 0], [before, after], [0, 0], [0, 0]],
                             dilations=[1, dilation, 1, 1])
            if y.shape[1] != out or z.shape != y.shape or not np.array_equal(y, z):
                bad.append((n, k, y.shape[1], (out, before, after)))
    assert not bad, f"(in, k, tf out, ours) mismatches: {bad}"


@pytest.mark.slow
@pytest.mark.parametrize(("n", "k", "s", "d"), [
    (97, 3, 2, 1), (96, 3, 2, 1), (10, 4, 1, 1), (7, 2, 2, 1), (8, 7, 3, 1), (11, 3, 1, 2),
    (9, 5, 1, 3), (1, 3, 1, 2), (2, 2, 1, 3),
])
def test_same_padding_reads_like_tensorflow(n: int, k: int, s: int, d: int) -> None:
    """tf.nn.conv2d SAME on rows encoded as 1..n (0 = padding) with one one-hot output
    channel per tap: the first and last output rows read exactly the positions that
    same_padding's pad_before implies, and input_rect is their bounding box."""
    tf = pytest.importorskip("tensorflow")
    x = np.arange(1, n + 1, dtype=np.float64).reshape(1, n, 1, 1)
    f = np.zeros((k, 1, 1, k), dtype=np.float64)
    for j in range(k):
        f[j, 0, 0, j] = 1.0
    y = tf.nn.conv2d(x, f, strides=[1, s, 1, 1], padding="SAME",
                     dilations=[1, d, 1, 1]).numpy()[0, :, 0, :]  # (out rows, taps)
    out, before, after = same_padding(n, k, s, d)
    assert y.shape[0] == out
    assert before + after == max((out - 1) * s + (k - 1) * d + 1 - n, 0)
    node = SpatialNode("c", "window", ("a",), "b", ((n, 1),), (out, 1),
                       window=Window((k, 1), (s, 1), (d, 1), before, 0))
    for o in (0, out - 1):
        tf_read = [int(v) - 1 for v in y[o] if v != 0]  # input rows TF's row o reads
        ours = [p for p in (o * s - before + j * d for j in range(k)) if 0 <= p < n]
        assert tf_read == ours, f"row {o}"
        r = input_rect(node, Rect(o, o + 1, 0, 1))
        if tf_read:
            assert r == Rect(min(tf_read), max(tf_read) + 1, 0, 1)
        else:
            assert r.is_empty
