"""`sllm node`: one host's share of a cluster — its storage service and one worker per device —
joined to the cluster by the NATS and Valkey URLs, and kept running like `sllm up` keeps its
children (a process that dies is restarted after a backoff; the others serve on).

The router and the scheduler run elsewhere (another host, `sllm up`, compose or Kubernetes);
a node needs only to reach NATS and Valkey. Credentials: the URLs in ``SLLM_NATS_URL`` /
``SLLM_REDIS_URL`` (one for both roles), or a `sllm credentials` directory
(``SLLM_CREDENTIALS_DIR``), from which the storage service and the workers each take their own
role's URLs (``storage.nats-url``, ``worker.redis-url``, ...).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from libs.common.redis_client import connect_redis
from libs.common.settings import CommonSettings, SettingsError, setting
from libs.protocol import Keys
from libs.protocol.errors import CredentialsError, UnavailableError, redact_url
from libs.protocol.permissions import Role

from .supervise import Backoff, Child, ChildSpec, Supervisor, stop_children

BACKOFF = Backoff(first_s=0.5, max_s=30.0, healthy_after_s=60.0)


@dataclass(frozen=True)
class NodeSettings(CommonSettings):
    node_id: str = setting("", "this node's id (default: the host name)")
    devices: tuple[str, ...] = setting(
        ("cpu",), "`sllm node`: one worker per device (cuda:0,cuda:1 or cpu)"
    )
    data_dir: Path = setting(Path(".sllm"), "`sllm node`: where the SSD tier lives")
    dram_dir: str = setting("", "`sllm node`: the DRAM tier (tmpfs; default /dev/shm/sllm-<node>)")
    dram_capacity_gb: float = setting(8.0, "DRAM tier capacity in GB")
    credentials_dir: str = setting(
        "", "`sllm node`: a `sllm credentials` directory with each role's URLs"
    )
    startup_timeout: float = setting(120.0, "seconds `sllm node` waits for its services")

    def validate(self) -> None:
        super().validate()
        if not self.devices:
            raise SettingsError("SLLM_DEVICES names no device")

    @property
    def node(self) -> str:
        return self.node_id or socket.gethostname().split(".")[0]

    @property
    def dram(self) -> Path:
        return Path(self.dram_dir) if self.dram_dir else Path(f"/dev/shm/sllm-{self.node}")

    def role_urls(self, role: Role) -> dict[str, str]:
        """``SLLM_NATS_URL`` and ``SLLM_REDIS_URL`` for ``role``: from the credentials
        directory when one is given (its files win), else the settings' own."""
        urls = {"SLLM_NATS_URL": self.nats_url, "SLLM_REDIS_URL": self.redis_url}
        if self.credentials_dir:
            for var, suffix in (("SLLM_NATS_URL", "nats-url"), ("SLLM_REDIS_URL", "redis-url")):
                path = Path(self.credentials_dir) / f"{role}.{suffix}"
                if not path.is_file():
                    raise SettingsError(f"SLLM_CREDENTIALS_DIR: no {path.name} in {path.parent}")
                urls[var] = path.read_text().strip()
        return urls


def node_children(
    node: str,
    devices: tuple[str, ...],
    ssd_dir: Path,
    dram_dir: Path,
    dram_capacity_gb: float,
    torch_threads: int | None = None,
) -> list[ChildSpec]:
    """One host's processes: its storage service, then a worker per device (``<node>-w<i>``).
    ``torch_threads``: for CPU workers sharing the host's cores (None: the worker decides)."""
    storage_env = {
        "SLLM_NODE_ID": node,
        "SLLM_SSD_DIR": str(ssd_dir),
        "SLLM_DRAM_DIR": str(dram_dir),
        "SLLM_DRAM_CAPACITY_GB": str(dram_capacity_gb),
    }
    children = [ChildSpec(f"storage/{node}", "services.storage", storage_env)]
    for w, device in enumerate(devices):
        worker = f"{node}-w{w}"
        env = {"SLLM_NODE_ID": node, "SLLM_INSTANCE_ID": worker, "SLLM_DEVICE": device}
        if torch_threads is not None and "SLLM_TORCH_THREADS" not in os.environ:
            env["SLLM_TORCH_THREADS"] = str(torch_threads)
        children.append(ChildSpec(f"worker/{worker}", "services.worker", env))
    return children


def _alive_ids(node: str, devices: tuple[str, ...]) -> list[tuple[str, str]]:
    return [("storage", f"storage-{node}")] + [
        ("worker", f"{node}-w{w}") for w in range(len(devices))
    ]


async def _all_alive(settings: NodeSettings, redis_url: str) -> bool:
    keys = Keys(settings.root)
    client = await connect_redis(redis_url, tls=settings.redis_tls)
    try:
        ids = _alive_ids(settings.node, settings.devices)
        return all([await client.exists(keys.alive(kind, i)) for kind, i in ids])
    finally:
        await client.aclose()


def node(settings: NodeSettings) -> int:
    """Run this host's services until SIGINT/SIGTERM; returns the process exit code."""
    import asyncio

    stop: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _: stop.append(signum))
    signal.signal(signal.SIGTERM, lambda signum, _: stop.append(signum))
    if not (settings.credentials_dir or (settings.nats_url and settings.redis_url)):
        raise SettingsError(
            "`sllm node` needs SLLM_NATS_URL and SLLM_REDIS_URL (or SLLM_CREDENTIALS_DIR)"
        )
    name = settings.node
    cpu_workers = sum(1 for d in settings.devices if d == "cpu")
    threads = max(1, (os.cpu_count() or 1) // cpu_workers) if cpu_workers else None
    specs = node_children(
        name,
        settings.devices,
        settings.data_dir.resolve() / name / "ssd",
        settings.dram,
        settings.dram_capacity_gb,
        threads,
    )
    # The node's own SLLM_* settings reach its children as they are (root, heartbeats, TLS
    # files...); each child's ids, tiers and role URLs are set per child below (an instance id
    # given to the node would name every child alike: it is not passed on).
    base_env = {
        **{k: v for k, v in os.environ.items() if k != "SLLM_INSTANCE_ID"},
        "PYTHONUNBUFFERED": "1",
    }
    supervisor = Supervisor()
    children: list[Child] = []
    try:
        for spec in specs:
            role: Role = "storage" if spec.module == "services.storage" else "worker"
            spec.env.update(settings.role_urls(role))
            child = Child(spec, base_env, BACKOFF)
            child.start()
            children.append(child)
            supervisor.members.append(child)
        admin_redis = settings.role_urls("storage")["SLLM_REDIS_URL"]
        print(f"sllm node {name}: Redis {redact_url(admin_redis)}", flush=True)
        deadline = time.monotonic() + settings.startup_timeout
        up = False
        while not stop:
            supervisor.tick()
            if not up:
                with contextlib.suppress(UnavailableError):
                    up = asyncio.run(_all_alive(settings, admin_redis))
                if up:
                    print(_banner(settings), flush=True)
                elif time.monotonic() > deadline:
                    print(
                        f"sllm node {name}: not up after {settings.startup_timeout:g}s", flush=True
                    )
                    return 1
            time.sleep(0.2)
        print(f"sllm node {name}: stopping", flush=True)
        return 0
    except CredentialsError as exc:
        print(f"sllm node: {exc}", flush=True)
        return 2
    finally:
        stop_children(children)
        if not settings.dram_dir:  # this node's own tmpfs directory: it holds RAM
            shutil.rmtree(settings.dram, ignore_errors=True)


def _banner(settings: NodeSettings) -> str:
    workers = ", ".join(f"{settings.node}-w{w} ({d})" for w, d in enumerate(settings.devices))
    return (
        f"sllm node {settings.node} is up: storage-{settings.node} (SSD tier under "
        f"{settings.data_dir.resolve() / settings.node}, DRAM tier {settings.dram}), "
        f"workers {workers}. Ctrl-C stops it."
    )
