"""sllm's checkpoint format and multi-tier loading engine (see FORMAT.md).

Write with :func:`save_checkpoint` or :func:`convert_hf`; load with :func:`load_checkpoint`
(tensors as views into one buffer per device) or :func:`load_model` (a ready transformers model).
"""

try:
    from . import _native  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the build
    raise ImportError(
        "libs.loader's native engine is not built: run `pip install -e .` "
        "(or `python setup.py build_ext --inplace`)"
    ) from e

from .convert import convert_hf
from .errors import (
    CheckpointNotFound,
    ChecksumMismatch,
    ConversionError,
    FormatVersionError,
    IncompatibleCheckpoint,
    IndexCorrupt,
    LoadCancelled,
    LoaderError,
    PartitionMissing,
    PartitionTruncated,
    PoolExhausted,
    ReadError,
)
from .hooks import CancelToken, LoadStats, ProgressFn
from .index import (
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_FILE,
    CheckpointIndex,
    FileInfo,
    PartitionInfo,
    TensorInfo,
    read_index,
)
from .load import DeviceSpec, load_checkpoint
from .model import load_model
from .pool import HostPool
from .writer import save_checkpoint

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INDEX_FILE",
    "CancelToken",
    "CheckpointIndex",
    "CheckpointNotFound",
    "ChecksumMismatch",
    "ConversionError",
    "DeviceSpec",
    "FileInfo",
    "FormatVersionError",
    "HostPool",
    "IncompatibleCheckpoint",
    "IndexCorrupt",
    "LoadCancelled",
    "LoadStats",
    "LoaderError",
    "PartitionInfo",
    "PartitionMissing",
    "PartitionTruncated",
    "PoolExhausted",
    "ProgressFn",
    "ReadError",
    "TensorInfo",
    "convert_hf",
    "load_checkpoint",
    "load_model",
    "read_index",
    "save_checkpoint",
]
