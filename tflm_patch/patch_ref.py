"""Numpy reference of PATCH_EXEC: runs the stage patch by patch, bit-exact.

It executes a PATCH_EXEC operator of a model from its options and constant inputs only
(never from the original operators), with one int8 scratch array of exactly
`scratch_bytes`: every intermediate tensor lives in its slot, so a slot layout that lets
two live tensors overlap corrupts the result, and every read is checked against the
range the options keep (`HaloError`). The window arithmetic is `ref_ops` (TFLM's
reference kernels) applied to the kept range with the padding shifted accordingly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tflm_patch import patch_format as pf
from tflm_patch import ref_ops
from tflm_patch.errors import TflmPatchError, UnsupportedModelError
from tflm_patch.model import Model, OperatorInfo

Consts = tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]


class HaloError(TflmPatchError):
    """A layer would read outside the range the options keep of its input."""


@dataclass
class _View:
    """The part of a stage tensor one patch holds: data[rows, cols, C], origin (r0, c0)."""

    data: np.ndarray
    r0: int
    c0: int


def check_operator_tensors(model: Model, op: OperatorInfo, o: pf.PatchOptions) -> None:
    """The rules the C++ glue checks in Prepare (docs/patch_exec.md, "Operator tensors"),
    with its messages: input 0 and output 0 are distinct arena tensors (not constant, not
    variable); every constant a layer reads is constant, not variable, of the type the
    options need, at most 2^31 - 1 elements, and its buffer holds exactly its bytes."""
    if len(op.inputs) != o.num_inputs or len(op.outputs) != 1:
        raise UnsupportedModelError(f"PATCH_EXEC: the operator has {len(op.inputs)} inputs; "
                                    f"the options say num_inputs = {o.num_inputs}")
    if op.inputs[0] < 0 or op.outputs[0] < 0:
        raise UnsupportedModelError("PATCH_EXEC: input 0 or output 0 is omitted")
    if op.inputs[0] == op.outputs[0]:
        raise UnsupportedModelError("PATCH_EXEC: input 0 and output 0 are the same tensor")
    if model.tensors[op.inputs[0]].dtype != "int8":
        raise UnsupportedModelError(f"PATCH_EXEC: input 0 is {model.tensors[op.inputs[0]].dtype}"
                                    ", not int8")
    out = model.tensors[op.outputs[0]]
    _check_activation(o, "output 0", out.dtype, out.shape)  # input 0: the array's shape
    for what, index in (("input 0", op.inputs[0]), ("output 0", op.outputs[0])):
        t = model.tensors[index]
        if _inline_data(model, index) is not None:
            raise UnsupportedModelError(f"PATCH_EXEC: {what} is not planned in the arena: a "
                                        "constant stage input or output is not allowed")
        if t.is_variable:
            raise UnsupportedModelError(f"PATCH_EXEC: {what} is a variable tensor")
    for index, (dtype, shape) in sorted(pf.constant_specs(o).items()):
        if dtype == pf.RUNTIME_INT8:
            _check_side_input(model, op, index, math.prod(shape))
        else:
            _check_constant(model, op, index, dtype, math.prod(shape), o.packed)


def _check_side_input(model: Model, op: OperatorInfo, index: int, elements: int) -> None:
    """A MUL's per-channel operand or an ADD's addend: a runtime int8 tensor of that many
    elements in the arena, not the stage output."""
    where = f"PATCH_EXEC: input {index}"
    if op.inputs[index] < 0:
        raise UnsupportedModelError(f"{where} is omitted but a layer reads it")
    if op.inputs[index] == op.outputs[0]:
        raise UnsupportedModelError(f"{where} is the operator's output")
    t = model.tensors[op.inputs[index]]
    if t.dtype != "int8":
        raise UnsupportedModelError(f"{where} is {t.dtype}; the options need int8")
    if t.numel != elements:
        raise UnsupportedModelError(f"{where} has {t.numel} elements; the options need "
                                    f"{elements}")
    if _inline_data(model, op.inputs[index]) is not None or t.is_variable:
        raise UnsupportedModelError(f"{where} is not planned in the arena: a MUL's "
                                    "per-channel input or an ADD's addend is a runtime tensor")


def _check_activation(o: pf.PatchOptions, what: str, dtype: str,
                      shape: tuple[int, ...]) -> None:
    """Output 0: int8 [1, H, W, C] of the options' last tensor. (Input 0 is checked as the
    array run_patch_exec receives, which the split path shapes as the model's tensor.)"""
    if dtype != "int8":
        raise UnsupportedModelError(f"PATCH_EXEC: {what} is {dtype}, not int8")
    t = o.output
    expect = (1, t.height, t.width, t.channels)
    if tuple(shape) != expect:
        raise UnsupportedModelError(f"PATCH_EXEC: {what} has shape {list(shape)}; the options "
                                    f"say {list(expect)}, i.e. [1, H, W, C]")


def _inline_data(model: Model, tensor: int) -> bytes | None:
    """The bytes of a tensor's buffer `data` vector, None when empty: what TFLM runs a
    constant from (it ignores the offset/size of buffers stored after the flatbuffer)."""
    buf = model.obj.buffers[model.tensors[tensor].buffer]
    if buf.data is None or len(buf.data) == 0:
        return None
    return bytes(np.asarray(buf.data, dtype=np.uint8))


def _check_constant(model: Model, op: OperatorInfo, index: int, dtype: str,
                    elements: int, packed: bool = False) -> None:
    """As the glue: exactly `elements` elements, at least that many when packed."""
    if op.inputs[index] < 0:
        raise UnsupportedModelError(f"PATCH_EXEC: input {index} is omitted but a layer reads "
                                    "it")
    t = model.tensors[op.inputs[index]]
    where = f"PATCH_EXEC: input {index}"
    if t.dtype != dtype:
        raise UnsupportedModelError(f"{where} is {t.dtype}; the options need {dtype}")
    if min(t.shape, default=1) < 0 or t.numel > pf.MAX_TENSOR_BYTES:
        raise UnsupportedModelError(f"{where} has a negative dimension or more than 2^31 - 1 "
                                    "elements")
    if packed and t.numel < elements:
        raise UnsupportedModelError(f"{where} has {t.numel} elements; the options need at "
                                    f"least {elements}")
    if not packed and t.numel != elements:
        raise UnsupportedModelError(f"{where} has {t.numel} elements; the options need "
                                    f"{elements}")
    data = _inline_data(model, op.inputs[index])
    if data is None:
        raise UnsupportedModelError(f"{where} is not a constant tensor (its data must be in "
                                    "the model)")
    if t.is_variable:
        raise UnsupportedModelError(f"{where} is a variable tensor (TFLM runs it from a copy "
                                    "in the arena)")
    nbytes = t.numel * (1 if dtype == "int8" else 4)
    if len(data) != nbytes:
        raise UnsupportedModelError(f"{where} has a {len(data)}-byte buffer; its shape needs "
                                    f"{nbytes}")


def _constants(model: Model, op: OperatorInfo, o: pf.PatchOptions, ly: pf.Layer,
               k: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    at = ly.p[4:8] if o.packed else (0, 0, 0, 0)  # element offsets (version 3)

    def get(idx: int, dtype: str, what: str, which: int, count: int) -> np.ndarray:
        t = model.tensors[op.inputs[idx]]
        if not t.is_constant or t.dtype != dtype:
            raise UnsupportedModelError(f"PATCH_EXEC layer {k}: {what} (input {idx}) is not a "
                                        f"constant {dtype} tensor")
        flat = model.constant(op.inputs[idx]).reshape(-1)
        return flat[at[which]:at[which] + count] if o.packed else flat

    dst = o.tensors[k + 1]
    expect = pf.constant_uses(o, k)[0][2]
    w = get(ly.weights, "int8", "weights", 0, math.prod(expect))
    if w.size != math.prod(expect):
        raise UnsupportedModelError(f"PATCH_EXEC layer {k}: weights shape {w.shape}, "
                                    f"expected {expect}")
    # like the kernel: the data in the table's layout, whatever dims the tensor declares
    w = w.reshape(expect)
    c = dst.channels
    b = get(ly.bias, "int32", "bias", 1, c) if ly.bias != pf.NONE else None
    mult = get(ly.multipliers, "int32", "multipliers", 2, c)
    shift = get(ly.shifts, "int32", "shifts", 3, c)
    checks: tuple[tuple[np.ndarray | None, str], ...] = (
        (b, "bias"), (mult, "multipliers"), (shift, "shifts"))
    for arr, what in checks:
        if arr is not None and arr.size != dst.channels:
            raise UnsupportedModelError(f"PATCH_EXEC layer {k}: {what} has {arr.size} values "
                                        f"for {dst.channels} channels")
    if (mult < 0).any() or (shift < -31).any() or (shift > 30).any():
        raise UnsupportedModelError(f"PATCH_EXEC layer {k}: multiplier/shift out of range")
    return w, b, mult, shift


def _crop(view: _View, rows: pf.Range, cols: pf.Range, what: str) -> np.ndarray:
    h, w = view.data.shape[0], view.data.shape[1]
    y0, y1 = rows[0] - view.r0, rows[1] - view.r0
    x0, x1 = cols[0] - view.c0, cols[1] - view.c0
    if not (0 <= y0 <= y1 <= h and 0 <= x0 <= x1 <= w):
        raise HaloError(f"{what} reads rows [{rows[0]}, {rows[1]}) x columns [{cols[0]}, "
                        f"{cols[1]}) but holds rows [{view.r0}, {view.r0 + h}) x columns "
                        f"[{view.c0}, {view.c0 + w})")
    return view.data[y0:y1, x0:x1, :]


def _window_input(ly: pf.Layer, view: _View, src: pf.StageTensor, out_r: pf.Range,
                  out_c: pf.Range, what: str) -> tuple[np.ndarray, int, int]:
    """The kept input the window reads for this output range, and the padding of its
    first output in that crop (TFLM's padding shifted to the crop's origin)."""
    need_r = pf.needed_range(ly, 0, out_r, src.height)
    need_c = pf.needed_range(ly, 1, out_c, src.width)
    if need_r is None or need_c is None:
        raise HaloError(f"{what}: the output range reads only padding")
    x = _crop(view, need_r, need_c, what)
    pad_top = need_r[0] - (out_r[0] * ly.stride[0] - ly.pad_top)
    pad_left = need_c[0] - (out_c[0] * ly.stride[1] - ly.pad_left)
    return x[np.newaxis], pad_top, pad_left


def _padding_only(ly: pf.Layer, oh: int, ow: int, channels: int, consts: Consts | None,
                  what: str) -> np.ndarray:
    """A window whose every tap is padding (a patch at a wide border): TFLM skips all
    taps, so a convolution gives its requantized bias and a max pool its activation
    clamp of -128; an average pool has nothing to divide by (TFLM's AveragePool fails)."""
    if ly.kind == pf.AVERAGE_POOL:
        raise HaloError(f"{what}: the output range reads only padding (TFLM's AveragePool "
                        "fails on an empty window)")
    if ly.kind == pf.MAX_POOL:
        return np.full((oh, ow, channels), np.clip(-128, ly.act_min, ly.act_max), dtype=np.int8)
    assert consts is not None
    _, b, mult, shift = consts
    acc = np.zeros((oh, ow, mult.size), dtype=np.int64)
    cp = ref_ops.ConvParams(ly.p[0], ly.p[1], tuple(int(v) for v in mult),
                            tuple(int(v) for v in shift), 1, 1, 1, 1, 0, 0, oh, ow,
                            ly.act_min, ly.act_max)
    return ref_ops._finish_conv(acc, b, cp)


def run_layer(ly: pf.Layer, k: int, o: pf.PatchOptions, views: dict[int, _View],
              out_r: pf.Range, out_c: pf.Range,
              consts: Consts | None) -> np.ndarray:
    """Layer k over output rows out_r x cols out_c: int8 [rows, cols, C]."""
    what = f"layer {k} ({ly.name})"
    src = o.tensors[ly.input0]
    oh, ow = out_r[1] - out_r[0], out_c[1] - out_c[0]
    if ly.kind == pf.LUT:
        assert consts is not None
        return ref_ops.lut(_crop(views[ly.input0], out_r, out_c, what), consts[0])
    if ly.kind == pf.CONCAT:
        return np.concatenate([_crop(views[t], out_r, out_c, what)
                               for t in (ly.input0, ly.input1)], axis=-1)
    if ly.kind == pf.MUL:
        assert consts is not None
        p = ly.p
        mp = ref_ops.MulParams(p[0], p[4], p[5], p[6], p[1], p[2], p[3])
        return ref_ops.mul(_crop(views[ly.input0], out_r, out_c, what), consts[0], mp)
    if ly.kind == pf.ADD:
        p = ly.p
        params = ref_ops.AddParams(p[0], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11],
                                   p[1], p[2], p[3])
        x1 = _crop(views[ly.input0], out_r, out_c, what)
        if ly.input1 == pf.NONE:  # the runtime addend, read in place
            assert consts is not None
            full = _View(consts[0].reshape(o.tensors[k + 1].height, o.tensors[k + 1].width,
                                           -1), 0, 0)
            x2 = _crop(full, out_r, out_c, what)
        else:
            x2 = _crop(views[ly.input1], out_r, out_c, what)
        return ref_ops.add(x1, x2, params)
    if ly.kind == pf.PAD:
        out = np.full((oh, ow, src.channels), ly.p[0], dtype=np.int8)
        need_r = pf.needed_range(ly, 0, out_r, src.height)
        need_c = pf.needed_range(ly, 1, out_c, src.width)
        if need_r is not None and need_c is not None:
            x = _crop(views[ly.input0], need_r, need_c, what)
            y0, x0 = need_r[0] + ly.pad_top - out_r[0], need_c[0] + ly.pad_left - out_c[0]
            out[y0:y0 + x.shape[0], x0:x0 + x.shape[1]] = x
        return out
    if pf.needed_range(ly, 0, out_r, src.height) is None or \
            pf.needed_range(ly, 1, out_c, src.width) is None:
        return _padding_only(ly, oh, ow, src.channels, consts, what)
    x, pad_top, pad_left = _window_input(ly, views[ly.input0], src, out_r, out_c, what)
    if ly.kind in pf.POOL_KINDS:
        pp = ref_ops.PoolParams(ly.kernel[0], ly.kernel[1], ly.stride[0], ly.stride[1],
                                pad_top, pad_left, oh, ow, ly.act_min, ly.act_max)
        fn = ref_ops.average_pool if ly.kind == pf.AVERAGE_POOL else ref_ops.max_pool
        return fn(x, pp)[0]
    assert consts is not None
    w, b, mult, shift = consts
    cp = ref_ops.ConvParams(ly.p[0], ly.p[1], tuple(int(v) for v in mult),
                            tuple(int(v) for v in shift), ly.stride[0], ly.stride[1],
                            ly.dilation[0], ly.dilation[1], pad_top, pad_left, oh, ow,
                            ly.act_min, ly.act_max)
    if ly.kind == pf.CONV:
        return ref_ops.conv2d(x, w, b, cp)[0]
    dp = ref_ops.DepthwiseConvParams(**{**cp.__dict__, "depth_multiplier":
                                        ly.depth_multiplier})
    return ref_ops.depthwise_conv2d(x, w, b, dp)[0]


def _channel(consts: Consts | None, kind: int, c: int) -> Consts:
    """The constants of output channel c alone (weights [Cout,..] or [1,KH,KW,Cout])."""
    assert consts is not None
    w, b, mult, shift = consts
    wc = w[c:c + 1] if kind == pf.CONV else w[..., c:c + 1]
    return wc, None if b is None else b[c:c + 1], mult[c:c + 1], shift[c:c + 1]


class _Patch:
    """One patch (i, j) of a PATCH_EXEC run: every stage tensor in its slot of the one
    scratch array (the output tensor in the operator's output)."""

    def __init__(self, o: pf.PatchOptions, scratch: np.ndarray, output: np.ndarray,
                 i: int, j: int):
        self.o, self.scratch, self.output, self.i, self.j = o, scratch, output, i, j
        self.views: dict[int, _View] = {}

    def ranges(self, t: int) -> tuple[pf.Range, pf.Range]:
        st = self.o.tensors[t]
        return st.rows[self.i], st.cols[self.j]

    def empty(self, t: int) -> bool:
        r, c = self.ranges(t)
        return r[1] <= r[0] or c[1] <= c[0]

    def dest(self, t: int, channels: int) -> np.ndarray:
        """Where tensor t of this patch goes: [rows, cols, channels]; also its view."""
        r, c = self.ranges(t)
        if t == len(self.o.tensors) - 1:
            return self.output[0, r[0]:r[1], c[0]:c[1], :]
        st = self.o.tensors[t]
        size = (r[1] - r[0]) * (c[1] - c[0]) * channels
        slot = self.scratch[st.slot_offset:st.slot_offset + size]
        slot = slot.reshape(r[1] - r[0], c[1] - c[0], channels)
        self.views[t] = _View(slot, r[0], c[0])
        return slot

    def _cache(self, t: int, cols: int) -> np.ndarray:
        st = self.o.tensors[t]
        r = st.rows[self.i]
        size = (r[1] - r[0]) * cols * st.channels
        return self.scratch[st.cache_offset:st.cache_offset + size].reshape(
            r[1] - r[0], cols, st.channels)

    def restore(self, t: int, slot: np.ndarray) -> None:
        """CACHE_COLS: the columns patch (i, j - 1) left in the cache, into the slot."""
        ov = self.o.tensors[t].overlap(self.j)
        if self.o.tensors[t].cached and ov > 0:
            slot[:, :ov, :] = self._cache(t, ov)

    def save(self, t: int, slot: np.ndarray) -> None:
        """CACHE_COLS: the columns patch (i, j + 1) shares with this one, into the cache."""
        st = self.o.tensors[t]
        if not st.cached or self.j + 1 >= len(st.cols):
            return
        ov = st.overlap(self.j + 1)
        if ov > 0:
            self._cache(t, ov)[...] = slot[:, slot.shape[1] - ov:, :]

    def computed(self, t: int) -> tuple[pf.Range, pf.Range, int]:
        """Rows, computed columns and their offset in the slot."""
        st = self.o.tensors[t]
        comp = st.computed_cols(self.j)
        return st.rows[self.i], comp, comp[0] - st.cols[self.j][0]


def _gather_nchw(patch: _Patch, x: np.ndarray) -> None:
    """INPUT_NCHW: tensor 0's range of this patch, from the [1, C, H, W] input into its
    slot as [rows][cols][C] (the folded TRANSPOSE)."""
    r, c = patch.ranges(0)
    patch.dest(0, patch.o.tensors[0].channels)[...] = \
        x[0, :, r[0]:r[1], c[0]:c[1]].transpose(1, 2, 0)


def _run_stream(patch: _Patch, k: int, consts: list[Consts | None]) -> None:
    """STREAM: layer k (CONV_2D) and k + 1 (depthwise) channel by channel, tensor k + 1
    holding one channel in its slot."""
    o = patch.o
    conv, dw = o.layers[k], o.layers[k + 1]
    out = patch.dest(k + 2, o.tensors[k + 2].channels)
    patch.restore(k + 2, out)
    mid_r, mid_c = patch.ranges(k + 1)
    out_r, out_c, at = patch.computed(k + 2)
    # nothing new to compute when the cache holds every column of this patch
    for ch in range(o.tensors[k + 1].channels if out_c[1] > out_c[0] else 0):
        one = run_layer(conv, k, o, patch.views, mid_r, mid_c, _channel(consts[k], pf.CONV, ch))
        patch.dest(k + 1, 1)[...] = one
        out[:, at:at + out_c[1] - out_c[0], ch] = run_layer(
            dw, k + 1, o, patch.views, out_r, out_c,
            _channel(consts[k + 1], pf.DEPTHWISE, ch))[:, :, 0]
    patch.save(k + 2, out)


def _run_one(patch: _Patch, k: int, consts: list[Consts | None]) -> None:
    """Layer k over this patch's computed range of its output (the whole range unless
    the output has a cache)."""
    o = patch.o
    out = patch.dest(k + 1, o.tensors[k + 1].channels)
    patch.restore(k + 1, out)
    r, c, at = patch.computed(k + 1)
    if c[1] > c[0]:
        out[:, at:at + c[1] - c[0], :] = run_layer(o.layers[k], k, o, patch.views, r, c,
                                                   consts[k])
    patch.save(k + 1, out)


def _side_input(model: Model, op: OperatorInfo, o: pf.PatchOptions, k: int,
                side: Mapping[int, np.ndarray]) -> Consts:
    """A MUL layer's per-channel operand (C int8 values) or an ADD's runtime addend
    (H x W x C) from `side`, keyed by model tensor (the split path's values), as the
    weights of its Consts."""
    ly = o.layers[k]
    tensor = op.inputs[ly.weights]
    if tensor not in side:
        raise UnsupportedModelError(f"PATCH_EXEC layer {k} ({ly.name}): no value for its "
                                    f"runtime input (tensor {tensor})")
    s = np.asarray(side[tensor]).reshape(-1)
    need = math.prod(pf.constant_uses(o, k)[0][2])
    if s.dtype != np.int8 or s.size != need:
        raise UnsupportedModelError(f"PATCH_EXEC layer {k} ({ly.name}): runtime input is "
                                    f"{s.dtype} x {s.size}, the options need int8 x {need}")
    empty = np.zeros(0, dtype=np.int32)
    return s, None, empty, empty


def _table(model: Model, op: OperatorInfo, o: pf.PatchOptions, k: int) -> Consts:
    """A LUT layer's 256-entry int8 table (its slice of the input with PACKED), as the
    weights of its Consts."""
    index, _, _, at = pf.constant_slices(o, k)[0]
    t = model.tensors[op.inputs[index]]
    if not t.is_constant or t.dtype != "int8":
        raise UnsupportedModelError(f"PATCH_EXEC layer {k} (LUT): the table (input {index}) "
                                    "is not a constant int8 tensor")
    table = model.constant(op.inputs[index]).reshape(-1)[at:at + pf.LUT_ENTRIES]
    if table.size != pf.LUT_ENTRIES:
        raise UnsupportedModelError(f"PATCH_EXEC layer {k} (LUT): the table has {table.size} "
                                    f"entries, not {pf.LUT_ENTRIES}")
    empty = np.zeros(0, dtype=np.int32)
    return table, None, empty, empty


def run_patch_exec(model: Model, op: OperatorInfo, stage_input: np.ndarray,
                   side: Mapping[int, np.ndarray] | None = None) -> np.ndarray:
    """Run one PATCH_EXEC operator of `model` on its input activation ([1, H, W, C], or
    [1, C, H, W] with INPUT_NCHW). `side`: the values of the runtime tensors its MUL
    layers read (squeeze-and-excitation scales), by model tensor index."""
    o = pf.decode(op.custom_options or b"")
    if model.obj is not None:  # a model read from a file (not a test's array model)
        check_operator_tensors(model, op, o)
    elif len(op.inputs) != o.num_inputs or len(op.outputs) != 1:
        raise UnsupportedModelError(f"PATCH_EXEC operator {op.index}: {len(op.inputs)} inputs, "
                                    f"the options say {o.num_inputs}")
    first, out_t = o.tensors[0], o.output
    x = np.asarray(stage_input)
    hwc = (first.height, first.width, first.channels)
    expect = (1, hwc[2], hwc[0], hwc[1]) if o.input_nchw else (1, *hwc)
    if x.dtype != np.int8 or x.shape != expect:
        raise UnsupportedModelError(f"PATCH_EXEC operator {op.index}: input {x.dtype} "
                                    f"{x.shape}, the options say int8 {expect}")
    consts = [(_constants(model, op, o, ly, k) if ly.kind in pf.CONV_KINDS else
               _side_input(model, op, o, k, side or {})
               if ly.kind in (pf.MUL, pf.ADD) and ly.weights != pf.NONE else
               _table(model, op, o, k) if ly.kind == pf.LUT else None)
              for k, ly in enumerate(o.layers)]
    scratch = np.zeros(o.scratch_bytes, dtype=np.int8)
    output = np.zeros((1, out_t.height, out_t.width, out_t.channels), dtype=np.int8)
    n, m = o.grid
    for i in range(n):
        for j in range(m):
            patch = _Patch(o, scratch, output, i, j)
            if o.input_nchw:
                _gather_nchw(patch, x)
            else:
                r, c = first.rows[i], first.cols[j]
                patch.views[0] = _View(x[0, r[0]:r[1], c[0]:c[1], :], r[0], c[0])
            k = 0
            while k < len(o.layers):
                ly = o.layers[k]
                if ly.stream:
                    if not patch.empty(k + 2):
                        _run_stream(patch, k, consts)
                    k += 2
                    continue
                if not patch.empty(k + 1):
                    _run_one(patch, k, consts)
                k += 1
    return output
