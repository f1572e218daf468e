"""``sllm up``: the whole system on one machine, in the foreground, until Ctrl-C.

Starts embedded NATS and Redis (unless URLs are given), then the scheduler, one storage service
per simulated node, the workers of each node and the router as child processes; waits until
all of them are alive; prints how to call it; restarts any of them that exits (with backoff,
`supervise.py`); on SIGINT/SIGTERM stops everything in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from libs.common.embedded import EmbeddedNats, EmbeddedRedis
from libs.common.redis_client import connect_redis
from libs.common.tls import TlsFiles, nats_tls
from libs.protocol import Bus, Keys
from libs.protocol.endpoints import SCHED_DEPLOY
from libs.protocol.errors import CredentialsError, UnavailableError, redact_url
from libs.protocol.messages import DeploymentSpec, DeployRequest
from libs.protocol.permissions import Role

from .credentials import Credentials, redis_user, role_of, write_env_file
from .ha import start_ha
from .node import node_children
from .settings import UpSettings
from .supervise import Backoff, Child, ChildSpec, ServerChild, Supervisor, stop_children

# Restarts: 0.5 s after a first crash, doubling to 30 s for a process that keeps crashing;
# a minute of running resets it. A crash loop never stops the other services.
BACKOFF = Backoff(first_s=0.5, max_s=30.0, healthy_after_s=60.0)
# Before the cluster is up, a process that exits this many times in a row is a configuration
# problem (a port in use, a bad setting): say so and stop rather than retry for minutes.
STARTUP_CRASHES = 3


@dataclass
class Plan:
    """What `sllm up` will run: derived from the settings, no side effects."""

    children: list[ChildSpec] = field(default_factory=list)
    expected_alive: dict[str, int] = field(default_factory=dict)


def dram_root(settings: UpSettings) -> Path:
    """This run's DRAM tiers (tmpfs): removed when `sllm up` stops, since they hold RAM."""
    return Path(f"/dev/shm/sllm-{settings.root}-{os.getpid()}")


def torch_threads_per_worker(settings: UpSettings, cpus: int | None = None) -> int:
    """The machine's cores shared out among the CPU workers (at least one each).

    Workers set ``OMP_WAIT_POLICY=PASSIVE``, so their idle torch threads sleep and the router
    and NATS get a core when they need one. An earlier rule left a core to the services
    (cores - 1): that was for spinning threads; with sleeping ones it only halved a batching
    worker on 2 cores (`make bench-throughput`, medium model, 64-token prompts: 26.5 -> 36.9
    tok/s at 1 client, 49 -> 86 at 4, 130 -> 183 at 16), and a warm one-token request cost
    no more (2.29 ms of overhead with 2 threads, 2.40 with 1: benchmarks/README.md)."""
    workers = settings.nodes * settings.workers_per_node
    cores = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(1, cores // workers)


def plan(settings: UpSettings, data_dir: Path) -> Plan:
    p = Plan()
    p.children.append(ChildSpec("scheduler", "services.scheduler", {}))
    threads = torch_threads_per_worker(settings)
    for n in range(settings.nodes):
        node = f"node-{n}"
        # CPU workers share this machine's cores: each taking all of them (torch's default)
        # oversubscribes it and makes every forward pass several times slower.
        p.children += node_children(
            node,
            ("cpu",) * settings.workers_per_node,
            data_dir / node / "ssd",
            dram_root(settings) / node,
            settings.dram_capacity_gb,
            threads,
        )
    p.children.append(
        ChildSpec(
            "router",
            "services.router",
            {"SLLM_HOST": settings.host, "SLLM_PORT": str(settings.port)},
        )
    )
    p.expected_alive = {
        "scheduler": 1,
        "storage": settings.nodes,
        "worker": settings.nodes * settings.workers_per_node,
        "router": 1,
    }
    return p


@dataclass
class BusAccess:
    """How `sllm up` and its children reach NATS and Redis (URLs with credentials)."""

    nats: str  # as admin (sllm up itself, operators)
    redis: str
    role_urls: dict[Role, str] = field(default_factory=dict)  # NATS per service role
    redis_role_urls: dict[Role, str] = field(default_factory=dict)  # Valkey per service role
    credentials_file: Path | None = None


def _start_servers(settings: UpSettings, data_dir: Path, supervisor: Supervisor) -> BusAccess:
    """Start (and supervise) the embedded NATS and Valkey the settings do not point to
    elsewhere, each requiring the credentials generated for this run."""
    creds = Credentials.generate()
    access = BusAccess(nats=settings.nats_url, redis=settings.redis_url)
    if settings.ha:  # both engines in high availability (the settings check: none given)
        ha = start_ha(creds, settings.root, data_dir, supervisor, BACKOFF)
        access.nats, access.redis = ha.nats, ha.redis
        access.role_urls, access.redis_role_urls = ha.nats_roles, ha.redis_roles
    if not settings.nats_url and not settings.ha:
        nats = EmbeddedNats(data_dir=data_dir / "nats", users=creds.nats_users(settings.root))
        supervisor.members.append(ServerChild(nats, BACKOFF))
        access.role_urls = {role: nats.url_for(role) for role in creds.nats}
        access.nats = nats.url_for("admin")
    if not settings.redis_url and not settings.ha:
        # The state of record: an append-only file under the data dir (fsync every
        # second), so deployments survive a crash of the server and a restart of `sllm up`.
        redis = EmbeddedRedis(
            data_dir=data_dir / "redis", persist=True, users=creds.redis_users(settings.root)
        )
        supervisor.members.append(ServerChild(redis, BACKOFF))
        access.redis_role_urls = {role: redis.url_for(redis_user(role)) for role in creds.redis}
        access.redis = redis.client_url
    for member in supervisor.members:
        member.start()
    if not (settings.nats_url and settings.redis_url):
        access.credentials_file = write_env_file(
            data_dir, {"SLLM_NATS_URL": access.nats, "SLLM_REDIS_URL": access.redis}
        )
    return access


async def _prepare_bus(nats_url: str, settings: UpSettings) -> None:
    bus = await Bus.connect(
        nats_url, name="sllm-up", root=settings.root, tls=nats_tls(settings.nats_tls)
    )
    try:
        # Against a NATS cluster the events keep three copies, so they survive the loss of
        # any one server (a lone server keeps one).
        await bus.ensure_event_stream(replicas=min(3, bus.cluster_size))
    finally:
        await bus.close()


async def _deploy(nats_url: str, settings: UpSettings, name: str, uri: str) -> None:
    bus = await Bus.connect(
        nats_url, name="sllm-up", root=settings.root, tls=nats_tls(settings.nats_tls)
    )
    try:
        spec = DeploymentSpec(name=name, checkpoint_uri=uri)
        # A storage service checks the checkpoint first (a tokenizer to load: seconds).
        await bus.request(SCHED_DEPLOY, DeployRequest(spec=spec), timeout=120)
    finally:
        await bus.close()


async def _alive_counts(
    redis_url: str, keys: Keys, kinds: list[str], tls: TlsFiles
) -> dict[str, int]:
    client = await connect_redis(redis_url, tls=tls)
    try:
        counts = {}
        for kind in kinds:
            counts[kind] = len([k async for k in client.scan_iter(match=keys.alive_pattern(kind))])
        return counts
    finally:
        await client.aclose()


def _router_ready(host: str, port: int) -> bool:
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/ready"
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _demo_model(data_dir: Path) -> Path:
    from libs.demo import read_marker, write_demo_model

    path = data_dir / "models" / "demo"
    if not (path.exists() and read_marker(path) is not None):
        print(f"sllm: writing the demo model to {path}", flush=True)
        write_demo_model(path)
    return path


class _Stop(Exception):
    pass


def up(settings: UpSettings) -> int:
    """Run the system until SIGINT/SIGTERM; returns the process exit code."""
    t0 = time.monotonic()
    stop_signal: list[int] = []

    def on_signal(signum: int, _: object) -> None:
        stop_signal.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    the_plan = plan(settings, data_dir)
    supervisor = Supervisor()
    code = 0
    try:
        bus = _start_servers(settings, data_dir, supervisor)
        print(f"sllm: NATS {redact_url(bus.nats)}  Redis {redact_url(bus.redis)}", flush=True)
        if bus.credentials_file is not None:
            print(f"sllm: credentials for operator tools in {bus.credentials_file}", flush=True)
        asyncio.run(_prepare_bus(bus.nats, settings))
        model = Path(settings.model) if settings.model else _demo_model(data_dir)

        base_env = {
            # Service settings the user set (SLLM_MAX_BATCH=1 sllm up ...) pass through;
            # the ones `sllm up` decides per child (ids, ports, tier dirs) never do.
            **{k: v for k, v in os.environ.items() if k not in _PER_CHILD_VARS},
            **{k: v for k, v in settings.as_env().items() if k in _COMMON_VARS},
            "SLLM_NATS_URL": bus.nats,
            "SLLM_REDIS_URL": bus.redis,
            "PYTHONUNBUFFERED": "1",
        }
        # Storage fetches only from allowed sources: this run's models folder and the model
        # it serves, besides whatever the user allowed; with no list of the user's, the
        # Hugging Face Hub too (hf://: `sllm deploy m Qwen/Qwen2-0.5B` works out of the box).
        allowed = [str(data_dir / "models"), str(model.resolve())]
        if os.environ.get("SLLM_REGISTRY_ALLOW"):
            allowed.append(os.environ["SLLM_REGISTRY_ALLOW"])
        else:
            allowed.append("hf://")
        base_env["SLLM_REGISTRY_ALLOW"] = ",".join(allowed)
        for spec in the_plan.children:
            # Each service connects as its role, within its permissions.
            if bus.role_urls:
                spec.env["SLLM_NATS_URL"] = bus.role_urls[role_of(spec.module)]
            if bus.redis_role_urls:
                spec.env["SLLM_REDIS_URL"] = bus.redis_role_urls[role_of(spec.module)]
            child = Child(spec, base_env, BACKOFF)
            child.start()
            supervisor.members.append(child)
        _wait_until_up(settings, the_plan, supervisor, bus.redis, stop_signal)
        name = model_name(settings, model)
        asyncio.run(_deploy(bus.nats, settings, name, model.resolve().as_uri()))
        took = time.monotonic() - t0
        print(_banner(settings, name, model, took), flush=True)
        while not stop_signal:
            supervisor.tick()  # a child that exits is restarted (backoff); the rest serve on
            time.sleep(0.2)
        print("sllm: stopping", flush=True)
    except _Stop:
        code = 1
    except CredentialsError as exc:
        print(f"sllm: {exc}", flush=True)
        code = 2
    except KeyboardInterrupt:
        pass
    finally:
        code = stop_children([m for m in supervisor.members if isinstance(m, Child)]) or code
        for member in reversed(supervisor.members):
            if isinstance(member, ServerChild):
                member.server.stop()
        shutil.rmtree(dram_root(settings), ignore_errors=True)
    return code


_PER_CHILD_VARS = {
    "SLLM_INSTANCE_ID",
    "SLLM_NODE_ID",
    "SLLM_DEVICE",
    "SLLM_HOST",
    "SLLM_PORT",
    "SLLM_SSD_DIR",
    "SLLM_DRAM_DIR",
    "SLLM_NATS_URL",
    "SLLM_REDIS_URL",
}

_COMMON_VARS = {
    "SLLM_ROOT",
    "SLLM_LOG_LEVEL",
    "SLLM_REQUEST_TIMEOUT",
    "SLLM_HEARTBEAT_INTERVAL",
    "SLLM_HEARTBEAT_TTL",
}


def _wait_until_up(
    settings: UpSettings, p: Plan, supervisor: Supervisor, redis_url: str, stop: list[int]
) -> None:
    """Until every service is alive and the router ready; a child that exits meanwhile is
    restarted like later on, and only the start-up timeout gives up."""
    deadline = time.monotonic() + settings.startup_timeout
    keys = Keys(settings.root)
    counts: dict[str, int] = {}
    while True:
        if stop:
            raise _Stop
        supervisor.tick()
        for member in supervisor.members:
            if member.crashes >= STARTUP_CRASHES:  # misconfigured, not unlucky
                print(f"sllm: {member.name} failed to start {member.crashes} times", flush=True)
                raise _Stop
        with contextlib.suppress(UnavailableError):
            counts = asyncio.run(
                _alive_counts(redis_url, keys, list(p.expected_alive), settings.redis_tls)
            )
            if counts == p.expected_alive and _router_ready(settings.host, settings.port):
                return
        if time.monotonic() > deadline:
            print(f"sllm: not up after {settings.startup_timeout:g}s: alive {counts}", flush=True)
            raise _Stop
        time.sleep(0.2)


def model_name(settings: UpSettings, model: Path) -> str:
    """The deployment name: ``demo`` for the demo model, else the directory's name."""
    return "demo" if not settings.model else model.resolve().name


def _banner(settings: UpSettings, name: str, model: Path, took: float) -> str:
    base = f"http://{settings.host}:{settings.port}"
    body = (
        '{"model": "' + name + '", "messages": [{"role": "user", "content": "Hello!"}], '
        '"max_tokens": 32}'
    )
    ha = " (HA: 3 NATS servers; Valkey, a replica, 3 sentinels)" if settings.ha else ""
    return (
        f"\nsllm is up in {took:.1f}s{ha}: {settings.nodes} node(s) x "
        f"{settings.workers_per_node} worker(s), REST API on {base}\n"
        f"  deployed model {name!r} from {model}\n"
        f"  curl {base}/v1/models\n"
        f"  curl {base}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        f"       -d '{body}'\n"
        f"  sllm events            # tail the monitoring events\n"
        f"Press Ctrl-C to stop.\n"
    )
