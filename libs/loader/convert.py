"""convert_hf: a Hugging Face model directory (safetensors, or .bin via weights-only) to sllm."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from .dtypes import DTYPES
from .errors import ConversionError
from .hooks import ProgressFn
from .pooling import POOLING_FILE, sentence_pooling_file
from .shapes import read_safetensors_header
from .sources import Entry, FileRangeSource, tensor_entries
from .writer import DEFAULT_CHUNK_SIZE, DEFAULT_PARTITION_SIZE, write_checkpoint

__all__ = ["convert_hf"]

# safetensors dtype codes that are raw little-endian elements like torch's.
_ST_DTYPES = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "U16": "uint16",
    "F16": "float16",
    "BF16": "bfloat16",
    "I32": "int32",
    "U32": "uint32",
    "F32": "float32",
    "F64": "float64",
    "I64": "int64",
    "U64": "uint64",
    "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
}
_WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".gguf",
    ".onnx",
)
_WEIGHT_INDEXES = (".safetensors.index.json", ".bin.index.json")


def convert_hf(
    src_dir: str | os.PathLike[str],
    dst_dir: str | os.PathLike[str],
    *,
    partition_size: int = DEFAULT_PARTITION_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: ProgressFn | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a Hugging Face model directory into an sllm checkpoint at ``dst_dir``.

    Weights come from ``*.safetensors`` (sharded or not; bytes are copied straight from the
    files, never materialised as tensors), else from ``pytorch_model*.bin`` through
    ``torch.load(weights_only=True)`` (nothing arbitrary is unpickled). Every other top-level file
    (config, generation config, tokenizer files, chat template...) is copied into the checkpoint.

    Args:
        src_dir: the model directory (as ``save_pretrained`` writes it).
        dst_dir: the checkpoint directory to create (atomically).
        partition_size: target partition size.
        chunk_size: checksum chunk size.
        progress: ``progress(bytes_done, bytes_total)`` over tensor bytes.
        overwrite: replace an existing checkpoint at ``dst_dir``.

    Raises:
        ConversionError: no weights, or a malformed safetensors file.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise ConversionError("source is not a directory", path=src)
    # A PEFT adapter directory holds ``adapter_model.*`` instead of ``model*``.
    shards = _shards(src, "model.safetensors.index.json", "model*.safetensors") or _shards(
        src, "", "adapter_model.safetensors"
    )
    if shards:
        entries = _safetensors_entries(shards)
        kind = "safetensors"
    else:
        bins = _shards(src, "pytorch_model.bin.index.json", "pytorch_model*.bin") or _shards(
            src, "", "adapter_model.bin"
        )
        if not bins:
            raise ConversionError("no *.safetensors or *.bin weights found", path=src)
        entries = _bin_entries(bins)
        kind = "bin"
    files: dict[str, Path | bytes] = {f.name: f for f in sorted(src.iterdir()) if _is_model_file(f)}
    pooling = sentence_pooling_file(src)
    if pooling is not None:  # in a subdirectory: carried under a plain name (FORMAT.md)
        files[POOLING_FILE] = pooling
    return write_checkpoint(
        entries,
        dst_dir,
        files=files,
        partition_size=partition_size,
        chunk_size=chunk_size,
        progress=progress,
        metadata={"source_format": kind},
        overwrite=overwrite,
    )


def _is_model_file(f: Path) -> bool:
    name = f.name
    return (
        f.is_file()
        and not name.startswith(".")
        and not name.endswith(_WEIGHT_SUFFIXES)
        and not name.endswith(_WEIGHT_INDEXES)
    )


def _shards(src: Path, index_name: str, pattern: str) -> list[Path]:
    index = src / index_name
    if index_name and index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConversionError(f"bad shard index: {e}", path=index) from None
        shards = [src / n for n in names]
        for s in shards:
            if s.parent != src or not s.is_file():
                raise ConversionError("shard index names a missing file", path=s)
        return shards
    return sorted(p for p in src.glob(pattern) if p.is_file())


def _safetensors_entries(shards: list[Path]) -> list[Entry]:
    entries: list[Entry] = []
    for shard in shards:
        size = shard.stat().st_size
        header, base = read_safetensors_header(shard)
        found = []
        for name, info in header.items():
            if name == "__metadata__":
                continue
            found.append(_safetensors_entry(shard, name, info, base, size))
        entries.extend(e for _, e in sorted(found, key=lambda x: x[0]))
    return entries


def _safetensors_entry(
    shard: Path, name: str, info: Any, base: int, size: int
) -> tuple[int, Entry]:
    try:
        dtype = DTYPES[_ST_DTYPES[info["dtype"]]]
        shape = tuple(int(s) for s in info["shape"])
        begin, end = (int(x) for x in info["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise ConversionError(
            f"{name}: unsupported or malformed tensor entry {info!r}", path=shard
        ) from None
    nbytes = math.prod(shape) * dtype.itemsize
    if min(shape, default=0) < 0 or not 0 <= begin <= end <= size - base or end - begin != nbytes:
        raise ConversionError(
            f"{name}: data offsets [{begin}, {end}) are invalid", path=shard, offset=base + begin
        )
    return begin, Entry(name, dtype, shape, source=FileRangeSource(shard, base + begin, nbytes))


def _bin_entries(shards: list[Path]) -> list[Entry]:
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        try:
            part = torch.load(shard, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # the weights-only unpickler refuses anything but tensors
            raise ConversionError(f"cannot load weights-only: {e}", path=shard) from None
        if not isinstance(part, dict):
            raise ConversionError("a .bin checkpoint must hold a state dict", path=shard)
        state.update(part)
    return tensor_entries(state.items())
