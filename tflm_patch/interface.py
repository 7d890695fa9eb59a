"""Model pass: strip a float (or uint8) interface so that the model takes and gives int8.

TensorFlow's converter keeps a float interface unless asked otherwise: a QUANTIZE turns
each float32 input into the int8 tensor the network computes on, and a DEQUANTIZE turns
each int8 result into a float32 output. The float tensors then live in the TFLM arena
(a 224x224x3 float32 input alone is 588 KiB). `strip_float_interface` (model bytes ->
model bytes, what TensorFlow's `modify_model_interface` does) removes

- a leading QUANTIZE float32 -> int8 (or uint8 -> int8) of a model input, when the float
  tensor is read by that operator alone, and
- a trailing DEQUANTIZE int8 -> float32 (or QUANTIZE int8 -> uint8) of a model output,
  when nothing else reads the float tensor;

the int8 tensors become the model's inputs and outputs (signature entries follow them).
What was removed, with the int8 quantization a caller applies to its own data
(``q = round(x / scale) + zero_point``), is returned as `InterfaceTensor`s and stored in
the model's metadata ``tflm_patch.interface`` (JSON). A model with nothing to strip comes
back unchanged; an interface operator that cannot be removed stays, with the reason.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from typing import Any

from tflm_patch.errors import ModelFormatError
from tflm_patch.model import Model, load_model, model_to_bytes

log = logging.getLogger(__name__)

INTERFACE_METADATA = "tflm_patch.interface"
INTERFACE_TYPES = ("float32", "uint8")  # the interface types the pass removes


@dataclass(frozen=True)
class InterfaceTensor:
    """One removed input or output conversion.

    `scale` and `zero_point` are the int8 tensor's quantization (the model's new input or
    output): ``real = scale * (q - zero_point)``. For a uint8 interface, `interface_scale`
    and `interface_zero_point` are the removed uint8 tensor's own (None for float32)."""

    io: str  # "input" or "output"
    index: int  # position among the model's inputs (outputs)
    name: str  # the removed tensor's name
    shape: tuple[int, ...]
    dtype: str  # the removed tensor's type: "float32" or "uint8"
    scale: float
    zero_point: int
    interface_scale: float | None = None
    interface_zero_point: int | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of the removed tensor (what it took in the arena)."""
        n = 4 if self.dtype == "float32" else 1
        for d in self.shape:
            n *= max(d, 0)
        return n

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"io": self.io, "index": self.index, "name": self.name,
                               "shape": list(self.shape), "dtype": self.dtype,
                               "scale": self.scale, "zero_point": self.zero_point}
        if self.interface_scale is not None:
            doc["interface_scale"] = self.interface_scale
            doc["interface_zero_point"] = self.interface_zero_point
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> InterfaceTensor:
        try:
            return cls(str(doc["io"]), int(doc["index"]), str(doc["name"]),
                       tuple(int(d) for d in doc["shape"]), str(doc["dtype"]),
                       float(doc["scale"]), int(doc["zero_point"]),
                       _opt(float, doc.get("interface_scale")),
                       _opt(int, doc.get("interface_zero_point")))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFormatError(f"metadata {INTERFACE_METADATA!r}: bad entry ({e})") \
                from None


def _opt(kind: Any, value: Any) -> Any:
    return None if value is None else kind(value)


@dataclass(frozen=True)
class StripResult:
    """The model after the pass (the input bytes when nothing was removed), what was
    removed, and why each interface operator that stayed could not go."""

    model: bytes
    removed: tuple[InterfaceTensor, ...]
    kept: tuple[str, ...]
    removed_ops: tuple[int, ...] = ()  # operator indices of the input model that went

    @property
    def changed(self) -> bool:
        return bool(self.removed)

    def to_json(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.removed]


@dataclass(frozen=True)
class _Cut:
    """One interface operator to remove: `tensor` (the float/uint8 one) is replaced by
    `int8` in the graph inputs (outputs)."""

    op: int
    tensor: int
    int8: int
    info: InterfaceTensor


def _per_tensor(model: Model, t: int) -> tuple[float, int] | None:
    q = model.tensors[t].quantization
    if q is None or len(q.scale) != 1 or len(q.zero_point) > 1:
        return None
    return q.scale[0], q.zero_point[0] if q.zero_point else 0


def _info(model: Model, io: str, k: int, tensor: int, int8: int) -> InterfaceTensor | str:
    """The InterfaceTensor of a candidate cut, or why it cannot be made."""
    ext, q8 = model.tensors[tensor], _per_tensor(model, int8)
    if model.tensors[int8].dtype != "int8":
        return f"its other side is {model.tensors[int8].dtype}, not int8"
    if q8 is None:
        return "the int8 tensor is not quantized per tensor"
    qi = _per_tensor(model, tensor) if ext.dtype == "uint8" else None
    if ext.dtype == "uint8" and qi is None:
        return "the uint8 tensor is not quantized per tensor"
    return InterfaceTensor(io, k, ext.name, ext.shape, ext.dtype, q8[0], q8[1],
                           qi[0] if qi else None, qi[1] if qi else None)


def _input_cut(model: Model, k: int, taken: set[int]) -> _Cut | str | None:
    """The cut of input k: None when the input is not float32/uint8, a reason string when
    its conversion cannot be removed."""
    t = model.inputs[k]
    if model.tensors[t].dtype not in INTERFACE_TYPES:
        return None
    readers = model.consumers().get(t, [])
    if len(readers) != 1 or model.operators[readers[0]].name != "QUANTIZE":
        names = ", ".join(f"{model.operators[i].index} ({model.operators[i].name})"
                          for i in readers) or "none"
        return f"it is read by operators {names}, not by one QUANTIZE alone"
    op = model.operators[readers[0]]
    if t in model.outputs:
        return "it is also a model output"
    int8 = op.outputs[0]
    if int8 in model.inputs or int8 in model.outputs or int8 in taken:
        return f"the int8 tensor {int8} is already a model input or output"
    info = _info(model, "input", k, t, int8)
    return info if isinstance(info, str) else _Cut(op.index, t, int8, info)


def _output_cut(model: Model, k: int, taken: set[int]) -> _Cut | str | None:
    t = model.outputs[k]
    dtype = model.tensors[t].dtype
    if dtype not in INTERFACE_TYPES:
        return None
    want = "DEQUANTIZE" if dtype == "float32" else "QUANTIZE"
    op_index = model.producers().get(t)
    if op_index is None or model.operators[op_index].name != want:
        return f"it is not written by a {want}"
    if model.consumers().get(t) or t in model.inputs or model.outputs.count(t) > 1:
        return "other operators or outputs use it too"
    op = model.operators[op_index]
    int8 = op.inputs[0]
    if int8 in model.inputs or int8 in model.outputs or int8 in taken:
        return f"the int8 tensor {int8} is already a model input or output"
    info = _info(model, "output", k, t, int8)
    return info if isinstance(info, str) else _Cut(op.index, t, int8, info)


def find_cuts(model: Model) -> tuple[list[_Cut], list[str]]:
    """The interface operators the pass removes, and why the others stay."""
    cuts: list[_Cut] = []
    kept: list[str] = []
    for io, count, find in (("input", len(model.inputs), _input_cut),
                            ("output", len(model.outputs), _output_cut)):
        for k in range(count):
            cut = find(model, k, {c.int8 for c in cuts})
            if isinstance(cut, str):
                t = (model.inputs if io == "input" else model.outputs)[k]
                kept.append(f"{io} {k} ({model.tensors[t].dtype} tensor {t} "
                            f"'{model.tensors[t].name}') keeps its conversion: {cut}")
            elif cut is not None:
                cuts.append(cut)
    return cuts, kept


def strip_float_interface(model: bytes | Model) -> StripResult:
    """The model with its float/uint8 input and output conversions removed (see the
    module doc). Raises ModelFormatError for bytes that are not a model."""
    m = model if isinstance(model, Model) else load_model(model)
    cuts, kept = find_cuts(m)
    for reason in kept:
        log.info("int8 interface: %s", reason)
    if cuts and m.num_subgraphs != 1:
        kept.append(f"the model has {m.num_subgraphs} subgraphs; the interface is stripped "
                    "in single-subgraph models only")
        cuts = []
    if not cuts:
        log.info("int8 interface: nothing to strip; the model is unchanged")
        return StripResult(m.raw, (), tuple(kept))
    removed = tuple(c.info for c in cuts)
    data = _stripped_bytes(m, cuts, removed)
    log.info("int8 interface: removed %s", ", ".join(f"{r.io} {r.index} ({r.dtype})"
                                                   for r in removed))
    return StripResult(data, removed, tuple(kept), tuple(sorted(c.op for c in cuts)))


def _stripped_bytes(m: Model, cuts: list[_Cut], removed: tuple[InterfaceTensor, ...]) -> bytes:
    from tflm_patch.rewrite import prune, set_metadata

    obj = copy.deepcopy(m.obj)
    sg = obj.subgraphs[0]
    swap = {c.tensor: c.int8 for c in cuts}
    drop = {c.op for c in cuts}
    sg.inputs = [swap.get(int(t), int(t)) for t in m.inputs]
    sg.outputs = [swap.get(int(t), int(t)) for t in m.outputs]
    sg.operators = [op for i, op in enumerate(sg.operators) if i not in drop]
    for sig in obj.signatureDefs or []:
        for tmap in (*(sig.inputs or []), *(sig.outputs or [])):
            tmap.tensorIndex = swap.get(int(tmap.tensorIndex), int(tmap.tensorIndex))
    set_metadata(obj, INTERFACE_METADATA, _metadata_json(m, removed))
    prune(obj)
    data = model_to_bytes(obj)
    load_model(data)  # verified: a broken file is never returned
    return data


def _metadata_json(m: Model, removed: tuple[InterfaceTensor, ...]) -> bytes:
    """Entries of an earlier strip (none normally: it left int8 I/O) come first."""
    earlier = [r.to_json() for r in interface_metadata(m)]
    return json.dumps(earlier + [r.to_json() for r in removed], sort_keys=True).encode()


def interface_metadata(model: Model) -> tuple[InterfaceTensor, ...]:
    """The interface a strip removed from `model` (its metadata), () when none."""
    raw = model.metadata(INTERFACE_METADATA)
    if raw is None:
        return ()
    try:
        doc = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        raise ModelFormatError(f"metadata {INTERFACE_METADATA!r} is not JSON") from None
    if not isinstance(doc, list) or not all(isinstance(d, dict) for d in doc):
        raise ModelFormatError(f"metadata {INTERFACE_METADATA!r} is not a JSON list of "
                               "objects")
    return tuple(InterfaceTensor.from_json(d) for d in doc)


def interface_bytes(model: Model) -> int:
    """Bytes of the float/uint8 I/O tensors `strip_float_interface` would remove."""
    cuts, _ = find_cuts(model)
    return sum(c.info.nbytes for c in cuts)
