"""The baseline's fresh process: what a typical serverless stack does on a cold start.

``python benchmarks/serving/baseline_child.py HF_DIR PROMPT [THREADS]``: import torch and transformers,
``AutoModelForCausalLM.from_pretrained``, the tokenizer, then a greedy ``generate`` of one
token. Prints one JSON line of ``time.monotonic()`` stamps (CLOCK_MONOTONIC: comparable with
the parent's), so that the parent can time from before it started this process.
"""

from __future__ import annotations

import time
from typing import Any

STARTED = time.monotonic()

import json  # noqa: E402
import sys  # noqa: E402


def main(path: str, prompt: str, threads: int) -> None:
    """Load, generate one token, print the stamps."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads > 0:
        torch.set_num_threads(threads)
    imported = time.monotonic()
    model: Any = AutoModelForCausalLM.from_pretrained(path)
    loaded = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenized = time.monotonic()
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(
            **inputs, max_new_tokens=1, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    first = time.monotonic()
    stamps = {
        "started": STARTED,
        "imported": imported,
        "loaded": loaded,
        "tokenized": tokenized,
        "first_token": first,
        "token_id": int(out[0, -1]),
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "dtype": str(model.dtype),
        "threads": torch.get_num_threads(),
    }
    print("BASELINE " + json.dumps(stamps), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
