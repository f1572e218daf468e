"""What plain transformers says a model should answer: the oracle for e2e equality tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Reference:
    """Greedy generation with `from_pretrained` + `generate`, as a user would run it."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
        self.model: Any = AutoModelForCausalLM.from_pretrained(model_dir)
        self.model.eval()  # type: ignore[no-untyped-call]

    def _generate(self, ids: list[int], max_tokens: int) -> tuple[str, str]:
        with self.torch.inference_mode():
            out = self.model.generate(
                self.torch.tensor([ids]),
                attention_mask=self.torch.ones(1, len(ids), dtype=self.torch.long),
                do_sample=False,
                max_new_tokens=max_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[0, len(ids) :].tolist()
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        finish = "stop" if new and new[-1] in eos_ids else "length"
        return self.tokenizer.decode(new, skip_special_tokens=True), finish

    def chat(self, messages: Any, max_tokens: int) -> tuple[str, str]:
        enc = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        ids = enc["input_ids"] if hasattr(enc, "keys") else enc
        return self._generate(list(ids), max_tokens)

    def complete(self, prompt: str, max_tokens: int) -> tuple[str, str]:
        return self._generate(self.tokenizer(prompt)["input_ids"], max_tokens)
