"""Directory names in a tier: one per model, derived safely from the model name."""

from __future__ import annotations

import hashlib
import re

# Hidden names are ours: staging and trash directories start with a dot, checkpoints never do.
STAGING_PREFIX = ".sllm-tmp-"
TRASH_PREFIX = ".sllm-trash-"
MARKER_FILE = ".sllm-storage.json"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_READABLE = 80


def checkpoint_dirname(model: str) -> str:
    """A file-system-safe, collision-free directory name for ``model``.

    Model names may hold ``/`` and ``:`` (``org/model:rev``): the readable part keeps letters,
    digits, ``.``, ``_`` and ``-``; the hash suffix keeps names that sanitize alike apart.
    """
    if not model:
        raise ValueError("empty model name")
    digest = hashlib.sha256(model.encode()).hexdigest()[:12]
    readable = _UNSAFE.sub("_", model).strip("._-")[:_MAX_READABLE].rstrip("._-") or "model"
    return f"{readable}-{digest}"


def is_checkpoint_dirname(name: str) -> bool:
    """Whether a tier directory entry may be a checkpoint (not staging, trash or foreign)."""
    return bool(name) and not name.startswith(".")


def is_leftover(name: str) -> bool:
    """A staging or trash directory of an earlier run: safe to delete."""
    return name.startswith((STAGING_PREFIX, TRASH_PREFIX))
