"""tflm-patch: MCUNetV2-style patch-based inference for TensorFlow Lite Micro.

The Python API (`tflm_patch.api`)::

    patched = tflm_patch.convert(tflite_bytes)           # bytes of the patched model
    result = tflm_patch.plan(tflite_bytes)               # the plan: arenas, MACs, stages
    comparison = tflm_patch.validate(original, patched)  # bit-for-bit, every output
    interp = tflm_patch.interpreter(patched)             # tflite-micro Interpreter + PATCH_EXEC

Errors are `TflmPatchError` subclasses with a one-line message.

The API loads on first use: importing the package stays light, as the x86 TFLM child
process and the zoo builder import it. `tflm_patch.validate` is the API function; the module
of the same name is `sys.modules["tflm_patch.validate"]` (import names from it with
``from tflm_patch.validate import ...``).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from tflm_patch.api import (
        PlanResult,
        Stage,
        convert,
        interpreter,
        plan,
        validate,
    )
    from tflm_patch.errors import TflmPatchError
    from tflm_patch.planner import PlanError
    from tflm_patch.tflm_build import TflmBuildUnavailable
    from tflm_patch.validate import Comparison

_LAZY = {
    **dict.fromkeys(("PlanResult", "Stage", "convert", "interpreter", "plan", "validate"),
                    "tflm_patch.api"),
    "Comparison": "tflm_patch.validate",
    "TflmPatchError": "tflm_patch.errors",
    "PlanError": "tflm_patch.planner",
    "TflmBuildUnavailable": "tflm_patch.tflm_build",
}

__all__ = [
    "Comparison",
    "PlanError",
    "PlanResult",
    "Stage",
    "TflmBuildUnavailable",
    "TflmPatchError",
    "__version__",
    "convert",
    "interpreter",
    "plan",
    "validate",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'tflm_patch' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    """Importing the submodule `tflm_patch.validate` must not replace the API function of
    that name on the package (the import system sets each submodule as an attribute)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
