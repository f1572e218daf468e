"""Worker settings (``SLLM_*``)."""

from __future__ import annotations

from dataclasses import dataclass

from libs.common.settings import CommonSettings, SettingsError, setting


@dataclass(frozen=True)
class WorkerSettings(CommonSettings):
    node_id: str = setting("node-0", "the node (server) this worker runs on")
    device: str = setting("cpu", "torch device the worker serves from: cpu, cuda:0, ...")
    max_batch: int = setting(64, "sequences one forward pass of a worker's engine may carry")
    kv_cache_gb: float = setting(
        0.0,
        "GB of keys and values a worker's engine may hold over all its sequences (admission "
        "is by this budget); 0: 90% of the free GPU memory after the load, or 2 GB on a CPU",
    )
    prefill_chunk: int = setting(
        256, "prompt tokens one engine step may prefill, besides a token per decoding sequence"
    )
    max_queue: int = setting(
        1024,
        "requests that may wait in a worker for KV cache budget; more get 'overloaded' "
        "(0: no queue, a request is refused when SLLM_MAX_BATCH sequences are held)",
    )
    max_adapters: int = setting(
        8,
        "LoRA adapters a worker keeps resident on its base model (least recently used out; "
        "requests running on an evicted adapter finish with it)",
    )
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
        if min(self.max_batch, self.prefill_chunk) < 1 or self.max_queue < 0:
            raise SettingsError("SLLM_MAX_BATCH and SLLM_PREFILL_CHUNK must be >= 1")
        if self.max_adapters < 1:
            raise SettingsError("SLLM_MAX_ADAPTERS must be >= 1")
        if self.kv_cache_gb < 0:
            raise SettingsError("SLLM_KV_CACHE_GB must be >= 0")
        if self.load_timeout <= 0 or self.token_timeout <= 0:
            raise SettingsError("SLLM_LOAD_TIMEOUT and SLLM_TOKEN_TIMEOUT must be positive")
        if self.migration_timeout <= 0 or self.decode_delay < 0:
            raise SettingsError("SLLM_MIGRATION_TIMEOUT must be > 0 and SLLM_DECODE_DELAY >= 0")
