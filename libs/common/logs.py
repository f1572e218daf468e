"""Logging set-up shared by every process."""

from __future__ import annotations

import logging


def setup_logging(level: str, name: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s {name} %(name)s: %(message)s",
    )
    # nats-py logs every reconnect attempt at ERROR; our callbacks already report them.
    logging.getLogger("nats.aio.client").setLevel(logging.CRITICAL)
