"""`sllm up --ha`: the two engines in high availability on one machine, to try it out.

A 3-server NATS cluster (JetStream clustered: the events stream keeps 3 copies) and Valkey as a
primary, a replica and 3 sentinels, every process supervised like `sllm up`'s others: a NATS
server that dies comes back on its ports and rejoins the cluster; a Valkey server that dies
comes back as a replica of whichever server the sentinels name primary by then (never as a
second primary holding stale data); a sentinel comes back remembering what it had learnt.
The services get every NATS server (comma-separated) and the sentinels
(``redis+sentinel://``): they fail over by themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from libs.common.embedded import EmbeddedServerError
from libs.common.nats_cluster import EmbeddedNatsCluster
from libs.common.valkey_sentinel import EmbeddedSentinelSet
from libs.protocol.permissions import Role

from .credentials import Credentials, redis_user
from .supervise import Backoff, ServerChild, Supervisor


class ValkeyMemberChild(ServerChild):
    """A data server of the sentinel set, started again as a replica of the current primary."""

    def __init__(self, group: EmbeddedSentinelSet, index: int, backoff: Backoff) -> None:
        super().__init__(group.members[index], backoff)
        self.group = group
        self.index = index

    def launch(self) -> None:
        member = self.group.members[self.index]
        if member.running:
            return
        primary = self.group.primary()  # EmbeddedServerError until the sentinels agree
        if primary is member:
            # The sentinels have not failed over yet: starting it now would bring back the
            # old primary; the next try (after the backoff) asks again.
            raise EmbeddedServerError("waiting for the sentinels to name a new primary")
        member.upstream = primary.port
        member.restart()  # on its own port: the sentinels know it by that


@dataclass
class HaServers:
    """The URLs of the HA servers: the admin's and each role's."""

    nats: str
    redis: str
    nats_roles: dict[Role, str]
    redis_roles: dict[Role, str]


def start_ha(
    creds: Credentials, root: str, data_dir: Path, supervisor: Supervisor, backoff: Backoff
) -> HaServers:
    """Start the NATS cluster and the sentinel set (each waits until formed), and hand every
    process to ``supervisor``."""
    cluster = EmbeddedNatsCluster(3, data_dir=data_dir / "nats", users=creds.nats_users(root))
    cluster.start()
    for i, member in enumerate(cluster.members):
        supervisor.members.append(_named(ServerChild(member, backoff), f"nats-{i}"))
    valkey = EmbeddedSentinelSet(
        replicas=1,
        sentinels=3,
        persist=True,
        users=creds.redis_users(root),
        data_dir=data_dir / "valkey",
    )
    valkey.start()
    for i in range(len(valkey.members)):
        supervisor.members.append(_named(ValkeyMemberChild(valkey, i, backoff), f"valkey-{i}"))
    for i, sentinel in enumerate(valkey.sentinels):
        supervisor.members.append(_named(ServerChild(sentinel, backoff), f"sentinel-{i}"))
    return HaServers(
        nats=cluster.url_for("admin"),
        redis=valkey.client_url,
        nats_roles={role: cluster.url_for(role) for role in creds.nats},
        redis_roles={role: valkey.url_for(redis_user(role)) for role in creds.redis},
    )


def _named(child: ServerChild, name: str) -> ServerChild:
    child.name = name  # in `sllm up`'s messages: which of the three died
    return child
