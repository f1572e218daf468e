"""API keys: ``Authorization: Bearer <key>``, in three roles.

- inference keys (``SLLM_API_KEYS``): completions and the model list;
- admin keys (``SLLM_ADMIN_KEYS``): the deployments API (and inference: an admin may test);
- metrics keys (``SLLM_METRICS_KEYS``): ``/metrics`` (admin keys too).

No keys at all is an open development cluster. Inference keys without admin keys close the
admin routes (403) rather than let every inference key deploy. A missing or unknown key is a
401; a known key of the wrong role a 403.
"""

from __future__ import annotations

import hmac
from typing import Literal

from .errors import forbidden, unauthorized

Role = Literal["inference", "admin", "metrics"]


class ApiKeys:
    """The accepted keys by role; `check` guards the inference routes."""

    def __init__(
        self,
        keys: tuple[str, ...],
        admin: tuple[str, ...] = (),
        metrics: tuple[str, ...] = (),
    ) -> None:
        self.roles: list[tuple[bytes, Role]] = [
            *((k.encode(), "inference") for k in keys),
            *((k.encode(), "admin") for k in admin),
            *((k.encode(), "metrics") for k in metrics),
        ]
        self.has = {role: any(r == role for _, r in self.roles) for role in _ROLES}

    def role_of(self, authorization: str | None) -> Role:
        """The role of the key in ``authorization``; 401 if there is none or it is unknown."""
        if not authorization:
            raise unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(" ")
        given = token.strip().encode()
        # Compare against every key, in constant time, so timing says nothing about the keys.
        found: Role | None = None
        for key, role in self.roles:
            if hmac.compare_digest(given, key):
                found = role
        if scheme.lower() != "bearer" or found is None:
            raise unauthorized("invalid API key")
        return found

    def check(self, authorization: str | None) -> None:
        """Inference routes: open without inference keys, else an inference or admin key."""
        if not self.has["inference"]:
            return
        if self.role_of(authorization) == "metrics":
            raise forbidden("a metrics key may only read /metrics")

    def check_admin(self, authorization: str | None) -> None:
        """Admin routes: open only when no inference or admin key is set; else an admin key."""
        if not self.has["inference"] and not self.has["admin"]:
            return
        role = self.role_of(authorization)
        if not self.has["admin"]:
            raise forbidden(
                "the admin API is disabled: this router has inference keys (SLLM_API_KEYS) "
                "but no admin keys (SLLM_ADMIN_KEYS)"
            )
        if role != "admin":
            raise forbidden("this API key may not use the admin API: send an admin key")

    def check_metrics(self, authorization: str | None) -> None:
        """``/metrics``: open without metrics keys, else a metrics or admin key."""
        if not self.has["metrics"]:
            return
        if self.role_of(authorization) == "inference":
            raise forbidden("an inference key may not read /metrics")


_ROLES: tuple[Role, ...] = ("inference", "admin", "metrics")
