"""The head of TFLM's arena: greedy planner, scratch requests, and prediction vs measurement."""

from __future__ import annotations

import copy
import dataclasses
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SHARED_NAMES, shared_model_path

from tflm_patch.arena_head import (
    ARENA_ALIGNMENT,
    HeadPlan,
    align_up,
    greedy_plan,
    plan_head,
    planning_head_bytes,
    scratch_requests,
)
from tflm_patch.errors import UnsupportedModelError
from tflm_patch.model import Model, load_model, model_from_object, model_to_bytes
from tflm_patch.schema import schema
from tflm_patch.zoo import full_int8

# --------------------------------------------------------------------------- planner alone


def test_empty_plan_is_zero() -> None:
    assert greedy_plan([]) == (0, [])


def test_sizes_are_rounded_up_to_the_alignment() -> None:
    assert greedy_plan([(1, 0, 0)]) == (16, [0])
    assert greedy_plan([(17, 0, 0)]) == (32, [0])
    assert greedy_plan([(5, 0, 0)], alignment=4) == (8, [0])


def test_overlapping_buffers_add_up() -> None:
    # both alive at time 1; the larger (48) goes first at 0, the other after it
    assert greedy_plan([(32, 0, 1), (48, 1, 2)]) == (80, [48, 0])


def test_disjoint_buffers_share_memory() -> None:
    assert greedy_plan([(32, 0, 0), (48, 1, 1)]) == (48, [0, 0])


def test_lifetimes_are_inclusive() -> None:
    # [0,1] and [1,2] meet at time 1, so they cannot share
    assert greedy_plan([(16, 0, 1), (16, 1, 2)]) == (32, [16, 0])


def test_size_descending_order_matters() -> None:
    # In order of addition, 32@0 then 16@32 would push 48 (alive with 16) to 48: 96 bytes.
    # Largest first: 48@0; 32 (not alive with 48) @0; 16 (alive with both) @48: 64 bytes.
    assert greedy_plan([(32, 0, 1), (16, 1, 2), (48, 2, 3)]) == (64, [0, 48, 0])


def test_equal_sizes_are_placed_last_added_first() -> None:
    # Buffers 0: 32 [1,1], 1: 32 [3,3], 2: 16 [2,3], 3: 32 [0,2]. TFLM visits equal sizes
    # last-added first: 3@0, 1@0 (disjoint from 3), 0@32 (alive with 3), then 2 (alive
    # with 3 and 1, both at 0..32) @32: 64 bytes. First-added first would give
    # 0@0, 1@0, 3@32, 2@64: 80 bytes.
    assert greedy_plan([(32, 1, 1), (32, 3, 3), (16, 2, 3), (32, 0, 2)]) == (64, [32, 0, 32, 0])


def test_a_buffer_fills_the_first_gap_that_fits() -> None:
    # 64 [0,2]@0; 48 [2,4]: alive with 64 -> @64; 32 [4,4]: alive only with 48 -> gap
    # 0..64 fits -> @0; 16 [3,3]: alive only with 48@64 -> @0.
    total, offsets = greedy_plan([(64, 0, 2), (48, 2, 4), (32, 4, 4), (16, 3, 3)])
    assert (total, offsets) == (112, [0, 64, 0, 0])


def test_offline_offsets_are_kept_and_planned_around() -> None:
    # buffer 0 fixed at 64; buffer 1 (alive with it) fits in the gap below it
    assert greedy_plan([(32, 0, 1), (32, 0, 1)], offline_offsets=[64, -1]) == (96, [64, 0])
    # a gap too small for buffer 1 (48 > 32): it goes after buffer 0
    assert greedy_plan([(32, 0, 1), (48, 0, 1)], offline_offsets=[32, -1]) == (112, [32, 64])


def _assert_valid_plan(
    buffers: Sequence[tuple[int, int, int]], total: int, offsets: Sequence[int]
) -> None:
    sizes = [align_up(s) for s, _, _ in buffers]
    assert total == max((o + s for o, s in zip(offsets, sizes, strict=True)), default=0)
    for i, (_, first_i, last_i) in enumerate(buffers):
        assert offsets[i] % ARENA_ALIGNMENT == 0
        for j in range(i + 1, len(buffers)):
            _, first_j, last_j = buffers[j]
            if first_i > last_j or first_j > last_i:
                continue
            disjoint = offsets[i] + sizes[i] <= offsets[j] or offsets[j] + sizes[j] <= offsets[i]
            assert disjoint, f"buffers {i} and {j} are alive together and overlap"
    # never less than what is alive at once, never more than everything stacked
    times = {t for _, f, last in buffers for t in range(f, last + 1)}
    live = max(
        (
            sum(s for s, (_, f, last) in zip(sizes, buffers, strict=True) if f <= t <= last)
            for t in times
        ),
        default=0,
    )
    assert live <= total <= sum(sizes)


@pytest.mark.parametrize("seed", range(12))
def test_plan_never_overlaps_live_buffers(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(40):
        n = int(rng.integers(1, 30))
        buffers = []
        for _ in range(n):
            first = int(rng.integers(0, 12))
            last = first + int(rng.integers(0, 6))
            buffers.append((int(rng.integers(0, 400)), first, last))
        total, offsets = greedy_plan(buffers)
        _assert_valid_plan(buffers, total, offsets)


# --------------------------------------------------------------------------- TFLM measurement


def _report_by_subprocess(data: bytes, tmp: Path, what: str) -> int:
    path = tmp / "model.tflite"
    path.write_bytes(data)
    code = (
        "from tflite_micro.python.tflite_micro import runtime\n"
        f"it = runtime.Interpreter.from_bytes(open({str(path)!r}, 'rb').read(), "
        "arena_size=16_000_000)\n"
        "it.print_allocations()\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    found = re.search(rf"Arena allocation {what} (\d+) bytes", run.stdout + run.stderr)
    assert found, f"TFLM gave no allocation report:\n{(run.stdout + run.stderr)[-2000:]}"
    return int(found.group(1))


def measured_head(data: bytes, tmp: Path) -> int:
    """RecordingMicroAllocator's "Arena allocation head" for the model, from x86 TFLM."""
    try:
        from tflm_patch.tflm_runner import allocation_report
    except ImportError:
        return _report_by_subprocess(data, tmp, "head")
    return int(allocation_report(data).head)


def measured_tail(data: bytes, tmp: Path) -> int:
    """RecordingMicroAllocator's "Arena allocation tail" for the model, from x86 TFLM."""
    try:
        from tflm_patch.tflm_runner import allocation_report
    except ImportError:
        return _report_by_subprocess(data, tmp, "tail")
    return int(allocation_report(data).tail)


def _check_prediction(name: str, model: Model, tmp: Path) -> HeadPlan:
    plan = plan_head(model)
    measured = measured_head(model.raw, tmp)
    print(f"{name}: predicted head {plan.size} bytes, measured head {measured} bytes")
    assert plan.size == measured
    return plan


@pytest.mark.tflm
@pytest.mark.parametrize("name", SHARED_NAMES)
def test_head_matches_tflm_on_shared_models(name: str, tmp_path: Path) -> None:
    model = load_model(shared_model_path(name))
    _check_prediction(name, model, tmp_path)


def _zoo_names() -> list[str]:
    try:
        from tflm_patch import zoo
    except ImportError:
        return []
    for attr in ("ZOO_NAMES", "MODEL_NAMES", "NAMES"):
        names = getattr(zoo, attr, None)
        if names:
            return list(names)
    builders = getattr(zoo, "BUILDERS", None) or getattr(zoo, "ZOO", None)
    return list(builders) if builders else []


@pytest.mark.tflm
@pytest.mark.slow
@pytest.mark.parametrize("name", _zoo_names() or ["<every zoo model>"])
def test_head_matches_tflm_on_zoo_models(name: str, tmp_path: Path) -> None:
    try:
        from tflm_patch.zoo import ensure_zoo
    except ImportError:
        pytest.skip("tflm_patch.zoo is not there: zoo models not checked")
    paths = ensure_zoo()
    # without a static list of zoo names to parametrize on, one case checks them all
    names = sorted(paths) if name == "<every zoo model>" else [name]
    assert names, "the zoo is empty"
    for each in names:
        _check_prediction(each, load_model(paths[each]), tmp_path)


# --------------------------------------------------------------------------- scratch-op models


def _convert(fn: Any, shape: tuple[int, ...]) -> bytes:
    import tensorflow as tf

    rng = np.random.default_rng(3)

    def representative():
        for _ in range(8):
            yield [rng.uniform(-1, 1, shape).astype(np.float32)]

    concrete = fn.get_concrete_function(tf.TensorSpec(shape, tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], fn)
    return full_int8(converter, representative)


def _filter(shape: tuple[int, ...]) -> object:
    import tensorflow as tf

    return tf.constant(np.random.default_rng(5).normal(size=shape).astype(np.float32))


def _reduce_model() -> bytes:
    import tensorflow as tf

    w = _filter((3, 3, 3, 8))

    @tf.function
    def f(x):
        y = tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME"))
        mean = tf.reduce_mean(y, axis=[1, 2], keepdims=True)
        top = tf.reduce_max(y, axis=[1], keepdims=True)
        total = tf.reduce_sum(y, axis=[3], keepdims=True)
        return mean, top, total

    return _convert(f, (1, 10, 12, 3))


def _mirror_pad_model() -> bytes:
    import tensorflow as tf

    w = _filter((3, 3, 3, 8))

    @tf.function
    def f(x):
        reflect = tf.pad(x, [[0, 0], [1, 2], [2, 1], [0, 0]], mode="REFLECT")
        symmetric = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
        return tf.nn.conv2d(reflect, w, 1, "VALID"), symmetric

    return _convert(f, (1, 9, 9, 3))


def _add_n_model() -> bytes:
    import tensorflow as tf

    w = _filter((3, 3, 3, 8))

    @tf.function
    def f(x):
        y = tf.nn.conv2d(x, w, 1, "SAME")
        return tf.math.add_n([y, y * 0.5, tf.nn.relu(y)])

    return _convert(f, (1, 8, 8, 3))


def _keras_model(build: Callable[[object], object], shape: tuple[int, ...]) -> bytes:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(1)
    inp = tf.keras.Input(shape[1:], batch_size=shape[0])
    model = tf.keras.Model(inp, build(inp))

    @tf.function
    def f(x):
        return model(x)

    return _convert(f, shape)


def _transpose_conv_model() -> bytes:
    import tensorflow as tf

    def build(x):
        x = tf.keras.layers.Conv2DTranspose(6, 3, strides=2, padding="same")(x)
        return tf.keras.layers.Conv2DTranspose(5, 3, strides=1, padding="valid")(x)

    return _keras_model(build, (1, 7, 7, 4))


def _branchy_model() -> bytes:
    import tensorflow as tf

    layers = tf.keras.layers

    def build(inp):
        a = layers.Conv2D(8, 3, padding="same")(inp)
        b = layers.Conv2D(8, 1)(inp)
        c = layers.DepthwiseConv2D(3, padding="same")(inp)
        s = layers.Concatenate()([layers.Add()([a, b]), c, a])
        s = layers.Conv2D(8, 3, padding="same")(layers.MaxPool2D()(s))
        s = layers.Add()([s, layers.Conv2D(8, 3, padding="same")(s)])
        return [s, b]

    return _keras_model(build, (1, 12, 12, 8))


# name -> (builder, operator whose scratch requests the model exercises)
GENERATED: dict[str, tuple[Callable[[], bytes], str]] = {
    "reduce": (_reduce_model, "MEAN"),
    "mirror_pad": (_mirror_pad_model, "MIRROR_PAD"),
    "add_n": (_add_n_model, "ADD_N"),
    "transpose_conv": (_transpose_conv_model, "TRANSPOSE_CONV"),
    "branchy": (_branchy_model, "ADD"),
}

_generated_cache: dict[str, Model] = {}


def generated_model(name: str) -> Model:
    if name not in _generated_cache:
        pytest.importorskip("tensorflow", reason="TensorFlow makes the scratch-op test models")
        _generated_cache[name] = load_model(GENERATED[name][0]())
    return _generated_cache[name]


@pytest.mark.slow
@pytest.mark.tflm
@pytest.mark.parametrize("name", list(GENERATED))
def test_head_matches_tflm_on_scratch_op_models(name: str, tmp_path: Path) -> None:
    model = generated_model(name)
    assert GENERATED[name][1] in {op.name for op in model.operators}
    _check_prediction(name, model, tmp_path)


def test_mean_scratch_requests_of_mobilenet_v2() -> None:
    model = load_model(shared_model_path("mobilenet_v2_int8_224_nchw"))
    (mean,) = [op for op in model.operators if op.name == "MEAN"]
    assert model.tensors[mean.inputs[0]].shape == (1, 7, 7, 1280)
    assert model.tensors[mean.inputs[1]].shape == (2,)
    # int8 MEAN: int32 accumulator per output element (1280), int per input dim (4),
    # int per axis (2)
    assert scratch_requests(model, mean) == [5120, 16, 8]
    plan = plan_head(model)
    scratch = [b for b in plan.buffers if b.op is not None]
    assert [(b.op, b.size, b.first, b.last) for b in scratch] == [
        (mean.index, 5120, mean.index + 1, mean.index + 1),
        (mean.index, 16, mean.index + 1, mean.index + 1),
        (mean.index, 16, mean.index + 1, mean.index + 1),  # 8 bytes, 16-aligned
    ]


@pytest.mark.slow
def test_add_n_scratch_is_one_pointer_per_input_per_target() -> None:
    model = generated_model("add_n")
    (add_n,) = [op for op in model.operators if op.name == "ADD_N"]
    assert len(add_n.inputs) == 3
    assert scratch_requests(model, add_n, "x86_64") == [24]
    assert scratch_requests(model, add_n, "cortex_m") == [12]


def test_convolutions_of_person_detect_request_no_scratch() -> None:
    model = load_model(shared_model_path("person_detect"))
    assert all(scratch_requests(model, op) == [] for op in model.operators)


def test_person_detect_plan_covers_exactly_the_activations() -> None:
    model = load_model(shared_model_path("person_detect"))
    plan = plan_head(model)
    planned = {b.tensor for b in plan.buffers}
    activations = {t.index for t in model.tensors if not t.is_constant}
    assert planned == activations
    (inp,) = model.inputs
    (buf,) = [b for b in plan.buffers if b.tensor == inp]
    assert (buf.size, buf.first) == (96 * 96, 0)  # 96x96x1 int8, created before op 0
    triples = [(b.size, b.first, b.last) for b in plan.buffers]
    _assert_valid_plan(triples, plan.size, [b.offset for b in plan.buffers])


# --------------------------------------------------------------------------- offline plans


def _with_offline_plan(model: Model, offsets: Sequence[int]) -> Model:
    fb = schema()
    obj = copy.deepcopy(model.obj)
    words = np.array([1, 1, len(offsets), *offsets], dtype="<i4")
    buffer = fb.BufferT()
    buffer.data = list(words.view(np.uint8))
    obj.buffers.append(buffer)
    meta = fb.MetadataT()
    meta.name = "OfflineMemoryAllocation"
    meta.buffer = len(obj.buffers) - 1
    obj.metadata = [*(obj.metadata or []), meta]
    return load_model(model_to_bytes(obj))


@pytest.mark.tflm
def test_offline_plan_without_reuse_is_the_sum_of_activations(tmp_path: Path) -> None:
    model = load_model(shared_model_path("micro_speech_quantized"))
    offsets, end = [], 0
    for t in model.tensors:
        offsets.append(-1 if t.is_constant else end)
        end += 0 if t.is_constant else align_up(t.nbytes)
    plan = _check_prediction(
        "micro_speech, offline stacked", _with_offline_plan(model, offsets), tmp_path
    )
    assert plan.size == end


@pytest.mark.tflm
def test_offline_input_with_online_rest(tmp_path: Path) -> None:
    model = load_model(shared_model_path("micro_speech_quantized"))
    offsets = [-1] * len(model.tensors)
    offsets[model.inputs[0]] = 8000
    plan = _check_prediction(
        "micro_speech, offline input", _with_offline_plan(model, offsets), tmp_path
    )
    (buf,) = [b for b in plan.buffers if b.tensor == model.inputs[0]]
    assert buf.offset == 8000
    assert plan.size == 8000 + buf.size


# --------------------------------------------------------------------------- refusals


def test_unknown_operator_is_refused() -> None:
    model = load_model(shared_model_path("hello_world_int8"))
    custom = dataclasses.replace(model.operators[0], name="MY_CUSTOM_OP", builtin_code=None)
    with pytest.raises(UnsupportedModelError, match="MY_CUSTOM_OP"):
        scratch_requests(model, custom)


def test_patch_exec_without_valid_options_is_refused() -> None:
    from tflm_patch.patch_format import OptionsError

    model = load_model(shared_model_path("hello_world_int8"))
    custom = dataclasses.replace(model.operators[0], name="PATCH_EXEC", builtin_code=None,
                                 custom_options=b"TPEX")
    with pytest.raises(OptionsError, match="shorter than the 32-byte header"):
        scratch_requests(model, custom)


def test_multi_subgraph_model_is_refused() -> None:
    model = load_model(shared_model_path("hello_world_int8"))
    obj = copy.deepcopy(model.obj)
    obj.subgraphs.append(copy.deepcopy(obj.subgraphs[0]))
    with pytest.raises(UnsupportedModelError, match="2 subgraphs"):
        plan_head(model_from_object(obj, model.raw))


def test_unknown_target_is_refused() -> None:
    model = load_model(shared_model_path("hello_world_int8"))
    with pytest.raises(UnsupportedModelError, match="unknown target"):
        plan_head(model, target="riscv")


# --------------------------------------------------------------------------- planning-time need


def _allocates(path: Path, arena: int) -> bool:
    code = (
        "from tflite_micro.python.tflite_micro import runtime\n"
        f"runtime.Interpreter.from_bytes(open({str(path)!r}, 'rb').read(), arena_size={arena})\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def _smallest_arena(data: bytes, tmp: Path, lo: int, hi: int) -> int:
    path = tmp / "bisect.tflite"
    path.write_bytes(data)
    assert _allocates(path, hi) and not _allocates(path, lo)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _allocates(path, mid) else (mid, hi)
    return hi


def _with_unused_constants(model: Model, count: int) -> Model:
    fb = schema()
    obj = copy.deepcopy(model.obj)
    for i in range(count):
        buffer = fb.BufferT()
        buffer.data = [1, 2, 3, 4]
        obj.buffers.append(buffer)
        tensor = fb.TensorT()
        tensor.shape, tensor.type, tensor.name = [4], 9, f"unused{i}"
        tensor.buffer = len(obj.buffers) - 1
        obj.subgraphs[0].tensors.append(tensor)
    return load_model(model_to_bytes(obj))


@pytest.mark.tflm
@pytest.mark.slow
def test_planning_need_sets_the_smallest_arena_of_hello_world(tmp_path: Path) -> None:
    # hello_world's head is 32 bytes, but planning needs an AllocationInfo per tensor and
    # the planner's arrays: that, not head + tail, sets its smallest arena. Four unused
    # constant tensors add 4 AllocationInfos to the planning need and 4 TfLiteEvalTensors
    # to the tail: the smallest arena must grow by exactly the sum of both.
    base = load_model(shared_model_path("hello_world_int8"))
    grown = _with_unused_constants(base, 4)
    assert plan_head(grown).size == plan_head(base).size == 32
    smallest = [_smallest_arena(m.raw, tmp_path, 1400, 4000) for m in (base, grown)]
    tails = [measured_tail(m.raw, tmp_path) for m in (base, grown)]
    need = [planning_head_bytes(m) for m in (base, grown)]
    print(f"hello_world smallest arenas {smallest}, tails {tails}, planning needs {need}")
    assert smallest[0] > 32 + tails[0]
    assert smallest[1] - smallest[0] == (need[1] - need[0]) + (tails[1] - tails[0])
