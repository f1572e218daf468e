"""``python -m benchmarks.scale.hollow --nodes A:B [--workers-per-node 8]``: hollow nodes
``A`` to ``B-1`` (a storage service and its workers each) in one asyncio process, every
service with its own NATS and Redis connections as the real ones have. NATS, Redis and the
root come from the usual ``SLLM_*`` variables. Prints ``hollow ready <n>`` once every service
has started, and stops them all on SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from libs.common.logs import setup_logging
from libs.common.service import Service, fast_loop_factory
from libs.common.settings import CommonSettings
from services.worker.settings import WorkerSettings

from .sim import NodeSpec, TokenSpec
from .storage import HollowStorage
from .worker import HollowWorker

log = logging.getLogger("hollow")

# Services started at once: a start is a NATS connect, a Redis connect and a few writes.
START_CONCURRENCY = 32


def node_id(i: int) -> str:
    return f"hnode-{i:04d}"


def worker_id(i: int, j: int) -> str:
    return f"hw-{i:04d}-{j}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hollow", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", required=True, help="A:B, the node indices [A, B)")
    p.add_argument("--workers-per-node", type=int, default=8)
    p.add_argument("--registry-gbps", type=float, default=NodeSpec.registry_gbps)
    p.add_argument("--ssd-gbps", type=float, default=NodeSpec.ssd_gbps)
    p.add_argument("--dram-gbps", type=float, default=NodeSpec.dram_gbps)
    p.add_argument("--ssd-gb", type=float, default=NodeSpec.ssd_capacity_gb)
    p.add_argument("--dram-gb", type=float, default=NodeSpec.dram_capacity_gb)
    p.add_argument("--load-overhead", type=float, default=NodeSpec.load_overhead_s)
    p.add_argument("--decode-ms", type=float, default=TokenSpec.decode_s_per_token * 1000)
    p.add_argument("--prefill-tps", type=float, default=TokenSpec.prefill_tokens_per_s)
    args = p.parse_args(argv)
    first, _, last = args.nodes.partition(":")
    args.first, args.last = int(first), int(last)
    if args.last <= args.first or args.workers_per_node < 1:
        p.error("--nodes A:B needs A < B, and --workers-per-node at least 1")
    return args


def build(args: argparse.Namespace) -> list[Service]:
    """The storage service and workers of every node of ``args``, storage first."""
    spec = NodeSpec(
        registry_gbps=args.registry_gbps,
        ssd_gbps=args.ssd_gbps,
        dram_gbps=args.dram_gbps,
        ssd_capacity_gb=args.ssd_gb,
        dram_capacity_gb=args.dram_gb,
        load_overhead_s=args.load_overhead,
    )
    tokens = TokenSpec(
        prefill_tokens_per_s=args.prefill_tps, decode_s_per_token=args.decode_ms / 1000
    )
    common = CommonSettings.from_env()
    services: list[Service] = []
    for i in range(args.first, args.last):
        services.append(HollowStorage(common, node_id(i), spec))
    for i in range(args.first, args.last):
        for j in range(args.workers_per_node):
            ws = WorkerSettings.from_env(instance_id=worker_id(i, j), node_id=node_id(i))
            services.append(HollowWorker(ws, spec, tokens))
    return services


async def start_all(services: Sequence[Service]) -> None:
    gate = asyncio.Semaphore(START_CONCURRENCY)

    async def start(svc: Service) -> None:
        async with gate:
            await svc.start()

    await asyncio.gather(*(start(s) for s in services))


async def stop_all(services: Sequence[Service]) -> None:
    await asyncio.gather(*(s.stop("hollow process stopping") for s in services))


async def main(args: argparse.Namespace) -> int:
    setup_logging(os.environ.get("SLLM_LOG_LEVEL", "WARNING"), "hollow")
    services = build(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await start_all(services)
        print(f"hollow ready {len(services)}", flush=True)
        crashed = [asyncio.ensure_future(s.tasks.crashed.wait()) for s in services]
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([stopped, *crashed], return_when=asyncio.FIRST_COMPLETED)
        for f in (stopped, *crashed):
            f.cancel()
        return 0 if stop.is_set() else 1
    finally:
        await asyncio.wait_for(stop_all(services), 30)


if __name__ == "__main__":
    args = parse_args(None)
    with asyncio.Runner(loop_factory=fast_loop_factory()) as runner:
        sys.exit(runner.run(main(args)))
