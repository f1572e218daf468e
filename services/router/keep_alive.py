"""Ollama's ``keep_alive`` of a request: seconds, or a Go-style duration string."""

from __future__ import annotations

import math
import re

MAX_KEEP_ALIVE_S = 30 * 86400.0
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
KEEP_ALIVE_HELP = (
    'keep_alive must be seconds (a number) or a duration such as "30s", "5m" or "1h"; '
    "0 unloads right after the request, a negative value keeps the model loaded indefinitely"
)


def parse_keep_alive(value: object) -> float | None:
    """Ollama's ``keep_alive``: seconds, or a Go-style duration string ("30s", "5m", "1h30m");
    negative means indefinitely (returned as -1). Raises ValueError with a clear message."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(KEEP_ALIVE_HELP)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body)
        except ValueError:
            parts = _DURATION.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise ValueError(f"{KEEP_ALIVE_HELP}; got {value!r}") from None
            seconds = sign * sum(float(n) * _UNIT_S[u] for n, u in parts)
    else:
        raise ValueError(KEEP_ALIVE_HELP)
    if math.isnan(seconds):
        raise ValueError(KEEP_ALIVE_HELP)
    if seconds < 0:
        return -1.0
    if seconds > MAX_KEEP_ALIVE_S:
        raise ValueError(f"keep_alive must be at most {MAX_KEEP_ALIVE_S:g} seconds (30 days)")
    return seconds
