"""Typed errors. Each is an ``ImpastoError`` and also the matching builtin, so callers
may catch either (``except ValueError`` keeps working for bad images)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ImpastoError(Exception):
    """Base of every error impasto raises on purpose. The CLI prints these as one line."""

    exit_code: int = 1


class InvalidImageError(ImpastoError, ValueError):
    """An image could not be decoded or is not acceptable (corrupt, truncated, too large)."""

    exit_code = 3


class ImageTooLargeError(InvalidImageError):
    """The image has more pixels than the configured cap (decompression-bomb guard)."""


class ImageSizeError(InvalidImageError):
    """An image is too small (or too thin) for a method; ``which`` says which input ('content image'...).

    The library raises it on tensors; the API layer adds the file's path when it knows it.
    """

    def __init__(self, message: str, which: str = "") -> None:
        super().__init__(message)
        self.which = which


class InvalidOptionError(ImpastoError, ValueError):
    """An option has a bad value or an unknown name."""

    exit_code = 2


class WeightsError(ImpastoError, RuntimeError):
    """Pretrained weights are missing, corrupt or of the wrong shape."""

    exit_code = 4


class WeightsUnavailableError(WeightsError, FileNotFoundError):
    """No source for the requested weights can be reached (offline and not cached)."""


class HashMismatchError(WeightsError):
    """A weight file's sha256 differs from the registry's."""


class CheckpointError(ImpastoError, ValueError):
    """A checkpoint cannot be resumed (missing, corrupt, or from different options)."""

    exit_code = 5


class SolverError(ImpastoError, RuntimeError):
    """A numerical solver gave no usable answer (not finite, or its residual too large) even after its fallbacks."""

    exit_code = 6


class CancelledError(ImpastoError, RuntimeError):
    """The run was cancelled through its ``CancelToken``."""

    exit_code = 130


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest valid choice, or ''."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


class OutputError(ImpastoError, OSError):
    """A result could not be written (folder missing and not creatable, no permission, disk full)."""

    exit_code = 7


class NoFaceError(InvalidImageError):
    """An image that needs a face (face parts) has none the face model can find."""


class FacePartsUnavailableError(WeightsUnavailableError):
    """The optional face-parts extra (MediaPipe, with its models) is not installed."""
