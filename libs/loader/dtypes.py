"""Dtype names of the format: torch's names without the ``torch.`` prefix."""

from __future__ import annotations

import torch

__all__ = ["DTYPES", "dtype_from_name", "dtype_name"]

_NAMES = (
    "bool",
    "uint8",
    "int8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "complex32",
    "complex64",
    "complex128",
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
    "float4_e2m1fn_x2",
    "bits1x8",
    "bits2x4",
    "bits4x2",
    "bits8",
    "bits16",
    *(f"uint{i}" for i in range(1, 8)),
    *(f"int{i}" for i in range(1, 8)),
)

# Only the names this torch build has: an older torch simply cannot load newer dtypes.
DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in _NAMES
    if isinstance(getattr(torch, name, None), torch.dtype)
}
_BY_DTYPE: dict[torch.dtype, str] = {dt: name for name, dt in DTYPES.items()}


def dtype_from_name(name: str) -> torch.dtype | None:
    """The torch dtype for a format dtype name, or None if it is not one."""
    return DTYPES.get(name)


def dtype_name(dtype: torch.dtype) -> str:
    """The format name of a torch dtype; ValueError for dtypes that are not raw bytes."""
    try:
        return _BY_DTYPE[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} cannot be stored in an sllm checkpoint") from None
