"""`sllm up` as a child process with its own root, port and data directory, and a bus client
(in a background thread) that stages checkpoints and records every monitoring event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from libs.cli.credentials import CREDENTIALS_FILE, read_env_file
from libs.common.embedded import free_port

from .common import log

T = TypeVar("T")
Event = dict[str, Any]
SLLM = str(Path(sys.executable).with_name("sllm"))


class UpCluster:
    """One `sllm up` process tree; ``stop`` is safe to call at any time, more than once."""

    def __init__(
        self,
        state_dir: Path,
        *,
        nodes: int,
        model: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.state_dir = state_dir
        self.nodes = nodes
        self.port = free_port()
        self.root = "bench" + os.urandom(4).hex()
        self.log_path = log_path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SLLM_")}
        self.env.update({"SLLM_ROOT": self.root, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.argv = [
            SLLM,
            "up",
            *("--nodes", str(nodes), "--workers-per-node", "1"),
            *("--port", str(self.port), "--data-dir", str(state_dir), "--model", str(model)),
            *extra_args,  # e.g. --ha
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.nats_url = ""
        self.redis_url = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def node_ids(self) -> list[str]:
        return [f"node-{i}" for i in range(self.nodes)]

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def start(self, timeout: float = 240.0) -> UpCluster:
        """Start and wait for the banner; raises with the log's tail when it does not come up."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        while "sllm is up" not in self.log_tail(1 << 20):
            if self.proc.poll() is not None or time.monotonic() - t0 > timeout:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"sllm up did not come up within {timeout:g}s:\n{tail}")
            time.sleep(0.2)
        # The bus is authenticated: the admin URLs are in the credentials file, not the log.
        creds = read_env_file(self.state_dir / CREDENTIALS_FILE)
        self.nats_url, self.redis_url = creds["SLLM_NATS_URL"], creds["SLLM_REDIS_URL"]
        log(f"sllm up: {self.nodes} nodes x 1 worker up in {time.monotonic() - t0:.1f}s")
        return self

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) used so far by each kind of process of the cluster: the
        services by name (``router``, ``worker``...; summed over replicas), ``nats-server``,
        ``valkey-server``."""
        import psutil

        out: dict[str, float] = {}
        if self.proc is None:
            return out
        for p in psutil.Process(self.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                cmd = p.cmdline()
                mod = next((a for a in cmd if a.startswith("services.")), "")
                exe = Path(cmd[0].split()[0]).name if cmd else p.name()
                name = mod.removeprefix("services.") or exe
                t = p.cpu_times()
                out[name] = out.get(name, 0.0) + t.user + t.system
        return out

    def stop(self) -> None:
        """SIGINT (what Ctrl-C sends), then SIGKILL after a minute; removes its DRAM tier dirs."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                log("sllm up did not stop within 60s; killing it")
                proc.kill()
                proc.wait(10)
        if proc is not None:
            # `sllm up` leaves its tmpfs tier directories behind; ours are named after our root.
            for d in Path("/dev/shm").glob(f"sllm-{self.root}-*"):
                shutil.rmtree(d, ignore_errors=True)


class BusClient:
    """A `libs.protocol.Bus` on an event loop of its own thread, usable from synchronous code.

    Every event of the cluster (``<root>.events.>``) is recorded as plain JSON with the time it
    arrived (``_rx``, ``time.time()``).
    """

    def __init__(self, nats_url: str, root: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-bus", daemon=True)
        self.thread.start()
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self.bus: Any = None
        self._call(self._connect(nats_url, root), 30.0)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise TimeoutError(f"bus call did not finish within {timeout:g}s") from None

    async def _connect(self, url: str, root: str) -> None:
        from libs.protocol import Bus

        self.url = url

        self.bus = await Bus.connect(url, name="bench-serving", root=root, request_timeout=60)

        async def on_msg(msg: Any) -> None:
            try:
                ev = json.loads(msg.data)
            except ValueError:
                return
            ev["_rx"] = time.time()
            with self._lock:
                self.events.append(ev)

        await self.bus.nc.subscribe(self.bus.subjects.all_events, cb=on_msg)
        await self.bus.nc.flush()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.bus is not None:
                self._call(self.bus.close(), 10.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def request(self, endpoint: Any, msg: Any, timeout: float, **params: str) -> Any:
        """One typed request/reply on the bus (see `libs.protocol.Bus.request`)."""
        return self._call(self.bus.request(endpoint, msg, timeout=timeout, **params), timeout + 10)

    def throughput(self, nbytes: int, chunk: int, timeout: float = 300.0) -> float:
        """Bytes/s from this connection to a second one through the NATS server, in
        ``chunk``-byte messages (8 MiB windows, so no side is ever a slow consumer)."""
        return self._call(self._throughput(nbytes, chunk), timeout)

    async def _throughput(self, nbytes: int, chunk: int) -> float:
        import nats

        receiver = await nats.connect(self.url, name="bench-throughput")
        subject = receiver.new_inbox()
        got = [0]
        caught_up = asyncio.Event()
        want = [0]

        async def on_msg(msg: Any) -> None:
            got[0] += len(msg.data)
            if got[0] >= want[0]:
                caught_up.set()

        await receiver.subscribe(subject, cb=on_msg)
        await receiver.flush()
        payload = os.urandom(chunk)
        window = max(chunk, 8 << 20)
        t0 = time.perf_counter()
        sent = 0
        try:
            while sent < nbytes:
                batch_end = min(sent + window, nbytes)
                while sent < batch_end:
                    await self.bus.nc.publish(subject, payload)
                    sent += chunk
                want[0] = sent
                caught_up.clear()
                if got[0] < sent:
                    await asyncio.wait_for(caught_up.wait(), 60)
            return sent / (time.perf_counter() - t0)
        finally:
            await receiver.close()

    # --- storage --------------------------------------------------------------------------

    def ensure(
        self, model: str, uri: str, tier: Literal["dram", "ssd"], node: str, timeout: float
    ) -> Any:
        """STORAGE_ENSURE on ``node``: the checkpoint lands in ``tier`` there."""
        from libs.protocol.endpoints import STORAGE_ENSURE
        from libs.protocol.messages import EnsureRequest

        req = EnsureRequest(model=model, checkpoint_uri=uri, tier=tier)
        coro = self.bus.request(STORAGE_ENSURE, req, timeout=timeout, node_id=node)
        return self._call(coro, timeout + 10)

    def evict(self, model: str, node: str, timeout: float = 120.0) -> bool:
        """STORAGE_EVICT from the SSD tier of ``node`` (which removes the DRAM copy too)."""
        from libs.protocol.endpoints import STORAGE_EVICT
        from libs.protocol.messages import EvictRequest

        req = EvictRequest(model=model, tier="ssd")
        coro = self.bus.request(STORAGE_EVICT, req, timeout=timeout, node_id=node)
        return bool(self._call(coro, timeout + 10).evicted)

    # --- events ---------------------------------------------------------------------------

    def snapshot(self, pred: Callable[[Event], bool]) -> list[Event]:
        with self._lock:
            return [e for e in self.events if pred(e)]

    def wait_for(self, pred: Callable[[Event], bool], timeout: float) -> Event | None:
        """The first recorded event matching ``pred``, waiting up to ``timeout``; None if none."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.snapshot(pred)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)
