"""The ``sllm-demo.json`` marker that identifies (and describes) a written demo model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MARKER_FILE = "sllm-demo.json"
"""Written last into every demo model; identifies a directory that may be overwritten."""

FORMAT_VERSION = 2
"""Bumped whenever the bytes a given (size, seed, dtype) produces change."""

_GENERATOR = "sllm.demo"


def make_marker(size: str, seed: int, dtype: str, num_parameters: int) -> dict[str, Any]:
    """Marker contents for a demo model of this size, seed and dtype."""
    return {
        "generator": _GENERATOR,
        "format_version": FORMAT_VERSION,
        "size": size,
        "seed": seed,
        "dtype": dtype,
        "num_parameters": num_parameters,
    }


def read_marker(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Return the marker of a demo model directory, or ``None`` if it is not a demo model.

    The marker holds ``size``, ``seed``, ``dtype``, ``num_parameters`` and ``format_version``.
    """
    try:
        data = json.loads((Path(path) / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("generator") != _GENERATOR:
        return None
    return data
