"""The ``sllm`` command: ``up``, ``demo-model``, ``convert``, ``events``, ``health``,
``credentials``, ``settings``."""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from pathlib import Path
from typing import Any

from libs.common.settings import SettingsError


def _cmd_up(args: argparse.Namespace) -> int:
    from .settings import UpSettings
    from .up import up

    overrides: dict[str, Any] = {
        name: value
        for name, value in (
            ("nodes", args.nodes),
            ("workers_per_node", args.workers_per_node),
            ("port", args.port),
            ("model", args.model),
            ("data_dir", args.data_dir),
            ("dram_capacity_gb", args.dram_capacity_gb),
            ("ha", True if args.ha else None),
        )
        if value is not None
    }
    return up(UpSettings.from_env(**overrides))


def _cmd_node(args: argparse.Namespace) -> int:
    from .node import NodeSettings, node

    overrides: dict[str, Any] = {
        name: value
        for name, value in (
            ("node_id", args.node_id),
            ("devices", tuple(d for d in (args.devices or "").split(",") if d) or None),
            ("data_dir", args.data_dir),
            ("credentials_dir", args.credentials_dir),
        )
        if value is not None
    }
    return node(NodeSettings.from_env(**overrides))


def _cmd_demo_model(args: argparse.Namespace) -> int:
    from libs.demo import DemoModelError, write_demo_model

    try:
        path = write_demo_model(args.dir, size=args.size, seed=args.seed)
    except DemoModelError as exc:
        print(f"sllm demo-model: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from libs.loader import LoaderError, convert_hf

    bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc="converting")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        path = convert_hf(
            args.src,
            args.dst,
            partition_size=int(args.partition_gb * (1 << 30)),
            progress=progress,
            overwrite=args.overwrite,
        )
    except LoaderError as exc:
        bar.close()
        print(f"sllm convert: {exc}", file=sys.stderr)
        return 2
    bar.close()
    print(path)
    return 0


def _cmd_credentials(args: argparse.Namespace) -> int:
    from .credentials import write_bundle

    written = write_bundle(
        args.dir, root=args.root, nats_address=args.nats, redis_address=args.redis
    )
    if not written:
        print(f"sllm credentials: {args.dir} already holds credentials; kept them")
    for path in written:
        print(path)
    return 0


def _cmd_settings(args: argparse.Namespace) -> int:
    from libs.common.settings import settings_table

    from .settings import all_settings

    print(settings_table(all_settings()), end="")
    return 0


async def _tail_events(
    url: str, root: str, replay: bool, count: int, timeout: float, tls: ssl.SSLContext | None
) -> int:
    from nats.js.api import DeliverPolicy

    from libs.protocol import Bus
    from libs.protocol.errors import BusError, CredentialsError

    try:
        bus = await Bus.connect(url, name="sllm-events", root=root, tls=tls)
    except (BusError, CredentialsError) as exc:
        print(f"sllm events: {exc}", file=sys.stderr)
        return 2
    try:
        js = bus.nc.jetstream()
        policy = DeliverPolicy.ALL if replay else DeliverPolicy.NEW
        sub = await js.subscribe(
            bus.subjects.all_events, ordered_consumer=True, deliver_policy=policy
        )
        seen = 0
        while count <= 0 or seen < count:
            try:
                msg = await sub.next_msg(timeout=timeout if timeout > 0 else 3600)
            except TimeoutError:
                if timeout > 0:
                    break
                continue
            try:
                print(json.dumps(json.loads(msg.data), separators=(",", ":")), flush=True)
            except ValueError:
                print(msg.data.decode(errors="replace"), flush=True)
            seen += 1
        return 0
    finally:
        await bus.close()


def _cmd_events(args: argparse.Namespace) -> int:
    from libs.common.settings import CommonSettings
    from libs.common.tls import nats_tls

    from .credentials import operator_env

    settings = CommonSettings.from_env(operator_env())
    url = args.nats_url or settings.nats_url
    tls = nats_tls(settings.nats_tls)
    try:
        return asyncio.run(
            _tail_events(url, settings.root, args.all, args.count, args.timeout, tls)
        )
    except KeyboardInterrupt:
        return 0


async def _health(kind: str, instance_id: str, timeout: float) -> int:
    from libs.common.settings import CommonSettings
    from libs.common.tls import nats_tls
    from libs.protocol import Bus
    from libs.protocol.endpoints import SERVICE_INFO
    from libs.protocol.errors import BusError, CredentialsError
    from libs.protocol.messages import InfoRequest

    from .credentials import operator_env

    settings = CommonSettings.from_env(operator_env())
    try:
        bus = await Bus.connect(
            settings.nats_url,
            name="sllm-health",
            root=settings.root,
            connect_timeout=timeout,
            tls=nats_tls(settings.nats_tls),
        )
    except (BusError, CredentialsError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    try:
        info = await bus.request(
            SERVICE_INFO, InfoRequest(), timeout=timeout, kind=kind, instance_id=instance_id
        )
        print(info.model_dump_json())
        return 0
    except BusError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    finally:
        await bus.close()


def _cmd_health(args: argparse.Namespace) -> int:
    return asyncio.run(_health(args.kind, args.instance_id, args.timeout))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sllm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="run the whole system on this machine until Ctrl-C")
    p.add_argument("--nodes", type=int, help="simulated nodes (SLLM_NODES)")
    p.add_argument("--workers-per-node", type=int, help="CPU workers per node")
    p.add_argument("--port", type=int, help="REST API port (SLLM_PORT)")
    p.add_argument("--model", help="model directory to serve (default: the demo model)")
    p.add_argument("--data-dir", type=Path, help="state directory (SLLM_DATA_DIR)")
    p.add_argument("--dram-capacity-gb", type=float, help="DRAM tier capacity per node")
    p.add_argument(
        "--ha",
        action="store_true",
        help="3 NATS servers and Valkey with a replica and 3 sentinels (SLLM_HA)",
    )
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser(
        "node", help="run this host's storage service and workers, joined to a cluster"
    )
    p.add_argument("--node-id", help="this node's id (SLLM_NODE_ID; default: the host name)")
    p.add_argument("--devices", help="one worker per device: cuda:0,cuda:1 or cpu (SLLM_DEVICES)")
    p.add_argument("--data-dir", type=Path, help="where the SSD tier lives (SLLM_DATA_DIR)")
    p.add_argument("--credentials-dir", help="a `sllm credentials` directory (role URLs)")
    p.set_defaults(func=_cmd_node)

    p = sub.add_parser("demo-model", help="write a small deterministic Llama model + tokenizer")
    p.add_argument("dir", type=Path)
    p.add_argument("--size", default="tiny", help="tiny, small, 1b, 3b or 8b")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo_model)

    p = sub.add_parser("convert", help="convert a Hugging Face model directory to sllm's format")
    p.add_argument("src", type=Path, help="Hugging Face model directory (safetensors or .bin)")
    p.add_argument("dst", type=Path, help="checkpoint directory to create")
    p.add_argument("--partition-gb", type=float, default=1.0, help="partition size (GiB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("events", help="print monitoring events as JSON lines")
    p.add_argument("--all", action="store_true", help="replay retained events first")
    p.add_argument("--count", type=int, default=0, help="exit after this many events")
    p.add_argument("--timeout", type=float, default=0, help="exit after this many idle seconds")
    p.add_argument(
        "--nats-url", default="", help="default: SLLM_NATS_URL, else .sllm/credentials.env"
    )
    p.set_defaults(func=_cmd_events)

    p = sub.add_parser("health", help="ask one service instance for its info over the bus")
    p.add_argument("kind", choices=["router", "scheduler", "worker", "storage"])
    p.add_argument("instance_id")
    p.add_argument("--timeout", type=float, default=3.0)
    p.set_defaults(func=_cmd_health)

    p = sub.add_parser(
        "credentials", help="generate NATS users per role and a Valkey password (compose, k8s)"
    )
    p.add_argument("dir", type=Path, help="directory for the files (created, mode 0600 files)")
    p.add_argument("--root", default="sllm", help="the subject root the permissions cover")
    p.add_argument("--nats", default="nats:4222", help="NATS host:port the URLs name")
    p.add_argument("--redis", default="redis:6379", help="Valkey host:port the URLs name")
    p.set_defaults(func=_cmd_credentials)

    p = sub.add_parser("settings", help="print every SLLM_* setting as a Markdown table")
    p.set_defaults(func=_cmd_settings)

    # The REST API commands (against a router: --url, SLLM_URL, SLLM_API_KEY).
    from . import chat, deployments_cmd

    deployments_cmd.add_commands(sub)
    chat.add_command(sub)

    from . import status  # `sllm status`: the router's GET /v1/cluster as tables

    status.add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except SettingsError as exc:
        print(f"sllm: bad setting: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
