"""Fixtures for the loader tests: small checkpoints on ext4 (/tmp) and tmpfs (/dev/shm)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from libs.loader import save_checkpoint

from .helpers import CHUNK, make_state


@pytest.fixture
def state() -> dict[str, torch.Tensor]:
    return make_state()


@pytest.fixture
def ckpt(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    """A small checkpoint with several partitions and 8 KiB checksum chunks."""
    return save_checkpoint(state, tmp_path / "ckpt", partition_size=200_000, chunk_size=CHUNK)


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A fresh directory on tmpfs (the DRAM tier)."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    d = Path(tempfile.mkdtemp(prefix="sllm-loader-test-", dir="/dev/shm"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
