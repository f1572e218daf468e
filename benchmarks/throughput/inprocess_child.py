"""The in-process upper bound's process: the model loaded once with transformers, then a batch
per command, generated in one call.

``python benchmarks/throughput/inprocess_child.py HF_DIR THREADS CB_MEMORY``: loads the model
(``from_pretrained``, the checkpoint's dtype), sets torch's threads, answers ``READY``; then
reads one JSON command per line on stdin, ``{"method": "generate" | "generate_batch",
"prompts": [[ids]...], "new_tokens": N, "reps": R}``, and answers one ``RESULT {json}`` line:
the seconds and output tokens of each repetition, or the error. ``generate_batch`` gets
``CB_MEMORY`` as its ``max_memory_percent``. Runs as a plain script (no package imports):
torch's threads and memory are this process's own.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Any


def _generate(model: Any, prompts: list[list[int]], new_tokens: int, pad: int, _: float) -> int:
    import torch

    ids = torch.tensor(prompts, dtype=torch.long)  # one length per batch: no padding
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=pad,
    )
    return int(out.shape[0] * (out.shape[1] - ids.shape[1]))


def _generate_batch(
    model: Any, prompts: list[list[int]], new_tokens: int, pad: int, memory: float
) -> int:
    import transformers

    make: Any = transformers.GenerationConfig  # untyped in transformers
    config = make(max_new_tokens=new_tokens, eos_token_id=-1, do_sample=False, pad_token_id=pad)
    outs = model.generate_batch(
        inputs=prompts,
        generation_config=config,
        continuous_batching_config=transformers.ContinuousBatchingConfig(max_memory_percent=memory),
        persistent_manager=True,  # set up by the untimed first call of each command
        progress_bar=False,
    )
    return sum(len(o.generated_tokens) for o in outs.values())


METHODS = {"generate": _generate, "generate_batch": _generate_batch}


def main(path: str, threads: int, memory: float) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    if threads > 0:
        torch.set_num_threads(threads)
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    model.eval()
    pad = model.config.pad_token_id
    pad = 0 if pad is None else int(pad)
    info = {"dtype": str(model.dtype), "threads": torch.get_num_threads()}
    print("READY " + json.dumps(info), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        result: dict[str, Any] = {"seconds": [], "tokens": [], "error": ""}
        try:
            fn = METHODS[cmd["method"]]
            # An untimed first call: `generate_batch` sizes and sets up its batching manager
            # for the batch (kept for the timed calls, as a server keeps its own).
            for rep in range(int(cmd["reps"]) + int(fn is _generate_batch)):
                t0 = time.perf_counter()
                with torch.inference_mode():
                    n = fn(model, cmd["prompts"], int(cmd["new_tokens"]), pad, memory)
                if rep or fn is _generate:
                    result["seconds"].append(time.perf_counter() - t0)
                    result["tokens"].append(n)
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"[:500]
            traceback.print_exc(file=sys.stderr)
        finally:
            if getattr(model, "_cached_continuous_batching_manager", None) is not None:
                model.destroy_cached_continuous_batching_manager()
        print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
