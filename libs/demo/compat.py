"""Rewrites saved JSON files so that transformers 4.5x loads them as well as 5.x does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _rewrite(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def add_legacy_rope_keys(directory: Path) -> None:
    """Mirror ``rope_parameters`` into the ``rope_theta``/``rope_scaling`` keys of config.json.

    transformers 5 writes only ``rope_parameters``; 4.x ignores it and would silently fall back
    to theta 10000 without llama3 scaling. 5.x reads the legacy keys back to the same values.
    """
    path = directory / "config.json"
    config = json.loads(path.read_text())
    rope = dict(config.get("rope_parameters") or {})
    if not rope:
        return
    config["rope_theta"] = rope.pop("rope_theta", 10000.0)
    config["rope_scaling"] = None if rope.get("rope_type", "default") == "default" else rope
    _rewrite(path, config)


def portable_tokenizer_config(directory: Path) -> None:
    """Name the tokenizer class and extra special tokens the way both major versions read.

    transformers 5 saves ``TokenizersBackend`` and a list-valued ``extra_special_tokens``, both
    of which 4.x rejects; ``PreTrainedTokenizerFast`` and ``additional_special_tokens`` load
    identically in 5.x.
    """
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = config.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        config["additional_special_tokens"] = extra
    elif extra:
        config["extra_special_tokens"] = extra
    _rewrite(path, config)
