"""Tiny random LoRA adapters of a local model, written with peft (for tests and benchmarks).

peft is a test dependency: it is imported when an adapter is written, never by the services.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_merged_model", "write_random_lora"]

DEFAULT_TARGETS = ("q_proj", "v_proj")


def write_random_lora(
    base_dir: str | Path,
    out_dir: str | Path,
    *,
    r: int = 8,
    alpha: int = 16,
    targets: Sequence[str] = DEFAULT_TARGETS,
    seed: int = 0,
    scale: float = 0.5,
) -> Path:
    """A PEFT LoRA adapter of the model at ``base_dir`` with random, non-zero weights (peft's
    ``init_lora_weights=False``; ``scale`` multiplies ``lora_B`` so that the adapter changes
    what the model answers), saved as ``save_pretrained`` does (``adapter_config.json`` and
    ``adapter_model.safetensors``)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(scale)
    out = Path(out_dir)
    peft_model.save_pretrained(str(out))
    # The base as a path this machine has: peft records it, a registry may not have it.
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(Path(base_dir).resolve())
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return out


def write_merged_model(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """The base with the adapter merged into its weights (peft's ``merge_and_unload``), saved
    with the base's tokenizer: the reference a served adapter must equal."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base: Any = AutoModelForCausalLM.from_pretrained(base_dir)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    out = Path(out_dir)
    merged.save_pretrained(out)
    for f in Path(base_dir).iterdir():
        if (
            f.is_file() and (f.name.startswith("tokenizer") or f.name.endswith(".jinja"))
        ) or f.name in ("special_tokens_map.json", "generation_config.json"):
            shutil.copy(f, out / f.name)
    return out
