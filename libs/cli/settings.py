"""Settings of ``sllm up`` (the one-machine launcher), and the table of every service's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from libs.common.settings import CommonSettings, SettingsError, setting


@dataclass(frozen=True)
class UpSettings(CommonSettings):
    nats_url: str = setting("", "NATS server URL; empty: `sllm up` starts an embedded nats-server")
    redis_url: str = setting("", "Redis URL; empty: `sllm up` starts an embedded valkey-server")
    host: str = setting("127.0.0.1", "address the REST API listens on")
    port: int = setting(8343, "port the REST API listens on")
    nodes: int = setting(1, "simulated nodes (one storage service each) that `sllm up` starts")
    workers_per_node: int = setting(1, "CPU workers per simulated node")
    model: str = setting("", "model directory to serve; empty: the demo model")
    data_dir: Path = setting(Path(".sllm"), "where `sllm up` keeps models, tiers and logs")
    dram_capacity_gb: float = setting(8.0, "DRAM tier capacity in GB")
    startup_timeout: float = setting(120.0, "seconds `sllm up` waits for every service")
    ha: bool = setting(
        False, "`sllm up`: 3 NATS servers (a cluster) and Valkey with a replica and 3 sentinels"
    )

    def validate(self) -> None:
        super().validate()
        if self.nodes < 1 or self.workers_per_node < 1:
            raise SettingsError("SLLM_NODES and SLLM_WORKERS_PER_NODE must be at least 1")
        if self.ha and (self.nats_url or self.redis_url):
            raise SettingsError(
                "SLLM_HA starts its own NATS cluster and Valkey set: leave SLLM_NATS_URL and "
                "SLLM_REDIS_URL empty"
            )


def all_settings() -> dict[str, type[CommonSettings]]:
    """Every settings class by the process that reads it (for `sllm settings`)."""
    from services.router.settings import RouterSettings
    from services.scheduler.settings import SchedulerSettings
    from services.storage.settings import StorageSettings
    from services.worker.settings import WorkerSettings

    from .node import NodeSettings

    return {
        "router": RouterSettings,
        "scheduler": SchedulerSettings,
        "worker": WorkerSettings,
        "storage": StorageSettings,
        "sllm up": UpSettings,
        "sllm node": NodeSettings,
    }
