"""Tier directory names and registry URI parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.common.registry_allow import AllowList
from libs.protocol.errors import BadRequestError
from services.storage.names import checkpoint_dirname, is_checkpoint_dirname, is_leftover
from services.storage.uri import parse_registry_uri

pytestmark = pytest.mark.unit

ALLOW = AllowList.parse(
    ["/models", "http://127.0.0.1:8000/ckpt/", "https://registry.example/", "http://h/"]
)


@pytest.mark.parametrize(
    "model", ["org/model:rev", "../../etc/passwd", ".hidden", "a b\\c\x00d", "é/ü", "/", "x" * 128]
)
def test_dirname_is_one_safe_visible_path_component(model: str) -> None:
    name = checkpoint_dirname(model)
    assert "/" not in name
    assert "\\" not in name
    assert "\x00" not in name
    assert name not in (".", "..")
    assert is_checkpoint_dirname(name)
    assert not is_leftover(name)
    assert len(name) <= 100
    assert name == checkpoint_dirname(model)  # stable across calls and runs


def test_dirname_keeps_a_readable_part() -> None:
    assert checkpoint_dirname("org/llama-3:8b").startswith("org_llama-3_8b-")


def test_names_that_sanitize_alike_get_different_dirnames() -> None:
    names = ["a/b", "a:b", "a_b", "a b", "a//b"]
    assert len({checkpoint_dirname(n) for n in names}) == len(names)


def test_staging_and_trash_names_are_leftovers_not_checkpoints() -> None:
    assert is_leftover(".sllm-tmp-abc")
    assert is_leftover(".sllm-trash-abc")
    assert not is_checkpoint_dirname(".sllm-tmp-abc")


def test_file_uri_gives_an_absolute_path() -> None:
    src = parse_registry_uri("file:///models/my%20model", ALLOW)
    assert (src.kind, src.path) == ("file", Path("/models/my model"))
    assert parse_registry_uri("file://localhost/models/m", ALLOW).path == Path("/models/m")


@pytest.mark.parametrize(
    ("uri", "base"),
    [
        ("http://127.0.0.1:8000/ckpt/a", "http://127.0.0.1:8000/ckpt/a/"),
        ("https://registry.example/a/", "https://registry.example/a/"),
    ],
)
def test_http_uri_becomes_a_directory_base_url(uri: str, base: str) -> None:
    src = parse_registry_uri(uri, ALLOW)
    assert (src.kind, src.base_url) == ("http", base)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/model",
        "/models/plain-path",
        "models/relative",
        "file:relative/path",
        "file://otherhost/models",
        "http:///no-host",
        "http://h/a?sig=1",
        "http://h:notaport/a",
        "",
        "file:///etc/passwd",
        "http://127.0.0.1:8001/ckpt/a",
    ],
)
def test_other_uris_are_bad_requests_naming_the_uri(uri: str) -> None:
    with pytest.raises(BadRequestError) as info:
        parse_registry_uri(uri, ALLOW)
    assert repr(uri) in info.value.message
