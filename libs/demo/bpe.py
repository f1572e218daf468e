"""Trains the demo byte-level BPE with the ``tokenizers`` library alone (no transformers)."""

from __future__ import annotations

import functools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from libs.demo.corpus import CORPUS
from libs.demo.vocab import SPECIAL_TOKENS, TOKENIZER_VOCAB_SIZE


@functools.cache
def trained_tokenizer_json() -> str:
    """Train the demo BPE on ``CORPUS`` (once per process) and return its ``tokenizer.json``.

    The result is identical in every process: the trainer breaks frequency ties by the
    pair itself, not by hash order.

    Raises:
        RuntimeError: the corpus no longer yields exactly ``TOKENIZER_VOCAB_SIZE`` tokens.
    """
    tokenizer = Tokenizer(models.BPE())
    # No normalizer and no prefix space: byte-level BPE then round-trips any text exactly.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        # The corpus is small; pairs seen once are needed to reach the full vocabulary.
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([CORPUS], trainer)
    got = tokenizer.get_vocab_size()
    if got != TOKENIZER_VOCAB_SIZE:
        raise RuntimeError(f"demo tokenizer has {got} tokens, expected {TOKENIZER_VOCAB_SIZE}")
    result: str = tokenizer.to_str()
    return result
