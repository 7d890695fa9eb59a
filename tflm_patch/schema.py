"""The TFLite flatbuffer schema module.

TensorFlow ships the generated Python code of the .tflite schema as
``tensorflow/lite/python/schema_py_generated.py``; that file depends only on the
``flatbuffers`` package. Importing it through ``tensorflow`` costs seconds (the
whole framework initialises), so it is loaded here as a standalone module from its
file. Its public API (``Model``, ``ModelT``, ``BuiltinOperator`` ...) has been
stable for years, unlike the tflite-micro wheel's internal copy.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from types import ModuleType

from tflm_patch.errors import TflmPatchError

_SCHEMA_RELPATH = os.path.join("lite", "python", "schema_py_generated.py")


@cache
def schema() -> ModuleType:
    """Return the TFLite schema module (cached)."""
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        raise TflmPatchError(
            "the TFLite schema comes from TensorFlow: install tensorflow-cpu (pip install -e .)"
        )
    for location in spec.submodule_search_locations:
        path = os.path.join(location, _SCHEMA_RELPATH)
        if os.path.exists(path):
            file_spec = importlib.util.spec_from_file_location("_tflm_patch_tflite_schema", path)
            assert file_spec is not None and file_spec.loader is not None
            module = importlib.util.module_from_spec(file_spec)
            file_spec.loader.exec_module(module)
            return module
    raise TflmPatchError(f"TensorFlow is installed but has no {_SCHEMA_RELPATH}")
