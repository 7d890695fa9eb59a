"""The CLI's model and size arguments, shared by every subcommand: `parse_size`,
`resolve_model_arg` (a path or zoo:NAME) and `load_checked` (verified and checked model)."""

from __future__ import annotations

import argparse
import re
import stat
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from tflm_patch.errors import InputFileError, ModelFormatError, UsageError
from tflm_patch.io_checks import shown

if TYPE_CHECKING:
    from tflm_patch.model import Model

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(b|k|kb|kib|m|mb|mib)?\s*$", re.IGNORECASE)
MAX_SIZE = (1 << 63) - 1
_UNITS = {None: 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1 << 20, "mib": 1 << 20,
          "mb": 1_000_000}


def parse_size(text: str) -> int:
    """'256KiB' -> 262144, '256k' -> 262144, '250kB' -> 250000, '262144' -> 262144."""
    m = _SIZE_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(
            f"cannot read size {text!r}: use bytes or a unit, e.g. 262144, 256KiB, 1MiB"
        )
    unit = m.group(2).lower() if m.group(2) else None
    value = Fraction(m.group(1)) * _UNITS[unit]  # exact: no float rounding or infinity
    if value <= 0 or value.denominator != 1 or value > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"size {text!r} must be a whole number of bytes in "
                                         f"1..{MAX_SIZE}")
    return int(value)


def human(n: int) -> str:
    return f"{n / 1024:,.1f} KiB" if n >= 1024 else f"{n} B"


MAX_MODEL_BYTES = 1 << 31  # a flatbuffer cannot address more


def resolve_model_arg(arg: str) -> Path:
    """A path, or zoo:NAME for a model of the project's zoo (built and cached on first use).
    A path must be a regular file of at most 2 GiB (a FIFO or device is never read)."""
    if arg.startswith("zoo:"):
        from tflm_patch.zoo import ZOO, ensure_model

        name = arg[4:]
        if name not in ZOO:
            raise UsageError(f"unknown zoo model {shown(name)!r}; choose from: {', '.join(ZOO)}")
        return ensure_model(name)
    path = Path(arg)
    try:
        st = path.stat()
    except OSError:
        return path  # load_model names what is wrong (no such file, ...)
    if path.is_dir():
        return path
    if not stat.S_ISREG(st.st_mode):
        raise InputFileError(f"{shown(path)}: not a regular file")
    if st.st_size > MAX_MODEL_BYTES:
        raise InputFileError(f"{shown(path)}: {st.st_size:,} bytes; a TFLite flatbuffer holds "
                             "at most 2 GiB")
    return path


def load_checked(arg: str | Path) -> tuple[Path, Model]:
    """The model of a MODEL argument (or of a path it resolved to), verified (`fbverify`)
    and checked (`model_check`)."""
    from tflm_patch.model import load_model
    from tflm_patch.model_check import check_model

    path = arg if isinstance(arg, Path) else resolve_model_arg(arg)
    try:
        model = load_model(path)
        check_model(model)
    except ModelFormatError as e:
        message = str(e)
        raise type(e)(message if shown(path) in message else f"{shown(path)}: {message}") \
            from None
    return path, model
