"""Fixtures for the worker tests: the tiny demo model in HF layout, converted, and loaded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(HF directory, sllm checkpoint directory) of the tiny demo model."""
    from libs.demo import write_demo_model
    from libs.loader import convert_hf

    root = tmp_path_factory.mktemp("tiny")
    hf_dir, ckpt_dir = root / "hf", root / "ckpt"
    write_demo_model(hf_dir, "tiny")
    convert_hf(hf_dir, ckpt_dir)
    return hf_dir, ckpt_dir


@pytest.fixture(scope="session")
def tiny_model(tiny_dirs: tuple[Path, Path]) -> Any:
    """The tiny model as the worker loads it (libs.loader.load_model)."""
    from libs.loader import load_model

    return load_model(tiny_dirs[1], device="cpu")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dirs: tuple[Path, Path]) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dirs[1])
