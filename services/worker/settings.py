"""Worker settings (``SLLM_*``)."""

from __future__ import annotations

from dataclasses import dataclass

from libs.common.settings import CommonSettings, SettingsError, setting


@dataclass(frozen=True)
class WorkerSettings(CommonSettings):
    node_id: str = setting("node-0", "the node (server) this worker runs on")
    device: str = setting("cpu", "torch device the worker serves from: cpu, cuda:0, ...")
    max_concurrency: int = setting(8, "generations a worker runs at once (interleaved decode)")
    load_timeout: float = setting(600.0, "seconds a worker's load (storage ensure + read) may take")
    token_timeout: float = setting(
        300.0, "seconds a generation may wait for its next token before it fails"
    )
    torch_threads: int = setting(0, "torch intra-op threads of a worker; 0: torch's default")
    host_pool_gb: float = setting(
        0.0, "pinned/pre-touched host memory (GB) a worker reads checkpoints into; 0: none"
    )
    migration_timeout: float = setting(
        30.0,
        "seconds one generation's live migration may take before the source aborts it and "
        "carries on; a destination drops a shadow it hears nothing about for this long",
    )
    decode_delay: float = setting(
        0.0, "seconds a worker pauses after each decode step: simulates a slower device (tests)"
    )

    def validate(self) -> None:
        super().validate()
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise SettingsError(f"SLLM_DEVICE must be cpu or cuda[:N], got {self.device!r}")
        if self.max_concurrency < 1:
            raise SettingsError("SLLM_MAX_CONCURRENCY must be at least 1")
        if self.load_timeout <= 0 or self.token_timeout <= 0:
            raise SettingsError("SLLM_LOAD_TIMEOUT and SLLM_TOKEN_TIMEOUT must be positive")
        if self.migration_timeout <= 0 or self.decode_delay < 0:
            raise SettingsError("SLLM_MIGRATION_TIMEOUT must be > 0 and SLLM_DECODE_DELAY >= 0")
