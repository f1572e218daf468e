"""Special tokens, vocabulary size and chat template shared by the demo tokenizer and models."""

from __future__ import annotations

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END)
"""Special tokens; training puts them first, so their ids are 0, 1 and 2."""

BOS_TOKEN_ID = SPECIAL_TOKENS.index(ENDOFTEXT)
EOS_TOKEN_ID = SPECIAL_TOKENS.index(IM_END)
PAD_TOKEN_ID = SPECIAL_TOKENS.index(ENDOFTEXT)

TOKENIZER_VOCAB_SIZE = 1024
"""Vocabulary size of the demo tokenizer (special tokens + 256 bytes + merges)."""

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] }}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
"""ChatML: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message."""
