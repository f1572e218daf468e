"""Typed settings from SLLM_* variables, and the README's table of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.cli.settings import UpSettings, all_settings
from libs.cli.up import torch_threads_per_worker
from libs.common.settings import SettingsError, settings_table
from services.router.settings import RouterSettings
from services.storage.settings import StorageSettings
from services.worker.settings import WorkerSettings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_work_locally() -> None:
    s = RouterSettings.from_env({})
    assert s.port == 8343
    assert s.nats_url.startswith("nats://127.0.0.1")


def test_values_are_read_and_typed() -> None:
    s = StorageSettings.from_env(
        {"SLLM_DRAM_CAPACITY_GB": "1.5", "SLLM_SSD_DIR": "/x/ssd", "SLLM_NODE_ID": "n1"}
    )
    assert s.dram_capacity_gb == 1.5
    assert s.ssd_dir == Path("/x/ssd")
    assert s.node_id == "n1"


def test_settings_are_frozen() -> None:
    s = RouterSettings.from_env({})
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("cls", "env", "match"),
    [
        (RouterSettings, {"SLLM_PORT": "eighty"}, "SLLM_PORT"),
        (RouterSettings, {"SLLM_PORT": "70000"}, "SLLM_PORT"),
        (WorkerSettings, {"SLLM_DEVICE": "tpu"}, "SLLM_DEVICE"),
        (RouterSettings, {"SLLM_REQUEST_TIMEOUT": "-1"}, "SLLM_REQUEST_TIMEOUT"),
        (UpSettings, {"SLLM_NODES": "0"}, "SLLM_NODES"),
    ],
)
def test_bad_values_raise_a_clear_error(cls, env, match) -> None:
    with pytest.raises(SettingsError, match=match):
        cls.from_env(env)


def test_as_env_roundtrips() -> None:
    s = UpSettings.from_env({"SLLM_NODES": "3", "SLLM_MODEL": "/m"})
    assert UpSettings.from_env(s.as_env()) == s


def test_public_hides_credentials() -> None:
    s = RouterSettings.from_env({"SLLM_REDIS_URL": "redis://user:secret@host:6379/0"})
    assert "secret" not in str(s.public())


def test_readme_lists_every_setting() -> None:
    """The README's table is `sllm settings` verbatim, so it cannot rot."""
    readme = (ROOT / "README.md").read_text()
    assert settings_table(all_settings()) in readme


@pytest.mark.parametrize(
    ("nodes", "workers", "cpus", "threads"),
    [(1, 1, 2, 2), (2, 1, 2, 1), (1, 1, 16, 16), (2, 2, 16, 4), (4, 4, 8, 1)],
)
def test_cpu_workers_share_the_cores_out(nodes, workers, cpus, threads) -> None:
    settings = UpSettings.from_env(
        {"SLLM_NODES": str(nodes), "SLLM_WORKERS_PER_NODE": str(workers)}
    )
    assert torch_threads_per_worker(settings, cpus) == threads
