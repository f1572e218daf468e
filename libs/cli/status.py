"""``sllm status``: the cluster as the router's ``GET /v1/cluster`` shows it, as tables (nodes and
their tiers, workers and their instances, deployments, loads under way) or, with ``--json``,
the raw snapshot.

Exit codes: 0 ok, 2 usage, 3 the router cannot be reached, 4 the key was refused (401/403),
1 any other error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from .api_client import DEFAULT_URL, ApiClient, ApiClientError, ApiError, exit_code
from .tables import render

TIMEOUT_S = 10.0


def size(n: int | None) -> str:
    """Bytes for a person: ``512 B``, ``1.5 KiB``... ``2.0 GiB``; ``-`` when unknown."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _models(tier: dict[str, Any]) -> str:
    return ", ".join(f"{m['model']} ({size(m['bytes'])})" for m in tier["models"]) or "-"


def _used(tier: dict[str, Any]) -> str:
    cap = tier.get("capacity_bytes")
    used = size(tier["used_bytes"])
    if cap:
        share = 100 * tier["used_bytes"] / cap
        percent = "<1%" if 0 < share < 1 else f"{share:.0f}%"
        return f"{used} / {size(cap)} ({percent})"
    return used


def _tier(node: dict[str, Any], name: str) -> dict[str, Any]:
    for tier in node["tiers"]:
        if tier["tier"] == name:
            return dict(tier)
    return {"tier": name, "capacity_bytes": None, "used_bytes": 0, "models": []}


def render_status(snapshot: dict[str, Any]) -> str:
    """The snapshot as titled tables, for a terminal."""
    nodes: Sequence[dict[str, Any]] = snapshot.get("nodes", [])
    node_rows = []
    for n in nodes:
        dram, ssd = _tier(n, "dram"), _tier(n, "ssd")
        node_rows.append([n["node_id"], _used(dram), _models(dram), _used(ssd), _models(ssd)])

    worker_rows = []
    for n in nodes:
        for w in n["workers"]:
            head = [n["node_id"], w["worker_id"], w["device"] or "-", w["status"]]
            if not w["instances"]:
                worker_rows.append([*head, "-"])
            for k, i in enumerate(w["instances"]):
                worker_rows.append(
                    [
                        *(head if k == 0 else [""] * len(head)),
                        i["model"],
                        i["instance_id"],
                        i["status"],
                        i.get("source_tier") or "-",
                        str(i["in_flight"]),
                        f"{i['tokens_per_s']:.1f}",
                    ]
                )

    deployment_rows = [
        [
            d["name"],
            d["status"],
            f"{d['ready_instances']}/{d['instances']}",
            f"{d['min_instances']}-{d['max_instances']}",
            str(d["in_flight"]),
            str(d["queued"]),
            str(d["requests"]),
            f"{d['tokens_per_s']:.1f}",
        ]
        for d in snapshot.get("deployments", [])
    ]
    load_rows = [
        [
            c["model"],
            c["instance_id"],
            c["worker_id"],
            c["node_id"],
            c["phase"] or "placing",
            f"{c['elapsed_s']:.1f}s",
        ]
        for c in snapshot.get("cold_starts", [])
    ]
    sections = [
        (
            "NODES",
            ["NODE", "DRAM USED", "IN DRAM", "SSD USED", "ON SSD"],
            node_rows,
        ),
        (
            "WORKERS",
            [
                "NODE",
                "WORKER",
                "DEVICE",
                "STATE",
                "MODEL",
                "INSTANCE",
                "STATUS",
                "FROM",
                "IN FLIGHT",
                "TOKENS/S",
            ],
            worker_rows,
        ),
        (
            "DEPLOYMENTS",
            ["NAME", "STATUS", "READY", "MIN-MAX", "IN FLIGHT", "QUEUED", "REQUESTS", "TOKENS/S"],
            deployment_rows,
        ),
        ("LOADS UNDER WAY", ["MODEL", "INSTANCE", "WORKER", "NODE", "PHASE", "ELAPSED"], load_rows),
    ]
    out = []
    for title, headers, rows in sections:
        out.append(f"{title}\n")
        out.append(render(headers, rows) if rows else "(none)\n")
        out.append("\n")
    return "".join(out).rstrip("\n") + "\n"


def describe(exc: ApiClientError) -> str:
    """The error for a person, with the fix for the common ones."""
    if isinstance(exc, ApiError) and exc.status in (401, 403):
        return (
            f"{exc.message} (HTTP {exc.status}: set SLLM_API_KEY to an admin key, "
            "one of the router's SLLM_ADMIN_KEYS)"
        )
    if isinstance(exc, ApiError):
        return f"HTTP {exc.status}: {exc.message}"
    return f"{exc} (is the router running? `sllm up` serves {DEFAULT_URL}; else set --url)"


def status(
    url: str | None, as_json: bool, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Fetch the snapshot and print it; the exit code."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        snapshot = ApiClient(url, None, TIMEOUT_S).get("/v1/cluster")
    except ApiClientError as exc:
        print(f"sllm status: {describe(exc)}", file=err)
        return exit_code(exc)
    if not isinstance(snapshot, dict) or snapshot.get("object") != "cluster":
        print("sllm status: the answer is not a cluster snapshot (is --url a router?)", file=err)
        return 1
    if as_json:
        print(json.dumps(snapshot, indent=2), file=out)
    else:
        print(render_status(snapshot), end="", file=out)
    return 0


def add_command(sub: Any) -> None:
    """Register ``sllm status`` on the ``sllm`` parser's subcommands."""
    p = sub.add_parser(
        "status", help="the cluster now: nodes, tiers, workers, instances, loads (GET /v1/cluster)"
    )
    p.add_argument(
        "--url",
        default=None,
        help=f"the router (default: $SLLM_URL, else {DEFAULT_URL}); key from $SLLM_API_KEY",
    )
    p.add_argument("--json", action="store_true", help="print the raw JSON snapshot")

    def run(args: argparse.Namespace) -> int:
        return status(args.url, args.json)

    p.set_defaults(func=run)
