"""The project's own test models: seeded Keras networks converted to full-int8 TFLite.

They let the project test everything without ../shared. Each model is built
reproducibly (fixed seeds, fixed representative dataset) and cached under
`zoo_dir()`; a stamp file holds a key (this file's source + TensorFlow's version +
the name), so a change of the generator rebuilds. TensorFlow is imported only when a
model is built.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SEED = 20211029  # MCUNetV2's arXiv date
REPRESENTATIVE_SAMPLES = 16


@dataclass(frozen=True)
class ZooSpec:
    name: str
    description: str
    input_shape: tuple[int, int, int]
    build: Callable[[Any], Any]  # (tf module) -> keras.Model


def _bn_relu(tf: Any, x: Any, relu6: bool = True) -> Any:
    x = tf.keras.layers.BatchNormalization()(x)
    return tf.keras.layers.ReLU(6.0 if relu6 else None)(x)


def _mbv2(tf: Any) -> Any:
    base = tf.keras.applications.MobileNetV2(
        input_shape=(144, 144, 3), alpha=0.35, include_top=False, weights=None
    )
    x = tf.keras.layers.GlobalAveragePooling2D()(base.output)
    out = tf.keras.layers.Dense(10)(x)
    return tf.keras.Model(base.input, out)


def _mbv1(tf: Any) -> Any:
    base = tf.keras.applications.MobileNet(
        input_shape=(96, 96, 3), alpha=0.25, include_top=False, weights=None
    )
    x = tf.keras.layers.GlobalAveragePooling2D()(base.output)
    out = tf.keras.layers.Dense(2)(x)
    return tf.keras.Model(base.input, out)


def _pools_dilated(tf: Any) -> Any:
    layers = tf.keras.layers
    inp = tf.keras.Input((64, 64, 3), batch_size=1)
    x = layers.Conv2D(16, 3, padding="valid", activation="relu")(inp)  # 62
    x = layers.MaxPooling2D(2)(x)  # 31
    x = layers.Conv2D(24, 3, padding="valid", dilation_rate=2, activation="relu")(x)  # 27
    x = layers.AveragePooling2D(3, strides=2, padding="valid")(x)  # 13
    x = layers.DepthwiseConv2D(3, padding="valid", activation="relu6")(x)  # 11
    x = layers.Conv2D(32, 1, activation="relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)  # 6
    x = layers.AveragePooling2D(2, strides=1, padding="same")(x)
    x = layers.Flatten()(x)
    out = layers.Dense(4)(x)
    return tf.keras.Model(inp, out)


def _inverted_residual(tf: Any, x: Any, expand: int, out_c: int, k: int, stride: int) -> Any:
    layers = tf.keras.layers
    in_c = x.shape[-1]
    y = layers.Conv2D(in_c * expand, 1, use_bias=False)(x)
    y = _bn_relu(tf, y)
    y = layers.DepthwiseConv2D(k, strides=stride, padding="same", use_bias=False)(y)
    y = _bn_relu(tf, y)
    y = layers.Conv2D(out_c, 1, use_bias=False)(y)
    y = layers.BatchNormalization()(y)
    if stride == 1 and in_c == out_c:
        y = layers.Add()([x, y])
    return y


def _mcunet(tf: Any) -> Any:
    layers = tf.keras.layers
    inp = tf.keras.Input((112, 112, 3))
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(inp)  # 56
    x = _bn_relu(tf, x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = _bn_relu(tf, x)
    x = layers.Conv2D(8, 1, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = _inverted_residual(tf, x, 4, 16, 7, 2)  # 28
    x = _inverted_residual(tf, x, 3, 16, 5, 1)
    x = _inverted_residual(tf, x, 4, 24, 5, 2)  # 14
    x = _inverted_residual(tf, x, 3, 24, 7, 1)
    x = _inverted_residual(tf, x, 5, 40, 3, 2)  # 7
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(5)(x)
    return tf.keras.Model(inp, out)


def _odd_stride2(tf: Any) -> Any:
    layers = tf.keras.layers
    inp = tf.keras.Input((97, 97, 3))
    x = layers.Conv2D(12, 3, strides=2, padding="same", use_bias=False)(inp)  # 49
    x = _bn_relu(tf, x)
    x = layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False)(x)  # 25
    x = _bn_relu(tf, x)
    x = layers.Conv2D(24, 1, use_bias=False)(x)
    x = _bn_relu(tf, x)
    x = layers.DepthwiseConv2D(5, strides=2, padding="same")(x)  # 13
    x = layers.ReLU()(x)
    x = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)  # 7
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(3)(x)
    return tf.keras.Model(inp, out)


ZOO: dict[str, ZooSpec] = {
    s.name: s
    for s in (
        ZooSpec("mbv2_035_144", "Keras MobileNetV2 alpha 0.35, 144x144x3: inverted "
                "residuals with ADD (the bundled default model)", (144, 144, 3), _mbv2),
        ZooSpec("mbv1_025_96", "Keras MobileNet (V1) alpha 0.25, 96x96x3: plain dw/pw chain",
                (96, 96, 3), _mbv1),
        ZooSpec("pools_dilated", "VALID convs, MAX_POOL_2D, AVERAGE_POOL_2D, a dilated (2) "
                "conv, 64x64x3", (64, 64, 3), _pools_dilated),
        ZooSpec("mcunet_dw57", "MCUNet-like inverted residuals with 5x5 and 7x7 depthwise "
                "kernels, 112x112x3", (112, 112, 3), _mcunet),
        ZooSpec("odd_stride2", "stride-2 SAME convs on odd sizes (97 -> 49 -> 25 -> 13 -> 7): "
                "TFLite's asymmetric padding", (97, 97, 3), _odd_stride2),
    )
}
ZOO_NAMES: tuple[str, ...] = tuple(ZOO)


def zoo_dir() -> Path:
    env = os.environ.get("TFLM_PATCH_ZOO_DIR")
    return Path(env) if env else Path.home() / ".cache" / "tflm_patch" / "zoo"


def _key(name: str) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    try:
        h.update(metadata.version("tensorflow-cpu").encode())
    except metadata.PackageNotFoundError:
        h.update(metadata.version("tensorflow").encode())
    h.update(name.encode())
    return h.hexdigest()


def _calibrate_batchnorm(tf: Any, model: Any, batch: np.ndarray, rng: np.random.Generator) -> None:
    """Data-dependent init: each BN normalizes what really reaches it (in order), with a
    random per-channel gain and offset, so that the signal neither dies nor explodes
    through a deep random network and the int8 outputs depend on the input."""
    for layer in model.layers:
        if layer.__class__.__name__ != "BatchNormalization":
            continue
        probe = tf.keras.Model(model.inputs, layer.input)
        x = np.asarray(probe(batch, training=False))
        axes = tuple(range(x.ndim - 1))
        mean, var = x.mean(axis=axes), x.var(axis=axes) + 1e-3
        gamma = rng.uniform(0.6, 1.4, mean.shape)
        beta = rng.uniform(-0.2, 0.2, mean.shape)
        layer.set_weights([a.astype(np.float32) for a in (gamma, beta, mean, var)])


def _sample_image(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A smooth random image in [-1, 1] (random walks along both axes plus noise)."""
    walk = np.cumsum(np.cumsum(rng.normal(0, 1, shape), axis=0), axis=1)
    walk = walk / (np.abs(walk).max() + 1e-6)
    img = 0.8 * walk + 0.2 * rng.uniform(-1, 1, shape)
    return img[None].astype(np.float32)


def build_model(name: str) -> bytes:
    """Build one zoo model (imports TensorFlow): a full-int8 .tflite as bytes."""
    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; choose from {', '.join(ZOO)}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    spec = ZOO[name]
    tf.keras.backend.clear_session()  # layer-name counters go into tensor names: reset them
    tf.keras.utils.set_random_seed(SEED)
    model = spec.build(tf)
    rng = np.random.default_rng(SEED)
    samples = [_sample_image(rng, spec.input_shape) for _ in range(REPRESENTATIVE_SAMPLES)]
    _calibrate_batchnorm(tf, model, np.concatenate(samples), rng)

    def representative() -> Iterable[list[np.ndarray]]:
        for s in samples:
            yield [s]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    with contextlib.redirect_stdout(io.StringIO()) as chatter:  # TF prints its SavedModel
        data = bytes(conv.convert())
    log.debug("TensorFlow converter output:\n%s", chatter.getvalue())
    return data


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def ensure_model(name: str, *, force: bool = False) -> Path:
    """Path of a zoo model, built (and cached) when missing or stale."""
    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; choose from {', '.join(ZOO)}")
    path = zoo_dir() / f"{name}.tflite"
    stamp = zoo_dir() / f"{name}.json"
    key = _key(name)
    if not force and path.exists() and stamp.exists():
        try:
            if json.loads(stamp.read_text()).get("key") == key:
                return path
        except (OSError, ValueError):
            pass
    log.info("building zoo model %s (TensorFlow, seeded)...", name)
    start = time.perf_counter()
    data = build_model(name)
    _atomic_write(path, data)
    seconds = time.perf_counter() - start
    _atomic_write(stamp, json.dumps({"key": key, "bytes": len(data),
                                     "sha256": hashlib.sha256(data).hexdigest(),
                                     "build_seconds": round(seconds, 1)}).encode())
    log.info("built %s: %d bytes in %.1f s", name, len(data), seconds)
    return path


def ensure_zoo(names: Iterable[str] | None = None, *, force: bool = False) -> dict[str, Path]:
    return {n: ensure_model(n, force=force) for n in (names or ZOO_NAMES)}
