"""Router settings (``SLLM_*``)."""

from __future__ import annotations

from dataclasses import dataclass

from libs.common.registry_allow import DEFAULT_REGISTRY_ALLOW, REGISTRY_ALLOW_HELP, AllowList
from libs.common.settings import CommonSettings, SettingsError, setting
from libs.protocol.messages import MAX_TOKENS_LIMIT

# Bodies above this are refused (413) on every route; the completion routes also stop at 4x
# the bus's largest message. A chat of 128k tokens is well under 1 MiB of JSON.
DEFAULT_MAX_BODY_BYTES = 4 << 20


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
        (),
        "comma-separated inference API keys (`Authorization: Bearer`) for completions and "
        "models; empty: inference is open",
    )
    admin_keys: tuple[str, ...] = setting(
        (),
        "comma-separated admin API keys for /v1/deployments (they also work as inference "
        "keys); empty: admin routes are open only while SLLM_API_KEYS is empty too, else 403",
    )
    max_body_bytes: int = setting(
        DEFAULT_MAX_BODY_BYTES, "largest request body on any route, in bytes; larger: 413"
    )
    registry_allow: tuple[str, ...] = setting(DEFAULT_REGISTRY_ALLOW, REGISTRY_ALLOW_HELP)
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
        "most seconds without a token on any stream of an instance before the router checks "
        "that its worker is alive (sooner: eight of the stream's typical gaps, at least 0.3 s; "
        "0: rely on the scheduler's instance events only)",
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
        for name in ("api_keys", "admin_keys", "metrics_keys"):
            if any(any(c.isspace() for c in k) for k in getattr(self, name)):
                raise SettingsError(f"SLLM_{name.upper()}: keys must not contain whitespace")
        if set(self.admin_keys) & set(self.api_keys):
            raise SettingsError("SLLM_ADMIN_KEYS and SLLM_API_KEYS must not share a key")
        if self.max_body_bytes < 1024:
            raise SettingsError("SLLM_MAX_BODY_BYTES must be at least 1024")
        try:
            self.allow_list()
        except ValueError as exc:
            raise SettingsError(f"SLLM_REGISTRY_ALLOW: {exc}") from None

    def allow_list(self) -> AllowList:
        """``registry_allow`` parsed (relative directories from the working directory)."""
        return AllowList.parse(self.registry_allow)
