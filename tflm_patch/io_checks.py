"""Safe file input and output for the command line.

Outputs are checked before any work starts: an output must be a new path or an existing
regular file that is not one of the command's inputs (same inode), in a directory that
exists and takes a new file (probed by creating and removing one). Directories, FIFOs,
device nodes and sockets are refused, never replaced.

Inputs are read with limits: a `.npy` file's header is parsed before any data is read (no
object arrays, no shape asking for more bytes than the file holds), an image's size is
compared with what the model needs before its pixels are decoded (no decompression bomb).
"""

from __future__ import annotations

import logging
import math
import os
import stat
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tflm_patch.errors import InputFileError, OutputPathError

log = logging.getLogger(__name__)

PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
NPY_HEADER_LIMIT = 1 << 16  # bytes; numpy itself writes headers of a few hundred bytes


def shown(path: str | os.PathLike[str]) -> str:
    """A path as one printable line: undecodable bytes and control characters escaped."""
    raw = os.fspath(path)
    try:  # undecodable bytes of a file name (surrogate escapes) back to \\xff
        text = os.fsencode(raw).decode("utf-8", "backslashreplace")
    except UnicodeError:
        text = str(raw).encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _probe_directory(directory: Path, what: str) -> None:
    """Create and remove a file in `directory`: refuses read-only, virtual (/proc) and
    permission-denied places before any work is done."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tflm_patch_probe.", dir=directory)
    except OSError as e:
        raise OutputPathError(f"{what}: cannot create a file in {shown(directory)} "
                              f"({e.strerror or e})") from None
    os.close(fd)
    Path(tmp).unlink(missing_ok=True)


def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def check_output_file(path: str | os.PathLike[str], inputs: Sequence[Path] = (),
                      what: str = "output") -> Path:
    """`path` as a safe output file: a new path, or an existing regular file that is not
    one of `inputs`; its directory exists and takes a new file. OutputPathError if not."""
    out = Path(path)
    name = f"{what} {shown(out)}"
    try:
        st = out.lstat()
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputPathError(f"{name}: {e.strerror or e}") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise OutputPathError(f"{name}: is a symbolic link; give the file itself (a link "
                                  "would be replaced by a file)")
        if stat.S_ISDIR(st.st_mode):
            raise OutputPathError(f"{name}: is a directory; give a file name")
        if not stat.S_ISREG(st.st_mode):
            raise OutputPathError(f"{name}: exists and is not a regular file (a FIFO, device "
                                  "or socket is never replaced)")
        for src in inputs:
            try:
                if _same_file(st, src.stat()):
                    raise OutputPathError(f"{name}: is the input {shown(src)} itself; write "
                                          "to another file (the input is left as it is)")
            except OSError:
                continue
    parent = _parent(out)
    if not parent.is_dir():
        raise OutputPathError(f"{name}: the directory {shown(parent)} does not exist")
    _probe_directory(parent, name)
    return out


def check_plot_file(path: str | os.PathLike[str], inputs: Sequence[Path] = ()) -> Path:
    """A --plot path: a safe output file with an image suffix matplotlib writes."""
    out = Path(path)
    if out.suffix.lower() not in PLOT_SUFFIXES:
        raise OutputPathError(f"--plot {shown(out)}: the file name must end in "
                              f"{', '.join(PLOT_SUFFIXES)}")
    return check_output_file(out, inputs, "--plot")


def check_output_dir(path: str | os.PathLike[str], what: str = "output directory") -> Path:
    """An existing directory, or a new path in an existing directory (not created here)."""
    out = Path(path)
    name = f"{what} {shown(out)}"
    if out.is_dir():
        _probe_directory(out, name)
        return out
    if out.exists() or out.is_symlink():
        raise OutputPathError(f"{name}: exists and is not a directory")
    parent = _parent(out)
    if not parent.is_dir():
        raise OutputPathError(f"{name}: the parent directory {shown(parent)} does not exist")
    _probe_directory(parent, name)
    return out


def check_output_in_dir(directory: Path, names: Sequence[str], inputs: Sequence[Path]) -> None:
    """Every file to be written into `directory` is safe (directories, FIFOs and the
    inputs are refused)."""
    if directory.is_dir():
        for name in names:
            target = directory / name
            if target.exists() or target.is_symlink():
                check_output_file(target, inputs)


# ----------------------------------------------------------------------------- inputs


def _input_stat(path: Path) -> os.stat_result:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputFileError(f"{shown(path)}: no such file") from None
    except OSError as e:
        raise InputFileError(f"{shown(path)}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputFileError(f"{shown(path)}: not a regular file")
    return st


def read_npy(path: Path, max_values: int) -> np.ndarray:
    """A .npy array of at most `max_values` elements, checked from its header before the
    data is read: no pickled objects, no shape the file does not hold."""
    size = _input_stat(path).st_size
    try:
        with path.open("rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = {1: np.lib.format.read_array_header_1_0,
                           2: np.lib.format.read_array_header_2_0}.get(major)
            if read_header is None:
                raise InputFileError(f"{shown(path)}: .npy format version {major} is not "
                                     "supported")
            shape, fortran, dtype = read_header(f, max_header_size=NPY_HEADER_LIMIT)
            start = f.tell()
            if dtype.hasobject:
                raise InputFileError(f"{shown(path)}: the .npy holds Python objects; give a "
                                     "numeric int8 array")
            count = math.prod(shape)
            if count > max_values:
                raise InputFileError(f"{shown(path)}: the .npy holds {count:,} values; the "
                                     f"model input needs {max_values:,}")
            if size - start != count * dtype.itemsize:
                raise InputFileError(f"{shown(path)}: the .npy header says {shape} "
                                     f"{dtype} ({count * dtype.itemsize:,} bytes) but the file "
                                     f"holds {size - start:,} data bytes")
            data = np.fromfile(f, dtype=dtype, count=count)
    except InputFileError:
        raise
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as e:
        raise InputFileError(f"{shown(path)}: not a valid .npy file ({e})") from None
    return data.reshape(shape, order="F" if fortran else "C")


def read_image_bytes(path: Path, expected_values: int) -> np.ndarray:
    """An 8-bit image's pixel bytes (as int8), refused before decoding unless width x
    height x bands is exactly `expected_values`."""
    from PIL import Image, UnidentifiedImageError

    _input_stat(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            width, height = img.size
            bands = len(img.getbands())
            if width * height * bands != expected_values:
                raise InputFileError(f"{shown(path)}: {width}x{height} image with {bands} "
                                     f"band(s) = {width * height * bands:,} values; the "
                                     f"model input needs {expected_values:,}")
            if img.mode not in ("L", "P", "RGB", "RGBA", "CMYK", "LA"):
                raise InputFileError(f"{shown(path)}: {img.mode} image; give an 8-bit image")
            pixels = img.tobytes()
    except InputFileError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputFileError(f"{shown(path)}: refused, too many pixels ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise InputFileError(f"{shown(path)}: not an image or .npy file ({e})") from None
    return np.frombuffer(pixels, np.uint8).view(np.int8)
