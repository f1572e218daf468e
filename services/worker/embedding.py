"""A loaded embedding model ready to serve: weights, tokenizer, pooling, limits and its engine."""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

from libs.loader import CancelToken, HostPool
from libs.loader.pooling import Pooling, PoolingError, read_pooling
from libs.protocol.errors import BadRequestError, BusError, InvalidCheckpointError

from .embed_engine import EmbedEngine, EmbedResult
from .runtime import LoadReport, load_model_and_tokenizer
from .validate import check_token_ids, context_length

__all__ = ["EmbedEngine", "EmbedResult", "EmbedRuntime", "load_embed_runtime"]

log = logging.getLogger(__name__)


class EmbedRuntime:
    """One loaded embedding model and its engine; the embed counterpart of `Runtime`."""

    task: ClassVar[str] = "embed"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        pooling: Pooling,
        *,
        name: str,
        max_batch: int = 64,
        max_batch_tokens: int = 16384,
        max_queue: int = 1024,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        config = model.config
        self.context = context_length(config)
        if pooling.max_tokens is not None:  # sentence-transformers' own bound
            self.context = min(self.context or pooling.max_tokens, pooling.max_tokens)
        embeddings = model.get_input_embeddings()
        self.vocab_size = int(embeddings.num_embeddings)
        hidden = getattr(config, "hidden_size", None)
        self.dimensions = int(hidden) if isinstance(hidden, int) else int(embeddings.embedding_dim)
        pad = getattr(config, "pad_token_id", None)
        # Padded positions are masked out, so any id inside the vocabulary does.
        pad_id = pad if isinstance(pad, int) and 0 <= pad < self.vocab_size else 0
        log.info(
            "%s: %d dimensions, %s pooling%s, context %s, batch %d",
            name,
            self.dimensions,
            pooling.mode,
            " normalised" if pooling.normalize else "",
            self.context,
            max_batch,
        )
        self.engine = EmbedEngine(
            model,
            pooling=pooling,
            max_batch=max_batch,
            max_batch_tokens=max_batch_tokens,
            max_queue=max_queue,
            pad_id=pad_id,
            name=name,
        )
        self.engine.start()

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, special tokens included (as sentence-transformers encodes;
        blocking: run it off the loop for large inputs). Never truncates: `check_ids` refuses
        what is too long, as OpenAI's API does."""
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        return [[int(i) for i in ids] for ids in encoded]

    def check_ids(self, ids: list[int], what: str = "input") -> None:
        """Refuse an input the model cannot embed: empty, longer than its context, or holding
        ids outside its vocabulary (`BadRequestError`)."""
        if not ids:
            raise BadRequestError(f"{what} is empty (0 tokens)")
        if self.context is not None and len(ids) > self.context:
            raise BadRequestError(
                f"{what} of {len(ids)} tokens exceeds the model's context of {self.context} tokens",
                detail={"tokens": len(ids), "context": self.context},
            )
        check_token_ids(ids, self.vocab_size, what)

    def close(self, error: BusError, timeout: float) -> bool:
        """Stop the engine (queued inputs fail with ``error``) and let go of the model."""
        stopped = self.engine.stop(error, timeout)
        self.model = None
        return stopped


def load_embed_runtime(
    path: str | os.PathLike[str],
    *,
    device: str,
    pool: HostPool | None,
    cancel: CancelToken,
    name: str,
    max_batch: int = 64,
    max_queue: int = 1024,
    max_batch_tokens: int = 16384,
    verify: bool = True,
    prefault: bool = True,
    hf_source: bool = False,
) -> tuple[EmbedRuntime, LoadReport]:
    """Load the embedding model at ``path`` (blocking: run it in a thread) and start its
    engine; `load_runtime`'s counterpart for models deployed with task "embed".

    Raises:
        InvalidCheckpointError: the model's pooling settings are malformed or unsupported
            (checked before any weight is read).
    """
    try:
        pooling = read_pooling(os.fspath(path))
    except (PoolingError, OSError) as exc:
        raise InvalidCheckpointError(f"the model's pooling settings: {exc}") from None
    model, tokenizer, report = load_model_and_tokenizer(
        path,
        device=device,
        pool=pool,
        cancel=cancel,
        verify=verify,
        prefault=prefault,
        hf_source=hf_source,
    )
    runtime = EmbedRuntime(
        model,
        tokenizer,
        pooling,
        name=name,
        max_batch=max_batch,
        max_batch_tokens=max_batch_tokens,
        max_queue=max_queue,
    )
    return runtime, report
