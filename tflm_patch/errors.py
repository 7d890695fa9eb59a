"""Exceptions that carry a message meant for the user (one clear line)."""


class TflmPatchError(Exception):
    """Base class: the CLI prints str(error) as one line and exits non-zero."""


class ModelFormatError(TflmPatchError):
    """The bytes are not a valid TFLite flatbuffer."""


class UnsupportedModelError(TflmPatchError):
    """A valid TFLite model that this tool cannot handle (e.g. float, unknown op)."""


class TflmRunError(TflmPatchError):
    """The x86 TFLM interpreter failed (error status, abort or crash in a child process)."""


class ZooError(TflmPatchError):
    """A model of the project's test zoo is unknown or could not be built."""


class UsageError(TflmPatchError):
    """A command-line value that cannot be used (out of range, not finite, ...)."""


class InputFileError(TflmPatchError):
    """An input file (.npy, image) that cannot be read within the limits."""


class OutputPathError(TflmPatchError):
    """An output path that would lose data or cannot be written (checked before any work)."""


class MalformedModelError(ModelFormatError):
    """A flatbuffer that verifies but describes an impossible model (a buffer shorter than
    its tensor, an index out of range, a zero scale, ...): named tensor or operator."""
