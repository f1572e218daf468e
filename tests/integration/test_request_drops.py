"""A NATS restart while a request waits for its reply: a request that is safe to repeat is
sent again once the connection is back (core NATS loses what was in flight), one that is not is
never sent twice, and "no responders" while services re-subscribe is waited out."""

from __future__ import annotations

import asyncio
import time

import pytest

from libs.common.embedded import EmbeddedNats
from libs.protocol import Bus, Endpoint, route
from libs.protocol.errors import BusTimeoutError
from libs.protocol.requests import NO_RESPONDERS_GRACE

from .test_bus import EchoReply, EchoRequest

pytestmark = pytest.mark.integration

REPEATABLE = Endpoint("repeatable", "drops.repeatable", EchoRequest, EchoReply, resend_on_drop=True)
ONCE_ONLY = Endpoint("once_only", "drops.once_only", EchoRequest, EchoReply)


class LosesTheFirst:
    """Answers every call but the first, which it never answers (its reply lost in the
    restart, as far as the caller can tell)."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_started = asyncio.Event()

    async def __call__(self, req: EchoRequest) -> EchoReply:
        self.calls += 1
        if self.calls == 1:
            self.first_started.set()
            await asyncio.sleep(3600)
        return EchoReply(text=req.text)


async def _pair(nats: EmbeddedNats, server_wait: float = 0.25) -> tuple[Bus, Bus]:
    client = await Bus.connect(nats.url, name="client", root="drops", reconnect_wait=0.1)
    server = await Bus.connect(nats.url, name="server", root="drops", reconnect_wait=server_wait)
    return client, server


async def test_a_repeatable_request_is_resent_after_a_restart(own_nats: EmbeddedNats) -> None:
    client, server = await _pair(own_nats)
    handler = LosesTheFirst()
    try:
        await server.serve("drops", [route(REPEATABLE, handler)])
        asked = asyncio.ensure_future(
            client.request(REPEATABLE, EchoRequest(text="again"), timeout=30.0)
        )
        await asyncio.wait_for(handler.first_started.wait(), 5.0)
        t0 = time.monotonic()
        own_nats.kill()
        own_nats.restart()
        reply = await asyncio.wait_for(asked, 15.0)
        assert reply.text == "again"
        assert handler.calls == 2
        assert client.link.drops == 1
        assert time.monotonic() - t0 < 10.0  # the reconnect, not the 30 s timeout
    finally:
        await client.close()
        await server.close()


async def test_a_request_that_is_not_repeatable_is_sent_once(own_nats: EmbeddedNats) -> None:
    client, server = await _pair(own_nats)
    handler = LosesTheFirst()
    try:
        await server.serve("drops", [route(ONCE_ONLY, handler)])
        asked = asyncio.ensure_future(
            client.request(ONCE_ONLY, EchoRequest(text="once"), timeout=4.0)
        )
        await asyncio.wait_for(handler.first_started.wait(), 5.0)
        own_nats.kill()
        own_nats.restart()
        with pytest.raises(BusTimeoutError):
            await asyncio.wait_for(asked, 15.0)
        assert handler.calls == 1
    finally:
        await client.close()
        await server.close()


async def test_no_responders_while_services_resubscribe_is_waited_out(
    own_nats: EmbeddedNats,
) -> None:
    """The caller is back before the service (which retries its connection every 2 s): its
    request meets "no responders" for longer than the usual grace, and still gets its answer."""
    client, server = await _pair(own_nats, server_wait=2.0)
    handler = LosesTheFirst()
    handler.calls = 1  # answer every call
    try:
        await server.serve("drops", [route(REPEATABLE, handler)])
        assert (await client.request(REPEATABLE, EchoRequest(text="up"))).text == "up"
        own_nats.kill()
        await asyncio.sleep(0.3)  # the service's first reconnect attempt fails
        own_nats.restart()
        assert await client.link.wait_up(10.0)
        assert not server.link.is_up
        t0 = time.monotonic()
        reply = await client.request(REPEATABLE, EchoRequest(text="back"), timeout=10.0)
        assert reply.text == "back"
        assert time.monotonic() - t0 > NO_RESPONDERS_GRACE  # it did wait beyond the grace
    finally:
        await client.close()
        await server.close()
