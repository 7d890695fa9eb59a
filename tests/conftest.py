"""Shared fixtures: the real models of ../shared/models and small models made with TensorFlow.

Test and benchmark tooling (the sanitizer and fuzz harnesses, the Cortex-M4 and Arduino
builds on QEMU, the TFLM tensor trace) lives in tools/ as plain modules, outside the runtime
package; this file puts tools/ on sys.path, so tests import them by name (`import native_fuzz`)."""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from tflm_patch.zoo import full_int8, zoo_dir

TOOLS = Path(__file__).resolve().parents[1] / "tools"
if str(TOOLS) not in sys.path:
    sys.path.append(str(TOOLS))

SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"
SHARED_NAMES = (
    "person_detect",
    "mobilenet_v2_int8_224_nchw",
    "micro_speech_quantized",
    "hello_world_int8",
)


def shared_model_path(name: str) -> Path:
    """Path of a model of ../shared/models; skips the test with the reason when absent."""
    path = SHARED_MODELS / f"{name}.tflite"
    if not path.exists():
        pytest.skip(f"../shared/models not found ({path} is missing): real-model test skipped")
    return path


def shared_file(name: str) -> Path:
    path = SHARED_MODELS / name
    if not path.exists():
        pytest.skip(f"../shared/models not found ({path} is missing): real-model test skipped")
    return path


def _tiny_keras_model():
    import tensorflow as tf

    tf.keras.utils.set_random_seed(7)
    inp = tf.keras.Input((16, 16, 3), batch_size=1)
    x = tf.keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    x = tf.keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    out = tf.keras.layers.Dense(4)(x)
    return tf.keras.Model(inp, out)


def _versions() -> str:
    found = []
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "numpy"):
        try:
            found.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return " ".join(found)


def _cached_model(make: Callable[[], bytes]) -> bytes:
    """`make()` (a seeded TensorFlow conversion), cached like the zoo's models: keyed by the
    code that makes it and the TensorFlow, Keras and NumPy versions, so that a test session
    imports TensorFlow only when the model changed."""
    code = "".join(inspect.getsource(f) for f in (make, _tiny_keras_model, full_int8))
    key = hashlib.sha256(f"{code}\0{_versions()}".encode()).hexdigest()[:24]
    path = zoo_dir() / "test_fixtures" / f"{make.__name__}-{key}.tflite"
    if path.is_file():
        return path.read_bytes()
    data = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # atomic: a concurrent session never reads a partial file
    return data


def _make_float_model() -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(_tiny_keras_model())
    return bytes(conv.convert())


@pytest.fixture(scope="session")
def float_model_bytes() -> bytes:
    """A small float32 .tflite (not quantized): tools must refuse it."""
    return _cached_model(_make_float_model)


@pytest.fixture(scope="session")
def tiny_int8_bytes() -> bytes:
    """A small full-int8 .tflite made here (seeded), for tests that need no ../shared."""
    return _cached_model(_make_tiny_int8_model)


def _make_tiny_int8_model() -> bytes:
    import tensorflow as tf

    model = _tiny_keras_model()
    rng = np.random.default_rng(7)

    def representative():
        for _ in range(8):
            yield [rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)]

    return full_int8(tf.lite.TFLiteConverter.from_keras_model(model), representative)


@pytest.hookimpl(tryfirst=True)  # before -m "not slow" deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`first_case_quick`: every case but the first of the test function is `slow`, so
    the quick subset runs one case of each such family and the whole suite all of them."""
    seen: set[str] = set()
    for item in items:
        if item.get_closest_marker("first_case_quick") is None:
            continue
        function = item.nodeid.split("[", 1)[0]
        if function in seen:
            item.add_marker(pytest.mark.slow)
        seen.add(function)
