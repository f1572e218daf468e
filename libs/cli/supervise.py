"""How `sllm up` keeps its processes running: restart what dies, with backoff, forever.

One crash-looping child must never take the cluster down (a worker that crashes six times a
minute used to stop every service): each process is restarted on its own, after a delay that
doubles with every crash in a row and returns to the first step once it has run a while.
The embedded NATS and Valkey servers are supervised the same way, on their own port and data
directory, so clients reconnect to the same address and Valkey reloads its append-only file.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from libs.common.embedded import EmbeddedServer, EmbeddedServerError
from libs.common.server_binaries import ServerBinaryError

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Children get SIGTERM if `sllm up` itself dies (even by SIGKILL): no orphans.
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class Backoff:
    """Delays before restarting a process that exited: ``first_s`` after a first crash,
    doubling with each crash in a row up to ``max_s``; a process that ran ``healthy_after_s``
    counts as healthy again (its next crash waits ``first_s``)."""

    first_s: float = 0.5
    max_s: float = 30.0
    healthy_after_s: float = 60.0

    def delay(self, crashes_in_a_row: int) -> float:
        """The wait before the next start after ``crashes_in_a_row`` (≥ 1) crashes."""
        steps = max(crashes_in_a_row - 1, 0)
        return min(self.first_s * 2.0 ** min(steps, 32), self.max_s)

    def crashes_after(self, crashes_in_a_row: int, ran_s: float) -> int:
        """The count in a row once a process that ran ``ran_s`` seconds exits again."""
        return 1 if ran_s >= self.healthy_after_s else crashes_in_a_row + 1


class Supervised:
    """One process `sllm up` keeps alive: started, watched, restarted after a backoff."""

    name: str = ""

    def __init__(self, backoff: Backoff | None = None) -> None:
        self.backoff = backoff or Backoff()
        self.crashes = 0  # in a row
        self.started_at = 0.0
        self.restart_at: float | None = None  # monotonic time of the pending restart

    # Subclasses: how to start, whether it runs, and how it ended.
    def launch(self) -> None:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def exit_status(self) -> str:
        return "exited"

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.restart_at = None
        self.launch()

    def tick(self, now: float, say: Callable[[str], None]) -> None:
        """Notice an exit (schedule the restart) or do a restart that is due."""
        if self.restart_at is None:
            if self.alive():
                return
            self.crashes = self.backoff.crashes_after(self.crashes, now - self.started_at)
            wait = self.backoff.delay(self.crashes)
            self.restart_at = now + wait
            say(
                f"{self.name} {self.exit_status()}; restarting in {wait:.1f}s"
                + (f" ({self.crashes} crashes in a row)" if self.crashes > 1 else "")
            )
            return
        if now >= self.restart_at:
            try:
                self.start()
            except (OSError, EmbeddedServerError, ServerBinaryError) as exc:
                # Counts as one more crash: the next try waits longer.
                self.started_at = now
                self.restart_at = None
                say(f"{self.name} did not start: {exc}")


@dataclass
class ChildSpec:
    """A service child: ``python -m module`` with its own environment on top of the base."""

    name: str
    module: str
    env: dict[str, str]


class Child(Supervised):
    """A service process (scheduler, storage, worker, router)."""

    def __init__(self, spec: ChildSpec, base_env: Mapping[str, str], backoff: Backoff) -> None:
        super().__init__(backoff)
        self.spec = spec
        self.name = spec.name
        self.base_env = dict(base_env)
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.spec.module],
            env={**self.base_env, **self.spec.env},
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches `sllm up` only; it stops children in order
            preexec_fn=_die_with_parent,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_status(self) -> str:
        code = None if self.proc is None else self.proc.poll()
        return f"exited with {code}"


class ServerChild(Supervised):
    """An embedded nats-server or valkey-server: restarted on the same port and data dir."""

    def __init__(self, server: EmbeddedServer, backoff: Backoff) -> None:
        super().__init__(backoff)
        self.server = server
        self.name = server.name
        self._launched = False

    def launch(self) -> None:
        if self._launched:
            self.server.restart()  # same port, same data directory
        else:
            self.server.start()
            self._launched = True

    def alive(self) -> bool:
        return self.server.running

    def exit_status(self) -> str:
        proc = self.server.proc
        code = None if proc is None else proc.poll()
        return f"({self.server.url}) exited with {code}"


@dataclass
class Supervisor:
    """Every supervised process of one `sllm up`, ticked from its main loop."""

    members: list[Supervised] = field(default_factory=list)
    say: Callable[[str], None] = lambda msg: print(f"sllm: {msg}", flush=True)

    def tick(self) -> None:
        now = time.monotonic()
        for member in self.members:
            member.tick(now, self.say)


def stop_children(children: list[Child], timeout: float = 20.0) -> int:
    """SIGTERM every child, the last started first (`sllm up`: the router first, so no new
    requests, then workers, storage, scheduler); kill one that outlives ``timeout``. Returns 1
    if one had to be killed, else 0."""
    code = 0
    for child in reversed(children):
        if child.proc is not None and child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in reversed(children):
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
