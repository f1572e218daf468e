"""Credentials `sllm up` generates for its embedded NATS and Valkey: no open bus by default.

Every start makes new random passwords: one NATS user per role (router, scheduler, worker,
storage, admin), each confined to its subjects (`libs/protocol/permissions.py`), and one Valkey
ACL user per role (the services' confined to the cluster's keys and to data commands; the
admin is Valkey's ``default`` user, unrestricted, with a password). Children get their role's URLs in their
environment; nothing prints a password. The
admin URLs go to ``<data dir>/credentials.env`` (mode 0600) for operators' tools: ``sllm
events`` and ``sllm health`` read it when ``SLLM_NATS_URL`` is not set.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from libs.common.server_config import (
    ADMIN_USER,
    SENTINEL_HELLO,
    NatsUser,
    RedisUser,
    nats_auth_conf,
    redis_acl_conf,
)
from libs.protocol.permissions import ROLES, Role, permissions

CREDENTIALS_FILE = "credentials.env"
DEFAULT_DATA_DIR = Path(".sllm")

_ROLE_OF_MODULE: dict[str, Role] = {
    "services.router": "router",
    "services.scheduler": "scheduler",
    "services.worker": "worker",
    "services.storage": "storage",
}


@dataclass(frozen=True)
class Credentials:
    nats: Mapping[Role, str]  # role -> password
    redis: Mapping[Role, str]

    @classmethod
    def generate(cls) -> Credentials:
        return cls(
            nats={role: secrets.token_urlsafe(24) for role in ROLES},
            redis={role: secrets.token_urlsafe(24) for role in ROLES},
        )

    def redis_users(self, root: str) -> tuple[RedisUser, ...]:
        return tuple(
            # The admin is also what sentinels log in as: they meet on the hello channel.
            RedisUser(redis_user(role), password, channels=(SENTINEL_HELLO,))
            if role == "admin"
            else RedisUser.service(role, password, root)
            for role, password in self.redis.items()
        )

    def nats_users(self, root: str) -> tuple[NatsUser, ...]:
        users = []
        for role, password in self.nats.items():
            allowed = permissions(role, root)
            users.append(NatsUser(role, password, allowed.publish, allowed.subscribe))
        return tuple(users)


def redis_user(role: Role) -> str:
    """The Valkey user of ``role``: its name, but the admin is Valkey's ``default`` user."""
    return ADMIN_USER if role == "admin" else role


def write_bundle(
    directory: Path, *, root: str, nats_address: str, redis_address: str
) -> list[Path]:
    """The files a deployment whose NATS and Valkey run elsewhere (compose, Kubernetes) needs,
    each readable by its owner only: ``nats-auth.conf`` (for nats-server ``-c``),
    ``redis-acl.conf`` (for valkey-server, as its configuration file), ``redis-password`` (the
    admin's, for health checks), one ``<role>.nats-url`` and ``<role>.redis-url`` per role (for
    the services' ``SLLM_NATS_URL_FILE`` / ``SLLM_REDIS_URL_FILE``), and ``credentials.env``
    (admin, for operators). Nothing is replaced when the directory already has a bundle."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "nats-auth.conf").exists():
        return []
    creds = Credentials.generate()
    files = {
        "nats-auth.conf": nats_auth_conf(creds.nats_users(root)),
        "redis-acl.conf": redis_acl_conf(creds.redis_users(root)),
        "redis-password": creds.redis["admin"] + "\n",
        **{
            f"{role}.nats-url": f"nats://{role}:{password}@{nats_address}\n"
            for role, password in creds.nats.items()
        },
        **{
            f"{role}.redis-url": f"redis://{redis_user(role)}:{password}@{redis_address}/0\n"
            for role, password in creds.redis.items()
        },
    }
    written = []
    for name, text in files.items():
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        written.append(path)
    admin = {
        "SLLM_NATS_URL": files["admin.nats-url"].strip(),
        "SLLM_REDIS_URL": files["admin.redis-url"].strip(),
    }
    written.append(write_env_file(directory, admin))
    return written


def role_of(module: str) -> Role:
    """The bus role of a service module (``services.worker`` -> ``worker``)."""
    return _ROLE_OF_MODULE[module]


def write_env_file(data_dir: Path, values: Mapping[str, str]) -> Path:
    """``KEY=value`` lines in ``<data_dir>/credentials.env``, readable by this user only."""
    path = data_dir / CREDENTIALS_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{k}={v}\n" for k, v in values.items())
    return path


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            out[key] = value
    return out


def operator_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for an operator's command: the process's own, plus the credentials
    file of `sllm up`'s data dir (``SLLM_DATA_DIR``, default ``.sllm``) for what it lacks."""
    env = dict(os.environ if environ is None else environ)
    path = Path(env.get("SLLM_DATA_DIR") or DEFAULT_DATA_DIR) / CREDENTIALS_FILE
    if not {"SLLM_NATS_URL", "SLLM_NATS_URL_FILE"} & env.keys() and path.is_file():
        for key, value in read_env_file(path).items():
            env.setdefault(key, value)
    return env
