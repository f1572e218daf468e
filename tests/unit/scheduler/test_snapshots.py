"""The cached cluster snapshot (`Snapshots`): how long one serves, what makes a placement read
another, and the scheduler's own reservations marked in it at once."""

from __future__ import annotations

import asyncio

from services.scheduler.placement import NodeView, WorkerView
from services.scheduler.snapshots import HINT_SPACING, Cluster, Snapshots


class Store:
    """Reads count, each taking ``read_s`` of the fake clock."""

    def __init__(self, read_s: float = 0.01) -> None:
        self.now = 0.0
        self.read_s = read_s
        self.reads = 0
        self.free = {"w0": True, "w1": True}

    def clock(self) -> float:
        return self.now

    async def read(self) -> Cluster:
        self.reads += 1
        self.now += self.read_s
        workers = [WorkerView(w, "n0", free) for w, free in sorted(self.free.items())]
        return Cluster(workers, [], frozenset(self.free))


def snapshots(store: Store, max_age_s: float = 1.0) -> Snapshots:
    return Snapshots(store.read, max_age_s=max_age_s, clock=store.clock)


async def test_one_snapshot_serves_until_it_is_too_old_then_one_is_read_meanwhile() -> None:
    store = Store()
    snaps = snapshots(store)
    first = await snaps.get()
    store.now = 0.9
    await snaps.get()
    assert store.reads == 1
    store.now = 1.01
    store.free["w0"] = False
    assert await snaps.get() is first  # no placement waits for the read
    await asyncio.sleep(0)
    assert store.reads == 2
    assert (await snaps.get()).free_workers == 1


async def test_news_rereads_in_the_background_but_not_sooner_than_the_spacing() -> None:
    store = Store(read_s=0.01)
    snaps = snapshots(store)
    first = await snaps.get()
    snaps.stale()
    store.now = 0.01 + HINT_SPACING * 0.01 * 0.5  # within the spacing: as it is
    assert await snaps.get() is first
    assert store.reads == 1
    store.now = 0.01 + HINT_SPACING * 0.01 * 1.5
    store.free["w1"] = False
    assert await snaps.get() is first  # decided on what it has: the read runs meanwhile
    await asyncio.sleep(0)
    assert store.reads == 2
    assert (await snaps.get()).free_workers == 1  # the new read
    store.now += 0.2  # no news since: kept
    await snaps.get()
    assert store.reads == 2


async def test_reservations_made_during_a_read_are_kept() -> None:
    store = Store()
    gate = asyncio.Event()
    read = store.read

    async def slow_read() -> Cluster:
        await gate.wait()
        return await read()

    snaps = Snapshots(slow_read, max_age_s=1.0, clock=store.clock)
    reading = asyncio.ensure_future(snaps.fresh())
    await asyncio.sleep(0)
    snaps.taken("w0")  # reserved while the read was on its way
    gate.set()
    cluster = await reading
    assert [w.free for w in cluster.workers] == [False, True]


async def test_a_max_age_of_zero_reads_for_every_placement() -> None:
    store = Store()
    snaps = snapshots(store, max_age_s=0.0)
    for _ in range(3):
        await snaps.get()
    assert store.reads == 3


async def test_concurrent_callers_share_one_read() -> None:
    store = Store()
    snaps = snapshots(store)
    got = await asyncio.gather(*(snaps.fresh() for _ in range(5)))
    assert store.reads == 1
    assert all(c is got[0] for c in got)


async def test_reservations_and_frees_show_at_once() -> None:
    store = Store()
    snaps = snapshots(store)
    first = await snaps.get()
    snaps.taken("w0")
    taken = await snaps.get()
    assert [w.free for w in taken.workers] == [False, True]
    assert [w.free for w in first.workers] == [True, True]  # a caller's snapshot is its own
    snaps.freed("w0")
    assert (await snaps.get()).free_workers == 2
    assert store.reads == 1


def test_a_dead_worker_is_not_freed() -> None:
    cluster = Cluster([WorkerView("w0", "n0", False)], [], frozenset())
    assert cluster.with_worker("w0", free=True) is cluster
    assert cluster.with_worker("nobody", free=False) is cluster


def test_a_models_fresh_locality_replaces_the_snapshots() -> None:
    nodes = [
        NodeView("n0", dram={"m": 5, "x": 1}),
        NodeView("n1", ssd={"x": 2}),
        NodeView("n2"),
    ]
    cluster = Cluster([], nodes, frozenset())
    fresh = cluster.with_locality("m", dram={"n1": 5}, ssd={"n1": 5, "n2": 5})
    assert [(n.dram, n.ssd) for n in fresh.nodes] == [
        ({"x": 1}, {}),  # evicted here since the snapshot
        ({"m": 5}, {"x": 2, "m": 5}),
        ({}, {"m": 5}),
    ]
    assert (cluster.nodes[0].dram, cluster.nodes[0].ssd) == ({"m": 5, "x": 1}, {})
    assert cluster.with_locality("x", dram={"n0": 1}, ssd={"n1": 2}) is cluster  # as it was
