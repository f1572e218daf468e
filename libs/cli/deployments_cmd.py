"""``sllm deploy``, ``sllm ls`` and ``sllm rm``: the deployments API from the command line.

The pure parts (request bodies, the table, the wait's progress lines) are functions of plain
data; the commands only call the router through `ApiClient` and print.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from . import tables
from .api_client import ApiClient, ApiClientError, ApiError
from .api_cmd import client, fail, url_options

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # as a shell reports a command ended by SIGINT

# The router answers a POST once a storage service checked the checkpoint (up to 90 s), and a
# DELETE once the workers unloaded: a request may take that long.
REQUEST_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.5
"""How often ``sllm deploy`` asks for the deployment's status while it waits."""

# Flag (argparse dest) -> the deployment field it sets.
KNOBS = {
    "min": "min_instances",
    "max": "max_instances",
    "keep_alive": "keep_alive_s",
    "target": "target_concurrency",
}

# Instance states in the order the INSTANCES column names them.
INSTANCE_STATES = ("ready", "loading", "stopping", "failed")

Verdict = Literal["ready", "failed", "timeout"]


def deployment_path(name: str) -> str:
    return "/v1/deployments/" + urllib.parse.quote(name, safe="/:")


def checkpoint_uri(uri: str) -> str:
    """A URI as given; a local path (one that exists, or is written as a path: ``/``, ``.``,
    ``~``) as the ``file://`` URI of its absolute path. Anything else, such as a Hugging Face
    repository id ``org/name``, goes as given: the router knows what it names."""
    if "://" in uri:
        return uri
    path = Path(uri).expanduser()
    if uri.startswith(("/", ".", "~")) or path.exists():
        return path.resolve().as_uri()
    return uri


def knobs(args: argparse.Namespace) -> dict[str, Any]:
    """The autoscaling fields the user set (only those: the server keeps the others)."""
    return {
        field: getattr(args, flag)
        for flag, field in KNOBS.items()
        if getattr(args, flag) is not None
    }


def deploy_body(args: argparse.Namespace) -> dict[str, Any]:
    """The body of ``POST /v1/deployments``: a model, or with ``--base`` a LoRA adapter."""
    uri = checkpoint_uri(args.uri)
    if getattr(args, "base", None):
        return {"name": args.name, "base": args.base, "adapter_uri": uri, **knobs(args)}
    task = {"task": args.task} if getattr(args, "task", None) else {}
    return {"name": args.name, "checkpoint_uri": uri, **task, **knobs(args)}


def status_of(deployment: dict[str, Any]) -> str:
    """The deployment's status; a router without the field (before it had one) only answers
    for deployments it can serve, so no status means ready."""
    return str(deployment.get("status") or "ready")


def instances_summary(instances: Sequence[dict[str, Any]]) -> str:
    """``"1 ready, 1 loading"``: instances counted by status, known states first."""
    counts = Counter(str(i.get("status", "?")) for i in instances)
    order = [s for s in INSTANCE_STATES if s in counts] + sorted(
        s for s in counts if s not in INSTANCE_STATES
    )
    return ", ".join(f"{counts[s]} {s}" for s in order) or "none"


def deployments_table(deployments: Sequence[dict[str, Any]]) -> str:
    """``sllm ls``'s table; an ERROR column only when some deployment has an error."""
    headers = ["NAME", "STATUS", "URI", "MIN/MAX", "KEEP-ALIVE", "INSTANCES"]
    rows = [
        [
            str(d.get("name", "")),
            status_of(d),
            str(d.get("checkpoint_uri", "")),
            f"{d.get('min_instances', '?')}/{d.get('max_instances', '?')}",
            tables.duration(float(d.get("keep_alive_s", 0))),
            instances_summary(d.get("instances") or []),
            str(d.get("error") or ""),
        ]
        for d in deployments
    ]
    if any(row[-1] for row in rows):
        headers.append("ERROR")
    return tables.render(headers, rows)


def progress_line(name: str, deployment: dict[str, Any]) -> str:
    """What ``sllm deploy`` prints while it waits, when this changes."""
    instances = deployment.get("instances") or []
    detail = f" ({instances_summary(instances)})" if instances else ""
    return f"{name}: {status_of(deployment)}{detail}"


def wait_until_settled(
    api: ApiClient,
    name: str,
    timeout_s: float,
    say: Callable[[str], None],
    *,
    interval_s: float = POLL_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Verdict, dict[str, Any]]:
    """Poll the deployment until it is ready or failed, or ``timeout_s`` passed; ``say`` each
    new progress line. Returns the verdict and the last deployment body read."""
    deadline = clock() + timeout_s
    last = ""
    while True:
        deployment: dict[str, Any] = api.get(deployment_path(name))
        status = status_of(deployment)
        if status == "ready":
            return "ready", deployment
        if status == "failed":
            return "failed", deployment
        line = progress_line(name, deployment)
        if line != last:
            say(line)
            last = line
        left = deadline - clock()
        if left <= 0:
            return "timeout", deployment
        sleep(min(interval_s, left))


def _update(api: ApiClient, args: argparse.Namespace, uri: str) -> dict[str, Any] | int:
    """``--update`` of an existing deployment: PATCH its knobs (its URI cannot change)."""
    existing: dict[str, Any] = api.get(deployment_path(args.name))
    if existing.get("checkpoint_uri") not in (None, uri):
        print(
            f"sllm deploy: {args.name!r} serves {existing['checkpoint_uri']}; a deployment's "
            f"checkpoint_uri cannot change (`sllm rm {args.name}`, then deploy again)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    updated: dict[str, Any] = api.patch(deployment_path(args.name), knobs(args))
    return updated


def cmd_deploy(args: argparse.Namespace) -> int:
    api = client(args, timeout=REQUEST_TIMEOUT_S)
    body = deploy_body(args)
    # Progress goes to stderr under --json, so that stdout holds only the final body.
    out = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    try:
        try:
            deployment: dict[str, Any] = api.post("/v1/deployments", body)
        except ApiError as exc:
            if exc.status != 409:
                raise
            if not args.update:
                print(
                    f"sllm deploy: conflict: a deployment named {args.name!r} already exists "
                    f"(--update changes its settings; `sllm rm {args.name}` removes it)",
                    file=sys.stderr,
                )
                return EXIT_ERROR
            result = _update(api, args, body.get("checkpoint_uri") or body["adapter_uri"])
            if isinstance(result, int):
                return result
            deployment = result
            changed = ", ".join(f"{k}={v:g}" for k, v in knobs(args).items())
            say(f"{args.name}: updated" + (f" ({changed})" if changed else " (nothing to change)"))
        if args.no_wait:
            say(progress_line(args.name, deployment))
            verdict: Verdict | None = None
        else:
            verdict, deployment = wait_until_settled(api, args.name, args.timeout, say)
    except ApiClientError as exc:
        return fail("deploy", exc)
    except KeyboardInterrupt:
        print(f"\nsllm deploy: stopped waiting; {args.name} goes on (`sllm ls`)", file=sys.stderr)
        return EXIT_INTERRUPTED
    if verdict == "ready":
        say(f"{args.name} ready")
    elif verdict == "failed":
        print(
            f"sllm deploy: {args.name} failed: {deployment.get('error') or 'no reason given'}",
            file=sys.stderr,
        )
    elif verdict == "timeout":
        print(
            f"sllm deploy: {args.name} is still {status_of(deployment)} after "
            f"{args.timeout:g}s (it goes on; `sllm ls` shows it)",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(deployment, indent=2))
    return EXIT_OK if verdict in ("ready", None) else EXIT_ERROR


def cmd_ls(args: argparse.Namespace) -> int:
    try:
        answer: dict[str, Any] = client(args).get("/v1/deployments")
    except ApiClientError as exc:
        return fail("ls", exc)
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(deployments_table(answer.get("data") or []), end="")
    return EXIT_OK


def cmd_rm(args: argparse.Namespace) -> int:
    try:
        answer = client(args, timeout=REQUEST_TIMEOUT_S).delete(deployment_path(args.name))
    except ApiClientError as exc:
        return fail("rm", exc)
    if args.json:
        print(json.dumps(answer, indent=2))
        return EXIT_OK
    stopped = answer.get("stopped_instances") or []
    print(f"removed {answer.get('name', args.name)}")
    for instance in stopped:
        print(f"  stopped instance {instance}")
    return EXIT_OK


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    return value


def add_commands(sub: Any) -> None:
    """Register ``deploy``, ``ls`` and ``rm`` on ``sllm``'s subparsers."""
    parent = url_options()

    p = sub.add_parser(
        "deploy",
        parents=[parent],
        help="deploy a model (POST /v1/deployments) and wait until it is ready",
    )
    p.add_argument("name", help="the deployment's name (the `model` of requests)")
    p.add_argument(
        "uri",
        help="checkpoint (or with --base, the PEFT adapter): file:///dir, a local directory, "
        "hf://org/name, http(s)://...",
    )
    p.add_argument(
        "--base", metavar="DEPLOYMENT", help="deploy URI as a LoRA adapter of this deployment"
    )
    p.add_argument(
        "--task",
        choices=("generate", "embed"),
        help="generate (default) or embed (the model answers /v1/embeddings)",
    )
    p.add_argument(
        "--min", type=_count, metavar="N", help="instances kept even when idle (default 0)"
    )
    p.add_argument("--max", type=_count, metavar="N", help="most instances (default 1)")
    p.add_argument("--keep-alive", type=_seconds, metavar="SECONDS", help="idle time to keep")
    p.add_argument("--target", type=_count, metavar="N", help="concurrent requests per instance")
    p.add_argument(
        "--update", action="store_true", help="if NAME exists, change its settings (PATCH)"
    )
    p.add_argument("--no-wait", action="store_true", help="return once the server accepted it")
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=600.0,
        metavar="S",
        help="most seconds to wait (default 600)",
    )
    p.add_argument("--json", action="store_true", help="print the deployment as JSON")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("ls", parents=[parent], help="list the deployments and their instances")
    p.add_argument("--json", action="store_true", help="the server's answer as JSON")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("rm", parents=[parent], help="delete a deployment, stopping its instances")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="the server's answer as JSON")
    p.set_defaults(func=cmd_rm)
