"""tflm-patch: MCUNetV2-style patch-based inference for TensorFlow Lite Micro."""

__version__ = "0.1.0"
