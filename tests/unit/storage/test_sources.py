"""What a registry source is, decided before any data moves."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.protocol.errors import BadRequestError, CorruptError, NotFoundError
from services.storage.sources import prepare
from services.storage.uri import parse_registry_uri

from .fake_checkpoint import write_fake_checkpoint

pytestmark = pytest.mark.unit


def _prepare(path: Path) -> object:
    return prepare(parse_registry_uri(path.as_uri()), timeout=1.0)


def test_an_sllm_directory_is_copied_with_its_index_sizes(tmp_path: Path) -> None:
    ck = write_fake_checkpoint(tmp_path / "ck")
    plan = prepare(parse_registry_uri(ck.as_uri()), timeout=1.0)
    assert plan.kind == "sllm-file"
    assert plan.need_bytes == sum(f.stat().st_size for f in ck.iterdir())


def test_a_hugging_face_directory_is_converted(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"\0" * 100)
    plan = prepare(parse_registry_uri(hf.as_uri()), timeout=1.0)
    assert (plan.kind, plan.need_bytes) == ("hf-file", 102)


def test_missing_unusable_and_corrupt_sources(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        _prepare(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadRequestError, match="not a directory"):
        _prepare(tmp_path / "file")
    (tmp_path / "weights-only").mkdir()
    (tmp_path / "weights-only" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(BadRequestError, match="neither"):
        _prepare(tmp_path / "weights-only")
    ck = write_fake_checkpoint(tmp_path / "ck")
    (ck / "sllm-index.json").write_text('{"format": "sllm-checkpoint"')
    with pytest.raises(CorruptError):
        _prepare(ck)
