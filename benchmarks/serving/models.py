"""The benchmark's models: demo Llama models in the Hugging Face layout, converted once to sllm's
format, cached under the benchmark directory."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from .common import log

STAMP = "sllm-convert-stamp.json"


@dataclass(frozen=True)
class ModelFiles:
    """One demo model: its Hugging Face directory and its sllm checkpoint."""

    size: str
    hf: Path
    sllm: Path

    @property
    def hf_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.hf.iterdir() if f.is_file())

    @property
    def weight_files(self) -> list[Path]:
        return sorted(self.hf.glob("*.safetensors"))


def _converted(hf: Path, sllm: Path) -> bool:
    stamp = sllm.parent / STAMP
    if not (sllm / "sllm-index.json").is_file() or not stamp.is_file():
        return False
    try:
        return bool(
            json.loads(stamp.read_text()) == json.loads((hf / "sllm-demo.json").read_text())
        )
    except (OSError, ValueError):
        return False


def prepare_model(root: Path, size: str) -> ModelFiles:
    """Write the demo model of ``size`` (once) and its sllm checkpoint (once per demo model)."""
    from libs.demo import write_demo_model

    base = root / "models" / size
    t0 = time.monotonic()
    hf = write_demo_model(base / "hf", size=size)
    if time.monotonic() - t0 > 1.0:
        log(f"wrote the {size} demo model to {hf} in {time.monotonic() - t0:.1f}s")
    sllm = base / f"{size}-sllm"  # `sllm up --model` deploys it under this directory's name
    convert_once(hf, sllm)
    return ModelFiles(size, hf, sllm.resolve())


def convert_once(hf: Path, sllm: Path) -> None:
    """Convert the demo model directory ``hf`` to sllm's format at ``sllm``, unless the stamp
    beside ``sllm`` says that this demo model was converted there already."""
    from libs.loader import convert_hf

    if _converted(hf, sllm):
        return
    t0 = time.monotonic()
    stamp = sllm.parent / STAMP
    stamp.unlink(missing_ok=True)
    convert_hf(hf, sllm, overwrite=True)
    stamp.write_text((hf / "sllm-demo.json").read_text())
    log(f"converted {hf} to {sllm} in {time.monotonic() - t0:.1f}s")
