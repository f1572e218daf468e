"""The synthetic Llama-shaped checkpoint, written once per format and seed into a cache directory.

Shapes are those of Llama-3.2-3B (hidden 3072, MLP 8192, 24 query and 8 key/value heads of 128,
tied embeddings), bf16, with the number of layers (and, for small smoke-test sizes, the vocabulary)
chosen to reach the requested size. Values are ``N(0, 0.02)`` from a seeded generator, so a seed
always gives the same bytes. Layout of the cache::

    <dir>/<spec id>/manifest.json
    <dir>/<spec id>/seed<N>/sllm/             save_checkpoint, config.json carried for load_model
    <dir>/<spec id>/seed<N>/model.safetensors safetensors.torch.save_file
    <dir>/<spec id>/seed<N>/model.pt          torch.save
    <dir>/<spec id>/seed<N>/model.tensors     tensorizer.TensorSerializer

The manifest records every written file's size and a key of the writer (library version, or a hash
of sllm's loader sources), so an interrupted or outdated file is rewritten, never trusted. Only
this module's ``main`` (run in its own process) imports torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.loader.common import REPO_ROOT

if TYPE_CHECKING:
    import torch

FORMATS = ("sllm", "safetensors", "torch", "tensorizer")
FILE_NAMES = {
    "safetensors": "model.safetensors",
    "torch": "model.pt",
    "tensorizer": "model.tensors",
}
SLLM_DIR = "sllm"
LOADER_SOURCES = REPO_ROOT / "libs" / "loader"
SOURCE_SUFFIXES = {".py", ".c", ".cc", ".cpp", ".h", ".hpp", ".pyx", ".txt", ".toml"}


@dataclasses.dataclass(frozen=True)
class Spec:
    """Llama-3.2-3B-like shapes; ``layers`` and ``vocab`` set the size."""

    layers: int
    vocab: int
    hidden: int = 3072
    intermediate: int = 8192
    heads: int = 24
    kv_heads: int = 8
    head_dim: int = 128

    @classmethod
    def for_size(cls, size_gib: float) -> Spec:
        """The spec closest to ``size_gib``; the embedding stays at most a fifth of the bytes."""
        target = size_gib * (1 << 30)
        probe = cls(layers=1, vocab=128256)
        vocab = min(128256, int(0.2 * target / (probe.hidden * 2)) // 256 * 256)
        vocab = max(vocab, 256)
        base = cls(layers=1, vocab=vocab)
        fixed = base.nbytes - base.layer_nbytes
        layers = max(1, round((target - fixed) / base.layer_nbytes))
        return cls(layers=layers, vocab=vocab)

    @property
    def ident(self) -> str:
        return f"llama-h{self.hidden}-m{self.intermediate}-l{self.layers}-v{self.vocab}-bf16"

    def layer_shapes(self, i: int) -> list[tuple[str, tuple[int, ...]]]:
        h, q, kv, m = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        )
        p = f"model.layers.{i}."
        return [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (q, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, q)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (m, h)),
            (p + "mlp.up_proj.weight", (m, h)),
            (p + "mlp.down_proj.weight", (h, m)),
        ]

    def shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        out: list[tuple[str, tuple[int, ...]]] = [
            ("model.embed_tokens.weight", (self.vocab, self.hidden))
        ]
        for i in range(self.layers):
            out.extend(self.layer_shapes(i))
        out.append(("model.norm.weight", (self.hidden,)))
        return out

    @property
    def layer_nbytes(self) -> int:
        return sum(2 * _numel(s) for _, s in self.layer_shapes(0))

    @property
    def nbytes(self) -> int:
        return sum(2 * _numel(s) for _, s in self.shapes())

    @property
    def num_tensors(self) -> int:
        return len(self.shapes())

    def llama_config(self) -> dict[str, Any]:
        """The ``config.json`` of a ``LlamaForCausalLM`` these tensors fit."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": True,
            "torch_dtype": "bfloat16",
            "bos_token_id": 0,
            "eos_token_id": 1,
        }


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def seed_dir(root: Path, spec: Spec, seed: int) -> Path:
    return root / spec.ident / f"seed{seed}"


def format_path(root: Path, spec: Spec, fmt: str, seed: int) -> Path:
    """Where format ``fmt`` of checkpoint ``seed`` lives (a directory for sllm, else a file)."""
    base = seed_dir(root, spec, seed)
    return base / (SLLM_DIR if fmt == "sllm" else FILE_NAMES[fmt])


def sllm_data_files(path: Path) -> list[Path]:
    """The files sllm's loader reads in a checkpoint directory: its index and partitions."""
    index = path / "sllm-index.json"
    if index.is_file():
        parts = [path / p["file"] for p in json.loads(index.read_text())["partitions"]]
        return [index, *parts]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name != "config.json")


def writer_key(fmt: str) -> str:
    """Identifies the code that writes ``fmt``; a cached file written by other code is rewritten."""
    if fmt == "sllm":
        h = hashlib.sha256()
        for p in sorted(LOADER_SOURCES.rglob("*")):
            if p.is_file() and p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts:
                if "tests" in p.relative_to(LOADER_SOURCES).parts:
                    continue
                h.update(str(p.relative_to(LOADER_SOURCES)).encode())
                h.update(p.read_bytes())
        return "sllm-src-" + h.hexdigest()[:16]
    dist = {"safetensors": "safetensors", "torch": "torch", "tensorizer": "tensorizer"}[fmt]
    try:
        return f"{dist}-{importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{dist}-missing"


class Manifest:
    """``<dir>/<spec id>/manifest.json``: which (format, seed) entries are complete."""

    def __init__(self, root: Path, spec: Spec) -> None:
        self.root = root
        self.spec = spec
        self.path = root / spec.ident / "manifest.json"
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            data = json.loads(self.path.read_text())
            if data.get("spec") == dataclasses.asdict(spec):
                self.entries = data.get("entries", {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        payload = {"spec": dataclasses.asdict(self.spec), "entries": self.entries}
        tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def record(self, fmt: str, seed: int, key: str) -> None:
        target = format_path(self.root, self.spec, fmt, seed)
        files = (
            [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
        )
        base = self.root / self.spec.ident
        self.entries[f"{fmt}:{seed}"] = {
            "key": key,
            "files": {str(p.relative_to(base)): p.stat().st_size for p in files},
        }
        self.save()

    def valid(self, fmt: str, seed: int, key: str | None = None) -> bool:
        entry = self.entries.get(f"{fmt}:{seed}")
        if entry is None or entry["key"] != (key if key is not None else writer_key(fmt)):
            return False
        base = self.root / self.spec.ident
        for rel, size in entry["files"].items():
            p = base / rel
            if not p.is_file() or p.stat().st_size != size:
                return False
        return True

    def files(self, fmt: str, seed: int) -> list[Path]:
        base = self.root / self.spec.ident
        return [base / rel for rel in self.entries[f"{fmt}:{seed}"]["files"]]

    def file_bytes(self, fmt: str, seed: int) -> int:
        return sum(self.entries[f"{fmt}:{seed}"]["files"].values())


def make_state_dict(spec: Spec, seed: int) -> dict[str, torch.Tensor]:
    """The deterministic tensors of checkpoint ``seed``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for name, shape in spec.shapes():
        t = torch.empty(shape, dtype=torch.bfloat16)
        if len(shape) == 1:
            t.normal_(1.0, 0.02, generator=g)
        else:
            t.normal_(0.0, 0.02, generator=g)
        sd[name] = t
    return sd


def write_format(fmt: str, sd: dict[str, torch.Tensor], target: Path, spec: Spec) -> None:
    """Write ``sd`` in format ``fmt`` to ``target`` (via a temporary name, then renamed)."""
    tmp = target.with_name(target.name + ".tmp")
    if tmp.is_dir():
        shutil.rmtree(tmp)
    elif tmp.exists():
        tmp.unlink()
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    if fmt == "sllm":
        from libs.loader import save_checkpoint

        config = target.with_name("config.json")
        config.write_text(json.dumps(spec.llama_config(), indent=1))
        save_checkpoint(sd, tmp, extra_files={"config.json": config})
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(tmp), metadata={"format": "pt"})
    elif fmt == "torch":
        import torch

        torch.save(sd, tmp)
    elif fmt == "tensorizer":
        from tensorizer import TensorSerializer

        ser = TensorSerializer(str(tmp))
        ser.write_state_dict(sd)
        ser.close()
    else:
        raise ValueError(f"unknown format {fmt!r}")
    os.replace(tmp, target)


def wanted(formats: Iterable[str], worker_seeds: int) -> list[tuple[str, int]]:
    """sllm for every worker seed, the peers' formats for seed 0 only."""
    out: list[tuple[str, int]] = []
    for fmt in formats:
        seeds = range(worker_seeds) if fmt == "sllm" else range(1)
        out.extend((fmt, s) for s in seeds)
    return out


def ensure(root: Path, spec: Spec, want: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Write every wanted (format, seed) the manifest does not vouch for; returns those written."""
    manifest = Manifest(root, spec)
    missing = [(f, s) for f, s in want if not manifest.valid(f, s)]
    for seed in sorted({s for _, s in missing}):
        sd = make_state_dict(spec, seed)
        for fmt, s in missing:
            if s != seed:
                continue
            target = format_path(root, spec, fmt, seed)
            target.parent.mkdir(parents=True, exist_ok=True)
            print(f"  writing {fmt} seed {seed} -> {target}", file=sys.stderr, flush=True)
            write_format(fmt, sd, target, spec)
            manifest.record(fmt, seed, writer_key(fmt))
        del sd
    return missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--vocab", type=int, required=True)
    ap.add_argument("--want", required=True, help="comma-separated format:seed pairs")
    args = ap.parse_args(argv)
    spec = Spec(layers=args.layers, vocab=args.vocab)
    want = [(w.split(":")[0], int(w.split(":")[1])) for w in args.want.split(",") if w]
    written = ensure(args.dir, spec, want)
    print(json.dumps({"written": [f"{f}:{s}" for f, s in written]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
