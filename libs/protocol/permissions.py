"""Who may publish and subscribe to what on the bus: one NATS user per role.

The bus is private: `sllm up` (and the shipped NATS configuration for compose) gives every
process a role's credentials, and nats-server enforces these lists. Only the scheduler may
order loads, unloads and migrations; routers may only ask for placements and generations;
workers and storage services serve their own subjects. Replies and token streams travel on
``_INBOX.>`` subjects, which every role may use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .endpoints import (
    SCHED_DEPLOY,
    SCHED_ESTIMATE,
    SCHED_MIGRATE,
    SCHED_PATCH,
    SCHED_PLACE,
    SCHED_UNDEPLOY,
    SERVICE_INFO,
    STORAGE_ENSURE,
    STORAGE_EVICT,
    STORAGE_INSPECT,
    STORAGE_QUARANTINE,
    WORKER_ADOPT,
    WORKER_ADOPT_ABORT,
    WORKER_ADOPT_COMMIT,
    WORKER_ADOPT_DELTA,
    WORKER_EMBED,
    WORKER_GENERATE,
    WORKER_LOAD,
    WORKER_MIGRATE,
    WORKER_RUNNING,
    WORKER_UNLOAD,
)
from .subjects import Endpoint, Subjects, check_root

Role = Literal["router", "scheduler", "worker", "storage", "admin"]
ROLES: tuple[Role, ...] = ("router", "scheduler", "worker", "storage", "admin")

INBOXES = "_INBOX.>"
MICRO = "$SRV.>"  # NATS micro discovery (ping/info/stats) that every service answers


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def pattern(endpoint: Endpoint[Any, Any], root: str) -> str:
    """The endpoint's subject with every parameter as a ``*`` wildcard."""
    rendered = endpoint.template
    for param in endpoint.params:
        rendered = rendered.replace("{" + param + "}", "*")
    return f"{check_root(root)}.{rendered}"


def permissions(role: Role, root: str) -> Permissions:
    """What ``role`` may publish and subscribe to under ``root``."""
    if role == "admin":  # `sllm up`, the CLI and operators' tools
        return Permissions(publish=(">",), subscribe=(">",))
    sub = Subjects(root)

    def p(*endpoints: Endpoint[Any, Any]) -> tuple[str, ...]:
        return tuple(pattern(e, root) for e in endpoints)

    cancel = sub.all_stream_cancels
    common_pub = (INBOXES, sub.all_events, cancel, *p(SERVICE_INFO))
    common_sub = (INBOXES, MICRO, cancel, *p(SERVICE_INFO))
    own: dict[Role, Permissions] = {
        "router": Permissions(
            publish=(
                *p(
                    SCHED_PLACE,
                    SCHED_ESTIMATE,
                    SCHED_DEPLOY,
                    SCHED_PATCH,
                    SCHED_UNDEPLOY,
                    WORKER_GENERATE,
                    WORKER_EMBED,
                ),
                sub.demand,
            ),
            subscribe=(sub.all_events,),
        ),
        "scheduler": Permissions(
            publish=p(
                WORKER_LOAD,
                WORKER_UNLOAD,
                WORKER_MIGRATE,
                WORKER_RUNNING,
                STORAGE_ENSURE,
                STORAGE_EVICT,
                STORAGE_INSPECT,
            ),
            subscribe=(
                *p(
                    SCHED_PLACE,
                    SCHED_ESTIMATE,
                    SCHED_DEPLOY,
                    SCHED_PATCH,
                    SCHED_UNDEPLOY,
                    SCHED_MIGRATE,
                ),
                sub.demand,
                sub.all_events,
            ),
        ),
        "worker": Permissions(
            publish=p(
                STORAGE_ENSURE,
                STORAGE_QUARANTINE,
                WORKER_ADOPT,
                WORKER_ADOPT_DELTA,
                WORKER_ADOPT_COMMIT,
                WORKER_ADOPT_ABORT,
            ),
            subscribe=p(
                WORKER_LOAD,
                WORKER_UNLOAD,
                WORKER_GENERATE,
                WORKER_EMBED,
                WORKER_MIGRATE,
                WORKER_RUNNING,
                WORKER_ADOPT,
                WORKER_ADOPT_DELTA,
                WORKER_ADOPT_COMMIT,
                WORKER_ADOPT_ABORT,
            ),
        ),
        "storage": Permissions(
            publish=(),
            subscribe=p(STORAGE_ENSURE, STORAGE_EVICT, STORAGE_INSPECT, STORAGE_QUARANTINE),
        ),
    }
    mine = own[role]
    return Permissions(
        publish=(*mine.publish, *common_pub), subscribe=(*mine.subscribe, *common_sub)
    )
