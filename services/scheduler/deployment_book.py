"""The scheduler's own copy of the deployments, so that a store that lost its data gets them back.

Redis is the state of record, but a Redis that restarts empty (no persistence, a failover to a
replica that had nothing) would forget every deployment; the scheduler owns them, so it keeps
the last state it saw and writes it back when the store's epoch changes.
"""

from __future__ import annotations

from collections.abc import Iterable

from libs.protocol.messages import DeploymentSpec


class DeploymentBook:
    """Deployments by name, as last seen in the store or changed through this scheduler."""

    def __init__(self) -> None:
        self._specs: dict[str, DeploymentSpec] = {}

    def put(self, spec: DeploymentSpec) -> None:
        self._specs[spec.name] = spec

    def delete(self, name: str) -> None:
        self._specs.pop(name, None)

    def refresh(self, stored: Iterable[DeploymentSpec], *, same_store: bool) -> None:
        """Take what the store holds. Names missing from it are dropped (another scheduler
        deleted them) only if ``same_store``: the read saw the store's data of before, not an
        empty store that restarted meanwhile (whose missing names mean nothing)."""
        fresh = {spec.name: spec for spec in stored}
        if same_store:
            self._specs = fresh
        else:
            self._specs.update(fresh)

    def specs(self) -> list[DeploymentSpec]:
        return [self._specs[name] for name in sorted(self._specs)]
