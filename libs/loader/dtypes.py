"""Dtype names of the format (`format.DTYPE_SIZES`) as torch dtypes."""

from __future__ import annotations

import torch

from .format import DTYPE_SIZES

__all__ = ["DTYPES", "dtype_from_name", "dtype_name"]

# Only the names this torch build has: an older torch simply cannot load newer dtypes.
DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in DTYPE_SIZES
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
