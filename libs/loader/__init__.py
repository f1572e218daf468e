"""sllm's checkpoint format and multi-tier loading engine (see FORMAT.md).

Write with :func:`save_checkpoint` or :func:`convert_hf`; load with :func:`load_checkpoint`
(tensors as views into one buffer per device) or :func:`load_model` (a ready transformers model).

The format (`libs.loader.format`), the errors, the hooks and the seal need neither torch nor
the native engine: control-plane processes (the storage service) import them without paying
for torch. Everything else is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
from .format import FORMAT_NAME, FORMAT_VERSION, INDEX_FILE, FileInfo, PartitionInfo
from .hooks import CancelToken, LoadStats, ProgressFn

if TYPE_CHECKING:
    from .convert import convert_hf
    from .index import CheckpointIndex, TensorInfo, read_index
    from .load import DeviceSpec, load_checkpoint
    from .model import load_model, load_model_safetensors
    from .pool import HostPool
    from .writer import save_checkpoint

# name -> the module that defines it (these import torch and the native engine).
_LAZY = {
    "convert_hf": "convert",
    "CheckpointIndex": "index",
    "TensorInfo": "index",
    "read_index": "index",
    "DeviceSpec": "load",
    "load_checkpoint": "load",
    "load_model": "model",
    "load_model_safetensors": "model",
    "HostPool": "pool",
    "save_checkpoint": "writer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        importlib.import_module(f"{__name__}._native")
    except ImportError as e:  # pragma: no cover - depends on the build
        raise ImportError(
            "libs.loader's native engine is not built: run `pip install -e .` "
            "(or `python setup.py build_ext --inplace`)"
        ) from e
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


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
    "load_model_safetensors",
    "read_index",
    "save_checkpoint",
]
