"""The JetStream stream that retains every monitoring event for replay (`sllm events --all`).

On a NATS cluster it keeps ``replicas`` copies on distinct servers: 3 survive the loss of any
one (`Bus.cluster_size` says how many servers there are). Events stay best effort: one emitted
while the stream elects a new leader (about 4 s after its leader's server dies) is dropped,
as monitoring may be; no control decision rides on an event.
"""

from __future__ import annotations

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATSClient
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from .errors import UnavailableError
from .subjects import Subjects


async def ensure(
    nc: NATSClient,
    subjects: Subjects,
    timeout: float,
    *,
    replicas: int = 1,
    max_age_s: float = 7 * 86400,
    max_bytes: int = 256 * 1024 * 1024,
) -> None:
    """Create the stream, or update it to this configuration if it exists with another."""
    config = StreamConfig(
        name=subjects.events_stream,
        subjects=[subjects.all_events],
        max_age=max_age_s,
        max_bytes=max_bytes,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
    )
    js = nc.jetstream(timeout=timeout)
    try:
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.update_stream(config)  # exists with another config: take ours
    except (nats.errors.Error, OSError) as exc:
        raise UnavailableError(f"cannot create the event stream: {exc!r}") from None
