"""How an embedding model pools its token states: read from its sentence-transformers files.

A sentence-transformers model directory lists its modules in ``modules.json``; the pooling
module's settings live in a subdirectory (``1_Pooling/config.json``) and a ``Normalize``
module, when listed, makes the vectors unit length. An sllm checkpoint carries only plain file
names, so conversion carries the pooling settings as ``pooling_config.json`` (FORMAT.md).
Without any of these files: mean pooling, normalised. Torch-free: storage and the converter
use it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["POOLING_FILE", "Pooling", "PoolingError", "read_pooling", "sentence_pooling_file"]

POOLING_FILE = "pooling_config.json"
MODULES_FILE = "modules.json"
# sentence-transformers' settings of its Transformer module: ``max_seq_length``.
SBERT_CONFIG_FILE = "sentence_bert_config.json"
# The modules whose meaning is implemented here; any other (a Dense projection...) would
# change the vectors, so a model that lists one is refused rather than served wrong.
_KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")
_MAX_BYTES = 1 << 20

PoolingMode = Literal["mean", "cls", "max", "last"]
# sentence-transformers' pooling flags, in the order it checks them, and what each means here.
_MODES: tuple[tuple[str, PoolingMode], ...] = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_lasttoken", "last"),
)
_UNSUPPORTED = ("pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens")


class PoolingError(ValueError):
    """The model's pooling settings are malformed or ask for a mode this engine lacks."""


@dataclass(frozen=True)
class Pooling:
    mode: PoolingMode = "mean"
    normalize: bool = True
    source: str = "default"  # where it came from: "sentence-transformers" or "default"
    # The longest input in tokens (sentence-transformers' max_seq_length, which it truncates
    # to; here a longer input is refused). None: the model's context.
    max_tokens: int | None = None


def _modules(root: Path) -> list[dict[str, object]] | None:
    path = root / MODULES_FILE
    if not path.is_file():
        return None
    doc = _json(path)
    if not isinstance(doc, list) or not all(isinstance(m, dict) for m in doc):
        raise PoolingError(f"{MODULES_FILE} is not a list of modules")
    return doc


def _json(path: Path) -> object:
    if path.stat().st_size > _MAX_BYTES:
        raise PoolingError(f"{path.name} is larger than {_MAX_BYTES} bytes")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PoolingError(f"{path.name} is not JSON: {exc}") from None


def sentence_pooling_file(root: str | Path) -> Path | None:
    """The pooling module's ``config.json`` of a sentence-transformers directory (None: not
    one, or its pooling module has no settings file)."""
    base = Path(root)
    modules = _modules(base)
    for m in modules or ():
        if str(m.get("type", "")).endswith("Pooling"):
            sub = str(m.get("path", ""))
            candidate = (base / sub / "config.json").resolve()
            if base.resolve() in candidate.parents and candidate.is_file():
                return candidate
    return None


def read_pooling(root: str | Path) -> Pooling:
    """The pooling of the model at ``root`` (an sllm checkpoint or a source directory).

    Raises:
        PoolingError: malformed settings, or a mode not implemented here.
    """
    base = Path(root)
    modules = _modules(base)
    carried = base / POOLING_FILE
    settings_file = carried if carried.is_file() else sentence_pooling_file(base)
    max_tokens = _max_seq_length(base)
    if modules is None and settings_file is None:
        return Pooling(max_tokens=max_tokens)
    for m in modules or ():
        kind = str(m.get("type", ""))
        if not kind.endswith(_KNOWN_MODULES):
            raise PoolingError(f"the sentence-transformers module {kind!r} is not supported")
    # A carried pooling config means the source listed a Normalize module only if it did.
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules or ())
    if settings_file is None:
        return Pooling("mean", normalize, "sentence-transformers", max_tokens)
    doc = _json(settings_file)
    if not isinstance(doc, dict):
        raise PoolingError("the pooling settings are not an object")
    for flag in _UNSUPPORTED:
        if doc.get(flag):
            raise PoolingError(f"pooling {flag} is not supported")
    if doc.get("include_prompt") is False:
        raise PoolingError("pooling without the prompt (include_prompt: false) is not supported")
    chosen = [mode for flag, mode in _MODES if doc.get(flag)]
    if len(chosen) != 1:
        raise PoolingError(
            f"exactly one pooling mode must be set, found {len(chosen)} ({chosen or 'none'})"
        )
    return Pooling(chosen[0], normalize, "sentence-transformers", max_tokens)


def _max_seq_length(base: Path) -> int | None:
    path = base / SBERT_CONFIG_FILE
    if not path.is_file():
        return None
    doc = _json(path)
    value = doc.get("max_seq_length") if isinstance(doc, dict) else None
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PoolingError(f"{SBERT_CONFIG_FILE}: max_seq_length {value!r} is not a positive int")
    return value
