"""What a registry source is, decided before any data moves."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.common.registry_allow import AllowList
from libs.protocol.errors import BadRequestError, CorruptError, NotFoundError
from services.storage.registry_http import MAX_REGISTRY_INDEX_BYTES
from services.storage.sources import FetchPlan, prepare
from services.storage.uri import parse_registry_uri

from .fake_checkpoint import write_fake_checkpoint

pytestmark = pytest.mark.unit


def _prepare(path: Path, allowed: Path | None = None) -> object:
    allow = AllowList.parse([str(allowed or path.parent)])
    return prepare(parse_registry_uri(path.as_uri(), allow), timeout=1.0)


def test_an_sllm_directory_is_copied_with_its_index_sizes(tmp_path: Path) -> None:
    ck = write_fake_checkpoint(tmp_path / "ck")
    plan = _prepare(ck)
    assert isinstance(plan, FetchPlan)
    assert plan.kind == "sllm-file"
    assert plan.need_bytes == sum(f.stat().st_size for f in ck.iterdir())


def test_a_hugging_face_directory_is_converted(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"\0" * 100)
    plan = _prepare(hf)
    assert isinstance(plan, FetchPlan)
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


def test_a_partition_that_links_out_of_the_registry_is_refused_without_saying_where(
    tmp_path: Path,
) -> None:
    registry = tmp_path / "registry"
    ck = write_fake_checkpoint(registry / "ck")
    secret = tmp_path / "secret.bin"
    secret.write_bytes((ck / "part-00000.bin").read_bytes())  # even a copy of the right bytes
    (ck / "part-00000.bin").unlink()
    (ck / "part-00000.bin").symlink_to(secret)
    with pytest.raises(BadRequestError, match="refused by the registry allow-list") as info:
        _prepare(ck, registry)
    assert str(secret) not in info.value.message


def test_a_checkpoint_directory_that_links_out_is_refused(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    outside = write_fake_checkpoint(tmp_path / "outside")
    (registry / "ck").symlink_to(outside)
    (registry / "etc").symlink_to("/etc")
    for link in (registry / "ck", registry / "etc"):
        with pytest.raises(BadRequestError, match="refused") as info:
            _prepare(link, registry)
        assert "outside" not in info.value.message
        assert "/etc" not in info.value.message.replace(link.as_uri(), "")


def test_a_missing_checkpoint_names_the_uri_not_the_path(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as info:
        _prepare(tmp_path / "nope")
    assert info.value.message == f"checkpoint {(tmp_path / 'nope').as_uri()} does not exist"


def test_an_index_over_the_bound_is_corrupt_and_read_no_further(tmp_path: Path) -> None:
    ck = write_fake_checkpoint(tmp_path / "ck")
    with open(ck / "sllm-index.json", "ab") as f:
        f.truncate(MAX_REGISTRY_INDEX_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(CorruptError, match=f"larger than {MAX_REGISTRY_INDEX_BYTES} bytes"):
        _prepare(ck)
