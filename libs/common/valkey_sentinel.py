"""A Valkey primary with replicas watched by three sentinels, as local child processes on free
loopback ports: the high-availability setup the deployment docs describe (Valkey with replicas
and Sentinel), small enough for tests to kill the primary for real and watch a failover.

Every process is the ``valkey-server`` that `EmbeddedRedis` runs (a sentinel is the same binary
with ``--sentinel``). With ACL ``users`` the admin must be among them as Valkey's ``default``
user with a password (`ADMIN_USER`: Valkey 8.1 drops an append-only file's transactions at
replay when ``default`` is off); replicas and sentinels log in as the admin, and the admin is
given the channel sentinels meet on (`SENTINEL_HELLO`).
"""

from __future__ import annotations

import dataclasses
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

import redis

from .embedded import EmbeddedRedis, EmbeddedServer, EmbeddedServerError, OwnDataDir
from .server_binaries import redis_server_binary
from .server_config import ADMIN_USER, SENTINEL_HELLO, RedisUser, check_credential, private_file

# Short enough for tests to see a failover in a few seconds: a primary silent for a second is
# down, and a failover that has not finished in five is tried again by another sentinel.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


class _Member(EmbeddedRedis):
    """A data server of the set: a replica of ``upstream`` (a port) when one is set; it logs in
    to its primary as the admin (after a failover any member may be a replica)."""

    upstream: int | None = None
    masterauth: tuple[str, str] | None = None  # (user or "", password)

    def argv(self) -> list[str]:
        args = super().argv()  # writes auth.conf (when there is a password) and names it
        if self.masterauth is not None:
            user, password = self.masterauth
            lines = ([f"masteruser {user}"] if user else []) + [f"masterauth {password}"]
            with open(self.data_dir / "auth.conf", "a") as f:  # 0600: no password in argv
                f.write("\n".join(lines) + "\n")
        # A replica's first full sync starts at once (Valkey waits 5 s for more replicas).
        args += ["--repl-diskless-sync-delay", "0"]
        if self.upstream is not None:
            args += ["--replicaof", self.host, str(self.upstream)]
        return args


class EmbeddedSentinel(EmbeddedServer):
    """One sentinel watching the primary ``service`` at ``primary_port``. Its config file is
    written once: a sentinel rewrites it as it learns (the current primary, its peers), so a
    restarted sentinel remembers them."""

    name = "sentinel"

    def __init__(
        self,
        *,
        service: str,
        primary_port: int,
        quorum: int,
        auth: tuple[str, str] | None,
        password: str = "",
        data_dir: str | Path | None = None,
        down_after_ms: int = DOWN_AFTER_MS,
        failover_timeout_ms: int = FAILOVER_TIMEOUT_MS,
    ) -> None:
        super().__init__(data_dir=data_dir)
        self.service = service
        self.primary_port = primary_port
        self.quorum = quorum
        self.auth = auth
        self.password = password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    def _config(self) -> str:
        name = self.service
        lines = [
            f"dir {self.data_dir}",
            f"sentinel monitor {name} {self.host} {self.primary_port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.auth is not None:
            user, password = self.auth
            lines += [f"sentinel auth-user {name} {user}"] if user else []
            lines += [f"sentinel auth-pass {name} {password}"]
        if self.password:  # clients need it, and so do the other sentinels
            lines += [f"requirepass {self.password}", f"sentinel sentinel-pass {self.password}"]
        return "\n".join(lines) + "\n"

    def argv(self) -> list[str]:
        conf = self.data_dir / "sentinel.conf"
        if not conf.exists():
            private_file(conf, self._config())
        return [
            redis_server_binary(),
            str(conf),
            "--sentinel",
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--daemonize",
            "no",
            "--logfile",
            str(self.log_path),
        ]

    def probe(self) -> Callable[[socket.socket], bool]:
        auth = f"AUTH {self.password}\r\n".encode() if self.password else b""

        def ready(sock: socket.socket) -> bool:
            if auth:
                sock.sendall(auth)
                if not sock.recv(64).startswith(b"+OK"):
                    return False
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")

        return ready

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(
            host=self.host, port=self.port, password=self.password or None, socket_timeout=1.0
        )


class EmbeddedSentinelSet(OwnDataDir):
    """A primary, ``replicas`` replicas (`EmbeddedRedis` each, with ``persist`` as there) and
    ``sentinels`` sentinels (quorum: a majority) monitoring them under the name ``service``.

    ``start`` returns once every sentinel knows the others and the replicas and every replica
    is in sync; ``kill_primary`` crashes the primary (SIGKILL); ``wait_for_failover`` waits for
    the sentinels to name a new one; ``restart`` brings a killed member back as a replica of
    the current primary (as an operator's start script would: it never comes back as a second
    primary holding stale data). ``sentinel_password``: the sentinels' own (``requirepass``).
    """

    def __init__(
        self,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        service: str = "sllm",
        persist: bool = False,
        password: str = "",
        users: Sequence[RedisUser] = (),
        sentinel_password: str = "",
        data_dir: str | Path | None = None,
        down_after_ms: int = DOWN_AFTER_MS,
        failover_timeout_ms: int = FAILOVER_TIMEOUT_MS,
    ) -> None:
        names = {u.user for u in users}
        if users and ADMIN_USER not in names:
            raise EmbeddedServerError(
                f"a sentinel set with ACL users needs the admin ({ADMIN_USER!r}) among them"
            )
        self.users = tuple(_with_hello(u) if u.user == ADMIN_USER else u for u in users)
        self.password = check_credential(password) if password else ""
        self.sentinel_password = check_credential(sentinel_password) if sentinel_password else ""
        self.service = check_credential(service)
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="sllm-sentinel-set-"))
        self.members = [
            _Member(
                data_dir=self.data_dir / f"valkey-{i}",
                persist=persist,
                password=self.password,
                users=self.users,
            )
            for i in range(1 + replicas)
        ]
        for member in self.members:
            member.masterauth = self._admin_login()
        self.sentinels: list[EmbeddedSentinel] = []
        self._sentinel_count = sentinels
        self._timing = (down_after_ms, failover_timeout_ms)

    # --- life cycle ------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Self:
        """Start the primary, the replicas, then the sentinels; wait until they agree."""
        first, *rest = self.members
        first.start()
        for member in rest:
            member.upstream = first.port
            member.start()
        # Sentinels learn the replicas from the primary's INFO, which they ask for every 10 s:
        # replicas that attached before the sentinels' first look are known at once.
        self._wait(lambda: self._in_sync(rest), "the replicas to sync", timeout)
        if not self.sentinels:
            self.sentinels = [
                EmbeddedSentinel(
                    service=self.service,
                    primary_port=first.port,
                    quorum=self._sentinel_count // 2 + 1,
                    auth=self._admin_login(),
                    password=self.sentinel_password,
                    data_dir=self.data_dir / f"sentinel-{i}",
                    down_after_ms=self._timing[0],
                    failover_timeout_ms=self._timing[1],
                )
                for i in range(self._sentinel_count)
            ]
        for sentinel in self.sentinels:
            sentinel.start()
        self._wait(lambda: self._settled(first), "the sentinels to agree", timeout)
        return self

    def stop(self) -> None:
        """Stop every process, the sentinels first (no failover of a set going away)."""
        for server in [*self.sentinels, *self.members]:
            server.stop()

    # --- faults ----------------------------------------------------------------------------

    def primary(self) -> EmbeddedRedis:
        """The member that a majority of the sentinels names as primary now (it may be dead:
        the sentinels have not noticed yet)."""
        port = self._named_primary()
        if port is None:
            raise EmbeddedServerError("the sentinels do not agree on a primary")
        return self._member_at(port)

    def kill_primary(self) -> EmbeddedRedis:
        """Crash the current primary (SIGKILL, as a machine failure would); returns it."""
        member = self.primary()
        member.kill()
        return member

    def wait_for_failover(self, old: EmbeddedRedis, timeout: float = 20.0) -> EmbeddedRedis:
        """Wait until the sentinels name a running primary other than ``old``; return it."""

        def promoted() -> bool:
            port = self._named_primary()
            return port is not None and port != old.port and self._member_at(port).running

        self._wait(promoted, "a failover", timeout)
        return self.primary()

    def restart(self, member: EmbeddedRedis, timeout: float = 20.0) -> None:
        """Start a killed member again as a replica of the current primary, and wait until it
        is in sync and the sentinels see it again."""
        assert isinstance(member, _Member)
        primary = self.primary()
        if primary is member:
            raise EmbeddedServerError("the sentinels still name this member primary")
        member.upstream = primary.port
        member.restart()
        self._wait(lambda: self._settled(primary), "the member to rejoin", timeout)

    # --- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The sentinel URL without credentials (what logs may show)."""
        return self._url("")

    @property
    def client_url(self) -> str:
        """The sentinel URL with the admin's credentials (what an operator connects with)."""
        login = self._admin_login()
        if login is None:
            return self.url
        user, password = login
        return self._url(f"{user}:{password}@")

    def url_for(self, user: str) -> str:
        """The sentinel URL with ACL user ``user``'s credentials in it."""
        (match,) = [u for u in self.users if u.user == user]
        return self._url(f"{match.user}:{match.password}@")

    def _url(self, userinfo: str) -> str:
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.sentinels)
        query = f"?sentinel_password={self.sentinel_password}" if self.sentinel_password else ""
        return f"redis+sentinel://{userinfo}{hosts}/{self.service}/0{query}"

    # --- inspection ------------------------------------------------------------------------

    def admin_client(self, member: EmbeddedRedis) -> redis.Redis:
        """A (blocking) admin client of one member, for checks."""
        user, password = self._admin_login() or ("", "")
        return redis.Redis(
            host=member.host,
            port=member.port,
            username=user or None,
            password=password or None,
            socket_timeout=1.0,
        )

    def _admin_login(self) -> tuple[str, str] | None:
        if self.users:
            (admin,) = [u for u in self.users if u.user == ADMIN_USER]
            return ADMIN_USER, admin.password
        return ("", self.password) if self.password else None

    def _member_at(self, port: int) -> _Member:
        (member,) = [m for m in self.members if m.port == port]
        return member

    def _ask_sentinels(self, ask: Callable[[redis.Redis], Any]) -> list[Any]:
        """Each running sentinel's answer (None where it did not answer)."""
        answers = []
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            client = sentinel.client()
            try:
                answers.append(ask(client))
            except (redis.RedisError, OSError):
                answers.append(None)
            finally:
                client.close()
        return answers

    def _named_primary(self) -> int | None:
        """The primary's port if a majority of the sentinels names the same one."""
        ports = [
            int(a[1])
            for a in self._ask_sentinels(lambda c: c.sentinel_get_master_addr_by_name(self.service))
            if a
        ]
        for port in set(ports):
            if ports.count(port) > len(self.sentinels) // 2:
                return port
        return None

    def _settled(self, primary: EmbeddedRedis) -> bool:
        """Every sentinel names ``primary``, knows the other sentinels and every running
        replica, which is in sync with it."""
        running = [m for m in self.members if m.running and m is not primary]
        want = {"ip": primary.host, "port": primary.port}

        def check(client: redis.Redis) -> bool:
            state: dict[str, Any] = client.sentinel_master(self.service)  # type: ignore[assignment]
            replicas: list[dict[str, Any]] = client.sentinel_slaves(self.service)
            healthy = {
                int(r["port"])
                for r in replicas
                if not (r["is_sdown"] or r["is_odown"]) and r.get("master-link-status") == "ok"
            }
            return bool(
                {k: state.get(k) for k in want} == want
                and state["is_master"]
                and not state["is_sdown"]
                and state["num-other-sentinels"] == len(self.sentinels) - 1
                and {m.port for m in running} <= healthy
            )

        answers = self._ask_sentinels(check)
        return len(answers) == len(self.sentinels) and all(answers) and self._in_sync(running)

    def _in_sync(self, replicas: list[_Member]) -> bool:
        for member in replicas:
            client = self.admin_client(member)
            try:
                info = client.info("replication")
            except (redis.RedisError, OSError):
                return False
            finally:
                client.close()
            if info.get("role") != "slave" or info.get("master_link_status") != "up":
                return False
        return True

    @staticmethod
    def _wait(done: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.1)


def _with_hello(user: RedisUser) -> RedisUser:
    """``user`` allowed on the sentinels' hello channel (they log in as the admin)."""
    if SENTINEL_HELLO in user.channels or "*" in user.channels:
        return user
    return dataclasses.replace(user, channels=(*user.channels, SENTINEL_HELLO))
