"""`sllm deploy`, `ls`, `chat` and `rm` as a user runs them, against a real `sllm up`; and the
README's Quick start commands, run as written."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from libs.common.embedded import free_port

from .cluster import UpCluster, up_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SLLM = str(Path(sys.executable).with_name("sllm"))
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    # Two workers: the demo model and a second deployment can both have an instance.
    with up_cluster(tmp_path_factory.mktemp("cli"), nodes=1, workers_per_node=2) as c:
        yield c


def env_of(cluster: UpCluster) -> dict[str, str]:
    return {**cluster.env, "SLLM_URL": cluster.base_url}


def sllm(cluster: UpCluster, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SLLM, *args],
        env=env_of(cluster),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
    )


def deployments(cluster: UpCluster) -> dict[str, dict[str, Any]]:
    listed = sllm(cluster, "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    return {d["name"]: d for d in json.loads(listed.stdout)["data"]}


def demo_uri(cluster: UpCluster) -> str:
    uri = deployments(cluster)["demo"]["checkpoint_uri"]
    assert isinstance(uri, str)
    return uri


def test_deploy_ls_chat_rm(cluster: UpCluster) -> None:
    uri = demo_uri(cluster)
    deployed = sllm(cluster, "deploy", "cli-2", uri, "--keep-alive", "30", "--max", "1")
    assert deployed.returncode == 0, deployed.stderr
    assert deployed.stdout.splitlines()[-1] == "cli-2 ready"

    listed = deployments(cluster)["cli-2"]
    assert (listed["checkpoint_uri"], listed["keep_alive_s"]) == (uri, 30.0)
    table = sllm(cluster, "ls")
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("NAME")
    assert any(line.split()[:1] == ["cli-2"] for line in table.stdout.splitlines())

    chat = sllm(cluster, "chat", "cli-2", "--max-tokens", "8", stdin="hello\n")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip(), "no answer"

    removed = sllm(cluster, "rm", "cli-2")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith("removed cli-2")
    assert "cli-2" not in deployments(cluster)
    assert sllm(cluster, "rm", "cli-2").returncode == 5


def _post(cluster: UpCluster, body: dict[str, Any]) -> int:
    request = urllib.request.Request(
        cluster.base_url + "/v1/deployments",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_deploying_a_taken_name_is_a_conflict_unless_update(cluster: UpCluster) -> None:
    uri = demo_uri(cluster)
    first = sllm(cluster, "deploy", "cli-3", uri)
    assert first.returncode == 0, first.stderr
    try:
        status = _post(cluster, {"name": "cli-3", "checkpoint_uri": uri})
        if status in (200, 201):
            pytest.skip("server does not yet answer 409")
        assert status == 409

        again = sllm(cluster, "deploy", "cli-3", uri)
        assert again.returncode == 1
        assert "conflict" in again.stderr
        assert "already exists" in again.stderr

        updated = sllm(cluster, "deploy", "cli-3", uri, "--max", "2", "--update")
        assert updated.returncode == 0, updated.stderr
        assert deployments(cluster)["cli-3"]["max_instances"] == 2
    finally:
        sllm(cluster, "rm", "cli-3")


def test_errors_have_their_exit_codes(cluster: UpCluster) -> None:
    gone = f"http://127.0.0.1:{free_port()}"
    unreachable = sllm(cluster, "ls", "--url", gone)
    assert unreachable.returncode == 3
    assert "cannot reach" in unreachable.stderr

    unknown = sllm(cluster, "chat", "no-such-model", "hi")
    assert unknown.returncode == 5, unknown.stderr

    bad_flag = sllm(cluster, "deploy", "x", demo_uri(cluster), "--max", "many")
    assert bad_flag.returncode == 2

    # A bare path is sent as its file:// URI; the router refuses a checkpoint that is not there.
    missing = sllm(cluster, "deploy", "cli-missing", str(cluster.demo_dir.parent / "nope"))
    assert missing.returncode == 1
    assert "nope" in missing.stderr
    assert "cli-missing" not in deployments(cluster)


def _quick_start_commands() -> list[str]:
    """The README's `sllm` commands for the REST API, in the order it gives them."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.splitlines():
            words = line.replace("|", " ").split()
            if any(
                a == "sllm" and b in ("ls", "chat", "deploy", "rm", "status")
                for a, b in itertools.pairwise(words)
            ):
                commands.append(line)
    return commands


def test_readme_quick_start_cli_commands_work(
    cluster: UpCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from libs.demo.adapters import write_random_lora
    from libs.demo.embed import write_tiny_sentence_bert

    commands = _quick_start_commands()
    assert len(commands) >= 5, commands
    env = env_of(cluster)
    env["PATH"] = f"{Path(SLLM).parent}{os.pathsep}{env.get('PATH', '')}"
    root = tmp_path_factory.mktemp("quick-start")
    placeholders = {
        "file:///abs/path/to/hf-model-dir": cluster.demo_dir.as_uri(),
        "file:///abs/path/to/peft-adapter-dir": write_random_lora(
            cluster.demo_dir, root / "lora"
        ).as_uri(),
        "file:///abs/path/to/embedding-model-dir": write_tiny_sentence_bert(
            root / "embedder"
        ).as_uri(),
    }
    for command in commands:
        for placeholder, uri in placeholders.items():
            command = command.replace(placeholder, uri)
        # An interactive chat reads its prompt from stdin, which is not a terminal here.
        done = subprocess.run(
            command,
            shell=True,
            env=env,
            input="Hello!\n",
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        assert done.stdout.strip(), command


# --- metrics discovery, on the same cluster ---------------------------------------------------


def _get_url(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read()


def test_metrics_discovery_lists_every_service_of_sllm_up_and_each_answers(
    cluster: UpCluster,
) -> None:
    """`sllm up`'s metrics as Prometheus finds them: the router's HTTP service discovery
    (``/metrics/targets``) lists the router, the scheduler, each storage service and each
    worker, every process on a port of its own, and each target answers its ``/metrics``.
    (Here, not in a module of its own: it needs this module's cluster, 1 node x 2 workers, and
    each `sllm up` costs CI some 20 s.)"""
    want = {"router", "scheduler", "storage", "worker"}
    deadline = time.monotonic() + 30
    while True:
        status, body = _get_url(cluster.base_url + "/metrics/targets")
        assert status == 200
        groups: list[dict[str, Any]] = json.loads(body)
        kinds = [g["labels"]["service"] for g in groups]
        if want <= set(kinds) and kinds.count("worker") == 2:
            break
        assert time.monotonic() < deadline, groups
        time.sleep(0.5)
    targets = [t for g in groups for t in g["targets"]]
    assert len(targets) == len(set(targets))  # a port each, no collision
    assert f"127.0.0.1:{cluster.port}" in targets  # the router's own /metrics
    for group in groups:
        kind = group["labels"]["service"]
        if kind in ("worker", "storage"):
            assert group["labels"]["node"] == "node-0"
        (target,) = group["targets"]
        status, text = _get_url(f"http://{target}/metrics")
        assert status == 200
        assert f"sllm_{kind}_".encode() in text, kind
