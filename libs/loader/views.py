"""Tensors as views into one flat byte buffer: no per-tensor allocation or copy."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .index import CheckpointIndex

__all__ = ["build_views"]


def build_views(
    index: CheckpointIndex,
    bases: Mapping[str, tuple[torch.Tensor, int]],
) -> dict[str, torch.Tensor]:
    """One view per index entry, in index order; aliases are the very same tensor object.

    ``bases`` maps each data tensor's name to (flat uint8 buffer, byte offset in it). Offsets are
    4096-aligned, so a byte slice reinterpreted as the dtype is always a valid, aligned view.
    """
    views: dict[str, torch.Tensor] = {}
    for t in index.tensors:
        buf, offset = bases[t.name]
        views[t.name] = buf[offset : offset + t.nbytes].view(t.dtype).view(t.shape)
    return {name: views[index.aliases.get(name, name)] for name in index.order}
