"""The benchmark's models: the demo models of `benchmarks.serving.models`, with a name for every
id of the vocabulary.

The `1b` demo model's tokenizer names 1,024 ids of Llama's 128,256; its random weights pick
unnamed ids nearly always, which decode to no text, so neither server would stream a single
content chunk and TTFT could not be seen. Its copy here has the same files (weights
hard-linked) with the tokenizer's missing ids added as plain tokens (``<|id1024|>``...): the
computation is unchanged, every generated token streams as text on both servers.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from benchmarks.serving.common import log
from benchmarks.serving.models import ModelFiles, convert_once, prepare_model

MARKER = "named-vocab.json"


def _vocab_sizes(hf: Path) -> tuple[int, int]:
    """(the model's vocabulary, the ids its tokenizer names)."""
    from transformers import AutoTokenizer

    vocab = int(json.loads((hf / "config.json").read_text())["vocab_size"])
    return vocab, len(AutoTokenizer.from_pretrained(hf))


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _name_every_id(src: Path, dst: Path, vocab: int) -> None:
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    tok = AutoTokenizer.from_pretrained(src)
    first = len(tok)
    tok.add_tokens([AddedToken(f"<|id{i}|>", normalized=False) for i in range(first, vocab)])
    if len(tok) != vocab:
        raise RuntimeError(f"the tokenizer of {src} names {len(tok)} ids, not {vocab}")
    tok.save_pretrained(dst)
    for f in src.iterdir():
        if f.is_file() and not (dst / f.name).exists():
            _link_or_copy(f, dst / f.name)


def prepare(root: Path, size: str) -> ModelFiles:
    """The demo model of ``size`` and its sllm checkpoint, each written once under ``root``;
    for a model whose tokenizer names fewer ids than its vocabulary, the named copy."""
    model = prepare_model(root, size)
    vocab, named = _vocab_sizes(model.hf)
    if named >= vocab:
        return model
    base = root / "models" / f"{size}-named"
    hf = base / "hf"
    want = {"source": json.loads((model.hf / "sllm-demo.json").read_text()), "vocab": vocab}
    marker = base / MARKER
    if not marker.is_file() or json.loads(marker.read_text()) != want:
        log(f"naming ids {named}..{vocab - 1} of the {size} demo model's tokenizer in {hf}")
        marker.unlink(missing_ok=True)
        _name_every_id(model.hf, hf, vocab)
        shutil.rmtree(base / f"{size}-sllm", ignore_errors=True)
        marker.write_text(json.dumps(want))
    sllm = base / f"{size}-sllm"
    convert_once(hf, sllm)
    return ModelFiles(size, hf.resolve(), sllm.resolve())


def cb_memory_fraction(gb: float, model_bytes: int) -> float:
    """The ``max_memory_percent`` that gives transformers' continuous batching about ``gb`` GB
    for its paged KV cache and attention masks, as sllm's worker gets for its KV cache. Left to
    itself, on the CPU it takes 90% of (the machine's RAM less the process's): ~20 GB here."""
    import psutil

    return min(0.9, max(0.005, gb * 1e9 / max(psutil.virtual_memory().total - model_bytes, 1)))
