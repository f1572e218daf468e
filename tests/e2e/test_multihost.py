"""Multi-host, with real network separation: three hosts as network namespaces on one bridge.

Host A runs the router and the scheduler; hosts B and C run `sllm node` (a storage service and
a CPU worker each). Every host runs a member of a 3-server NATS cluster and a sentinel; the
Valkey primary is on A, its replica on B. Each service talks to its own host's NATS server
(the cluster routes between them) and finds Valkey through the sentinels, with its role's own
credentials, as in production.

The scenario: a cold start lands the model on B or C (the victim); a greedy stream is in
flight when the victim's cable is pulled (its link goes down); the router resumes the stream
on the other host, which cold-starts the model from the file:// checkpoint, and the client
gets the same text as an uninterrupted run. The cable goes back: the victim's NATS server
rejoins the cluster, its worker's stale instance is cleaned up, and a new request is served.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest
import redis

from libs.cli.credentials import Credentials, redis_user
from libs.cluster.state import ClusterState
from libs.common.embedded import EmbeddedNats, EmbeddedRedis, EmbeddedServer
from libs.common.redis_client import connect_redis
from libs.common.server_config import ADMIN_USER
from libs.common.valkey_sentinel import EmbeddedSentinel
from libs.protocol import Bus, Keys
from libs.protocol.endpoints import WORKER_RUNNING
from libs.protocol.messages import RunningReply, RunningRequest
from libs.protocol.permissions import ROLES, Role
from libs.protocol.state import InstanceRecord, WorkerRecord

from .netns import Host, Network, unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.multihost]

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
SLLM = str(Path(sys.executable).with_name("sllm"))
# Each host has its own port space: the standard ports (docs/deploy.md), as on real hosts.
NATS_PORT, ROUTE_PORT, MONITOR_PORT = 4222, 6222, 8222
VALKEY_PORT, SENTINEL_PORT, ROUTER_PORT = 6379, 26379, 8343
SERVICE = "sllm"  # the name the sentinels monitor the primary under
MODEL = "demo"
PROMPT = "Once upon a time"
MAX_TOKENS = 600  # ~8 s at the workers' paced decode: long enough to cut into
CUT_AFTER_CHUNKS = 20
# The bounds this test states (measured on a 2-core machine: see the printed times).
FAILOVER_BOUND_S = 40.0  # the client's longest wait for a token across the failover
REJOIN_BOUND_S = 60.0  # from the cable back in to a consistent, serving cluster


def on(host: Host, fn: Callable[[], T]) -> T:
    """Run ``fn`` in ``host``'s namespace (its thread) and return what it returns."""
    return host.executor.submit(fn).result()


def wait_for(check: Callable[[], object], what: str, timeout: float, every: float = 0.2) -> float:
    """Poll until ``check()`` is truthy; the seconds it took. ``check`` may raise while not."""
    start = time.monotonic()
    last: object = None
    while time.monotonic() - start < timeout:
        try:
            last = check()
        except Exception as exc:  # not there yet: a refused connection, a 503...
            last = exc
        if last and not isinstance(last, Exception):
            return time.monotonic() - start
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: last {last!r}")


# --- the servers: one NATS member and one sentinel per host, Valkey primary A, replica B ---


class Replica(EmbeddedRedis):
    """A Valkey replica of the primary at ``primary`` (another host), logging in to it as the
    admin (the password goes in the 0600 config file, not on the command line)."""

    def __init__(self, *, primary: EmbeddedRedis, admin_password: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.primary = primary
        self.admin_password = admin_password

    def argv(self) -> list[str]:
        args = super().argv()  # writes auth.conf
        with open(self.data_dir / "auth.conf", "a") as f:
            f.write(f"masteruser {ADMIN_USER}\nmasterauth {self.admin_password}\n")
        return [*args, "--replicaof", self.primary.host, str(self.primary.port)]


class HostSentinel(EmbeddedSentinel):
    """A sentinel listening on its own host's address, watching a primary on another host
    (`EmbeddedSentinel` assumes the primary listens where the sentinel does)."""

    def __init__(self, *, host: str, primary_host: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.host = host
        self.primary_host = primary_host

    def _config(self) -> str:
        mine = f"sentinel monitor {self.service} {self.host} "
        return (
            super()._config().replace(mine, f"sentinel monitor {self.service} {self.primary_host} ")
        )


@dataclass
class MultiHost:
    """The three hosts, their servers and services, and handles for the test."""

    net: Network
    tmp: Path
    root: str = field(default_factory=lambda: "mh" + os.urandom(4).hex())
    creds: Credentials = field(default_factory=Credentials.generate)
    servers: list[EmbeddedServer] = field(default_factory=list)
    nats: dict[str, EmbeddedNats] = field(default_factory=dict)
    sentinels: dict[str, HostSentinel] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def a(self) -> Host:
        return self.net.hosts["a"]

    def host(self, name: str) -> Host:
        return self.net.hosts[name]

    @property
    def base_url(self) -> str:
        return f"http://{self.a.address}:{ROUTER_PORT}"

    # --- servers ----------------------------------------------------------------------------

    def start_servers(self) -> None:
        users = self.creds.nats_users(self.root)
        hosts = list(self.net.hosts.values())
        for h in hosts:
            routes = ",".join(f"nats://{o.address}:{ROUTE_PORT}" for o in hosts if o.name != h.name)
            cluster = ["--server_name", f"nats-{h.name}", "--cluster_name", "sllm"]
            cluster += ["--cluster", f"nats://{h.address}:{ROUTE_PORT}", "--routes", routes]
            member = EmbeddedNats(
                port=NATS_PORT,
                host=h.address,
                data_dir=self.tmp / f"nats-{h.name}",
                users=users,
                extra_args=[*cluster, "-m", str(MONITOR_PORT)],
            )
            self.nats[h.name] = member
            self.servers.append(member)
            on(h, member.start)
        redis_users = self.creds.redis_users(self.root)
        admin = self.creds.redis["admin"]
        primary = EmbeddedRedis(
            port=VALKEY_PORT,
            host=self.a.address,
            data_dir=self.tmp / "valkey-a",
            users=redis_users,
            extra_args=["--repl-diskless-sync-delay", "0"],
        )
        self.servers.append(primary)
        on(self.a, primary.start)
        b = self.host("b")
        replica = Replica(
            primary=primary,
            admin_password=admin,
            port=VALKEY_PORT,
            host=b.address,
            data_dir=self.tmp / "valkey-b",
            users=redis_users,
        )
        self.servers.append(replica)
        on(b, replica.start)
        for h in hosts:
            sentinel = HostSentinel(
                host=h.address,
                primary_host=primary.host,
                service=SERVICE,
                primary_port=primary.port,
                quorum=2,
                auth=(ADMIN_USER, admin),
                data_dir=self.tmp / f"sentinel-{h.name}",
                # Not the embedded set's 1 s: a primary starved of CPU for a moment on a
                # 2-core machine must not be failed over.
                down_after_ms=5000,
                failover_timeout_ms=10000,
            )
            sentinel.port = SENTINEL_PORT
            self.sentinels[h.name] = sentinel
            self.servers.append(sentinel)
            on(h, sentinel.start)
        wait_for(lambda: on(self.a, self.nats_formed), "the NATS cluster to form", 30)
        wait_for(lambda: on(self.a, self.sentinels_settled), "the sentinels to settle", 30)

    def nats_routes(self) -> dict[str, set[str]]:
        """Each NATS member's routed peers, as its monitoring port says (from A)."""
        out = {}
        for name, h in self.net.hosts.items():
            url = f"http://{h.address}:{MONITOR_PORT}/routez"
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                routes = json.loads(resp.read()).get("routes") or []
            out[name] = {r.get("remote_name", "") for r in routes}
        return out

    def nats_formed(self) -> bool:
        routes = self.nats_routes()
        return all(
            peers >= {f"nats-{o}" for o in routes if o != me} for me, peers in routes.items()
        )

    def sentinels_settled(self) -> bool:
        for s in self.sentinels.values():
            client = redis.Redis(host=s.host, port=s.port, socket_timeout=1.0)
            try:
                state: Any = client.sentinel_master(SERVICE)
                replicas: Any = client.sentinel_slaves(SERVICE)
            finally:
                client.close()
            if state["num-other-sentinels"] != 2 or state["ip"] != self.a.address:
                return False
            if [r for r in replicas if r.get("master-link-status") != "ok" or r["is_sdown"]]:
                return False
            if not replicas:
                return False
        return True

    # --- credentials ------------------------------------------------------------------------

    def nats_url(self, role: Role, host: Host) -> str:
        """``role``'s URL of ``host``'s own NATS server (the cluster carries the rest)."""
        return self.nats[host.name].url_for(role)

    def redis_url(self, role: Role, host: Host) -> str:
        """``role``'s sentinel URL, ``host``'s own sentinel first."""
        order = [host.name] + [n for n in self.sentinels if n != host.name]
        hosts = ",".join(f"{self.sentinels[n].host}:{SENTINEL_PORT}" for n in order)
        user, password = redis_user(role), self.creds.redis[role]
        return f"redis+sentinel://{user}:{password}@{hosts}/{SERVICE}/0"

    def credentials_dir(self, host: Host) -> Path:
        """A `sllm credentials`-style directory of ``host``'s URLs (0600 files)."""
        path = self.tmp / f"creds-{host.name}"
        path.mkdir(mode=0o700, exist_ok=True)
        for role in ROLES:
            for suffix, url in (
                ("nats-url", self.nats_url(role, host)),
                ("redis-url", self.redis_url(role, host)),
            ):
                fd = os.open(
                    path / f"{role}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
                )
                with os.fdopen(fd, "w") as f:
                    f.write(url + "\n")
        return path

    # --- services ---------------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLLM_")}
        env.update(
            {
                "SLLM_ROOT": self.root,
                "PYTHONUNBUFFERED": "1",
                "HF_HUB_OFFLINE": "1",
                "SLLM_REGISTRY_ALLOW": str(self.tmp / "models"),
                **extra,
            }
        )
        return env

    def spawn(self, name: str, host: Host, argv: list[str], env: dict[str, str]) -> None:
        with open(self.tmp / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(
                host.argv(*argv),
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_services(self) -> None:
        a = self.a
        for role in ("scheduler", "router"):
            env = self.env(
                SLLM_NATS_URL=self.nats_url(role, a),
                SLLM_REDIS_URL=self.redis_url(role, a),
                SLLM_INSTANCE_ID=f"{role}-a",
            )
            if role == "router":
                env.update(SLLM_HOST=a.address, SLLM_PORT=str(ROUTER_PORT))
            self.spawn(role, a, [PYTHON, "-m", f"services.{role}"], env)
        for name in ("b", "c"):
            h = self.host(name)
            env = self.env(
                SLLM_DRAM_DIR=str(self.tmp / f"dram-{name}"),
                SLLM_TORCH_THREADS="1",
                SLLM_DECODE_DELAY="0.01",  # a stream long enough to cut into
            )
            argv = [SLLM, "node", "--node-id", f"host-{name}", "--devices", "cpu"]
            argv += ["--data-dir", str(self.tmp / f"data-{name}")]
            argv += ["--credentials-dir", str(self.credentials_dir(h))]
            self.spawn(f"node-{name}", h, argv, env)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def wait_up(self, timeout: float = 150.0) -> None:
        def up() -> bool:
            for name, proc in self.procs.items():
                assert proc.poll() is None, f"{name} exited:\n{self.log(name)[-3000:]}"
            nodes = all("is up" in self.log(f"node-{n}") for n in ("b", "c"))
            return nodes and on(self.a, lambda: httpx.get(self.base_url + "/ready").is_success)

        wait_for(up, "the services", timeout, every=0.5)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: it and its children
                proc.wait(10)
        for server in reversed(self.servers):
            server.stop()

    # --- the cluster state, read from A -------------------------------------------------------

    def state(self) -> tuple[list[WorkerRecord], list[InstanceRecord]]:
        async def read() -> tuple[list[WorkerRecord], list[InstanceRecord]]:
            client = await connect_redis(self.redis_url("admin", self.a))
            try:
                st = ClusterState(client, Keys(self.root))
                return await st.workers(), await st.all_instances()
            finally:
                await client.aclose()

        return on(self.a, lambda: asyncio.run(read()))

    def running(self, worker_id: str) -> RunningReply:
        """What ``worker_id`` itself says it hosts (asked over the bus, from A)."""

        async def ask() -> RunningReply:
            bus = await Bus.connect(self.nats_url("admin", self.a), name="test", root=self.root)
            try:
                reply: RunningReply = await bus.request_once(
                    WORKER_RUNNING, RunningRequest(), worker_id=worker_id, timeout=5
                )
                return reply
            finally:
                await bus.close()

        return on(self.a, lambda: asyncio.run(ask()))


@pytest.fixture
def multihost(tmp_path: Path) -> Iterator[MultiHost]:
    why = unavailable()
    if why:
        pytest.skip(f"no network namespaces here: {why}")
    model = tmp_path / "models" / MODEL
    subprocess.run([PYTHON, "-m", "libs.demo", str(model)], check=True, capture_output=True)
    with Network(["a", "b", "c"]) as net:
        mh = MultiHost(net, tmp_path)
        try:
            mh.start_servers()
            mh.start_services()
            mh.wait_up()
            yield mh
        finally:
            mh.stop()
            for name in mh.procs:  # shown when the test fails
                print(f"----- {name} -----\n{mh.log(name)[-4000:]}")


# --- the client, from A -------------------------------------------------------------------------


@dataclass
class Stream:
    text: str
    finish: str | None
    tokens: int
    gaps: list[float]  # seconds between consecutive chunks
    seconds: float


def stream(mh: MultiHost, on_chunk: Callable[[int], None] | None = None) -> Stream:
    """A greedy streamed completion read to the end (openai SDK, in A's namespace)."""

    def run() -> Stream:
        client = openai.OpenAI(base_url=mh.base_url + "/v1", api_key="none", max_retries=0)
        parts: list[str] = []
        finish, tokens, times = None, 0, []
        start = time.monotonic()
        try:
            chunks = client.completions.create(
                model=MODEL,
                prompt=PROMPT,
                max_tokens=MAX_TOKENS,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                timeout=120,
            )
            for n, chunk in enumerate(chunks, start=1):
                times.append(time.monotonic())
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    parts.append(choice.text)
                    finish = choice.finish_reason or finish
                if on_chunk is not None:
                    on_chunk(n)
        finally:
            client.close()
        gaps = [b - a for a, b in itertools.pairwise(times)]
        return Stream("".join(parts), finish, tokens, gaps, time.monotonic() - start)

    return on(mh.a, run)


def ask(mh: MultiHost) -> str:
    def run() -> str:
        client = openai.OpenAI(base_url=mh.base_url + "/v1", api_key="none", max_retries=0)
        try:
            out = client.completions.create(
                model=MODEL, prompt="Hello", max_tokens=8, temperature=0, timeout=120
            )
        finally:
            client.close()
        return out.choices[0].text

    return on(mh.a, run)


def consistent(workers: list[WorkerRecord], instances: list[InstanceRecord]) -> str:
    """What is inconsistent between the workers' reservations and the instance records ("")."""
    held = [w.instance_id for w in workers if w.instance_id]
    if len(held) != len(set(held)):
        return f"an instance is held by two workers: {workers}"
    by_worker = {w.worker_id: w for w in workers}
    for inst in instances:
        w = by_worker.get(inst.worker_id)
        if w is None or w.instance_id != inst.instance_id:
            return f"{inst.instance_id} on {inst.worker_id} is not held by it: {w}"
    return ""


def test_a_host_cut_off_mid_stream_fails_over_and_rejoins(multihost: MultiHost) -> None:
    mh = multihost
    deployed = on(
        mh.a,
        lambda: httpx.post(
            mh.base_url + "/v1/deployments",
            json={"name": MODEL, "checkpoint_uri": (mh.tmp / "models" / MODEL).as_uri()},
            timeout=30,
        ),
    )
    assert deployed.status_code == 201, deployed.text

    # 1. Cold start: the first request is answered, on B or C.
    started = time.monotonic()
    first = ask(mh)
    cold_s = time.monotonic() - started
    workers, instances = mh.state()
    (inst,) = [i for i in instances if i.model == MODEL]
    victim_name = {"host-b": "b", "host-c": "c"}[inst.node_id]
    victim, other = mh.host(victim_name), mh.host("c" if victim_name == "b" else "b")

    # 2. The uninterrupted greedy stream, the reference.
    want = stream(mh)
    assert want.tokens > 100, want  # a long generation to cut into

    # 3. The same stream, the victim's cable pulled after a few chunks.
    cut_at: list[float] = []

    def pull_cable(n: int) -> None:
        if n == CUT_AFTER_CHUNKS:
            victim.cut()
            cut_at.append(time.monotonic())

    try:
        got = stream(mh, on_chunk=pull_cable)
    finally:
        if not cut_at:
            victim.plug()
    assert cut_at, "the stream ended before the cable was pulled"
    pause = max(got.gaps[CUT_AFTER_CHUNKS - 1 :])
    assert got.text == want.text
    assert (got.finish, got.tokens) == (want.finish, want.tokens)
    assert pause < FAILOVER_BOUND_S, pause
    workers, instances = mh.state()
    serving = [i for i in instances if i.model == MODEL and i.status == "ready"]
    assert f"host-{other.name}" in {i.node_id for i in serving}, serving

    # 4. The cable back in: the victim rejoins, its stale instance is cleaned up.
    victim.plug()
    plugged = time.monotonic()
    nats_s = wait_for(lambda: on(mh.a, mh.nats_formed), "the victim's NATS to rejoin", 60)

    def settled() -> bool:
        workers, instances = mh.state()
        alive = {w.worker_id for w in workers if w.alive}
        return {"host-b-w0", "host-c-w0"} <= alive and not consistent(workers, instances)

    wait_for(settled, "a consistent cluster state", REJOIN_BOUND_S)
    # What the victim's worker itself says it hosts: the scheduler retired its instance while
    # it was cut off, so it must drop it by itself (else it refuses every load as "already
    # hosts"): nothing, or an instance the cluster state gives it.
    victim_worker = f"host-{victim.name}-w0"

    def victim_clean() -> bool:
        held = mh.running(victim_worker).instance_id
        _, instances = mh.state()
        return held == "" or held in {
            i.instance_id for i in instances if i.worker_id == victim_worker
        }

    clean_s = wait_for(victim_clean, "the victim's worker to drop its stale instance", 30)
    held = mh.running(victim_worker).instance_id
    assert ask(mh) == first
    rejoin_s = time.monotonic() - plugged
    workers, instances = mh.state()
    assert not consistent(workers, instances)
    print(
        f"\nmulti-host: cold start {cold_s:.2f} s; reference stream {want.seconds:.2f} s "
        f"({want.tokens} tokens); victim {victim.name}; failover pause {pause:.2f} s "
        f"(stream {got.seconds:.2f} s); NATS rejoined {nats_s:.2f} s, cluster consistent and "
        f"serving {rejoin_s:.2f} s after the cable went back; end state: workers "
        f"{[(w.worker_id, w.instance_id, w.alive) for w in workers]}, instances "
        f"{[(i.instance_id, i.worker_id, i.status) for i in instances]}; the victim's worker "
        f"says it hosts {held!r} ({clean_s:.2f} s to agree with the cluster state)"
    )
    assert rejoin_s < REJOIN_BOUND_S, rejoin_s
