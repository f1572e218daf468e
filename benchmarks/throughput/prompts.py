"""Prompts of an exact number of tokens, as token ids (for sllm and the in-process bound) and as
the text that the peer tokenizes back into the same ids (its `/v1/completions` takes only text)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    ids: tuple[int, ...]
    text: str


def exact_prompts(
    encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    corpus_ids: list[int],
    n_tokens: int,
    count: int,
    seed: int = 0,
) -> list[Prompt]:
    """``count`` prompts of ``n_tokens`` tokens each: windows of ``corpus_ids`` at distinct
    offsets (so that no two requests share a prefix a cache could reuse), each kept only if its
    decoded text encodes back to exactly the same ids; deterministic for a ``seed``."""
    span = len(corpus_ids) - n_tokens
    if span < 1:
        raise ValueError(f"the corpus has {len(corpus_ids)} tokens, fewer than {n_tokens + 1}")
    offsets = list(range(span))
    random.Random(seed).shuffle(offsets)
    out: list[Prompt] = []
    for off in offsets:
        ids = corpus_ids[off : off + n_tokens]
        text = decode(ids)
        if encode(text) == ids:
            out.append(Prompt(tuple(ids), text))
            if len(out) == count:
                return out
    raise ValueError(f"only {len(out)} of {count} windows of {n_tokens} tokens round-trip")


def corpus_ids(encode: Callable[[str], list[int]]) -> list[int]:
    """The demo corpus (the text the demo tokenizer was trained on), tokenized."""
    from libs.demo.corpus import CORPUS

    return encode(CORPUS)
