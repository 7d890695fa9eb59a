"""Shared fixtures: the real models of ../shared/models and small models made with TensorFlow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tflm_patch.zoo import full_int8

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


@pytest.fixture(scope="session")
def float_model_bytes() -> bytes:
    """A small float32 .tflite (not quantized): tools must refuse it."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(_tiny_keras_model())
    return bytes(conv.convert())


@pytest.fixture(scope="session")
def tiny_int8_bytes() -> bytes:
    """A small full-int8 .tflite made here (seeded), for tests that need no ../shared."""
    import tensorflow as tf

    model = _tiny_keras_model()
    rng = np.random.default_rng(7)

    def representative():
        for _ in range(8):
            yield [rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)]

    return full_int8(tf.lite.TFLiteConverter.from_keras_model(model), representative)
