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
    # Two workers: the demo model (and its adapter) on one, the embedding model on the other.
    with up_cluster(tmp_path_factory.mktemp("readme"), nodes=1, workers_per_node=2) as c:
        yield c


@pytest.fixture(scope="module")
def examples(cluster: UpCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What the README's placeholder paths stand for here."""
    from libs.demo.adapters import write_random_lora
    from libs.demo.embed import write_tiny_sentence_bert

    root = tmp_path_factory.mktemp("readme-models")
    return {
        "file:///abs/path/to/hf-model-dir": cluster.demo_dir.as_uri(),
        "file:///abs/path/to/peft-adapter-dir": write_random_lora(
            cluster.demo_dir, root / "lora"
        ).as_uri(),
        "file:///abs/path/to/embedding-model-dir": write_tiny_sentence_bert(
            root / "embedder", "mean"
        ).as_uri(),
    }


def test_readme_has_curl_examples() -> None:
    assert len(_curl_commands()) >= 4


@pytest.mark.parametrize("command", _curl_commands())
def test_readme_curl_example_works(
    cluster: UpCluster, examples: dict[str, str], command: str
) -> None:
    command = command.replace("127.0.0.1:8343", f"127.0.0.1:{cluster.port}")
    for placeholder, path in examples.items():
        command = command.replace(placeholder, path)
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
