"""``sllm up``: the whole system on one machine, in the foreground, until Ctrl-C.

Starts embedded NATS and Redis (unless URLs are given), then the scheduler, one storage service
per simulated node, the workers of each node and the router as child processes; waits until
all of them are alive; prints how to call it; on SIGINT/SIGTERM stops everything in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from libs.common.embedded import EmbeddedNats, EmbeddedRedis, EmbeddedServer
from libs.common.redis_client import connect_redis
from libs.protocol import Bus, Keys
from libs.protocol.endpoints import SCHED_DEPLOY
from libs.protocol.messages import DeploymentSpec, DeployRequest

from .settings import UpSettings

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Children get SIGTERM if `sllm up` itself dies (even by SIGKILL): no orphans.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# A child that crashes is restarted, as compose's `restart: unless-stopped` would, unless it
# crashes this often within a minute: then something is wrong and `sllm up` stops.
MAX_RESTARTS_PER_MINUTE = 5


@dataclass
class Child:
    name: str
    module: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    base_env: dict[str, str] = field(default_factory=dict)
    restarts: list[float] = field(default_factory=list)

    def start(self, base_env: Mapping[str, str]) -> None:
        self.base_env = dict(base_env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env={**self.base_env, **self.env},
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches `sllm up` only; it stops children in order
            preexec_fn=_die_with_parent,
        )

    @property
    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def restart(self) -> bool:
        """Start again after a crash; False when it crashed too often to keep trying."""
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < 60.0] + [now]
        if len(self.restarts) > MAX_RESTARTS_PER_MINUTE:
            return False
        self.start(self.base_env)
        return True


@dataclass
class Plan:
    """What `sllm up` will run: derived from the settings, no side effects."""

    children: list[Child] = field(default_factory=list)
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
    p.children.append(Child("scheduler", "services.scheduler", {}))
    for n in range(settings.nodes):
        node = f"node-{n}"
        p.children.append(
            Child(
                f"storage/{node}",
                "services.storage",
                {
                    "SLLM_NODE_ID": node,
                    "SLLM_SSD_DIR": str(data_dir / node / "ssd"),
                    "SLLM_DRAM_DIR": str(dram_root(settings) / node),
                    "SLLM_DRAM_CAPACITY_GB": str(settings.dram_capacity_gb),
                },
            )
        )
        for w in range(settings.workers_per_node):
            worker = f"{node}-w{w}"
            env = {"SLLM_NODE_ID": node, "SLLM_INSTANCE_ID": worker, "SLLM_DEVICE": "cpu"}
            if "SLLM_TORCH_THREADS" not in os.environ:
                # CPU workers share this machine's cores: each taking all of them (torch's
                # default) oversubscribes it and makes every forward pass several times slower.
                env["SLLM_TORCH_THREADS"] = str(torch_threads_per_worker(settings))
            p.children.append(Child(f"worker/{worker}", "services.worker", env))
    p.children.append(
        Child(
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


async def _prepare_bus(nats_url: str, redis_url: str, settings: UpSettings) -> None:
    bus = await Bus.connect(nats_url, name="sllm-up", root=settings.root)
    try:
        await bus.ensure_event_stream()
    finally:
        await bus.close()


async def _deploy(nats_url: str, settings: UpSettings, name: str, uri: str) -> None:
    bus = await Bus.connect(nats_url, name="sllm-up", root=settings.root)
    try:
        spec = DeploymentSpec(name=name, checkpoint_uri=uri)
        await bus.request(SCHED_DEPLOY, DeployRequest(spec=spec), timeout=30)
    finally:
        await bus.close()


async def _alive_counts(redis_url: str, keys: Keys, kinds: list[str]) -> dict[str, int]:
    client = await connect_redis(redis_url)
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
    servers: list[EmbeddedServer] = []
    the_plan = plan(settings, data_dir)
    code = 0
    try:
        nats_url, redis_url = settings.nats_url, settings.redis_url
        if not nats_url:
            servers.append(EmbeddedNats(data_dir=data_dir / "nats").start())
            nats_url = servers[-1].url
        if not redis_url:
            servers.append(EmbeddedRedis(data_dir=data_dir / "redis").start())
            redis_url = servers[-1].url
        print(f"sllm: NATS {nats_url}  Redis {redis_url}", flush=True)
        asyncio.run(_prepare_bus(nats_url, redis_url, settings))
        model = Path(settings.model) if settings.model else _demo_model(data_dir)

        base_env = {
            # Service settings the user set (SLLM_MAX_BATCH=1 sllm up ...) pass through;
            # the ones `sllm up` decides per child (ids, ports, tier dirs) never do.
            **{k: v for k, v in os.environ.items() if k not in _PER_CHILD_VARS},
            **{k: v for k, v in settings.as_env().items() if k in _COMMON_VARS},
            "SLLM_NATS_URL": nats_url,
            "SLLM_REDIS_URL": redis_url,
            "PYTHONUNBUFFERED": "1",
        }
        for child in the_plan.children:
            child.start(base_env)
        _wait_until_up(settings, the_plan, redis_url, stop_signal)
        name = model_name(settings, model)
        asyncio.run(_deploy(nats_url, settings, name, model.resolve().as_uri()))
        took = time.monotonic() - t0
        print(_banner(settings, name, model, took), flush=True)
        while not stop_signal:
            for child in the_plan.children:
                if child.exited is None:
                    continue
                print(f"sllm: {child.name} exited with {child.exited}; restarting", flush=True)
                if not child.restart():
                    print(f"sllm: {child.name} keeps crashing; stopping", flush=True)
                    raise _Stop
            time.sleep(0.2)
        print("sllm: stopping", flush=True)
    except _Stop:
        code = 1
    except KeyboardInterrupt:
        pass
    finally:
        code = _shutdown(the_plan) or code
        for server in reversed(servers):
            server.stop()
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


def _wait_until_up(settings: UpSettings, p: Plan, redis_url: str, stop: list[int]) -> None:
    deadline = time.monotonic() + settings.startup_timeout
    keys = Keys(settings.root)
    while True:
        if stop:
            raise _Stop
        for child in p.children:
            if child.exited is not None:
                print(f"sllm: {child.name} failed to start (exit {child.exited})", flush=True)
                raise _Stop
        counts = asyncio.run(_alive_counts(redis_url, keys, list(p.expected_alive)))
        if counts == p.expected_alive and _router_ready(settings.host, settings.port):
            return
        if time.monotonic() > deadline:
            print(f"sllm: not up after {settings.startup_timeout:g}s: alive {counts}", flush=True)
            raise _Stop
        time.sleep(0.2)


def _shutdown(p: Plan, timeout: float = 20.0) -> int:
    """SIGTERM the router first (no new requests), then workers, storage, scheduler."""
    code = 0
    for child in reversed(p.children):
        if child.proc is not None and child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in reversed(p.children):
        if child.proc is None:
            continue
        try:
            child.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"sllm: {child.name} did not stop in time; killing it", flush=True)
            child.proc.kill()
            child.proc.wait(5)
            code = 1
    return code


def model_name(settings: UpSettings, model: Path) -> str:
    """The deployment name: ``demo`` for the demo model, else the directory's name."""
    return "demo" if not settings.model else model.resolve().name


def _banner(settings: UpSettings, name: str, model: Path, took: float) -> str:
    base = f"http://{settings.host}:{settings.port}"
    body = (
        '{"model": "' + name + '", "messages": [{"role": "user", "content": "Hello!"}], '
        '"max_tokens": 32}'
    )
    return (
        f"\nsllm is up in {took:.1f}s: {settings.nodes} node(s) x "
        f"{settings.workers_per_node} worker(s), REST API on {base}\n"
        f"  deployed model {name!r} from {model}\n"
        f"  curl {base}/v1/models\n"
        f"  curl {base}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        f"       -d '{body}'\n"
        f"  sllm events            # tail the monitoring events\n"
        f"Press Ctrl-C to stop.\n"
    )
