"""Background tasks of real services under supervision (real NATS and Redis): a loop that
crashes is logged and restarted, a fatal crash ends the process with a non-zero status, and a
service's stop cancels every background task."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from libs.common.embedded import EmbeddedNats, EmbeddedRedis
from libs.protocol import Bus

from .scheduler_stubs import running_scheduler

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


async def test_a_housekeeping_round_that_raises_is_logged_and_the_loop_restarted(
    nats_server: EmbeddedNats,
    redis_server: EmbeddedRedis,
    root: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {"SLLM_HOUSEKEEPING_INTERVAL": "0.05"}
    with caplog.at_level(logging.ERROR, logger="libs.common.supervise"):
        async with running_scheduler(nats_server.url, redis_server.url, root, **env) as svc:
            sweeps: list[float] = []
            sweep = svc.sweep
            again = asyncio.Event()

            async def sweep_that_fails_once() -> None:
                sweeps.append(time.monotonic())
                if len(sweeps) == 1:
                    raise RuntimeError("a bug in the sweep")
                await sweep()
                if len(sweeps) >= 3:
                    again.set()

            monkeypatch.setattr(svc, "sweep", sweep_that_fails_once)
            await asyncio.wait_for(again.wait(), 10)
            assert svc.tasks.restarts == {"housekeeping": 1}
            assert not svc.tasks.crashed.is_set()
            assert len(svc.tasks) >= 3  # heartbeat, housekeeping, scaling
        assert len(svc.tasks) == 0  # the stop cancelled them all
    (crash,) = [r for r in caplog.records if "loop housekeeping crashed" in r.getMessage()]
    assert crash.exc_info is not None
    assert "a bug in the sweep" in str(crash.exc_info[1])


DOOMED = """
import asyncio, sys
from typing import ClassVar
from libs.common.service import Service, ServiceKind, run_service
from libs.common.settings import CommonSettings
from libs.common.supervise import FATAL

class Doomed(Service):
    kind: ClassVar[ServiceKind] = "storage"

    async def on_start(self) -> None:
        self.tasks.loop("vital", self.vital, restart=FATAL)

    async def vital(self) -> None:
        await asyncio.sleep(0.2)
        raise RuntimeError("the vital loop broke")

sys.exit(run_service(lambda: Doomed(CommonSettings.from_env())))
"""


def test_a_service_whose_fatal_loop_crashes_exits_non_zero_and_says_why(
    nats_server: EmbeddedNats, redis_server: EmbeddedRedis, root: str, tmp_path: Path
) -> None:
    script = tmp_path / "doomed.py"
    script.write_text(textwrap.dedent(DOOMED))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "SLLM_NATS_URL": nats_server.url,
        "SLLM_REDIS_URL": redis_server.url,
        "SLLM_ROOT": root,
    }
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    assert "vital crashed and must not be restarted" in done.stderr
    assert "the vital loop broke" in done.stderr  # the traceback
    assert "storage stops: a background task crashed" in done.stderr


async def test_a_fire_and_forget_bus_task_that_fails_is_logged_with_its_name(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    async def publish_the_report() -> None:
        raise RuntimeError("report lost")

    with caplog.at_level(logging.ERROR, logger="libs.protocol.bus"):
        task = bus.spawn(publish_the_report())
        await asyncio.wait([task])
        await asyncio.sleep(0)
    (record,) = [r for r in caplog.records if "publish_the_report" in r.getMessage()]
    assert record.exc_info is not None
    assert "report lost" in str(record.exc_info[1])
