"""Typed loader errors: each names the file and, where it applies, the byte offset."""

from __future__ import annotations

import os

__all__ = [
    "ChecksumMismatch",
    "CheckpointNotFound",
    "ConversionError",
    "FormatVersionError",
    "IncompatibleCheckpoint",
    "IndexCorrupt",
    "LoadCancelled",
    "LoaderError",
    "PartitionMissing",
    "PartitionTruncated",
    "PoolExhausted",
    "ReadError",
]


class LoaderError(Exception):
    """Base class of every error the loader raises.

    Attributes:
        path: the file the error is about (index, partition or source file), if any.
        offset: the byte offset in that file, if the error has one.
    """

    def __init__(
        self, message: str, *, path: str | os.PathLike[str] | None = None, offset: int | None = None
    ) -> None:
        self.path = os.fspath(path) if path is not None else None
        self.offset = offset
        where = ""
        if self.path is not None:
            where = f" [{self.path}" + (f" @ offset {offset}" if offset is not None else "") + "]"
        super().__init__(message + where)
        self.message = message


class CheckpointNotFound(LoaderError):
    """The path is not a checkpoint directory (no index file)."""


class FormatVersionError(LoaderError):
    """The index has a format name or major version this reader does not understand."""


class IndexCorrupt(LoaderError):
    """The index is not valid JSON or lies (bad types, unknown dtype, ranges, overlaps)."""


class PartitionMissing(LoaderError):
    """A partition file named by the index does not exist."""


class PartitionTruncated(LoaderError):
    """A partition file is shorter than the index says; offset is where the data ends."""


class ChecksumMismatch(LoaderError):
    """A chunk's XXH3-64 differs from the index; offset is the chunk's start."""

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        offset: int | None = None,
        expected: int = 0,
        actual: int = 0,
    ) -> None:
        super().__init__(message, path=path, offset=offset)
        self.expected = expected
        self.actual = actual


class ReadError(LoaderError):
    """The operating system failed a read (or a fault-in of mapped data)."""

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        offset: int | None = None,
        errno: int = 0,
    ) -> None:
        super().__init__(message, path=path, offset=offset)
        self.errno = errno


class LoadCancelled(LoaderError):
    """The load was cancelled through its cancel token; nothing was returned."""


class PoolExhausted(LoaderError):
    """The host pool has no free region large enough for this checkpoint."""


class IncompatibleCheckpoint(LoaderError):
    """The checkpoint's tensors do not fit the model its config describes."""


class ConversionError(LoaderError):
    """A source model directory could not be converted (no weights, bad safetensors header)."""
