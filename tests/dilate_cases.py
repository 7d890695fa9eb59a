"""Small seeded models whose dilated convolutions TensorFlow writes as SPACE_TO_BATCH_ND ->
convolution -> BATCH_TO_SPACE_ND (the activation between the convolution and
BATCH_TO_SPACE_ND keeps the converter from folding them itself), for tests/test_dilate.py.

`python tests/dilate_cases.py OUT_DIR` builds every case into OUT_DIR/<name>.tflite (one
TensorFlow process); importing this module does not import TensorFlow.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "conv", "dw", "crop" (S2B/B2S that are no dilated conv), "shared"
    kernel: int
    rate: tuple[int, int]
    padding: str  # "SAME" or "VALID"
    size: tuple[int, int]  # H, W of the input
    zero_point_0: bool  # calibrated so that the input zero point is 0
    folds: bool  # expected: one dilated convolution after the pass


CASES: tuple[Case, ...] = (
    Case("conv_k3_r2_same", "conv", 3, (2, 2), "SAME", (15, 15), True, True),
    Case("conv_k3_r2_valid", "conv", 3, (2, 2), "VALID", (15, 15), False, True),
    Case("conv_k5_r3_same", "conv", 5, (3, 3), "SAME", (17, 13), True, True),
    Case("conv_k5_r3_valid", "conv", 5, (3, 3), "VALID", (19, 17), False, True),
    Case("conv_k3_r2x3_same", "conv", 3, (2, 3), "SAME", (15, 16), True, True),
    Case("dw_k3_r3_same", "dw", 3, (3, 3), "SAME", (13, 13), True, True),
    Case("dw_k5_r2_valid", "dw", 5, (2, 2), "VALID", (15, 17), False, True),
    Case("dw_k3_r2_same_zp", "dw", 3, (2, 2), "SAME", (15, 15), False, False),
    Case("conv_k3_r2_same_zp", "conv", 3, (2, 2), "SAME", (15, 15), False, False),
    Case("crop_not_dilated", "crop", 3, (2, 2), "VALID", (15, 15), False, False),
    Case("shared_intermediate", "shared", 3, (2, 2), "VALID", (15, 15), False, False),
)
CHANNELS = 4


def _weights(case: Case, rng: np.random.Generator) -> tuple[Any, Any]:
    out = 1 if case.kind == "dw" else 6
    w = rng.normal(0, 0.3, (case.kernel, case.kernel, CHANNELS, out)).astype(np.float32)
    b = rng.normal(0, 0.2, (CHANNELS if case.kind == "dw" else out,)).astype(np.float32)
    return w, b


def _function(tf: Any, case: Case, rng: np.random.Generator) -> Any:
    w, b = _weights(case, rng)
    k = case.kernel

    def conv(y: Any, padding: str) -> Any:
        if case.kind == "dw":
            z = tf.nn.depthwise_conv2d(y, w, [1, 1, 1, 1], padding)
        else:
            z = tf.nn.conv2d(y, w, 1, padding)
        return tf.nn.relu(z + b)

    @tf.function(input_signature=[tf.TensorSpec((1, *case.size, CHANNELS), tf.float32)])
    def f(x: Any) -> Any:
        if case.kind == "crop":  # paddings (2, 3), crops 0: 16 outputs from 15, no conv
            y = tf.space_to_batch_nd(x, list(case.rate), [[2, 3], [2, 3]])
            return tf.batch_to_space(conv(y, "VALID"), list(case.rate), [[0, 0], [0, 0]])
        if case.kind == "shared":  # the convolution's output is also read by a MEAN
            y = tf.space_to_batch_nd(x, list(case.rate), [[0, 1], [0, 1]])
            z = conv(y, "VALID")
            return tf.batch_to_space(z, list(case.rate), [[0, 1], [0, 1]]), \
                tf.reduce_mean(z, axis=[1, 2])
        return tf.nn.with_space_to_batch(x, list(case.rate), case.padding,
                                          lambda y, _, p: conv(y, p), filter_shape=[k, k])

    return f


def _samples(case: Case, rng: np.random.Generator) -> list[np.ndarray]:
    shape = (1, *case.size, CHANNELS)
    samples = [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(8)]
    if case.zero_point_0:  # the range [-128/127, 1]: scale 1/127, zero point 0
        samples[0].flat[0], samples[0].flat[1] = -128 / 127, 1.0
    return samples


def build(tf: Any, case: Case) -> bytes:
    rng = np.random.default_rng(20211029)
    f = _function(tf, case, rng)
    samples = _samples(case, rng)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([s] for s in samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def main(argv: list[str]) -> int:
    import tensorflow as tf

    out = Path(argv[0])
    for case in CASES:
        (out / f"{case.name}.tflite").write_bytes(build(tf, case))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
