"""Typed, frozen settings read once from ``SLLM_*`` environment variables.

Each service declares a frozen dataclass deriving from `CommonSettings`; every field reads the
variable ``SLLM_<FIELD NAME IN CAPITALS>`` and carries a one-line ``help`` for the README table.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from libs.protocol.errors import redact_url

from .tls import TlsFiles

S = TypeVar("S", bound="CommonSettings")

ENV_PREFIX = "SLLM_"


class SettingsError(ValueError):
    """An ``SLLM_*`` variable holds a value of the wrong type or out of range."""


def setting(default: Any, help: str) -> Any:
    """Declare a settings field with its default and its one-line description."""
    if isinstance(default, list | dict | set):
        raise TypeError("settings defaults must be immutable")
    return dataclasses.field(default=default, metadata={"help": help})


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _read_secret(path: str, name: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise SettingsError(f"{name}_FILE={path!r}: {exc.strerror}") from None


def _parse(raw: str, typ: Any, name: str) -> Any:
    try:
        if typ is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if typ is int:
            return int(raw)
        if typ is float:
            return float(raw)
        if typ is Path:
            return Path(raw).expanduser()
        if typ == tuple[str, ...]:
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        return raw
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class CommonSettings:
    """Settings every service reads."""

    nats_url: str = setting("nats://127.0.0.1:4222", "NATS server URL")
    redis_url: str = setting("redis://127.0.0.1:6379/0", "Redis (or Valkey) URL")
    nats_tls_ca: str = setting("", "CA file that signed the NATS server's certificate (TLS)")
    nats_tls_cert: str = setting("", "client certificate file for NATS (mutual TLS)")
    nats_tls_key: str = setting("", "key file of SLLM_NATS_TLS_CERT")
    redis_tls_ca: str = setting("", "CA file that signed the Redis server's certificate (TLS)")
    redis_tls_cert: str = setting("", "client certificate file for Redis (mutual TLS)")
    redis_tls_key: str = setting("", "key file of SLLM_REDIS_TLS_CERT")
    root: str = setting("sllm", "root of every NATS subject and prefix of every Redis key")
    instance_id: str = setting("", "this process's id on the bus (default: generated)")
    log_level: str = setting("INFO", "Python logging level")
    request_timeout: float = setting(5.0, "seconds a bus request waits for its reply")
    heartbeat_interval: float = setting(1.0, "seconds between liveness heartbeats in Redis")
    heartbeat_ttl: float = setting(5.0, "seconds after which a silent service counts as dead")
    metrics_addr: str = setting(
        "127.0.0.1:0",
        "host:port of the service's Prometheus /metrics (port 0: any free one; the router "
        "lists them at /metrics/targets; empty: none); the router's is on its own port",
    )
    metrics_keys: tuple[str, ...] = setting(
        (),
        "comma-separated keys that may read the router's /metrics and /metrics/targets "
        "(admin keys may too) and every service's metrics port; empty: open",
    )

    @classmethod
    def from_env(cls: type[S], env: Mapping[str, str] | None = None, **overrides: Any) -> S:
        """Read every field from ``env`` (default: the process environment)."""
        env = os.environ if env is None else env
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = env_name(f.name)
            if f.name in overrides:
                values[f.name] = overrides[f.name]
            elif name in env:
                values[f.name] = _parse(env[name], hints[f.name], name)
            elif name + "_FILE" in env:  # a secret mounted as a file (compose, Kubernetes)
                values[f.name] = _parse(
                    _read_secret(env[name + "_FILE"], name), hints[f.name], name
                )
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Range checks; subclasses extend."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise SettingsError(f"{env_name(f.name)} must be >= 0, got {value}")
        if self.heartbeat_ttl <= self.heartbeat_interval:
            raise SettingsError("SLLM_HEARTBEAT_TTL must exceed SLLM_HEARTBEAT_INTERVAL")
        for files in (self.nats_tls, self.redis_tls):
            for problem in files.problems():
                raise SettingsError(problem)
        if self.metrics_addr:
            from .metrics_server import parse_addr

            try:
                parse_addr(self.metrics_addr)
            except ValueError as exc:
                raise SettingsError(f"SLLM_METRICS_ADDR: {exc}") from None

    @property
    def nats_tls(self) -> TlsFiles:
        return TlsFiles("SLLM_NATS_TLS", self.nats_tls_ca, self.nats_tls_cert, self.nats_tls_key)

    @property
    def redis_tls(self) -> TlsFiles:
        return TlsFiles(
            "SLLM_REDIS_TLS", self.redis_tls_ca, self.redis_tls_cert, self.redis_tls_key
        )

    def as_env(self) -> dict[str, str]:
        """The settings as ``SLLM_*`` variables (to hand to child processes)."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                out[env_name(f.name)] = "1" if value else "0"
            elif isinstance(value, tuple):
                out[env_name(f.name)] = ",".join(value)
            else:
                out[env_name(f.name)] = str(value)
        return out

    def public(self) -> dict[str, Any]:
        """The settings for logs and events (URLs without credentials)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str) and "://" in value:
                value = redact_url(value)  # also a sentinel URL's ?sentinel_password=
            if "key" in f.name and value:
                value = "***"
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


def settings_table(classes: Mapping[str, type[CommonSettings]]) -> str:
    """A Markdown table of every variable, which services read it, and its default."""
    rows: dict[str, dict[str, Any]] = {}
    for service, cls in classes.items():
        for f in dataclasses.fields(cls):
            row = rows.setdefault(
                env_name(f.name), {"help": f.metadata.get("help", ""), "defaults": {}}
            )
            row["defaults"].setdefault(repr_default(f.default), []).append(service)
    lines = ["| variable | read by | default | meaning |", "|---|---|---|---|"]
    for name, row in rows.items():
        defaults: dict[str, list[str]] = row["defaults"]
        services = sorted({s for ss in defaults.values() for s in ss})
        if len(defaults) == 1:
            default = next(iter(defaults))
        else:
            default = "; ".join(f"{d} ({', '.join(ss)})" for d, ss in defaults.items())
        lines.append(f"| `{name}` | {', '.join(services)} | {default} | {row['help']} |")
    return "\n".join(lines) + "\n"


def repr_default(value: Any) -> str:
    if isinstance(value, tuple):
        return "`" + ",".join(value) + "`" if value else "(empty)"
    if value == "":
        return "(empty)"
    return f"`{value}`"
