"""``SLLM_NATS_URL`` as nats-py needs it: one server or a cluster's servers, comma-separated.

A client given every server of a cluster fails over to another one when its server goes
away. The servers also advertise each other (their ``INFO`` carries ``connect_urls``), and
nats-py adds those to its pool without credentials, told apart from the listed ones by
``user:password@host:port``. So credentials common to every listed URL travel as connect
options instead: the pool then holds each server once, and every server in it, listed or
discovered, is offered the same login.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit


def split_urls(url: str) -> list[str]:
    """The servers in ``url``: one URL, or several separated by commas (spaces ignored)."""
    return [one.strip() for one in url.split(",") if one.strip()]


@dataclass(frozen=True)
class ServerList:
    """What `nats.connect` gets: ``servers`` and the login they share (``auth``: ``user`` and
    ``password``, or ``token``; empty when the URLs carry none, or different ones)."""

    servers: list[str]
    auth: dict[str, str] = field(default_factory=dict)


def server_list(url: str) -> ServerList:
    """Parse ``url`` (see the module docstring): credentials shared by every listed server
    move out of the URLs into ``auth``; URLs with differing credentials stay as they are."""
    urls = split_urls(url)
    logins = {_userinfo(one) for one in urls}
    if len(logins) != 1 or not (login := logins.pop()):
        return ServerList(urls)
    bare = [_without_userinfo(one) for one in urls]
    user, has_password, password = login.partition(":")
    if not has_password:  # nats://token@host: the token alone
        return ServerList(bare, {"token": user})
    return ServerList(bare, {"user": user, "password": password})


def _userinfo(url: str) -> str:
    netloc = urlsplit(url).netloc
    return netloc.rpartition("@")[0]


def _without_userinfo(url: str) -> str:
    scheme, _, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path}"


def cluster_size(listed: list[str], advertised: list[str]) -> int:
    """How many servers the cluster has, as a client sees it: the servers it was given
    (``listed``) or those the server it is connected to advertises (``advertised``, from
    its ``INFO``: every cluster member's client address, none for a lone server),
    whichever is more. Streams take ``min(3, cluster_size)`` replicas."""
    return max(len(set(listed)), len(set(advertised)), 1)
