"""The peer: `transformers serve --continuous-batching` on the CPU, as a child process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks.serving.common import log
from libs.common.embedded import free_port

TRANSFORMERS = str(Path(sys.executable).with_name("transformers"))


class TransformersServe:
    """One `transformers serve` process (and the model process it spawns); ``stop`` is safe to
    call at any time, more than once."""

    def __init__(
        self, model_dir: Path, log_path: Path, *, threads: int = 0, memory: float = 0.0
    ) -> None:
        self.model_dir = model_dir
        self.log_path = log_path
        self.port = free_port()
        self.threads = threads
        self.argv = [
            TRANSFORMERS,
            "serve",
            "--continuous-batching",
            *("--device", "cpu", "--host", "127.0.0.1", "--port", str(self.port)),
            *("--log-level", "warning"),
            # The paged KV cache's share of the RAM (see `models.cb_memory_fraction`).
            *(("--cb-max-memory-percent", f"{memory:.4f}") if memory > 0 else ()),
            str(model_dir),
        ]
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        if threads > 0:  # torch's own default otherwise: every core, as a user would run it
            self.env["OMP_NUM_THREADS"] = str(threads)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def model_name(self) -> str:
        """The model id of requests: a model given on the command line answers to its path."""
        return str(self.model_dir)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def start(self, timeout: float = 600.0) -> TransformersServe:
        """Start and wait until it lists the model as loaded (it is given on the command line,
        so the server loads it at start)."""
        t0 = time.monotonic()
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in our terminal is ours to handle
            )
        while not self._loaded():
            if self.proc.poll() is not None or time.monotonic() - t0 > timeout:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"transformers serve did not come up in {timeout:g}s:\n{tail}")
            time.sleep(0.5)
        log(f"transformers serve up in {time.monotonic() - t0:.1f}s on port {self.port}")
        return self

    def _loaded(self) -> bool:
        try:
            r = httpx.get(f"{self.base_url}/v1/models", timeout=2.0)
        except httpx.HTTPError:
            return False
        if r.status_code != 200:
            return False
        return any(
            m.get("id") == self.model_name and (m.get("status") or {}).get("value") == "loaded"
            for m in r.json().get("data", [])
        )

    def stop(self) -> None:
        """SIGINT (what Ctrl-C sends), then SIGKILL after 30 s; then its model process, should it
        outlive it (it exits with its parent, a moment later)."""
        import psutil

        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            children = []
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            log("transformers serve did not stop within 30s; killing it")
            proc.kill()
            proc.wait(10)
        _, alive = psutil.wait_procs(children, timeout=10)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()
