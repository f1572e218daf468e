"""A loaded model ready to serve: weights, tokenizer, limits and the engine thread running it."""

from __future__ import annotations

import gc
import importlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

import torch
from transformers import AutoTokenizer

from libs.loader import (
    CancelToken,
    HostPool,
    LoadStats,
    PoolExhausted,
    load_model,
    load_model_safetensors,
)
from libs.protocol.errors import BadRequestError, BusError
from libs.protocol.messages import GenerateRequest, GrammarSpec

from .batch_policy import Limits
from .chat_template import render_chat
from .engine import Engine, OnStep
from .validate import context_length, eos_ids, kv_budget_tokens, kv_bytes_per_token

if TYPE_CHECKING:
    from .adapters import AdapterBank
    from .embedding import EmbedRuntime
    from .grammar import Grammar, GrammarCompiler

    # What a worker hosts: a generation model or an embedding model.
    AnyRuntime: TypeAlias = "Runtime | EmbedRuntime"

log = logging.getLogger(__name__)

AUTO_CPU_KV_GB = 2.0


@dataclass(frozen=True)
class EngineSettings:
    """How a worker's engine batches (from `WorkerSettings`)."""

    max_batch: int = 64
    kv_cache_gb: float = 0.0  # 0: automatic (see `kv_tokens`)
    prefill_chunk: int = 256
    max_queue: int = 1024

    def kv_tokens(self, model: Any) -> int:
        """The KV budget in tokens for ``model``: ``kv_cache_gb``, or by default 90% of the
        GPU memory left after the load, or 2 GB on a CPU (host memory is shared with the
        DRAM tier and the other workers)."""
        param = next(model.parameters())
        budget = int(self.kv_cache_gb * 1e9)
        if budget <= 0 and param.device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(param.device)
            budget = int(free * 0.9)
        elif budget <= 0:
            budget = int(AUTO_CPU_KV_GB * 1e9)
        per_token = kv_bytes_per_token(model.config, param.element_size())
        return kv_budget_tokens(budget, per_token)


@dataclass(frozen=True)
class LoadReport:
    """What a load did, for the ``load.phase`` events."""

    read_s: float  # the loader reading (or mapping) the weights
    read_bytes: int
    read_tier: str  # the loader's view: "tmpfs", "page_cache" or "disk"
    build_s: float  # building the model around the weights, beyond the read
    tokenizer_s: float


class Runtime:
    """One loaded model and its engine; the worker hosts at most one."""

    task: ClassVar[str] = "generate"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        engine: EngineSettings,
        name: str,
        step_delay: float = 0.0,
        on_step: OnStep | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        config = model.config
        gen = getattr(model, "generation_config", None)
        self.eos_ids = eos_ids(getattr(gen, "eos_token_id", None), config.eos_token_id)
        if not self.eos_ids:
            self.eos_ids = eos_ids(tokenizer.eos_token_id)
        self.context = context_length(config)
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)
        self._grammars: GrammarCompiler | None = None
        self._grammar_lock = threading.Lock()
        limits = Limits(
            max_batch=engine.max_batch,
            kv_tokens=engine.kv_tokens(model),
            prefill_chunk=engine.prefill_chunk,
        )
        log.info(
            "%s: KV budget %d tokens, batch %d, prefill chunk %d",
            name,
            limits.kv_tokens,
            limits.max_batch,
            limits.prefill_chunk,
        )
        self.engine = Engine(
            model,
            eos_ids=self.eos_ids,
            limits=limits,
            max_queue=engine.max_queue,
            name=name,
            step_delay=step_delay,
            on_step=on_step,
        )
        self.engine.start()
        # The LoRA adapters resident on this model (`adapters.AdapterBank`), made by the worker
        # at the first request that names one.
        self.adapters: AdapterBank | None = None

    def prompt_ids(self, req: GenerateRequest) -> list[int]:
        """The request's prompt as token ids (chat messages and tools through the chat
        template, see `render_chat`)."""
        tok = self.tokenizer
        if req.prompt_token_ids is not None:
            ids = list(req.prompt_token_ids)
        elif req.messages is not None:
            text = render_chat(tok, req.model, req.messages, req.tools_json)
            ids = tok.encode(text, add_special_tokens=False)
        else:
            ids = tok.encode(req.prompt or "", add_special_tokens=True)
        if not ids:
            raise BadRequestError("the prompt is empty (0 tokens)")
        return [int(i) for i in ids]

    def decode(self, ids: Any) -> str:
        text: str = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return text

    def grammar(self, spec: GrammarSpec | None) -> Grammar | None:
        """The compiled grammar of a request (blocking the first time: wrapping the tokenizer
        takes up to a second for a large vocabulary); `BadRequestError` for a bad schema."""
        if spec is None:
            return None
        from .grammar import GrammarCompiler, GrammarError

        with self._grammar_lock:
            if self._grammars is None:
                self._grammars = GrammarCompiler(self.tokenizer, self.vocab_size, self.eos_ids)
        try:
            return self._grammars.compile(spec.kind, spec.json_schema)
        except GrammarError as exc:
            raise BadRequestError(f"the output's JSON schema: {exc}") from None

    def token_text(self, token_id: int) -> str:
        """One token's own text (for logprobs)."""
        text: str = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return text

    def close(self, error: BusError, timeout: float) -> bool:
        """Stop the engine (its jobs fail with ``error``) and let go of the model."""
        stopped = self.engine.stop(error, timeout)
        # The tokenizer stays: streams still draining their last tokens decode with it.
        self.model = None
        return stopped


def load_runtime(
    path: str | os.PathLike[str],
    *,
    device: str,
    pool: HostPool | None,
    cancel: CancelToken,
    engine: EngineSettings,
    name: str,
    verify: bool = True,
    prefault: bool = True,
    step_delay: float = 0.0,
    on_step: OnStep | None = None,
    hf_source: bool = False,
) -> tuple[Runtime, LoadReport]:
    """Load the checkpoint at ``path`` (blocking: run it in a thread) and start its engine.
    ``hf_source``: ``path`` is a Hugging Face model directory (the registry source itself,
    served while its sllm copy is written), loaded from its safetensors."""
    model, tokenizer, report = load_model_and_tokenizer(
        path,
        device=device,
        pool=pool,
        cancel=cancel,
        verify=verify,
        prefault=prefault,
        hf_source=hf_source,
    )
    runtime = Runtime(
        model, tokenizer, engine=engine, name=name, step_delay=step_delay, on_step=on_step
    )
    return runtime, report


def load_model_and_tokenizer(
    path: str | os.PathLike[str],
    *,
    device: str,
    pool: HostPool | None,
    cancel: CancelToken,
    verify: bool,
    prefault: bool,
    hf_source: bool,
) -> tuple[Any, Any, LoadReport]:
    """The model at ``path`` (an sllm checkpoint, or with ``hf_source`` a Hugging Face
    directory's safetensors) and its tokenizer, with what the load took (blocking)."""
    stats = LoadStats()
    t0 = time.perf_counter()
    if hf_source:
        model, nbytes = load_model_safetensors(path, device)
        stats = LoadStats(bytes=nbytes, seconds=time.perf_counter() - t0, tier="registry")
    else:
        model = _load_sllm(path, device, pool, stats, cancel, verify, prefault)
    loaded = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(os.fspath(path))
    done = time.perf_counter()
    report = LoadReport(
        read_s=stats.seconds,
        read_bytes=stats.bytes,
        read_tier=stats.tier,
        build_s=max(loaded - t0 - stats.seconds, 0.0),
        tokenizer_s=done - loaded,
    )
    return model, tokenizer, report


def load_for_task(
    task: str,
    path: str | os.PathLike[str],
    *,
    device: str,
    pool: HostPool | None,
    cancel: CancelToken,
    engine: EngineSettings,
    name: str,
    prefault: bool = True,
    step_delay: float = 0.0,
    on_step: OnStep | None = None,
    hf_source: bool = False,
) -> tuple[AnyRuntime, LoadReport]:
    """`load_runtime`, or `embedding.load_embed_runtime` for a model deployed with task
    "embed" (blocking: run it in a thread)."""
    if task == "embed":
        from .embedding import load_embed_runtime

        return load_embed_runtime(
            path,
            device=device,
            pool=pool,
            cancel=cancel,
            name=name,
            max_batch=engine.max_batch,
            max_queue=engine.max_queue,
            prefault=prefault,
            hf_source=hf_source,
        )
    return load_runtime(
        path,
        device=device,
        pool=pool,
        cancel=cancel,
        engine=engine,
        name=name,
        prefault=prefault,
        step_delay=step_delay,
        on_step=on_step,
        hf_source=hf_source,
    )


def _load_sllm(
    path: str | os.PathLike[str],
    device: str,
    pool: HostPool | None,
    stats: LoadStats,
    cancel: CancelToken,
    verify: bool,
    prefault: bool,
) -> Any:
    try:
        return load_model(
            path,
            device=device,
            pool=pool,
            stats=stats,
            cancel=cancel,
            verify=verify,
            prefault=prefault,
        )
    except PoolExhausted:
        # A checkpoint larger than the pool still loads, just without the pre-touched memory.
        log.warning("host pool too small for %s; loading without it", path)
        return load_model(
            path, device=device, stats=stats, cancel=cancel, verify=verify, prefault=prefault
        )


def prepare(torch_threads: int, host_pool_gb: float) -> HostPool | None:
    """One-off start-up work, in a thread: the torch and transformers imports, thread count,
    and the host pool, so that the first load does not pay for them."""
    # The model classes' common base pulls in most of transformers and torch (~3 s of imports);
    # the architecture's own module is then a fraction of that.
    importlib.import_module("transformers.modeling_utils")
    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    if host_pool_gb > 0:
        return HostPool(int(host_pool_gb * 1e9))
    return None


def free_memory() -> None:
    """Return the memory of dropped models (blocking: a full collection)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
