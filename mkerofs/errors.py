"""The exceptions mkerofs raises on purpose: each carries a one-line message for the user."""
from __future__ import annotations


class MkerofsError(Exception):
    """Base of every error mkerofs raises on purpose."""


class BuildError(MkerofsError):
    """A user-facing failure of a build: bad input, bad options, I/O trouble."""


class ImageError(MkerofsError):
    """The image is damaged or uses something this reader cannot read; the message says what
    and where (nid, path or byte offset)."""


class CompressorUnavailable(MkerofsError, RuntimeError):
    """The native library needed for an algorithm is missing or too old."""


class ExtractError(MkerofsError):
    """The destination cannot take an extraction (not empty, not a directory, I/O failure)."""
