"""The deployments API: register, list, inspect and delete models.

Changes go through the scheduler (it owns instances and workers); reads come straight from
cluster state. A ``checkpoint_uri`` outside the registry allow-list is refused here, before the
scheduler stores anything (the storage service checks again when it fetches).
"""

from __future__ import annotations

from libs.common.registry_allow import AllowList, SourceRefused
from libs.protocol.endpoints import SCHED_DEPLOY, SCHED_UNDEPLOY
from libs.protocol.errors import BadRequestError, NotFoundError
from libs.protocol.messages import DeploymentSpec, DeployRequest, UndeployRequest

from .backend import Backend
from .cluster import read
from .deployment_schema import DeploymentDeleted, DeploymentList, DeploymentOut, InstanceOut


def _not_found(name: str) -> NotFoundError:
    return NotFoundError(f"no deployment named {name!r}", detail={"param": "name"})


class DeploymentsApi:
    def __init__(self, backend: Backend, allow: AllowList) -> None:
        self.backend = backend
        self.allow = allow

    async def _out(self, spec: DeploymentSpec) -> DeploymentOut:
        state = self.backend.view.state
        records = await read("instances", lambda: state.instances(spec.name))
        return DeploymentOut(**spec.model_dump(), instances=[InstanceOut.of(r) for r in records])

    async def put(self, spec: DeploymentSpec) -> tuple[DeploymentOut, bool]:
        """Create or update; True when it was created."""
        if spec.min_instances > spec.max_instances:
            raise BadRequestError(
                f"min_instances ({spec.min_instances}) exceeds max_instances "
                f"({spec.max_instances})",
                detail={"param": "min_instances"},
            )
        try:
            self.allow.check(spec.checkpoint_uri)
        except SourceRefused as exc:
            raise BadRequestError(
                f"checkpoint_uri: {exc.reason}", detail={"param": "checkpoint_uri"}
            ) from None
        b = self.backend
        reply = await b.bus.request(
            SCHED_DEPLOY,
            DeployRequest(spec=spec.model_copy(update={"created_at": 0.0})),
            timeout=b.settings.place_timeout,
        )
        b.view.forget_deployment(spec.name)
        return await self._out(reply.spec), reply.created

    async def list(self) -> DeploymentList:
        state = self.backend.view.state
        specs = await read("deployments", state.deployments)
        return DeploymentList(data=[await self._out(s) for s in specs])

    async def get(self, name: str) -> DeploymentOut:
        state = self.backend.view.state
        spec = await read("deployments", lambda: state.get_deployment(name))
        if spec is None:
            raise _not_found(name)
        return await self._out(spec)

    async def delete(self, name: str) -> DeploymentDeleted:
        b = self.backend
        if await read("deployments", lambda: b.view.state.get_deployment(name)) is None:
            raise _not_found(name)
        reply = await b.bus.request(
            SCHED_UNDEPLOY,
            UndeployRequest(name=name),
            # Stopping instances waits for their workers to unload.
            timeout=max(b.settings.place_timeout, 30.0),
        )
        b.view.forget_deployment(name)
        b.view.changed(name)
        return DeploymentDeleted(name=reply.name, stopped_instances=reply.stopped_instances)
