"""Deployment specs in the cluster state: one JSON record each, and the set of their names."""

from __future__ import annotations

import time
from typing import Any

from redis.exceptions import WatchError

from libs.protocol.messages import DeploymentSpec
from libs.protocol.schema import decode_json, encode_json

from .records import RedisRecords, text


class Deployments(RedisRecords):
    """Deployment specs, by name."""

    async def put_deployment(self, spec: DeploymentSpec) -> bool:
        """Create or replace; returns True if it was created."""
        if not spec.created_at:
            spec = spec.model_copy(update={"created_at": time.time()})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.deployment(spec.name), encode_json(spec))
            pipe.sadd(self.keys.deployments, spec.name)
            _, added = await pipe.execute()
        return bool(added)

    async def create_deployment(self, spec: DeploymentSpec) -> bool:
        """Store ``spec`` unless its name exists; False if it does (one of two concurrent
        creates of a name wins)."""
        if not spec.created_at:
            spec = spec.model_copy(update={"created_at": time.time()})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.deployment(spec.name), encode_json(spec), nx=True)
            pipe.sadd(self.keys.deployments, spec.name)
            stored, _ = await pipe.execute()
        return bool(stored)

    async def update_deployment(self, name: str, **changes: Any) -> DeploymentSpec | None:
        """Change fields of a stored deployment atomically (a concurrent change is retried on
        top, never overwritten); None if there is no such deployment."""
        key = self.keys.deployment(name)
        async with self.redis.pipeline(transaction=True) as pipe:
            for _ in range(64):
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        return None
                    spec = DeploymentSpec.model_validate(
                        {**decode_json(raw, DeploymentSpec).model_dump(), **changes}
                    )
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(key, encode_json(spec), xx=True)
                    await pipe.execute()
                    return spec
                except WatchError:
                    continue
        raise RuntimeError(f"deployment {name!r}: 64 concurrent changes in a row")

    async def get_deployment(self, name: str) -> DeploymentSpec | None:
        return await self._get(self.keys.deployment(name), DeploymentSpec)

    async def deployments(self) -> list[DeploymentSpec]:
        names = sorted(text(n) for n in await self.redis.smembers(self.keys.deployments))
        return await self._get_many((self.keys.deployment(n) for n in names), DeploymentSpec)

    async def delete_deployment(self, name: str) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.deployment(name))
            pipe.srem(self.keys.deployments, name)
            deleted, _ = await pipe.execute()
        return bool(deleted)
