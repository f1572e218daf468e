"""Shared by every area's messages: storage tiers, finish reasons, instance statuses, the
limits that keep a malformed or hostile message from asking for absurd work, and what any
service says about itself."""

from __future__ import annotations

from typing import Literal

from ..schema import Message

Tier = Literal["gpu", "dram", "ssd", "registry"]
FinishReason = Literal["stop", "length", "cancelled", "error"]
InstanceStatus = Literal["loading", "ready", "stopping", "failed"]

# Upper bounds that keep a malformed or hostile message from asking for absurd work.
MAX_TOKENS_LIMIT = 1 << 20
MAX_PROMPT_TOKENS = 1 << 20


class ServiceInfoReply(Message):
    """What any sllm service says about itself (answer to ``info``)."""

    kind: Literal["router", "scheduler", "worker", "storage"]
    instance_id: str
    node_id: str = ""
    version: str
    started_at: float
    # Where its Prometheus /metrics answers (host:port; "": none): the router's
    # /metrics/targets lists these for Prometheus' HTTP service discovery.
    metrics_addr: str = ""


class InfoRequest(Message):
    """Ask a service to describe itself."""
