"""The scale benchmark's cluster: embedded NATS (with its monitoring port) and Valkey, the real
router and scheduler as unchanged processes, and hollow-node processes; started and stopped
as one."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.serving.common import log
from libs.common.embedded import EmbeddedNats, EmbeddedRedis, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ClusterSpec:
    nodes: int
    workers_per_node: int = 8
    nodes_per_process: int = 32  # hollow nodes per process (32 x 9 services)
    registry: str = "/tmp/sllm-hollow-registry"  # never read: hollow storage fakes it
    hollow_args: tuple[str, ...] = ()  # passed to every hollow process (bandwidths, ...)
    env: dict[str, str] = field(default_factory=dict)  # more SLLM_* for router and scheduler

    @property
    def workers(self) -> int:
        return self.nodes * self.workers_per_node


class ScaleCluster:
    """``with ScaleCluster(spec) as c:`` everything up; on leaving, everything stopped."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.tmp = Path(tempfile.mkdtemp(prefix="sllm-scale-"))
        self.root = "scale" + os.urandom(3).hex()
        self.monitor_port = free_port()
        self.port = free_port()
        self.nats = EmbeddedNats(
            data_dir=self.tmp / "nats", extra_args=["-m", str(self.monitor_port)]
        )
        self.redis = EmbeddedRedis(
            data_dir=self.tmp / "redis", extra_args=["--maxclients", "20000"]
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def varz_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}/varz"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLLM_")}
        env.update(
            {
                "SLLM_NATS_URL": self.nats.url,
                "SLLM_REDIS_URL": self.redis.url,
                "SLLM_ROOT": self.root,
                "SLLM_LOG_LEVEL": "WARNING",
                "SLLM_REGISTRY_ALLOW": self.spec.registry,
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def __enter__(self) -> ScaleCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.nats.start()
        self.redis.start()
        log(f"nats {self.nats.url} (monitor :{self.monitor_port}), valkey {self.redis.url}")
        base = self.env()
        self._spawn("scheduler", ["-m", "services.scheduler"], {**base, **self.spec.env})
        router_env = {**base, "SLLM_PORT": str(self.port), **self.spec.env}
        self._spawn("router", ["-m", "services.router"], router_env)
        self._wait_http("/ready", 60.0)
        per = self.spec.nodes_per_process
        hollows = []
        for k in range(math.ceil(self.spec.nodes / per)):
            first, last = k * per, min((k + 1) * per, self.spec.nodes)
            argv = [
                "-m",
                "benchmarks.scale.hollow",
                "--nodes",
                f"{first}:{last}",
                "--workers-per-node",
                str(self.spec.workers_per_node),
                *self.spec.hollow_args,
            ]
            hollows.append(self._spawn(f"hollow{k}", argv, base, stdout=subprocess.PIPE))
        t0 = time.monotonic()
        for name in [n for n in self.procs if n.startswith("hollow")]:
            self._wait_line(name, "hollow ready", 600.0)
        log(
            f"{self.spec.workers} hollow workers on {self.spec.nodes} nodes up in "
            f"{time.monotonic() - t0:.1f}s ({len(hollows)} processes)"
        )

    def pids(self) -> dict[str, int]:
        """Every process of the cluster by name (nats and valkey included)."""
        out = {name: p.pid for name, p in self.procs.items()}
        for name, server in (("nats", self.nats), ("valkey", self.redis)):
            if server.proc is not None:
                out[name] = server.proc.pid
        return out

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        for name, p in self.procs.items():
            try:
                p.wait(40)
            except subprocess.TimeoutExpired:
                log(f"{name} did not stop: killing it")
                p.kill()
                p.wait(5)
        self.procs.clear()
        self.redis.stop()
        self.nats.stop()
        # The logs (and profiles) stay for the report; the event stream's data need not.
        shutil.rmtree(self.tmp / "nats" / "jetstream", ignore_errors=True)

    # --- helpers ----------------------------------------------------------------------------

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str], stdout: int | None = None
    ) -> subprocess.Popen[bytes]:
        logf = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 (the child owns it)
        proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=REPO_ROOT,
            env=env,
            stdout=stdout if stdout is not None else logf,
            stderr=logf,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def _wait_http(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + path, timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"router not ready; see {self.tmp}/router.log")

    def _wait_line(self, name: str, prefix: str, timeout: float) -> None:
        proc = self.procs[name]
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode(errors="replace")
            if line.startswith(prefix):
                return
            if not line and proc.poll() is not None:
                break
        raise RuntimeError(f"{name} did not start; see {self.tmp}/{name}.log")
