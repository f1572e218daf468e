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

    def validate(self) -> None:
        super().validate()
        if min(self.prior_dram_gbps, self.prior_ssd_gbps, self.prior_registry_gbps) <= 0:
            raise SettingsError("SLLM_PRIOR_*_GBPS must be > 0")
