"""Start-up re-indexing of a tier directory: which checkpoints it holds, cheaply checked."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from libs.protocol.errors import CorruptError

from .checkpoint import Marker, quick_check
from .names import MARKER_FILE, checkpoint_dirname, is_checkpoint_dirname, is_leftover
from .transfer import remove_leftovers, retire

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Found:
    """A checkpoint found in a tier directory (``mtime``: when it entered the tier)."""

    model: str
    uri: str
    path: Path
    bytes: int
    mtime: float


def scan_tier(root: Path) -> list[Found]:
    """Re-index ``root``: remove leftovers of interrupted runs and our checkpoints that fail the
    cheap check (index parses, every file has its size); leave foreign entries alone."""
    root.mkdir(parents=True, exist_ok=True)
    for name in remove_leftovers(root, is_leftover):
        log.info("removed leftover %s", root / name)
    found = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not is_checkpoint_dirname(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        try:
            marker = Marker.load(path)
        except CorruptError as exc:
            log.warning("ignoring %s: not a checkpoint this service wrote (%s)", path, exc.message)
            continue
        if checkpoint_dirname(marker.model) != entry.name:
            log.warning("ignoring %s: its marker names model %r", path, marker.model)
            continue
        try:
            files = quick_check(path)
        except CorruptError as exc:
            log.warning("removing damaged checkpoint %s: %s", path, exc.message)
            retire(path)
            continue
        mtime = (path / MARKER_FILE).stat().st_mtime
        found.append(Found(marker.model, marker.uri, path, files.total_bytes, mtime))
    return sorted(found, key=lambda f: (f.mtime, f.model))
