"""Hugging Face Hub ids as checkpoint URIs: ``hf://org/name[@revision]``, and the plain
``org/name[@revision]`` a user types, normalised to that (`normalise_checkpoint_uri`).

Pure and torch-free (no network, no ``huggingface_hub``): the router normalises and checks a
URI when it is deployed, the storage service parses it again when it fetches. Allow-list entries
for the Hub (`parse_hub_entry`) are ``hf://`` (every repository), ``hf://org/`` (one
organisation) and ``hf://org/name`` (one repository); the Hub compares ids without case, and so
do these entries.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

HUB_SCHEME = "hf://"
# The Hub's own rule for a namespace or a repository name: letters, digits, "-", "_", ".",
# at most 96 characters, neither starting nor ending with "-" or ".", no "--" or "..".
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
# A branch, a tag, a commit or a ref such as refs/pr/1.
_REVISION = r"[A-Za-z0-9_](?:[A-Za-z0-9._/-]{0,126}[A-Za-z0-9._-])?"
_HUB_ID = re.compile(rf"(?P<org>{_NAME})/(?P<name>{_NAME})(?:@(?P<rev>{_REVISION}))?")
_ORG_ENTRY = re.compile(rf"(?P<org>{_NAME})/(?:(?P<name>{_NAME}))?")


class BadHubId(ValueError):
    """A malformed ``hf://`` URI or allow-list entry; ``reason`` may be shown to a client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class HubSource:
    """An ``hf://org/name[@revision]`` URI: a model repository on the Hugging Face Hub."""

    uri: str
    repo_id: str  # org/name
    revision: str | None  # None: the repository's default branch

    @property
    def org(self) -> str:
        return self.repo_id.split("/", 1)[0]


def _well_formed(org: str, name: str, revision: str | None) -> str | None:
    """Why the parts are not a Hub id the Hub would accept; None: they are."""
    for part in (org, name):
        if "--" in part or ".." in part:
            return "a Hub namespace or repository name may not contain '--' or '..'"
    if revision is not None and (".." in revision or "//" in revision):
        return "a revision may not contain '..' or '//'"
    return None


def parse_hub_uri(uri: str) -> HubSource:
    """``hf://org/name[@revision]`` split; `BadHubId` unless it is exactly that."""
    if not uri.startswith(HUB_SCHEME):
        raise BadHubId("a Hugging Face Hub URI starts with hf:// (lower case)")
    m = _HUB_ID.fullmatch(uri[len(HUB_SCHEME) :])
    if m is None:
        raise BadHubId(
            "a Hugging Face Hub URI is hf://org/name or hf://org/name@revision (letters, "
            "digits, '-', '_' and '.' in each name)"
        )
    why = _well_formed(m["org"], m["name"], m["rev"])
    if why is not None:
        raise BadHubId(why)
    return HubSource(uri, f"{m['org']}/{m['name']}", m["rev"])


def is_hub_id(text: str) -> bool:
    """Whether ``text`` is a plain Hub id, ``org/name[@revision]`` (no scheme)."""
    m = _HUB_ID.fullmatch(text)
    return m is not None and _well_formed(m["org"], m["name"], m["rev"]) is None


def normalise_checkpoint_uri(uri: str) -> str:
    """The URI to store for a deployment: a plain ``org/name[@revision]`` becomes
    ``hf://org/name[@revision]``; anything else is returned unchanged (the allow-list check
    then accepts or refuses it)."""
    if "://" not in uri and is_hub_id(uri):
        return HUB_SCHEME + uri
    return uri


def parse_hub_entry(entry: str) -> str:
    """An allow-list entry ``hf://``, ``hf://org/`` or ``hf://org/name`` as the lower-case
    prefix it allows: ``""``, ``"org/"`` or ``"org/name"``; `BadHubId` otherwise."""
    if not entry.startswith(HUB_SCHEME):
        raise BadHubId("a Hub entry starts with hf:// (lower case)")
    rest = entry[len(HUB_SCHEME) :]
    if not rest:
        return ""
    m = _ORG_ENTRY.fullmatch(rest)
    if m is None:
        raise BadHubId("a Hub entry is hf:// (every repository), hf://org/ or hf://org/name")
    why = _well_formed(m["org"], m["name"] or "x", None)
    if why is not None:
        raise BadHubId(why)
    return rest.lower()


def hub_allowed(prefixes: Iterable[str], source: HubSource) -> bool:
    """Whether one of the prefixes (`parse_hub_entry`) allows ``source``'s repository."""
    repo = source.repo_id.lower()
    return any(p == "" or p == repo or (p.endswith("/") and repo.startswith(p)) for p in prefixes)
