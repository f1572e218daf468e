"""Run `sllm up` as a user does, and give tests handles on it (HTTP, bus, Redis, processes)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from libs.cli.credentials import CREDENTIALS_FILE, read_env_file
from libs.common.embedded import free_port

SLLM = str(Path(sys.executable).with_name("sllm"))


class UpCluster:
    """One `sllm up` process tree with its own root, port and data directory."""

    def __init__(
        self,
        tmp: Path,
        *,
        nodes: int,
        workers_per_node: int = 1,
        extra_args: tuple[str, ...] = (),
        **env: str,
    ) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.root = "e2e" + os.urandom(4).hex()
        self.log_path = tmp / "up.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SLLM_")}
        self.env.update(
            {
                "SLLM_ROOT": self.root,
                "PYTHONUNBUFFERED": "1",
                # Tests deploy models they write into sibling temporary directories (pytest's
                # tmp_path): the registry is pytest's base temporary directory.
                "SLLM_REGISTRY_ALLOW": str(tmp.parent),
                **env,
            }
        )
        self.argv = [
            SLLM,
            "up",
            "--nodes",
            str(nodes),
            "--workers-per-node",
            str(workers_per_node),
            "--port",
            str(self.port),
            "--data-dir",
            str(tmp / "state"),
            *extra_args,
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.nats_url = ""
        self.redis_url = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def demo_dir(self) -> Path:
        return self.tmp / "state" / "models" / "demo"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self, timeout: float = 240.0) -> UpCluster:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while "sllm is up" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"sllm up did not come up:\n{self.log()[-5000:]}")
            time.sleep(0.2)
        # The bus is authenticated: the admin URLs are in the credentials file, not the log.
        creds = read_env_file(self.tmp / "state" / CREDENTIALS_FILE)
        self.nats_url, self.redis_url = creds["SLLM_NATS_URL"], creds["SLLM_REDIS_URL"]
        return self

    def service_env(self) -> dict[str, str]:
        """Environment for `sllm` subcommands talking to this cluster."""
        return {**self.env, "SLLM_NATS_URL": self.nats_url, "SLLM_REDIS_URL": self.redis_url}

    def child(self, instance_id: str) -> psutil.Process:
        assert self.proc is not None
        for c in psutil.Process(self.proc.pid).children():
            with contextlib.suppress(psutil.Error):
                if c.environ().get("SLLM_INSTANCE_ID") == instance_id:
                    return c
        raise AssertionError(f"no child process {instance_id}")

    def services(self) -> list[tuple[str, psutil.Process]]:
        """The Python service processes `sllm up` runs, with their names."""
        out = []
        with contextlib.suppress(psutil.Error):
            assert self.proc is not None
            for c in psutil.Process(self.proc.pid).children():
                with contextlib.suppress(psutil.Error):
                    service = next((a for a in c.cmdline() if a.startswith("services.")), "")
                    if service:  # not nats-server, valkey-server
                        out.append((c.environ().get("SLLM_INSTANCE_ID") or service, c))
        return out

    def stacks(self) -> str:
        """Where every service waits now, for the report of a failed test: their asyncio
        tasks' await chains (SIGUSR1: `libs/common/task_dump.py`, into the log) and their
        threads' stacks (py-spy, where installed)."""
        if self.proc is None or self.proc.poll() is not None:
            return "(sllm up is not running)"
        mark = len(self.log())
        services = self.services()
        for _, c in services:
            with contextlib.suppress(psutil.Error):
                c.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        out = [self.log()[mark:]]
        spy = Path(sys.executable).with_name("py-spy")
        for name, c in services if spy.exists() else ():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                dump = subprocess.run(
                    [str(spy), "dump", "--pid", str(c.pid)],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                out.append(f"=== {name} (pid {c.pid})\n{dump.stdout}{dump.stderr}")
        return "\n".join(out)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def up_cluster(tmp: Path, **kw: Any) -> Iterator[UpCluster]:
    cluster = UpCluster(tmp, **kw)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
