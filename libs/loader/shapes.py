"""Tensor shapes of a checkpoint without reading its weights: the safetensors header reader
(used by the converter too) and the shapes of an sllm checkpoint or a safetensors directory.
Torch-free: the storage service checks adapters against their base with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ConversionError
from .format import INDEX_FILE, read_layout

__all__ = ["checkpoint_shapes", "read_safetensors_header", "safetensors_shapes"]

_MAX_HEADER = 100 << 20


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the offset where its data begins.

    Raises:
        ConversionError: not a safetensors file, or a malformed header.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ConversionError("not a safetensors file", path=path, offset=0)
        n = int.from_bytes(head, "little")
        if n > _MAX_HEADER or 8 + n > size:
            raise ConversionError(f"safetensors header length {n} is invalid", path=path, offset=0)
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise ConversionError(
                f"safetensors header is not JSON: {e}", path=path, offset=8
            ) from None
    if not isinstance(header, dict):
        raise ConversionError("safetensors header is not an object", path=path, offset=8)
    return header, 8 + n


def safetensors_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in these safetensors files."""
    out: dict[str, tuple[int, ...]] = {}
    for f in files:
        header, _ = read_safetensors_header(f)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                out[name] = tuple(int(s) for s in info["shape"])
            except (KeyError, TypeError, ValueError):
                raise ConversionError(f"{name}: malformed tensor entry", path=f) from None
    return out


def checkpoint_shapes(root: str | Path) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of an sllm checkpoint (its index) or of a directory of safetensors
    files (a Hugging Face model or a PEFT adapter). Aliases have their target's shape."""
    base = Path(root)
    if (base / INDEX_FILE).is_file():
        layout = read_layout(base)
        shapes = {t.name: t.shape for t in layout.tensors}
        for alias, target in layout.aliases.items():
            if target in shapes:
                shapes[alias] = shapes[target]
        return shapes
    return safetensors_shapes(sorted(p for p in base.glob("*.safetensors") if p.is_file()))
