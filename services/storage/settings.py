"""Storage service settings (``SLLM_*``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from libs.common.registry_allow import DEFAULT_REGISTRY_ALLOW, REGISTRY_ALLOW_HELP, AllowList
from libs.common.settings import CommonSettings, SettingsError, setting
from libs.protocol.subjects import token


@dataclass(frozen=True)
class StorageSettings(CommonSettings):
    node_id: str = setting("node-0", "the node (server) whose tiers this service manages")
    ssd_dir: Path = setting(Path(".sllm/node-0/ssd"), "SSD tier directory")
    dram_dir: Path = setting(Path("/dev/shm/sllm/node-0"), "DRAM tier directory (tmpfs)")
    dram_capacity_gb: float = setting(8.0, "DRAM tier capacity in GB")
    ssd_capacity_gb: float = setting(
        0.0, "SSD tier capacity in GB, kept by LRU eviction; 0: bounded only by the disk"
    )
    fetch_timeout: float = setting(
        30.0, "seconds a registry connection or read may stall before the fetch fails"
    )
    ensure_timeout: float = setting(
        1800.0, "seconds one storage ensure (waiting, fetching, promoting) may take in all"
    )
    bandwidth_probe_mb: int = setting(
        64,
        "MiB the storage service writes and reads per tier at start to measure bandwidth; 0: no probe",
    )
    bandwidth_min_sample_mb: float = setting(
        64.0,
        "smallest transfer (MiB) that counts as a bandwidth sample; smaller ones measure overheads",
    )
    storage_io_threads: int = setting(8, "threads for the storage service's file and network I/O")
    locality_refresh_interval: float = setting(
        30.0, "seconds between re-publications of a node's locality and bandwidths in Redis"
    )
    registry_allow: tuple[str, ...] = setting(DEFAULT_REGISTRY_ALLOW, REGISTRY_ALLOW_HELP)

    def validate(self) -> None:
        super().validate()
        try:
            token(self.node_id)
        except ValueError as exc:
            raise SettingsError(f"SLLM_NODE_ID: {exc}") from None
        if self.fetch_timeout <= 0 or self.ensure_timeout <= 0:
            raise SettingsError("SLLM_FETCH_TIMEOUT and SLLM_ENSURE_TIMEOUT must be positive")
        if self.storage_io_threads < 1:
            raise SettingsError("SLLM_STORAGE_IO_THREADS must be at least 1")
        if self.locality_refresh_interval <= 0:
            raise SettingsError("SLLM_LOCALITY_REFRESH_INTERVAL must be positive")
        try:
            self.allow_list()
        except ValueError as exc:
            raise SettingsError(f"SLLM_REGISTRY_ALLOW: {exc}") from None

    def allow_list(self) -> AllowList:
        """``registry_allow`` parsed (relative directories from the working directory)."""
        return AllowList.parse(self.registry_allow)

    @property
    def dram_capacity_bytes(self) -> int:
        return int(self.dram_capacity_gb * 1e9)

    @property
    def ssd_capacity_bytes(self) -> int | None:
        return int(self.ssd_capacity_gb * 1e9) if self.ssd_capacity_gb > 0 else None
