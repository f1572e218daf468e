"""NATS subject names: the only place that builds a subject string.

Every subject lives under one root (``sllm`` by default). Tests give each test its own root so
that tests sharing one nats-server never see each other's traffic.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .schema import Message

Req = TypeVar("Req", bound=Message)
Rep = TypeVar("Rep", bound=Message)
Chunk = TypeVar("Chunk", bound=Message)

_TOKEN = re.compile(r"^[A-Za-z0-9_\-]+$")
_PARAM = re.compile(r"\{(\w+)\}")

# Header names on the wire. The error pair is the NATS micro convention, so `nats micro`
# tooling shows our errors too.
ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
CANCEL_SUBJECT_HEADER = "Sllm-Cancel-Subject"
STREAM_ID_HEADER = "Sllm-Stream-Id"


def token(value: str) -> str:
    """Check that ``value`` is safe as one subject token (no dots, wildcards or spaces)."""
    if not _TOKEN.match(value):
        raise ValueError(f"invalid subject token {value!r}: use letters, digits, '_' and '-'")
    return value


def check_root(root: str) -> str:
    """A root is one or more tokens separated by dots."""
    for part in root.split("."):
        token(part)
    return root


@dataclass(frozen=True)
class Endpoint(Generic[Req, Rep]):
    """A request/reply endpoint: a subject template under the root plus its two schemas.

    ``resend_on_drop``: the request is safe to repeat (asking twice has the effect of asking
    once), so a caller whose connection drops while it waits sends it again once the connection
    is back, instead of waiting out its timeout for a reply core NATS may have lost.
    """

    name: str
    template: str
    request: type[Req]
    reply: type[Rep]
    resend_on_drop: bool = field(default=False, kw_only=True)

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(_PARAM.findall(self.template))

    def subject(self, root: str, **params: str) -> str:
        missing = set(self.params) - params.keys()
        extra = params.keys() - set(self.params)
        if missing or extra:
            raise ValueError(f"{self.name}: missing {sorted(missing)}, unexpected {sorted(extra)}")
        rendered = self.template.format(**{k: token(v) for k, v in params.items()})
        return f"{check_root(root)}.{rendered}"


@dataclass(frozen=True)
class StreamEndpoint(Endpoint[Req, Rep], Generic[Req, Rep, Chunk]):
    """An endpoint whose reply is an acknowledgement followed by a stream of ``chunk`` frames.

    ``ends`` tells the producer which chunk is the last one, so that it travels in a frame that
    also ends the stream (one message less per stream).
    """

    chunk: type[Chunk]
    ends: Callable[[Chunk], bool] | None = None


@dataclass(frozen=True)
class Subjects:
    """Subjects that are not endpoints: events, stream control, JetStream names."""

    root: str = "sllm"

    def __post_init__(self) -> None:
        check_root(self.root)

    def event(self, kind: str) -> str:
        """``<root>.events.<kind>``; ``kind`` may be dotted (``instance.ready``)."""
        return f"{self.root}.events.{'.'.join(token(p) for p in kind.split('.'))}"

    @property
    def all_events(self) -> str:
        return f"{self.root}.events.>"

    def stream_cancel(self, server_id: str) -> str:
        """Where a stream consumer sends `CancelStream` for streams produced by ``server_id``."""
        return f"{self.root}.streams.{token(server_id)}.cancel"

    @property
    def all_stream_cancels(self) -> str:
        return f"{self.root}.streams.*.cancel"

    @property
    def demand(self) -> str:
        """Where routers publish their `DemandReport` for the scheduler."""
        return f"{self.root}.sched.demand"

    @property
    def events_stream(self) -> str:
        """The JetStream stream that retains every event for replay."""
        return self.root.replace(".", "_").replace("-", "_").upper() + "_EVENTS"

    def service_name(self, kind: str) -> str:
        """NATS micro service name (shown by ``$SRV.PING`` / ``$SRV.INFO``)."""
        return f"{self.root.replace('.', '_')}-{token(kind)}"
