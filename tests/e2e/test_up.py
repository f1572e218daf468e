"""`sllm up` as a user runs it: everything starts, answers, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from libs.common.embedded import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SLLM = str(Path(sys.executable).with_name("sllm"))


def _get(url: str) -> tuple[int, dict[str, object]]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def test_sllm_up_serves_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLLM_")}
    env.update({"SLLM_ROOT": "e2eup", "PYTHONUNBUFFERED": "1"})
    log = (tmp_path / "up.log").open("w+")
    proc = subprocess.Popen(
        [SLLM, "up", "--nodes", "2", "--port", str(port), "--data-dir", str(tmp_path / "state")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while "sllm is up" not in (tmp_path / "up.log").read_text():
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.2)
        output = (tmp_path / "up.log").read_text()
        assert f"http://127.0.0.1:{port}" in output

        assert _get(f"http://127.0.0.1:{port}/health") == (200, {"status": "alive"})
        assert _get(f"http://127.0.0.1:{port}/ready")[0] == 200

        # The demo model was written, in the Hugging Face layout.
        model = tmp_path / "state" / "models" / "demo"
        assert (model / "config.json").exists()
        assert (model / "tokenizer.json").exists()

        # No open bus: every service has a generated password, and none is ever printed.
        creds_file = tmp_path / "state" / "credentials.env"
        assert creds_file.stat().st_mode & 0o777 == 0o600
        creds = dict(line.split("=", 1) for line in creds_file.read_text().splitlines())
        for url in creds.values():
            password = url.split("@")[0].rsplit(":", 1)[1]
            assert len(password) >= 24
            assert password not in output
        bare = output.split("NATS ")[1].split()[0]
        assert "@" not in bare.replace("***@", "")
        # Operators' tools find the credentials file of the data dir by themselves.
        child_env = {**env, "SLLM_DATA_DIR": str(tmp_path / "state")}
        health = subprocess.run(
            [SLLM, "health", "worker", "node-1-w0"], env=child_env, capture_output=True, timeout=30
        )
        assert health.returncode == 0, health.stderr
        assert json.loads(health.stdout)["node_id"] == "node-1"

        events = subprocess.run(
            [SLLM, "events", "--all", "--count", "7", "--timeout", "5"],
            env=child_env,
            capture_output=True,
            timeout=30,
            text=True,
        )
        kinds = [json.loads(line)["kind"] for line in events.stdout.splitlines()]
        assert kinds.count("service.started") == 6  # scheduler, 2 storage, 2 workers, router
        assert kinds[-1] == "deployment.changed"  # the demo model was deployed

        # A crashed service is restarted (as compose's restart policy would).
        (worker,) = [
            c
            for c in psutil.Process(proc.pid).children()
            if c.environ().get("SLLM_INSTANCE_ID") == "node-1-w0"
        ]
        worker.kill()
        deadline = time.monotonic() + 60
        while True:
            again = subprocess.run(
                [SLLM, "health", "worker", "node-1-w0", "--timeout", "1"],
                env=child_env,
                capture_output=True,
                timeout=30,
            )
            if again.returncode == 0:
                break
            assert time.monotonic() < deadline, "the killed worker was not restarted"
            time.sleep(0.5)
        assert "node-1-w0 exited with -9; restarting" in (tmp_path / "up.log").read_text()

        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 7  # nats, valkey, scheduler, 2 storage, 2 workers, router
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, (tmp_path / "up.log").read_text()
        _gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"left running: {alive}"
        # The DRAM tiers (tmpfs: RAM) of this run are gone too.
        assert not list(Path("/dev/shm").glob(f"sllm-e2eup-{proc.pid}"))
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
