"""Scheduler settings (``SLLM_*``)."""

from __future__ import annotations

from dataclasses import dataclass

from libs.common.settings import CommonSettings, SettingsError, setting


@dataclass(frozen=True)
class SchedulerSettings(CommonSettings):
    prior_dram_gbps: float = setting(8.0, "assumed DRAM-tier read GB/s until a node measures it")
    prior_ssd_gbps: float = setting(1.5, "assumed SSD-tier read GB/s until a node measures it")
    prior_registry_gbps: float = setting(
        0.5, "assumed registry fetch GB/s until a node measures it"
    )
    default_model_gb: float = setting(
        1.0, "assumed checkpoint size (GB) before any node has stored the model"
    )
    housekeeping_interval: float = setting(
        2.0, "seconds between sweeps for instances of dead workers and stale reservations"
    )
    placement_policy: str = setting(
        "startup_time",
        "startup_time: the smallest estimated startup; round_robin: rotate over free workers, "
        "blind to locality and bandwidth (a baseline for benchmarks)",
    )
    prefetch_replicas: int = setting(
        1, "nodes whose DRAM tier a newly deployed model is copied into at once; 0: none"
    )
    prefetch_timeout: float = setting(
        600.0, "seconds one node's prefetch on deploy may take before it is given up"
    )
    migration_load_timeout: float = setting(
        600.0, "seconds a requested live migration waits for its destination instance's load"
    )
    cold_start_migration: bool = setting(
        True,
        "weigh a busy best worker for a cold model: wait for it, or migrate its running "
        "generations away, when that starts the model sooner than a free worker",
    )
    migration_max_pause: float = setting(
        0.5, "seconds of stall a migration for a cold start may put into a moved token stream"
    )
    migration_max_moved: int = setting(
        16, "generations one migration for a cold start may move at most"
    )
    cold_start_wait_limit: float = setting(
        120.0, "seconds a cold start may wait for a busy worker before it goes elsewhere"
    )
    snapshot_max_age: float = setting(
        1.0,
        "seconds a placement may decide on a cluster snapshot read earlier (news of a freed "
        "worker or a new copy re-reads it sooner; a placement that finds no free worker in it "
        "reads a fresh one)",
    )
    calibration_window: int = setting(
        16, "recent loads per node and tier that calibrate startup estimates; 0: no calibration"
    )

    def validate(self) -> None:
        super().validate()
        if min(self.prior_dram_gbps, self.prior_ssd_gbps, self.prior_registry_gbps) <= 0:
            raise SettingsError("SLLM_PRIOR_*_GBPS must be > 0")
        if self.snapshot_max_age < 0:
            raise SettingsError("SLLM_SNAPSHOT_MAX_AGE must be >= 0")
        if self.placement_policy not in ("startup_time", "round_robin"):
            raise SettingsError("SLLM_PLACEMENT_POLICY must be startup_time or round_robin")
        if self.prefetch_replicas < 0 or self.calibration_window < 0:
            raise SettingsError("SLLM_PREFETCH_REPLICAS and SLLM_CALIBRATION_WINDOW must be >= 0")
        if self.prefetch_timeout <= 0:
            raise SettingsError("SLLM_PREFETCH_TIMEOUT must be positive")
        if self.migration_max_pause <= 0 or self.migration_max_moved < 1:
            raise SettingsError(
                "SLLM_MIGRATION_MAX_PAUSE must be > 0, SLLM_MIGRATION_MAX_MOVED >= 1"
            )
        if self.cold_start_wait_limit <= 0:
            raise SettingsError("SLLM_COLD_START_WAIT_LIMIT must be positive")
        if self.migration_load_timeout <= 0:
            raise SettingsError("SLLM_MIGRATION_LOAD_TIMEOUT must be positive")
