"""The project's own test models: seeded Keras networks converted to int8 TFLite (full int8,
int8 input and output; `float_io` keeps TFLiteConverter's default float interface).

They let the project test everything without ../shared. A model is built by
TensorFlow in a child process with a fixed environment (oneDNN off, one thread,
fixed hash seed), so that its bytes depend neither on the caller's state nor on
the number of cores: the same name gives a byte-identical .tflite on every build
with the same software. Models are cached under `zoo_dir()`, each `<name>.tflite`
with a `<name>.json` stamp whose key hashes this file's source, the TensorFlow,
Keras and NumPy versions and the name: a change of the generator rebuilds.
Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import numpy as np

from tflm_patch.errors import ZooError

log = logging.getLogger(__name__)

SEED = 20211029  # MCUNetV2's arXiv date
SMOOTH_SAMPLES = 16  # representative inputs like images: smooth random fields in [-1, 1]
NOISE_SAMPLES = 16  # and like the tests' random int8 inputs: uniform noise in [-1, 1]
BUILD_TIMEOUT = 1800.0  # seconds for one child process building models
TENSORFLOW_PIN = "tensorflow-cpu==2.21.0"

# The child's environment: TensorFlow's float kernels decide the batch-norm statistics
# and the calibration ranges, so they are pinned to the code paths that do not depend on
# the CPU's vector extensions (oneDNN dispatches at run time) or on the thread count.
_CHILD_ENV = {
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "PYTHONHASHSEED": "0",
    "CUDA_VISIBLE_DEVICES": "-1",
    "KERAS_BACKEND": "tensorflow",
}
_BUILT = "built"  # protocol line of the child: "built NAME SECONDS"


@dataclass(frozen=True)
class ZooSpec:
    name: str
    description: str  # one line, for --help and the README
    input_shape: tuple[int, int, int]  # H, W, C (batch 1)
    build: Callable[[Any], Any]  # (tensorflow module) -> keras.Model, float, untrained
    float_io: bool = False  # TFLiteConverter's default interface: float32 in and out


@dataclass(frozen=True)
class ZooStamp:
    """`<name>.json` beside `<name>.tflite`: what was built, from what, how fast."""

    name: str
    key: str
    bytes: int
    sha256: str
    build_seconds: float
    tensorflow: str


# ------------------------------------------------------------------------ the networks


def _bn_relu(tf: Any, x: Any, relu6: bool = True) -> Any:
    x = tf.keras.layers.BatchNormalization()(x)
    return tf.keras.layers.ReLU(6.0 if relu6 else None)(x)


def _mbv2(tf: Any) -> Any:
    base = tf.keras.applications.MobileNetV2(
        input_shape=(144, 144, 3), alpha=0.35, include_top=False, weights=None
    )
    x = tf.keras.layers.GlobalAveragePooling2D()(base.output)
    out = tf.keras.layers.Dense(10)(x)  # no softmax: see ZOO
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


def _nchw_input(tf: Any) -> Any:
    """A PyTorch-style export: NCHW input, transposed to NHWC by the first operator."""
    layers = tf.keras.layers
    inp = tf.keras.Input((3, 80, 80))
    x = layers.Permute((2, 3, 1))(inp)  # TFLite TRANSPOSE [0, 2, 3, 1]
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(x)  # 40
    x = _bn_relu(tf, x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = _bn_relu(tf, x)
    x = layers.Conv2D(8, 1, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = _inverted_residual(tf, x, 6, 16, 3, 2)  # 20
    x = _inverted_residual(tf, x, 6, 16, 3, 1)
    x = _inverted_residual(tf, x, 6, 24, 3, 2)  # 10
    x = _inverted_residual(tf, x, 6, 24, 3, 1)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(4)(x)
    return tf.keras.Model(inp, out)


def _float_io(tf: Any) -> Any:
    """A small MobileNetV2-like net (converted with the float32 interface kept)."""
    layers = tf.keras.layers
    inp = tf.keras.Input((64, 64, 3))
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(inp)  # 32
    x = _bn_relu(tf, x)
    x = _inverted_residual(tf, x, 1, 8, 3, 1)
    x = _inverted_residual(tf, x, 4, 16, 3, 2)  # 16
    x = _inverted_residual(tf, x, 4, 16, 3, 1)
    x = _inverted_residual(tf, x, 4, 24, 3, 2)  # 8
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(4)(x)
    return tf.keras.Model(inp, out)


def _upsample2(tf: Any, x: Any) -> Any:
    """x2 nearest upsampling that converts to one RESIZE_NEAREST_NEIGHBOR (Keras 3's
    UpSampling2D becomes a TILE/RESHAPE chain)."""
    h, w = x.shape[1:3]
    return tf.keras.layers.Resizing(2 * h, 2 * w, interpolation="nearest")(x)


def _det_head3(tf: Any) -> Any:
    """Backbone to strides 8/16/32, an FPN-like neck (x2 nearest upsampling + concatenation
    along channels), one 1x1 YOLO-like head per scale: three outputs."""
    layers = tf.keras.layers
    inp = tf.keras.Input((128, 160, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inp)  # 64x80
    x = _bn_relu(tf, x)
    x = _inverted_residual(tf, x, 3, 8, 3, 2)  # 32x40
    c3 = _inverted_residual(tf, x, 3, 16, 3, 2)  # 16x20, stride 8
    c4 = _inverted_residual(tf, c3, 3, 24, 3, 2)  # 8x10, stride 16
    c5 = _inverted_residual(tf, c4, 3, 32, 3, 2)  # 4x5, stride 32
    p5 = _bn_relu(tf, layers.Conv2D(16, 1, use_bias=False)(c5))
    up5 = _upsample2(tf, p5)
    p4 = _bn_relu(tf, layers.Conv2D(16, 1, use_bias=False)(layers.Concatenate()([up5, c4])))
    up4 = _upsample2(tf, p4)
    p3 = _bn_relu(tf, layers.Conv2D(16, 1, use_bias=False)(layers.Concatenate()([up4, c3])))
    heads = [layers.Conv2D(3 * 6, 1, name=f"head_s{s}")(p) for s, p in
             ((8, p3), (16, p4), (32, p5))]  # 3 anchors x (box 4, objectness, 1 class)
    return tf.keras.Model(inp, heads)


def _se(tf: Any, x: Any, squeeze: int) -> Any:
    """Squeeze-and-excitation: GAP -> 1x1 -> ReLU -> 1x1 -> ReLU6(x + 3) / 6 -> multiply."""
    layers = tf.keras.layers
    s = layers.GlobalAveragePooling2D(keepdims=True)(x)
    s = layers.Conv2D(squeeze, 1, activation="relu")(s)
    s = layers.Conv2D(x.shape[-1], 1)(s)
    s = layers.Activation("hard_sigmoid")(s)
    return layers.Multiply()([x, s])


def _se_block(tf: Any, x: Any, expand: int, out_c: int, k: int, stride: int) -> Any:
    layers = tf.keras.layers
    in_c = x.shape[-1]
    y = _bn_relu(tf, layers.Conv2D(in_c * expand, 1, use_bias=False)(x))
    y = layers.DepthwiseConv2D(k, strides=stride, padding="same", use_bias=False)(y)
    y = _se(tf, _bn_relu(tf, y), max(4, in_c * expand // 4))
    y = layers.BatchNormalization()(layers.Conv2D(out_c, 1, use_bias=False)(y))
    return layers.Add()([x, y]) if stride == 1 and in_c == out_c else y


def _se_blocks(tf: Any) -> Any:
    layers = tf.keras.layers
    inp = tf.keras.Input((96, 96, 3))
    x = _bn_relu(tf, layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(inp))
    x = _inverted_residual(tf, x, 1, 8, 3, 1)  # 48
    x = _inverted_residual(tf, x, 4, 16, 3, 2)  # 24
    x = _se_block(tf, x, 3, 16, 5, 1)
    x = _se_block(tf, x, 4, 24, 5, 2)  # 12
    x = _se_block(tf, x, 4, 24, 3, 1)
    x = layers.GlobalAveragePooling2D()(x)
    return tf.keras.Model(inp, layers.Dense(5)(x))


def _hswish_block(tf: Any, x: Any, expand: int, out_c: int, k: int, stride: int) -> Any:
    layers = tf.keras.layers
    in_c = x.shape[-1]
    y = layers.BatchNormalization()(layers.Conv2D(in_c * expand, 1, use_bias=False)(x))
    y = layers.Activation("hard_swish")(y)
    y = layers.DepthwiseConv2D(k, strides=stride, padding="same", use_bias=False)(y)
    y = layers.Activation("hard_swish")(layers.BatchNormalization()(y))
    y = layers.BatchNormalization()(layers.Conv2D(out_c, 1, use_bias=False)(y))
    return layers.Add()([x, y]) if stride == 1 and in_c == out_c else y


def _hard_swish(tf: Any) -> Any:
    """MobileNetV3-like: hard-swish x * ReLU6(x + 3) / 6 after the stem and in the blocks."""
    layers = tf.keras.layers
    inp = tf.keras.Input((80, 80, 3))
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(inp)  # 40
    x = layers.Activation("hard_swish")(layers.BatchNormalization()(x))
    x = _hswish_block(tf, x, 3, 16, 3, 1)
    x = _hswish_block(tf, x, 4, 24, 5, 2)  # 20
    x = _hswish_block(tf, x, 3, 24, 5, 1)
    x = _hswish_block(tf, x, 4, 32, 3, 2)  # 10
    x = layers.GlobalAveragePooling2D()(x)
    return tf.keras.Model(inp, layers.Dense(4)(x))


def _s2b_conv_layer(tf: Any) -> Any:
    """A Keras layer: a dilated convolution written with tf.nn.with_space_to_batch, its ReLU
    inside (so TensorFlow's converter keeps SPACE_TO_BATCH_ND / BATCH_TO_SPACE_ND)."""

    class SpaceToBatchConv(tf.keras.layers.Layer):
        def __init__(self, filters: int, kernel: int, rate: int, padding: str,
                     depthwise: bool = False) -> None:
            super().__init__()
            self.filters, self.kernel, self.rate = filters, kernel, rate
            self.padding, self.depthwise = padding, depthwise

        def build(self, shape: Any) -> None:
            c = shape[-1]
            k = (self.kernel, self.kernel, c, 1 if self.depthwise else self.filters)
            self.w = self.add_weight(shape=k, initializer="glorot_uniform")
            self.b = self.add_weight(shape=(c if self.depthwise else self.filters,),
                                     initializer="random_normal")

        def _conv(self, y: Any, _: Any, padding: str) -> Any:
            if self.depthwise:
                z = tf.nn.depthwise_conv2d(y, self.w, [1, 1, 1, 1], padding)
            else:
                z = tf.nn.conv2d(y, self.w, 1, padding)
            return tf.nn.relu(z + self.b)

        def call(self, x: Any) -> Any:
            return tf.nn.with_space_to_batch(x, [self.rate, self.rate], self.padding,
                                             self._conv, filter_shape=[self.kernel] * 2)

    return SpaceToBatchConv


def _dilated_s2b(tf: Any) -> Any:
    """Dilated convolutions as TensorFlow writes some: SPACE_TO_BATCH_ND -> conv ->
    BATCH_TO_SPACE_ND. Two VALID ones (foldable into a dilated conv) and a SAME depthwise
    one after a ReLU (zero point -128: TFLM pads it with 0, so it is not foldable)."""
    layers = tf.keras.layers
    s2b_conv = _s2b_conv_layer(tf)
    inp = tf.keras.Input((63, 63, 3), batch_size=1)  # else the d*d sub-images are batch 1
    x = _bn_relu(tf, layers.Conv2D(16, 3, use_bias=False)(inp))  # 61
    x = s2b_conv(16, 3, 2, "VALID")(x)  # 61 -> 57
    x = layers.Conv2D(24, 3, strides=2, activation="relu")(x)  # 28
    x = s2b_conv(24, 3, 3, "VALID", depthwise=True)(x)  # 28 -> 22
    x = s2b_conv(24, 3, 2, "SAME", depthwise=True)(x)  # 22
    x = layers.Conv2D(32, 1, strides=2, activation="relu")(x)  # 11
    x = layers.GlobalAveragePooling2D()(x)
    return tf.keras.Model(inp, layers.Dense(3)(x))


# No model ends in a softmax: after random weights TFLM aborts on its requantization
# (QuantizeMultiplierGreaterThanOne), and the zoo models must run in TFLM.
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
        ZooSpec("nchw_input", "NCHW input 3x80x80 (a leading TRANSPOSE, as PyTorch exports "
                "have) into inverted residuals with ADD", (3, 80, 80), _nchw_input),
        ZooSpec("float_io", "MobileNetV2-like, 64x64x3, TFLiteConverter's default float32 "
                "interface (input QUANTIZE, output DEQUANTIZE; int8 inside)", (64, 64, 3),
                _float_io, float_io=True),
        ZooSpec("det_head3", "detection net 128x160x3: backbone to strides 8/16/32, FPN-like "
                "neck (x2 nearest upsampling, concatenation), three outputs", (128, 160, 3),
                _det_head3),
        ZooSpec("se_blocks", "MCUNet-style, 96x96x3, squeeze-and-excitation blocks (MEAN, 1x1 "
                "convs, hard sigmoid, broadcast MUL)", (96, 96, 3), _se_blocks),
        ZooSpec("hard_swish", "MobileNetV3-like blocks with hard-swish activations, 80x80x3",
                (80, 80, 3), _hard_swish),
        ZooSpec("dilated_s2b", "dilated convs written as SPACE_TO_BATCH_ND / conv / "
                "BATCH_TO_SPACE_ND (VALID and SAME), 63x63x3", (63, 63, 3), _dilated_s2b),
    )
}
# The models every test runs over; TRAIT_NAMES, one per trait of the models users bring,
# are added to a test's list where the tool under test supports the trait.
TRAIT_NAMES: tuple[str, ...] = ("float_io", "det_head3", "se_blocks", "hard_swish",
                                "dilated_s2b")
ZOO_NAMES: tuple[str, ...] = tuple(n for n in ZOO if n not in TRAIT_NAMES)
ALL_NAMES: tuple[str, ...] = tuple(ZOO)


# ------------------------------------------------------------- building (child process)


def sample_image(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A smooth random field in [-1, 1], float64: random walks along the first two axes,
    plus 20% noise (the zoo's representative images, `tflm-patch export`'s test image)."""
    walk = rng.normal(0, 1, shape)
    for axis in range(min(2, walk.ndim)):
        walk = np.cumsum(walk, axis=axis)
    walk = walk / (np.abs(walk).max() + 1e-6)
    return 0.8 * walk + 0.2 * rng.uniform(-1, 1, shape)


def representative_inputs(name: str) -> np.ndarray:
    """The seeded float inputs (N, H, W, C) that set a model's batch norms and ranges."""
    shape = _spec(name).input_shape
    rng = np.random.default_rng(SEED)
    smooth = [sample_image(rng, shape).astype(np.float32) for _ in range(SMOOTH_SAMPLES)]
    noise = [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(NOISE_SAMPLES)]
    return np.stack(smooth + noise)


def _calibrate_batchnorm(tf: Any, model: Any, batch: np.ndarray, rng: np.random.Generator) -> None:
    """Data-dependent init in one forward pass: each BN normalizes what really reaches it
    (layers in graph order), with a random per-channel gain and offset, so that the signal
    neither dies nor explodes through a deep random network and the int8 outputs depend
    on the input."""
    values: dict[int, Any] = {id(model.inputs[0]): tf.constant(batch)}
    for layer in model.layers:
        if layer.__class__.__name__ == "InputLayer":
            continue
        src = layer.input
        x = [values[id(t)] for t in src] if isinstance(src, list) else values[id(src)]
        if layer.__class__.__name__ == "BatchNormalization":
            a = np.asarray(x, np.float64)
            axes = tuple(range(a.ndim - 1))
            mean, var = a.mean(axis=axes), a.var(axis=axes) + 1e-3
            gamma = rng.uniform(0.6, 1.4, mean.shape)
            beta = rng.uniform(-0.2, 0.2, mean.shape)
            layer.set_weights([v.astype(np.float32) for v in (gamma, beta, mean, var)])
        values[id(layer.output)] = layer(x, training=False)


def full_int8(converter: Any, representative: Callable[[], Iterable[list[np.ndarray]]]) -> bytes:
    """Convert with TFLiteConverter to full int8: int8 kernels only, int8 input and output,
    activation ranges calibrated on `representative` (a generator function of input lists)."""
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def float_interface(converter: Any,
                    representative: Callable[[], Iterable[list[np.ndarray]]]) -> bytes:
    """Int8 kernels inside, TFLiteConverter's default float32 input and output (a QUANTIZE
    after each input, a DEQUANTIZE before each output)."""
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return bytes(converter.convert())


def _convert(tf: Any, spec: ZooSpec) -> bytes:
    """The seeded Keras model of `spec`, full-int8 TFLite (BNs folded into the convs)."""
    tf.keras.backend.clear_session()  # layer-name counters go into tensor names: reset them
    tf.keras.utils.set_random_seed(SEED)
    model = spec.build(tf)
    samples = representative_inputs(spec.name)
    _calibrate_batchnorm(tf, model, samples, np.random.default_rng(SEED + 1))

    def representative() -> Iterator[list[np.ndarray]]:
        for s in samples:
            yield [s[None]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if spec.float_io:
        return float_interface(converter, representative)
    return full_int8(converter, representative)


def _child_main(argv: list[str]) -> int:
    """In the child: build each named model into OUT_DIR/<name>.tflite, report on stdout."""
    out_dir, names = Path(argv[0]), argv[1:]
    report = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # TensorFlow's own chatter (Python and C++) goes to stderr
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    for name in names:
        start = time.perf_counter()
        (out_dir / f"{name}.tflite").write_bytes(_convert(tf, ZOO[name]))
        print(_BUILT, name, f"{time.perf_counter() - start:.2f}", file=report, flush=True)
    return 0


def _child_command(out_dir: Path, names: list[str]) -> list[str]:
    code = "import sys; from tflm_patch.zoo import _child_main; sys.exit(_child_main(sys.argv[1:]))"
    return [sys.executable, "-c", code, str(out_dir), *names]


def _child_env() -> dict[str, str]:
    env = {**os.environ, **_CHILD_ENV}
    root = str(Path(__file__).resolve().parents[1])  # this tflm_patch, even if not installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _tensorflow_installed() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def _require_tensorflow(names: list[str]) -> None:
    if not _tensorflow_installed():
        raise ZooError(f"zoo model {names[0]} must be built and TensorFlow is not installed "
                       f"(pip install {TENSORFLOW_PIN})")


def _last_line(stream: IO[bytes]) -> str:
    stream.seek(0)
    text = stream.read().decode(errors="replace")
    log.debug("TensorFlow child output (tail):\n%s", "\n".join(text.splitlines()[-30:]))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _run_builder(names: list[str], out_dir: Path) -> Iterator[tuple[str, float]]:
    """Build `names` into `out_dir` in one TensorFlow child; yields (name, seconds) as each
    model is written. Raises ZooError naming the model that failed."""
    pending = list(names)
    timed_out = threading.Event()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(_child_command(out_dir, names), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=err, env=_child_env(), text=True)

        def kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(BUILD_TIMEOUT, kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                parts = line.split()
                if len(parts) == 3 and parts[0] == _BUILT and parts[1] in pending:
                    pending.remove(parts[1])
                    yield parts[1], float(parts[2])
            rc = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if pending:
            why = f"timed out after {BUILD_TIMEOUT:.0f} s" if timed_out.is_set() else f"exit {rc}"
            raise ZooError(f"building zoo model {pending[0]} failed ({why}): {_last_line(err)}")
        if rc != 0:  # every model was written and reported: only the exit went wrong
            log.warning("the zoo builder exited with %d after building: %s", rc, _last_line(err))


# ----------------------------------------------------------------------------- the cache


def zoo_dir() -> Path:
    """$TFLM_PATCH_ZOO_DIR, else ~/.cache/tflm_patch/zoo."""
    env = os.environ.get("TFLM_PATCH_ZOO_DIR")
    return Path(env) if env else Path.home() / ".cache" / "tflm_patch" / "zoo"


def _version(*dists: str) -> str:
    for dist in dists:
        with contextlib.suppress(metadata.PackageNotFoundError):
            return f"{dist}=={metadata.version(dist)}"
    return f"{dists[0]} absent"


def _tensorflow_version() -> str:
    return _version("tensorflow-cpu", "tensorflow", "tf-nightly", "tensorflow-intel")


def model_key(name: str) -> str:
    """sha256 of what a model's bytes depend on: this source, TF/Keras/NumPy, the name."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    for part in (_tensorflow_version(), _version("keras"), _version("numpy"), name):
        h.update(b"\0" + part.encode())
    return h.hexdigest()


def _spec(name: str) -> ZooSpec:
    try:
        return ZOO[name]
    except KeyError:
        raise ZooError(f"unknown zoo model {name!r}; choose from: {', '.join(ZOO)}") from None


def _read_stamp(path: Path) -> ZooStamp | None:
    try:
        return ZooStamp(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _intact(directory: Path, name: str) -> ZooStamp | None:
    """The stamp, if the model file is there with exactly the bytes the stamp names."""
    stamp = _read_stamp(directory / f"{name}.json")
    if stamp is None:
        return None
    try:
        data = (directory / f"{name}.tflite").read_bytes()
    except OSError:
        return None
    return stamp if hashlib.sha256(data).hexdigest() == stamp.sha256 else None


def _fresh(directory: Path, name: str) -> bool:
    stamp = _intact(directory, name)
    return stamp is not None and stamp.key == model_key(name)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One builder per cache folder at a time (other processes wait, then find it fresh)."""
    with open(directory / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process that builds zoo models in %s", directory)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_into(directory: Path, names: list[str]) -> None:
    _require_tensorflow(names)
    log.info("building zoo model%s %s with TensorFlow (seeded, in a child process)...",
             "s" if len(names) > 1 else "", ", ".join(names))
    work = Path(tempfile.mkdtemp(dir=directory, prefix=".build-"))
    try:
        for name, seconds in _run_builder(names, work):
            data = (work / f"{name}.tflite").read_bytes()
            os.replace(work / f"{name}.tflite", directory / f"{name}.tflite")
            stamp = ZooStamp(name, model_key(name), len(data), hashlib.sha256(data).hexdigest(),
                             round(seconds, 2), _tensorflow_version())
            _atomic_write(directory / f"{name}.json", json.dumps(asdict(stamp)).encode())
            log.info("built zoo model %s: %d bytes in %.1f s", name, len(data), seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _without_tensorflow(directory: Path, names: list[str]) -> list[str]:
    """Stale but intact models are used as they are when TensorFlow is missing to rebuild."""
    if _tensorflow_installed():
        return names
    kept = [n for n in names if _intact(directory, n) is not None]
    for name in kept:
        log.warning("zoo model %s was built by another generator or TensorFlow; TensorFlow is "
                    "not installed to rebuild it, so it is used as it is", name)
    return [n for n in names if n not in kept]


def ensure_zoo(
    names: Iterable[str] | None = None, *, force: bool = False, directory: Path | None = None
) -> dict[str, Path]:
    """Paths of zoo models (default: ZOO_NAMES; ALL_NAMES adds the trait models), building
    those missing or stale (or all, with `force`) in one TensorFlow child process.
    `directory` defaults to `zoo_dir()`."""
    wanted = list(names or ZOO_NAMES)
    for name in wanted:
        _spec(name)
    directory = Path(directory) if directory is not None else zoo_dir()
    directory.mkdir(parents=True, exist_ok=True)
    todo = [n for n in dict.fromkeys(wanted) if force or not _fresh(directory, n)]
    if todo:
        with _locked(directory):
            if not force:  # another process may have built them while we waited
                todo = _without_tensorflow(directory, [n for n in todo
                                                       if not _fresh(directory, n)])
            if todo:
                _build_into(directory, todo)
    return {n: directory / f"{n}.tflite" for n in wanted}


def ensure_model(name: str, *, force: bool = False, directory: Path | None = None) -> Path:
    """Path of one zoo model, built (and cached) when missing or stale."""
    return ensure_zoo([name], force=force, directory=directory)[name]


def read_stamp(name: str, directory: Path | None = None) -> ZooStamp | None:
    """The stamp of a cached model (size, sha256, build seconds), or None."""
    return _read_stamp((directory or zoo_dir()) / f"{_spec(name).name}.json")


def build_model(name: str) -> bytes:
    """Build one zoo model now (TensorFlow, in a child process), bypassing the cache."""
    _require_tensorflow([_spec(name).name])
    with tempfile.TemporaryDirectory(prefix="tflm_patch_zoo_") as work:
        for _ in _run_builder([name], Path(work)):
            pass
        return (Path(work) / f"{name}.tflite").read_bytes()
