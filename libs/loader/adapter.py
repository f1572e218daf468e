"""PEFT LoRA adapters: read and check ``adapter_config.json`` and the adapter's tensor shapes.

Torch-free, so that the control plane can refuse an adapter at upload or deploy time with the
same rules the worker applies. We serve plain LoRA only (``y = W x + scale * B (A x)`` on
``nn.Linear`` modules): every PEFT option that changes that formula, touches other modules or
expects modified base weights is refused with the name of the field, rather than served wrong.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "MAX_CONFIG_BYTES",
    "AdapterConfig",
    "AdapterConfigError",
    "LoraShape",
    "check_adapter_tensors",
    "parse_adapter_config",
    "read_adapter_config",
]

ADAPTER_CONFIG_FILE = "adapter_config.json"
# Real configs are ~1-2 KiB; a larger file is not an adapter config and is not parsed.
MAX_CONFIG_BYTES = 1 << 20

_T = TypeVar("_T", int, float)

# PEFT saves the tensors under the PeftModel's names: this prefix, the base module, a suffix.
_PREFIX = "base_model.model."
_A, _B = ".lora_A.weight", ".lora_B.weight"
# Options that must be absent, false or empty: each is a LoRA variant (another forward
# formula), trains or replaces other modules, or lays the weights out differently.
_REFUSED_OPTIONS = (
    "use_dora",
    "lora_bias",
    "fan_in_fan_out",
    "modules_to_save",
    "layers_to_transform",
    "layers_pattern",
    "layer_replication",
    "trainable_token_indices",
    "target_parameters",
    "use_qalora",
    "use_bdlora",
    "alora_invocation_tokens",
    "arrow_config",
    "velora_config",
    "monteclora_config",
    "kasa_config",
    "megatron_config",
)
# init_lora_weights values whose adapters only work on base weights modified at training time
# (PiSSA, OLoRA, CorDA, LoRA-GA, LoftQ) or that select another forward (MiCA). PEFT rewrites
# the value to ``true`` when it saves a converted adapter, which then is plain LoRA.
_REFUSED_INITS = ("pissa", "olora", "corda", "lora_ga", "loftq", "mica")
# Usual names of token embeddings and output heads: LoRA there is not served (embeddings are
# not nn.Linear; the head only sees the rows whose logits are kept).
_EMBEDDING_NAMES = frozenset(
    {"embed_tokens", "wte", "word_embeddings", "embed_in", "lm_head", "embed_out"}
)


class AdapterConfigError(ValueError):
    """The adapter is not one we can serve (or not one that fits the base); says why."""


@dataclass(frozen=True)
class AdapterConfig:
    """What the forward pass needs from ``adapter_config.json``.

    ``rank_pattern`` / ``alpha_pattern`` are PEFT's per-module overrides, as ordered
    ``(regex, value)`` pairs matched like PEFT does (the first pattern that matches the end of
    the module name at a dot boundary).
    """

    r: int
    lora_alpha: float
    use_rslora: bool = False
    target_modules: tuple[str, ...] = ()
    base_model: str = ""
    rank_pattern: tuple[tuple[str, int], ...] = ()
    alpha_pattern: tuple[tuple[str, float], ...] = ()

    def scale(self, r: int, alpha: float | None = None) -> float:
        """The factor of ``B (A x)`` for rank ``r``: ``alpha / r`` (``alpha / sqrt(r)`` with
        rsLoRA); ``alpha`` defaults to ``lora_alpha``."""
        a = self.lora_alpha if alpha is None else alpha
        return a / math.sqrt(r) if self.use_rslora else a / r

    def rank_for(self, module: str) -> int:
        """The rank of ``module`` (a base module name such as ``model.layers.0.mlp.up_proj``)."""
        return _pattern_value(self.rank_pattern, module, self.r)

    def alpha_for(self, module: str) -> float:
        return _pattern_value(self.alpha_pattern, module, self.lora_alpha)

    def scale_for(self, module: str) -> float:
        return self.scale(self.rank_for(module), self.alpha_for(module))


def _pattern_value(patterns: tuple[tuple[str, _T], ...], module: str, default: _T) -> _T:
    for pattern, value in patterns:
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


@dataclass(frozen=True)
class LoraShape:
    """One adapted module: A is ``[rank, in_features]``, B ``[out_features, rank]``."""

    rank: int
    in_features: int
    out_features: int
    scale: float
    a_name: str
    b_name: str


def parse_adapter_config(doc: Mapping[str, Any]) -> AdapterConfig:
    """The `AdapterConfig` of a parsed ``adapter_config.json``.

    Raises:
        AdapterConfigError: not a plain LoRA adapter we can serve; the message names the field.
    """
    if not isinstance(doc, Mapping):
        raise AdapterConfigError("adapter config: not a JSON object")
    peft_type = doc.get("peft_type")
    if peft_type != "LORA":
        raise AdapterConfigError(f"adapter config: peft_type {peft_type!r} is not 'LORA'")
    for option in _REFUSED_OPTIONS:
        if doc.get(option):
            raise AdapterConfigError(
                f"adapter config: {option}={doc[option]!r} is not supported (plain LoRA only)"
            )
    bias = doc.get("bias", "none")
    if bias != "none":
        raise AdapterConfigError(f"adapter config: bias={bias!r} is not supported (only 'none')")
    init = doc.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_REFUSED_INITS):
        raise AdapterConfigError(
            f"adapter config: init_lora_weights={init!r} needs modified base weights or "
            "another forward; convert the adapter to plain LoRA first"
        )
    r = _positive_int(doc.get("r"), "r")
    alpha = _number(doc.get("lora_alpha", 8), "lora_alpha")  # PEFT's default
    rslora = doc.get("use_rslora", False)
    if not isinstance(rslora, bool):
        raise AdapterConfigError(f"adapter config: use_rslora must be a boolean, got {rslora!r}")
    targets = _target_modules(doc.get("target_modules"))
    base = doc.get("base_model_name_or_path") or ""
    if not isinstance(base, str):
        raise AdapterConfigError("adapter config: base_model_name_or_path must be a string")
    ranks = tuple(
        (p, _positive_int(v, f"rank_pattern[{p!r}]"))
        for p, v in _patterns(doc, "rank_pattern").items()
    )
    alphas = tuple(
        (p, _number(v, f"alpha_pattern[{p!r}]")) for p, v in _patterns(doc, "alpha_pattern").items()
    )
    return AdapterConfig(r, alpha, rslora, targets, base, ranks, alphas)


def _positive_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AdapterConfigError(f"adapter config: {field} must be an integer >= 1, got {value!r}")
    return value


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AdapterConfigError(f"adapter config: {field} must be a finite number, got {value!r}")
    return float(value)


def _target_modules(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) and value:
        names: tuple[str, ...] = (value,)  # one regex over module names, or "all-linear"
    elif isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        names = tuple(value)
    else:
        raise AdapterConfigError(
            f"adapter config: target_modules must be a non-empty list of names, got {value!r}"
        )
    embeddings = sorted(n for n in names if n in _EMBEDDING_NAMES)
    if embeddings:
        raise AdapterConfigError(
            f"adapter config: target_modules {embeddings}: LoRA on embeddings or the output "
            "head is not supported"
        )
    return names


def _patterns(doc: Mapping[str, Any], field: str) -> dict[str, Any]:
    value = doc.get(field) or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise AdapterConfigError(f"adapter config: {field} must be an object of patterns")
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise AdapterConfigError(f"adapter config: {field} key {pattern!r}: {exc}") from None
    return value


def read_adapter_config(directory: str | os.PathLike[str]) -> AdapterConfig:
    """Read and check ``directory/adapter_config.json`` (at most `MAX_CONFIG_BYTES`).

    Raises:
        AdapterConfigError: missing, too large, not JSON, or refused by `parse_adapter_config`.
    """
    path = Path(directory) / ADAPTER_CONFIG_FILE
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise AdapterConfigError(f"{path}: cannot read the adapter config: {exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise AdapterConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterConfigError(f"{path}: not JSON: {exc}") from None
    return parse_adapter_config(doc)


def check_adapter_tensors(
    config: AdapterConfig,
    shapes: Mapping[str, tuple[int, ...]],
    base_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, LoraShape]:
    """Pair the adapter's ``lora_A`` / ``lora_B`` tensors by base module and check their shapes.

    ``shapes``: the adapter's tensor shapes under PEFT's names
    (``base_model.model.<module>.lora_A.weight``). ``base_shapes``: the base checkpoint's (names
    ``<module>.weight``, ``[out, in]``), to check that the adapter was trained on this base.

    Returns:
        `LoraShape` by base module name (``model.layers.0.self_attn.q_proj``).

    Raises:
        AdapterConfigError: a name that is not a LoRA weight, a half pair, a rank other than
            the config's, A and B that disagree, or a module the base lacks or shapes otherwise.
    """
    halves: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in shapes.items():
        module, half = _split(name)
        halves.setdefault(module, {})[half] = tuple(shape)
    if not halves:
        raise AdapterConfigError("adapter has no LoRA tensors")
    out: dict[str, LoraShape] = {}
    for module in sorted(halves):
        pair = halves[module]
        a, b = pair.get("A"), pair.get("B")
        if a is None or b is None:
            missing = "lora_B" if b is None else "lora_A"
            raise AdapterConfigError(f"adapter module {module}: {missing} weight is missing")
        if len(a) != 2 or len(b) != 2:
            raise AdapterConfigError(f"adapter module {module}: lora_A {a} / lora_B {b} not 2-D")
        rank = config.rank_for(module)
        if a[0] != rank or b[1] != rank:
            raise AdapterConfigError(
                f"adapter module {module}: rank of lora_A {a} / lora_B {b} is not the "
                f"config's rank {rank}"
            )
        if base_shapes is not None:
            _check_base(module, a[1], b[0], base_shapes)
        out[module] = LoraShape(
            rank, a[1], b[0], config.scale_for(module), _PREFIX + module + _A, _PREFIX + module + _B
        )
    return out


def _split(name: str) -> tuple[str, str]:
    """(base module, "A" or "B") of a PEFT tensor name."""
    if "lora_embedding_" in name:
        raise AdapterConfigError(f"adapter tensor {name}: LoRA on embeddings is not supported")
    for suffix, half in ((_A, "A"), (_B, "B")):
        if name.startswith(_PREFIX) and name.endswith(suffix):
            module = name[len(_PREFIX) : -len(suffix)]
            if module:
                return module, half
    raise AdapterConfigError(
        f"adapter tensor {name}: not a LoRA weight ({_PREFIX}<module>{_A} or {_PREFIX}<module>{_B})"
    )


def _check_base(
    module: str, in_features: int, out_features: int, base: Mapping[str, tuple[int, ...]]
) -> None:
    shape = base.get(module + ".weight")
    if shape is None:
        raise AdapterConfigError(
            f"adapter for another base architecture (or model): module {module} not in the base"
        )
    if tuple(shape) != (out_features, in_features):
        raise AdapterConfigError(
            f"adapter for another base architecture (or size): module {module} is "
            f"{out_features}x{in_features} in the adapter, {tuple(shape)} in the base"
        )
