"""The README's examples run against a real `sllm up`, so the README cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import UpCluster, up_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

README = Path(__file__).resolve().parents[2] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def _curl_commands() -> list[str]:
    commands = []
    for block in _blocks("bash"):
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip().startswith("curl "):
                commands.append(command.strip())
    return commands


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    with up_cluster(tmp_path_factory.mktemp("readme"), nodes=1) as c:
        yield c


def test_readme_has_curl_examples() -> None:
    assert len(_curl_commands()) >= 4


@pytest.mark.parametrize("command", _curl_commands())
def test_readme_curl_example_works(cluster: UpCluster, command: str) -> None:
    command = command.replace("127.0.0.1:8343", f"127.0.0.1:{cluster.port}")
    command = command.replace("file:///abs/path/to/hf-model-dir", cluster.demo_dir.as_uri())
    command = command.replace("curl ", "curl -sS --fail-with-body --max-time 120 ", 1)
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    assert done.stdout.strip()


def test_readme_openai_client_example_works(cluster: UpCluster) -> None:
    (snippet,) = [b for b in _blocks("python") if "OpenAI(" in b]
    snippet = snippet.replace("127.0.0.1:8343", f"127.0.0.1:{cluster.port}")
    done = subprocess.run(
        [sys.executable, "-c", snippet],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
