"""The `sllm` command's offline subcommands, run as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SLLM = str(Path(sys.executable).with_name("sllm"))


def test_demo_model_then_convert_then_load(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    ckpt = tmp_path / "ckpt"
    made = subprocess.run(
        [SLLM, "demo-model", str(hf)], capture_output=True, text=True, timeout=120
    )
    assert made.returncode == 0, made.stderr
    conv = subprocess.run(
        [SLLM, "convert", str(hf), str(ckpt)], capture_output=True, text=True, timeout=120
    )
    assert conv.returncode == 0, conv.stderr
    assert conv.stdout.strip() == str(ckpt.resolve())
    assert (ckpt / "sllm-index.json").exists()
    assert (ckpt / "tokenizer.json").exists()

    import torch
    from transformers import AutoModelForCausalLM

    from libs.loader import load_model

    ours = load_model(ckpt)
    ref = AutoModelForCausalLM.from_pretrained(hf)
    for name, tensor in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor), name


def test_convert_reports_a_bad_source(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    conv = subprocess.run(
        [SLLM, "convert", str(tmp_path / "empty"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert conv.returncode == 2
    assert "no *.safetensors or *.bin weights" in conv.stderr
    assert not (tmp_path / "out").exists()


def test_demo_model_rejects_unknown_size(tmp_path: Path) -> None:
    made = subprocess.run(
        [SLLM, "demo-model", str(tmp_path / "m"), "--size", "huge"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 2
    assert "huge" in made.stderr
