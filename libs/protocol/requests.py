"""Request/reply over one NATS connection: typed errors, "no responders" retried briefly, and a
request that is safe to repeat sent again when the connection drops while it waits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg

from .errors import BusTimeoutError, NoRespondersError, UnavailableError
from .link import Link
from .serving import raise_if_error

log = logging.getLogger(__name__)

DEFAULT_REQUEST_TIMEOUT = 5.0
NO_RESPONDERS_GRACE = 0.5
# After a reconnect, services re-subscribe one by one: "no responders" is retried this long.
RESUBSCRIBE_GRACE = 5.0


class Requests:
    """Sends requests on ``nc`` and waits for their replies, watching ``link`` for drops."""

    def __init__(self, nc: NATSClient, link: Link, request_timeout: float) -> None:
        self.nc = nc
        self.link = link
        self.request_timeout = request_timeout

    async def request_msg(
        self,
        subject: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        resend_on_drop: bool = False,
        no_responders_grace: float = NO_RESPONDERS_GRACE,
    ) -> Msg:
        """Send raw bytes and return the raw reply; error replies raise their typed error.

        "No responders" is retried briefly: nats-server 2.15 occasionally answers it for a
        subscription another connection made (and flushed) a moment ago, e.g. just after a
        service starts, and services re-subscribe one by one after a reconnect. A subject
        nobody serves still fails within ``NO_RESPONDERS_GRACE`` (``RESUBSCRIBE_GRACE`` just
        after a reconnect).

        ``resend_on_drop`` (a request safe to repeat): if the connection drops while the
        reply is awaited, the request or its reply may be lost for good (core NATS is at most
        once), so it is sent again once the connection is back, within the same deadline.
        """
        t = self.request_timeout if timeout is None else timeout
        deadline = time.monotonic() + t
        grace_until = time.monotonic() + min(no_responders_grace, t)
        delay = 0.02
        while True:
            try:
                msg = await self._attempt(subject, payload, deadline, headers, resend_on_drop)
                if msg is not None:
                    break
                # The connection dropped while we waited: send again once it is back.
                if not await self.link.wait_up(deadline - time.monotonic()):
                    raise BusTimeoutError(f"no reply on {subject} within {t:g}s (NATS down)")
                log.info("%s: resending after a reconnect", subject)
            except nats.errors.NoRespondersError:
                if no_responders_grace and self.link.back_within(RESUBSCRIBE_GRACE):
                    grace_until = max(grace_until, self.link.back_at + RESUBSCRIBE_GRACE)
                if time.monotonic() + delay >= min(grace_until, deadline):
                    raise NoRespondersError(f"no service answers {subject}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
            except nats.errors.TimeoutError:
                raise BusTimeoutError(f"no reply on {subject} within {t:g}s") from None
            except (nats.errors.Error, OSError) as exc:
                raise UnavailableError(f"request on {subject} failed: {exc!r}") from None
        raise_if_error(msg, subject)
        return msg

    async def request_msg_once(
        self, subject: str, payload: bytes, *, timeout: float | None = None
    ) -> Msg:
        """No retry of "no responders": a liveness check of a peer that has served
        ``subject`` for a while, where "no responders" means its connection is gone."""
        return await self.request_msg(subject, payload, timeout=timeout, no_responders_grace=0.0)

    async def _attempt(
        self,
        subject: str,
        payload: bytes,
        deadline: float,
        headers: dict[str, str] | None,
        resend_on_drop: bool,
    ) -> Msg | None:
        """One send and wait; None when ``resend_on_drop`` and the connection dropped first."""
        sent = self.nc.request(
            subject, payload, timeout=max(deadline - time.monotonic(), 0.001), headers=headers
        )
        if not resend_on_drop:
            return await sent
        attempt = asyncio.ensure_future(sent)
        try:
            waiters: set[asyncio.Future[Any]] = {attempt, self.link.next_drop()}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if attempt.done():
                return attempt.result()
            return None
        finally:
            if not attempt.done():
                attempt.cancel()
                with contextlib.suppress(asyncio.CancelledError, nats.errors.Error):
                    await attempt
