"""Router settings (``SLLM_*``)."""

from __future__ import annotations

from dataclasses import dataclass

from libs.common.settings import CommonSettings, SettingsError, setting
from libs.protocol.messages import MAX_TOKENS_LIMIT


@dataclass(frozen=True)
class RouterSettings(CommonSettings):
    host: str = setting("127.0.0.1", "address the REST API listens on")
    port: int = setting(8343, "port the REST API listens on")
    queue_size: int = setting(
        256, "requests per model that may wait for an instance to start; more get 429"
    )
    start_timeout: float = setting(
        120.0, "seconds a request may wait for a ready instance (cold start); then 503"
    )
    stream_idle_timeout: float = setting(
        60.0, "seconds the router waits for the worker's next token before failing the request"
    )
    place_timeout: float = setting(10.0, "seconds one placement request to the scheduler may take")
    api_keys: tuple[str, ...] = setting(
        (), "comma-separated API keys accepted as `Authorization: Bearer` on /v1; empty: no auth"
    )
    default_max_tokens: int = setting(
        1024, "max_tokens of a chat completion that sets none (completions default to 16)"
    )
    retry_after: int = setting(2, "seconds suggested in Retry-After with 429 and 503 answers")
    access_log: bool = setting(
        False, "log one line per HTTP request (uvicorn's access log; costs ~0.2 ms a request)"
    )
    instance_cache_ttl: float = setting(
        1.0, "seconds the router trusts its cached list of a model's ready instances"
    )
    demand_refresh_interval: float = setting(
        5.0,
        "seconds between re-publications of the router's demand for the autoscaler (changes "
        "go out at once); the scheduler forgets a router silent for 3 of these",
    )
    failover_attempts: int = setting(
        2,
        "times one generation whose instance dies mid-stream is resumed on another instance "
        "from the prompt plus the tokens already sent (0: off; the request fails instead)",
    )
    liveness_probe_interval: float = setting(
        1.0,
        "seconds without a token on any stream of an instance after which the router checks "
        "that its worker is alive (0: rely on the scheduler's instance events only)",
    )

    def validate(self) -> None:
        super().validate()
        if not 0 < self.port < 65536:
            raise SettingsError(f"SLLM_PORT must be a TCP port, got {self.port}")
        if self.queue_size < 1:
            raise SettingsError("SLLM_QUEUE_SIZE must be at least 1")
        for name in (
            "start_timeout",
            "stream_idle_timeout",
            "place_timeout",
            "demand_refresh_interval",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"SLLM_{name.upper()} must be positive")
        if not 1 <= self.default_max_tokens <= MAX_TOKENS_LIMIT:
            raise SettingsError(f"SLLM_DEFAULT_MAX_TOKENS must be in 1..{MAX_TOKENS_LIMIT}")
        if self.failover_attempts < 0:
            raise SettingsError("SLLM_FAILOVER_ATTEMPTS must be 0 or more")
        if self.liveness_probe_interval < 0:
            raise SettingsError("SLLM_LIVENESS_PROBE_INTERVAL must be 0 or more")
        if any(any(c.isspace() for c in k) for k in self.api_keys):
            raise SettingsError("SLLM_API_KEYS: keys must not contain whitespace")
