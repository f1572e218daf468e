"""Hugging Face Hub ids as checkpoint URIs: parsing, normalisation and the allow-list."""

from __future__ import annotations

import pytest

from libs.common.hub_ids import HubSource, normalise_checkpoint_uri, parse_hub_uri
from libs.common.registry_allow import AllowList, SourceRefused, parse_source
from services.storage.uri import parse_registry_uri

pytestmark = pytest.mark.unit

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("uri", "repo", "revision"),
    [
        ("hf://Qwen/Qwen2-0.5B", "Qwen/Qwen2-0.5B", None),
        ("hf://org/name@main", "org/name", "main"),
        (f"hf://org/name@{SHA}", "org/name", SHA),
        ("hf://org/name@refs/pr/1", "org/name", "refs/pr/1"),
        ("hf://my_org/model.v2@v1.0", "my_org/model.v2", "v1.0"),
    ],
)
def test_hub_uris_are_split_into_repository_and_revision(
    uri: str, repo: str, revision: str | None
) -> None:
    assert parse_source(uri) == HubSource(uri, repo, revision)


@pytest.mark.parametrize(
    "uri",
    [
        "hf://../x",
        "hf://org",
        "hf://org/",
        "hf://org/name/extra",
        "hf://org/../name",
        "hf://org/na--me",
        "hf://org/name@",
        "hf://org/name@a..b",
        "hf://org/name@refs//x",
        "hf://-org/name",
        "hf://org/name.",
        "hf://org/name?x=1",
        "hf://org/name#frag",
        "hf://org/na%2Fme",
        "hf:///org/name",
        "HF://org/name",
        "hf://user@org/name",
        "hf://org/na me",
    ],
)
def test_malformed_hub_uris_are_refused(uri: str) -> None:
    with pytest.raises(SourceRefused):
        parse_source(uri)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("Qwen/Qwen2-0.5B", "hf://Qwen/Qwen2-0.5B"),
        ("org/name@v1", "hf://org/name@v1"),
        ("hf://org/name", "hf://org/name"),
        ("file:///srv/models/x", "file:///srv/models/x"),
        ("http://10.0.0.5/ckpt/x/", "http://10.0.0.5/ckpt/x/"),
        # Not a Hub id: left as given, for the allow-list to refuse with its reason.
        ("org/name/extra", "org/name/extra"),
        ("org", "org"),
        ("../x", "../x"),
        ("/srv/models/x", "/srv/models/x"),
    ],
)
def test_plain_hub_ids_are_normalised_and_nothing_else_changes(given: str, stored: str) -> None:
    assert normalise_checkpoint_uri(given) == stored


def test_a_plain_id_is_refused_unless_normalised() -> None:
    allow = AllowList.parse(["hf://"])
    with pytest.raises(SourceRefused, match="unsupported scheme"):
        allow.check("org/name")
    assert allow.check(normalise_checkpoint_uri("org/name")) == parse_hub_uri("hf://org/name")


ALLOW = AllowList.parse(["/srv/models", "hf://trusted/", "hf://other/one", "hf://Mixed/Case"])


@pytest.mark.parametrize(
    "uri",
    [
        "hf://trusted/a",
        "hf://trusted/b@v2",
        "hf://TRUSTED/c",
        "hf://other/one",
        "hf://other/ONE@main",
        "hf://mixed/case",
    ],
)
def test_hub_entries_allow_an_organisation_or_one_repository(uri: str) -> None:
    assert isinstance(ALLOW.check(uri), HubSource)


@pytest.mark.parametrize(
    "uri", ["hf://other/two", "hf://trustedx/a", "hf://evil/trusted", "hf://other/one-b"]
)
def test_hub_repositories_outside_the_entries_are_refused(uri: str) -> None:
    with pytest.raises(SourceRefused, match="SLLM_REGISTRY_ALLOW"):
        ALLOW.check(uri)


def test_no_hub_entry_allows_no_repository_and_hf_allows_every_one() -> None:
    with pytest.raises(SourceRefused, match="not allowed"):
        AllowList.parse(["/srv/models", "http://10.0.0.5/x/"]).check("hf://org/name")
    assert AllowList.parse(["hf://"]).check("hf://any/repo@x").repo_id == "any/repo"  # type: ignore[union-attr]


@pytest.mark.parametrize("entry", ["hf://org", "hf://../", "hf://org/name/x", "hf://org/na--me"])
def test_malformed_hub_entries_are_settings_errors(entry: str) -> None:
    with pytest.raises(ValueError, match="allow-list entry"):
        AllowList.parse([entry])


def test_the_storage_service_parses_hub_uris_as_hub_sources() -> None:
    src = parse_registry_uri("hf://org/name@v1", AllowList.parse(["hf://org/"]))
    assert (src.kind, src.hub) == ("hub", HubSource("hf://org/name@v1", "org/name", "v1"))
    assert src.path is None
