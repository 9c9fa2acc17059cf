"""The one exception hierarchy of cnnpipe.

Every error the library raises on purpose derives from :class:`CnnpipeError`; the
command line turns it into a single line and an exit code (``exit_code``).  Messages
name the thing, what was expected, what was found and, where there is one, the fix.
"""

from __future__ import annotations

__all__ = [
    "CnnpipeError",
    "ConfigError",
    "ExportError",
    "InputError",
    "LockedError",
    "ModelError",
    "ModelMismatchError",
    "ParityError",
    "StoreError",
    "WorkerError",
]


class CnnpipeError(Exception):
    """Base class of every error cnnpipe raises on purpose."""

    exit_code: int = 1


class InputError(CnnpipeError, ValueError):
    """An input file (FITS image, catalog, band list) cannot be used."""


class ConfigError(CnnpipeError, ValueError):
    """A configuration value or combination of options is invalid."""

    exit_code = 2


class ModelError(CnnpipeError, ValueError):
    """A model package is unreadable, unsafe or has invalid metadata."""


class ModelMismatchError(ModelError):
    """A model does not fit the data it is asked to run on (bands, patch, layout)."""


class ExportError(CnnpipeError, RuntimeError):
    """Exporting a PyTorch model to an ONNX package failed."""


class ParityError(ExportError):
    """The exported model disagrees with its reference beyond the tolerance."""


class StoreError(CnnpipeError, OSError):
    """The output store cannot be created, opened or written."""


class LockedError(StoreError):
    """The output store is locked by another run."""


class WorkerError(CnnpipeError, RuntimeError):
    """A work unit failed on a worker or the requested device is not active."""
