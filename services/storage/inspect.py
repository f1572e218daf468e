"""Deploy-time checks of a checkpoint: can the cluster serve it? Blocking (run in a thread).

A deployment that cannot work should be refused when it is made, not minutes later at its first
request. What is checked without copying any weights:
- the URI (scheme, allow-list) and the source (exists, readable, symlinks inside the registry):
  `sources.prepare`, as a fetch would;
- it is an sllm checkpoint or a Hugging Face model directory with weights;
- its ``config.json`` is one transformers can build a model class from;
- its tokenizer loads and encodes a sentence.
An HTTP checkpoint's files are only named by its index here: their content is checked when the
deployment's preparation fetches them (``deferred``).

Every failure is an `InvalidCheckpointError` naming the URI and what is wrong; a source that
cannot be reached now (a registry down) stays an `UnavailableError` (try again later).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from libs.protocol.errors import (
    BadRequestError,
    CorruptError,
    InvalidCheckpointError,
    NotFoundError,
)
from libs.protocol.messages import InspectReply

from .sources import FetchPlan, prepare
from .uri import RegistrySource

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
# Any of these makes a tokenizer transformers can load (fast, sentencepiece, or BPE files).
TOKENIZER_FILES = frozenset(
    {"tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model"}
)
PROBE_TEXT = "Hello, world: a short sentence to encode."


def inspect_source(source: RegistrySource, timeout: float, task: str = "generate") -> InspectReply:
    """Check ``source`` as described above (blocking); for an embedding model (``task``
    "embed"), its pooling settings too, where it is a directory this node reads."""
    uri = source.uri
    try:
        plan = prepare(source, timeout)
    except (NotFoundError, BadRequestError, CorruptError) as exc:
        raise InvalidCheckpointError(exc.message, detail={"param": "checkpoint_uri"}) from None
    if plan.kind == "sllm-http":
        assert plan.files is not None
        _require_files(uri, (f.name for f in plan.files.files))
        return InspectReply(kind=plan.kind, bytes=plan.need_bytes, deferred=["tokenizer"])
    if plan.kind == "hf-hub":  # config and tokenizer only; the weights come with the fetch
        from .hub import hub_metadata

        assert source.hub is not None
        assert plan.hub is not None
        architecture = check_model_dir(uri, hub_metadata(source.hub, timeout, plan.hub.commit))
        return InspectReply(kind=plan.kind, bytes=plan.need_bytes, architecture=architecture)
    assert source.path is not None
    architecture = check_model_dir(uri, source.path)
    if task == "embed":
        check_pooling(uri, source.path)
    return InspectReply(kind=plan.kind, bytes=_weights_bytes(plan), architecture=architecture)


def check_pooling(uri: str, path: Path) -> None:
    """An embedding model's sentence-transformers settings are ones the engine implements."""
    from libs.loader.pooling import PoolingError, read_pooling

    try:
        read_pooling(path)
    except (PoolingError, OSError) as exc:
        raise _invalid(uri, f"its pooling settings: {exc}") from None


def _weights_bytes(plan: FetchPlan) -> int:
    return plan.files.total_bytes if plan.files is not None else plan.need_bytes


def _require_files(uri: str, names: Iterable[str]) -> None:
    present = set(names)
    if CONFIG_FILE not in present:
        raise _invalid(uri, f"it has no {CONFIG_FILE}")
    if not present & TOKENIZER_FILES:
        raise _invalid(uri, _NO_TOKENIZER)


_NO_TOKENIZER = (
    "it has no tokenizer (tokenizer.json, tokenizer.model or vocab files): "
    "save the tokenizer next to the weights (tokenizer.save_pretrained)"
)


def check_model_dir(uri: str, path: Path) -> str:
    """A model directory's config and tokenizer (an sllm checkpoint keeps both as plain files
    beside its partitions); returns the architecture transformers will build."""
    _require_files(uri, (p.name for p in path.iterdir() if p.is_file()))
    architecture = check_config(uri, path)
    check_tokenizer(uri, path)
    return architecture


def check_config(uri: str, path: Path) -> str:
    try:
        raw = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _invalid(uri, f"{CONFIG_FILE} is not readable JSON ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise _invalid(uri, f"{CONFIG_FILE} is not a JSON object")
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(str(path))
    except Exception as exc:  # transformers raises ValueError/KeyError/OSError for these
        log.info("checkpoint %s: AutoConfig: %r", uri, exc)
        model_type = raw.get("model_type")
        raise _invalid(
            uri,
            f"transformers {transformers.__version__} cannot read its {CONFIG_FILE}"
            + (f" (model_type {model_type!r})" if model_type else " (no model_type)"),
        ) from None
    architectures = [a for a in getattr(config, "architectures", None) or () if a]
    for name in architectures:
        if getattr(transformers, name, None) is not None:
            return str(name)
    model_type = str(getattr(config, "model_type", ""))
    if not architectures and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return model_type
    named = ", ".join(architectures) or f"model_type {model_type!r}"
    raise _invalid(
        uri,
        f"transformers {transformers.__version__} has no model class for {named}",
    )


def check_tokenizer(uri: str, path: Path) -> None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        ids = tokenizer.encode(PROBE_TEXT, add_special_tokens=False)
    except Exception as exc:  # a broken tokenizer file raises anything from anywhere
        log.info("checkpoint %s: tokenizer: %r", uri, exc)
        raise _invalid(uri, f"its tokenizer does not load ({type(exc).__name__})") from None
    if not ids:
        raise _invalid(uri, "its tokenizer encodes a sentence as no tokens")


def _invalid(uri: str, what: str) -> InvalidCheckpointError:
    return InvalidCheckpointError(f"checkpoint {uri}: {what}", detail={"param": "checkpoint_uri"})
