"""The deployments API: register, list, inspect and delete models.

Changes go through the scheduler (it owns instances and workers); reads come straight from
cluster state. A ``checkpoint_uri`` outside the registry allow-list is refused here, before the
scheduler stores anything (the storage service checks again when it fetches).
"""

from __future__ import annotations

from libs.common.hub_ids import normalise_checkpoint_uri
from libs.common.registry_allow import AllowList, SourceRefused
from libs.protocol.endpoints import SCHED_DEPLOY, SCHED_PATCH, SCHED_UNDEPLOY
from libs.protocol.errors import BadRequestError, InvalidCheckpointError, NotFoundError
from libs.protocol.messages import (
    KNOBS,
    DeploymentSpec,
    DeployRequest,
    PatchDeploymentRequest,
    UndeployRequest,
)

from .backend import Backend
from .cluster import read
from .deployment_schema import (
    DeploymentDeleted,
    DeploymentList,
    DeploymentOut,
    DeploymentPatchIn,
    InstanceOut,
)


def _not_found(name: str) -> NotFoundError:
    return NotFoundError(f"no deployment named {name!r}", detail={"param": "name"})


class DeploymentsApi:
    def __init__(self, backend: Backend, allow: AllowList) -> None:
        self.backend = backend
        self.allow = allow

    async def _out(self, spec: DeploymentSpec) -> DeploymentOut:
        state = self.backend.view.state
        records = await read("instances", lambda: state.instances(spec.name))
        adapter = {"base": spec.base, "adapter_uri": spec.checkpoint_uri} if spec.base else {}
        return DeploymentOut(
            **{**spec.model_dump(), "base": None, **adapter},
            instances=[InstanceOut.of(r) for r in records],
        )

    async def create(self, spec: DeploymentSpec) -> DeploymentOut:
        """Create a deployment: a storage service checks its checkpoint first (422 naming what
        is wrong); a name that exists is a 409 (change it with `patch`). A plain Hugging Face
        id (``org/name``) is stored as ``hf://org/name``."""
        spec = spec.model_copy(
            update={"checkpoint_uri": normalise_checkpoint_uri(spec.checkpoint_uri)}
        )
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
            DeployRequest(spec=spec.model_copy(update={"created_at": 0.0}), mode="create"),
            # The checkpoint is checked first: a tokenizer to load, a hub to ask.
            timeout=max(b.settings.place_timeout, 90.0),
        )
        b.view.forget_deployment(spec.name)
        return await self._out(reply.spec)

    async def patch(self, name: str, body: DeploymentPatchIn) -> DeploymentOut:
        """Change a deployment's autoscaling knobs, without redeploying it."""
        b = self.backend
        if body.checkpoint_uri is not None:
            spec = await read("deployments", lambda: b.view.state.get_deployment(name))
            if spec is None:
                raise _not_found(name)
            if spec.checkpoint_uri != normalise_checkpoint_uri(body.checkpoint_uri):
                raise InvalidCheckpointError(
                    "checkpoint_uri: a deployment's checkpoint cannot change; delete the "
                    "deployment and deploy it again, or deploy it under a new name",
                    detail={"param": "checkpoint_uri"},
                )
        knobs = {k: getattr(body, k) for k in KNOBS if getattr(body, k) is not None}
        reply = await b.bus.request(
            SCHED_PATCH,
            PatchDeploymentRequest(name=name, **knobs),
            timeout=b.settings.place_timeout,
        )
        b.view.forget_deployment(name)
        return await self._out(reply.spec)

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
