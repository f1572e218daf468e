"""Several "hosts" on one machine, as Linux network namespaces joined by a bridge: what the
multi-host e2e test runs on (`test_multihost.py`).

Every address lives in namespaces created here: one per host (its end of a veth pair, an
address in a random ``10.x.y.0/24``) and one more holding the bridge that joins them. Nothing
is added to the root namespace. Names carry a random suffix, so a leftover of a killed run
never collides with the next one, and `Network.close` deletes everything it made.

Code runs inside a host in two ways: a process through ``ip netns exec`` (`Network.argv`), and
the test's own client calls through `Host.executor`, a one-thread pool whose thread has joined
the namespace with setns(2) (which acts on the calling thread only): sockets that thread opens,
and processes it starts, live in the host's namespace.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000
DEVICE = "eth0"  # each host's end of its veth pair


class NetnsError(RuntimeError):
    """A namespace, link or address could not be set up."""


def unavailable() -> str:
    """Why namespaces cannot be made here ("" when they can): the test's skip reason."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"sllmprobe{secrets.token_hex(4)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _join(ns: str) -> None:
    """Move the calling thread into namespace ``ns`` (a thread pool's initializer)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / ns, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass
class Host:
    """One host: its namespace, its address, and a thread that lives in its namespace."""

    name: str
    ns: str
    address: str
    executor: ThreadPoolExecutor = field(repr=False)

    def argv(self, *argv: str) -> list[str]:
        """``argv`` run inside this host."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def cut(self) -> None:
        """Pull the host's cable: its link goes down (its own processes still reach each
        other over its address; nobody else reaches them)."""
        _ip("netns", "exec", self.ns, "ip", "link", "set", DEVICE, "down")

    def plug(self) -> None:
        """Put the cable back."""
        _ip("netns", "exec", self.ns, "ip", "link", "set", DEVICE, "up")


class Network:
    """Hosts ``names`` on one bridge (its own namespace), addresses ``10.x.y.1``, ``.2``, ...
    in that order."""

    def __init__(self, names: list[str]) -> None:
        self.tag = secrets.token_hex(3)
        self.subnet = f"10.{secrets.randbelow(254) + 1}.{secrets.randbelow(254) + 1}"
        self.bridge_ns = f"sllm-br-{self.tag}"
        self.names = names
        self.hosts: dict[str, Host] = {}
        self._made: list[str] = []

    def start(self) -> Network:
        try:
            self._add_ns(self.bridge_ns)
            _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
            for i, name in enumerate(self.names, start=1):
                ns = f"sllm-{name}-{self.tag}"
                self._add_ns(ns)
                port = f"to-{name}"
                # Both ends are created inside their namespaces: nothing touches the root one.
                _ip("link", "add", DEVICE, "netns", ns, "type", "veth", "peer", "name", port,
                    "netns", self.bridge_ns)  # fmt: skip
                _ip("-n", self.bridge_ns, "link", "set", port, "master", "br0")
                _ip("-n", self.bridge_ns, "link", "set", port, "up")
                address = f"{self.subnet}.{i}"
                _ip("-n", ns, "addr", "add", f"{address}/24", "dev", DEVICE)
                _ip("-n", ns, "link", "set", DEVICE, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                pool = ThreadPoolExecutor(1, f"netns-{name}", initializer=_join, initargs=(ns,))
                self.hosts[name] = Host(name, ns, address, pool)
                pool.submit(lambda: None).result()  # fail here if the thread cannot join
        except BaseException:
            self.close()
            raise
        return self

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._made.append(ns)

    def close(self) -> None:
        """Delete every namespace made (their links go with them). Processes still inside a
        namespace keep it alive: stop them first."""
        for host in self.hosts.values():
            host.executor.shutdown(wait=True, cancel_futures=True)
        errors = []
        for ns in reversed(self._made):
            done = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
            if done.returncode != 0:
                errors.append(f"{ns}: {done.stderr.strip()}")
        self._made.clear()
        if errors:
            raise NetnsError("could not delete " + "; ".join(errors))

    def __enter__(self) -> Network:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
