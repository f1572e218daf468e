"""Configuration sllm writes for the servers it depends on: NATS users and permissions, Valkey
(Redis) ACL users, and TLS files. Used by the embedded servers (`embedded.py`) and by
``sllm credentials`` for servers that run elsewhere (compose, Kubernetes).

Users and passwords go into URLs as they are (nats-py does not percent-decode them): letters,
digits, '_' and '-' only (what `secrets.token_urlsafe` makes).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

_URL_SAFE = re.compile(r"[A-Za-z0-9_\-]+")


class ServerConfigError(RuntimeError):
    """A credential or a TLS file that cannot go into a server's configuration."""


def check_credential(value: str) -> str:
    if not _URL_SAFE.fullmatch(value):
        raise ServerConfigError("credentials must be letters, digits, '_' or '-'")
    return value


def private_file(path: Path, text: str) -> Path:
    """Write ``text`` to ``path``, readable by this user only (it holds credentials)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def _quoted(value: str) -> str:
    # nats-server config strings: JSON escaping is a subset it reads; quoted, "$" is literal.
    return json.dumps(value)


# --- NATS ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NatsUser:
    """One NATS user of an authenticated server, with what it may publish/subscribe."""

    user: str
    password: str
    publish: tuple[str, ...] = (">",)
    subscribe: tuple[str, ...] = (">",)

    def __post_init__(self) -> None:
        check_credential(self.user)
        check_credential(self.password)


def nats_auth_conf(users: tuple[NatsUser, ...]) -> str:
    """A nats-server ``authorization`` block: these users, each within its permissions."""
    lines = ["authorization {", "  users = ["]
    for u in users:
        pub = ", ".join(_quoted(s) for s in u.publish)
        sub = ", ".join(_quoted(s) for s in u.subscribe)
        lines.append(
            f"    {{user: {_quoted(u.user)}, password: {_quoted(u.password)}, "
            f"permissions: {{publish: {{allow: [{pub}]}}, subscribe: {{allow: [{sub}]}}}}}}"
        )
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


# --- Valkey / Redis -----------------------------------------------------------------------

# What a service may do in Valkey: data commands on the cluster's own keys (``<root>:*``), no
# administration (CONFIG, ACL, SHUTDOWN, DEBUG, MONITOR, REPLICAOF...) and nothing the server
# calls dangerous (FLUSHALL, FLUSHDB, KEYS, MIGRATE...).
SERVICE_COMMANDS = "+@all -@admin -@dangerous"


# The administrator is Valkey's ``default`` user (unrestricted, with a password): Valkey 8.1
# replays an append-only file's transactions as the default user and drops them (NOPERM)
# when that user is off, so turning it off would lose the cluster state at a restart.
ADMIN_USER = "default"

# The channel on which sentinels find each other through the primary (and replicas): the user
# they log in as must be allowed to publish and subscribe to it.
SENTINEL_HELLO = "__sentinel__:hello"


@dataclass(frozen=True)
class RedisUser:
    """One Valkey ACL user: its password, the key patterns it may touch, the commands it may
    run (ACL rule syntax; by default unrestricted: the admin), and the pub/sub channels it may
    use (none by default; Sentinel's user needs `SENTINEL_HELLO`)."""

    user: str
    password: str
    keys: tuple[str, ...] = ("*",)
    commands: str = "+@all"
    channels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_credential(self.user)
        check_credential(self.password)

    @classmethod
    def service(cls, user: str, password: str, root: str) -> RedisUser:
        """A service's user: confined to the keys under ``root`` and to data commands."""
        return cls(user, password, keys=(f"{root}:*",), commands=SERVICE_COMMANDS)

    def acl_rule(self) -> str:
        keys = " ".join(f"~{k}" for k in self.keys)
        channels = "".join(f" &{c}" for c in self.channels)
        return (
            f"user {self.user} reset on >{self.password} {keys} resetchannels{channels} "
            f"{self.commands}"
        )


def redis_acl_conf(users: tuple[RedisUser, ...], password: str = "") -> str:
    """Valkey configuration lines: the ``users`` (the ``default`` user's login off unless
    one of them is it), or, with ``password`` alone, the default login requiring it."""
    lines = [u.acl_rule() for u in users]
    if users and ADMIN_USER not in {u.user for u in users}:
        lines.append(f"user {ADMIN_USER} off")
    elif not users and password:
        lines.append(f"requirepass {_quoted(check_credential(password))}")
    return "\n".join(lines) + "\n"


# --- TLS ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerTls:
    """A server's certificate and key, and the CA its clients' certificates must chain to
    when ``verify_clients`` (mutual TLS)."""

    cert: str
    key: str
    ca: str = ""
    verify_clients: bool = False

    def __post_init__(self) -> None:
        for path in (self.cert, self.key, self.ca):
            if path and not Path(path).is_file():
                raise ServerConfigError(f"TLS file {path} does not exist")
        if self.verify_clients and not self.ca:
            raise ServerConfigError("verifying clients needs the CA that signed them")

    def nats_args(self) -> list[str]:
        args = ["--tls", "--tlscert", self.cert, "--tlskey", self.key]
        if self.ca:
            args += ["--tlscacert", self.ca]
        if self.verify_clients:
            args.append("--tlsverify")
        return args

    def redis_args(self, port: int) -> list[str]:
        """TLS only: the plain port off, ``port`` speaking TLS."""
        args = ["--port", "0", "--tls-port", str(port)]
        args += ["--tls-cert-file", self.cert, "--tls-key-file", self.key]
        if self.ca:
            args += ["--tls-ca-cert-file", self.ca]
        args += ["--tls-auth-clients", "yes" if self.verify_clients else "no"]
        return args
