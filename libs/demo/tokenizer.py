"""Deterministic byte-level BPE tokenizer with a ChatML chat template, trained offline."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from libs.demo.bpe import trained_tokenizer_json
from libs.demo.compat import portable_tokenizer_config
from libs.demo.vocab import CHAT_TEMPLATE, ENDOFTEXT, IM_END, IM_START


def build_tokenizer(model_max_length: int = 4096) -> PreTrainedTokenizerFast:
    """Train (once per process) and wrap the demo tokenizer.

    Args:
        model_max_length: Longest sequence the paired model accepts, recorded in the
            tokenizer config.

    Returns:
        A fresh ``PreTrainedTokenizerFast`` with ``eos_token="<|im_end|>"``,
        ``pad_token="<|endoftext|>"``, ``bos_token="<|endoftext|>"`` and a ChatML chat template.
        Encoding never adds special tokens by itself, so ``decode(encode(text)) == text``.
    """
    # transformers' constructors carry no annotations.
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=Tokenizer.from_str(trained_tokenizer_json()),
        bos_token=ENDOFTEXT,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        additional_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        # Llama takes no token_type_ids; transformers 4.x generate() rejects them.
        model_input_names=["input_ids", "attention_mask"],
    )


def save_tokenizer(directory: Path, model_max_length: int = 4096) -> None:
    """Write the demo tokenizer files into ``directory``, loadable by transformers 4.x and 5.x.

    Args:
        directory: Existing directory to write into.
        model_max_length: Longest sequence the paired model accepts.
    """
    build_tokenizer(model_max_length).save_pretrained(directory)
    portable_tokenizer_config(directory)
