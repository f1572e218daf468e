"""An embedded NATS cluster: N nats-servers with JetStream on free loopback ports, routed to
each other as one cluster.

What the high-availability tests run against (and what a single machine can run to try a
cluster): kill any one member and the others carry on; restart it and it rejoins. Each member
is an `EmbeddedNats` (same users, same TLS), told about the others with command-line flags.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

from .embedded import EmbeddedNats, EmbeddedServerError, OwnDataDir, free_port
from .server_config import NatsUser, ServerTls


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free a moment ago."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class EmbeddedNatsCluster(OwnDataDir):
    """``size`` nats-servers forming the cluster ``name``: each with its own client, route
    and monitoring port, data directory and server name (``<name>-<i>``), and routes to all
    the others. JetStream runs clustered, so streams can keep replicas on several members.

    Clients connect with `urls` / `url_for` (every member, comma-separated: `Bus.connect`
    fails over between them). `kill` and `restart` act on one member, keeping its ports and
    data, as a crash and a recovery would.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        name: str = "sllm",
        data_dir: str | os.PathLike[str] | None = None,
        users: tuple[NatsUser, ...] = (),
        tls: ServerTls | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one server")
        self.name = name
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="sllm-nats-cluster-"))
        ports = _free_ports(3 * size)
        self.route_ports = ports[size : 2 * size]
        self.http_ports = ports[2 * size :]  # monitoring: how readiness is read
        self.members = [
            EmbeddedNats(
                port=ports[i],
                data_dir=self.data_dir / f"n{i}",
                users=users,
                tls=tls,
                extra_args=self._cluster_args(i),
            )
            for i in range(size)
        ]

    def server_name(self, i: int) -> str:
        return f"{self.name}-{i}"

    def _cluster_args(self, i: int) -> list[str]:
        others = [f"nats://127.0.0.1:{p}" for j, p in enumerate(self.route_ports) if j != i]
        args = ["--server_name", self.server_name(i), "--cluster_name", self.name]
        args += ["--cluster", f"nats://127.0.0.1:{self.route_ports[i]}"]
        args += ["--routes", ",".join(others)] if others else []
        return [*args, "-m", str(self.http_ports[i])]

    # --- addresses ------------------------------------------------------------------------

    @property
    def urls(self) -> str:
        """Every member's address, comma-separated, without credentials (what logs show)."""
        return ",".join(m.url for m in self.members)

    def url_for(self, user: str) -> str:
        """Every member's address with ``user``'s credentials in each."""
        return ",".join(m.url_for(user) for m in self.members)

    def index_of(self, port: int | None) -> int:
        """Which member listens for clients on ``port`` (a connection's ``connected_url``)."""
        for i, member in enumerate(self.members):
            if member.port == port:
                return i
        raise ValueError(f"no member of the cluster listens on port {port}")

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Self:
        """Start every member and wait until the cluster is formed (each member routed to all
        the others) and JetStream has a meta leader that every member has caught up with."""
        try:
            for member in self.members:
                member.start()
            self.wait_formed(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, i: int) -> None:
        """Hard-kill member ``i``, as a crash would; the others carry on."""
        self.members[i].kill()

    def restart(self, i: int, timeout: float = 30.0) -> None:
        """Start member ``i`` again (same ports, same data) and wait until it has rejoined."""
        self.members[i].restart()
        self.wait_formed(timeout)

    def wait_formed(self, timeout: float = 30.0) -> None:
        """Wait until every running member routes to every other running one, sees the
        JetStream meta leader, and reports itself healthy (JetStream caught up)."""
        deadline = time.monotonic() + timeout
        why = "not checked yet"
        while time.monotonic() < deadline:
            why = self._not_formed()
            if not why:
                return
            time.sleep(0.05)
        raise EmbeddedServerError(f"NATS cluster {self.name} did not form: {why}")

    def _not_formed(self) -> str:
        """Why the cluster is not formed yet ("" once it is)."""
        running = [i for i, m in enumerate(self.members) if m.running]
        names = {self.server_name(i) for i in running}
        for i in running:
            me = self.server_name(i)
            routez = self._monitor(i, "routez")
            routed = {r.get("remote_name", "") for r in (routez or {}).get("routes") or []}
            if missing := names - routed - {me}:
                return f"{me} has no route to {sorted(missing)}"
            jsz = self._monitor(i, "jsz") or {}
            if not (jsz.get("meta_cluster") or {}).get("leader"):
                return f"{me} sees no JetStream meta leader"
            health = self._monitor(i, "healthz")
            if (health or {}).get("status") != "ok":
                return f"{me} is not healthy yet: {health}"
        return ""

    def _monitor(self, i: int, endpoint: str) -> dict[str, Any] | None:
        """Member ``i``'s monitoring endpoint as JSON (None if it does not answer)."""
        url = f"http://127.0.0.1:{self.http_ports[i]}/{endpoint}"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                data: dict[str, Any] = json.loads(resp.read())
                return data
        except urllib.error.HTTPError as exc:  # /healthz answers 503 with a JSON reason
            with contextlib.suppress(ValueError):
                body: dict[str, Any] = json.loads(exc.read())
                return body
            return None
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        for member in self.members:
            member.stop()
