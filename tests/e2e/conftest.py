"""Fixtures shared by the e2e modules; each module starts its own `cluster` (`up_cluster`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from libs.protocol import Bus

from .cluster import UpCluster


@pytest.fixture
async def bus(cluster: UpCluster) -> AsyncIterator[Bus]:
    """A bus client of the module's cluster (its NATS, its subject root)."""
    b = await Bus.connect(cluster.nats_url, name="e2e", root=cluster.root, request_timeout=60)
    yield b
    await b.close()
