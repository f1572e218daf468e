"""Deterministic demo Llama models and tokenizer, written locally without a model hub.

Size tables import instantly; the writer, configs and tokenizer pull in torch and
transformers, so they load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from libs.demo.errors import DemoModelError
from libs.demo.marker import read_marker
from libs.demo.sizes import DEMO_SIZES, DemoSize, demo_param_count, demo_tensor_shapes

if TYPE_CHECKING:
    from libs.demo.config import demo_config, demo_generation_config
    from libs.demo.tokenizer import build_tokenizer, save_tokenizer
    from libs.demo.writer import write_demo_model

_LAZY = {
    "demo_config": "libs.demo.config",
    "demo_generation_config": "libs.demo.config",
    "build_tokenizer": "libs.demo.tokenizer",
    "save_tokenizer": "libs.demo.tokenizer",
    "write_demo_model": "libs.demo.writer",
}

__all__ = [
    "DEMO_SIZES",
    "DemoModelError",
    "DemoSize",
    "build_tokenizer",
    "demo_config",
    "demo_generation_config",
    "demo_param_count",
    "demo_tensor_shapes",
    "read_marker",
    "save_tokenizer",
    "write_demo_model",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
