"""PEFT LoRA adapter configs and tensor shapes, on plain data: what we serve, what we refuse."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from libs.loader.adapter import (
    ADAPTER_CONFIG_FILE,
    MAX_CONFIG_BYTES,
    AdapterConfig,
    AdapterConfigError,
    check_adapter_tensors,
    parse_adapter_config,
    read_adapter_config,
)

pytestmark = pytest.mark.unit

# What peft 0.21 writes for LoraConfig(r=4, lora_alpha=8, target_modules=[...]) (abridged:
# the null / false / empty fields it adds are beside the point).
PEFT_DOC: dict[str, Any] = {
    "alora_invocation_tokens": None,
    "alpha_pattern": {},
    "base_model_name_or_path": "org/tiny",
    "bias": "none",
    "fan_in_fan_out": False,
    "inference_mode": True,
    "init_lora_weights": True,
    "layer_replication": None,
    "layers_pattern": None,
    "layers_to_transform": None,
    "loftq_config": {},
    "lora_alpha": 8,
    "lora_bias": False,
    "lora_dropout": 0.05,
    "megatron_config": None,
    "modules_to_save": None,
    "peft_type": "LORA",
    "r": 4,
    "rank_pattern": {},
    "target_modules": ["v_proj", "q_proj"],
    "task_type": "CAUSAL_LM",
    "use_dora": False,
    "use_rslora": False,
}
PFX = "base_model.model."
_DROP = object()  # a value for `doc`: leave the field out


def doc(**changes: Any) -> dict[str, Any]:
    out = dict(PEFT_DOC)
    out.update(changes)
    return {k: v for k, v in out.items() if v is not _DROP}


def lora_shapes(module: str, r: int, n_in: int, n_out: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{PFX}{module}.lora_A.weight": (r, n_in),
        f"{PFX}{module}.lora_B.weight": (n_out, r),
    }


Q0 = "model.layers.0.self_attn.q_proj"
V0 = "model.layers.0.self_attn.v_proj"
BASE = {f"{Q0}.weight": (128, 128), f"{V0}.weight": (64, 128), "model.norm.weight": (128,)}


def test_parse_peft_config() -> None:
    config = parse_adapter_config(PEFT_DOC)
    assert config == AdapterConfig(
        r=4, lora_alpha=8.0, target_modules=("v_proj", "q_proj"), base_model="org/tiny"
    )
    assert config.scale(4) == 2.0
    assert config.scale_for(Q0) == 2.0


def test_rslora_scale_is_alpha_over_sqrt_rank() -> None:
    config = parse_adapter_config(doc(use_rslora=True, r=16, lora_alpha=8))
    assert config.scale(16) == 2.0
    assert math.isclose(config.scale(2), 8 / math.sqrt(2))


def test_missing_base_name_is_empty_and_target_regex_is_kept() -> None:
    config = parse_adapter_config(doc(base_model_name_or_path=None, target_modules=".*proj"))
    assert config.base_model == ""
    assert config.target_modules == (".*proj",)


def test_rank_and_alpha_patterns_match_like_peft() -> None:
    config = parse_adapter_config(
        doc(
            rank_pattern={"v_proj": 2, r"layers\.1\.self_attn\.q_proj": 8},
            alpha_pattern={"q_proj": 4},
        )
    )
    assert config.rank_for(V0) == 2
    assert config.rank_for("model.layers.1.self_attn.q_proj") == 8
    assert config.rank_for(Q0) == 4
    # "v_proj" matches at a dot boundary only
    assert config.rank_for("model.layers.0.self_attn.kv_proj") == 4
    assert config.scale_for(Q0) == 1.0  # alpha 4 / r 4
    assert config.scale_for(V0) == 4.0  # alpha 8 / r 2


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"peft_type": "IA3"}, "peft_type"),
        ({"peft_type": _DROP}, "peft_type"),
        ({"use_dora": True}, "use_dora"),
        ({"bias": "all"}, "bias"),
        ({"lora_bias": True}, "lora_bias"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"fan_in_fan_out": True}, "fan_in_fan_out"),
        ({"layers_to_transform": [0]}, "layers_to_transform"),
        ({"layers_pattern": "layers"}, "layers_pattern"),
        ({"layer_replication": [[0, 2]]}, "layer_replication"),
        ({"trainable_token_indices": [5]}, "trainable_token_indices"),
        ({"alora_invocation_tokens": [1, 2]}, "alora_invocation_tokens"),
        ({"init_lora_weights": "pissa_niter_4"}, "init_lora_weights"),
        ({"init_lora_weights": "olora"}, "init_lora_weights"),
        ({"init_lora_weights": "loftq"}, "init_lora_weights"),
        ({"target_modules": _DROP}, "target_modules"),
        ({"target_modules": []}, "target_modules"),
        ({"target_modules": ["q_proj", "embed_tokens"]}, "target_modules"),
        ({"target_modules": ["lm_head"]}, "target_modules"),
        ({"r": 0}, "r must be"),
        ({"r": _DROP}, "r must be"),
        ({"r": 4.5}, "r must be"),
        ({"lora_alpha": "8"}, "lora_alpha"),
        ({"use_rslora": "yes"}, "use_rslora"),
        ({"rank_pattern": {"q_proj": 0}}, "rank_pattern"),
        ({"alpha_pattern": {"(": 2}}, "alpha_pattern"),
    ],
)
def test_refuses_what_is_not_plain_lora(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(AdapterConfigError, match=field):
        parse_adapter_config(doc(**changes))


def test_accepts_harmless_inits() -> None:
    for init in (False, True, "gaussian", "eva", "orthogonal"):
        assert parse_adapter_config(doc(init_lora_weights=init)).r == 4


def test_read_adapter_config(tmp_path: Path) -> None:
    (tmp_path / ADAPTER_CONFIG_FILE).write_text(json.dumps(PEFT_DOC))
    assert read_adapter_config(tmp_path).r == 4
    with pytest.raises(AdapterConfigError, match="cannot read"):
        read_adapter_config(tmp_path / "nowhere")
    (tmp_path / ADAPTER_CONFIG_FILE).write_text("{not json")
    with pytest.raises(AdapterConfigError, match="not JSON"):
        read_adapter_config(tmp_path)
    (tmp_path / ADAPTER_CONFIG_FILE).write_text(" " * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(AdapterConfigError, match="larger than"):
        read_adapter_config(tmp_path)
    (tmp_path / ADAPTER_CONFIG_FILE).write_text("[1]")
    with pytest.raises(AdapterConfigError, match="not a JSON object"):
        read_adapter_config(tmp_path)


# --- tensors ----------------------------------------------------------------------------------

CONFIG = parse_adapter_config(PEFT_DOC)


def test_pairs_tensors_by_base_module() -> None:
    shapes = {**lora_shapes(Q0, 4, 128, 128), **lora_shapes(V0, 4, 128, 64)}
    out = check_adapter_tensors(CONFIG, shapes, BASE)
    assert set(out) == {Q0, V0}
    v = out[V0]
    assert (v.rank, v.in_features, v.out_features, v.scale) == (4, 128, 64, 2.0)
    assert v.a_name == f"{PFX}{V0}.lora_A.weight"
    assert v.b_name == f"{PFX}{V0}.lora_B.weight"
    assert check_adapter_tensors(CONFIG, shapes) == out  # without the base: same pairs


def test_half_pair_is_refused() -> None:
    shapes = lora_shapes(Q0, 4, 128, 128)
    del shapes[f"{PFX}{Q0}.lora_B.weight"]
    with pytest.raises(AdapterConfigError, match="lora_B weight is missing"):
        check_adapter_tensors(CONFIG, shapes)
    shapes = lora_shapes(Q0, 4, 128, 128)
    del shapes[f"{PFX}{Q0}.lora_A.weight"]
    with pytest.raises(AdapterConfigError, match="lora_A weight is missing"):
        check_adapter_tensors(CONFIG, shapes)


def test_rank_other_than_config_is_refused() -> None:
    with pytest.raises(AdapterConfigError, match="rank"):
        check_adapter_tensors(CONFIG, lora_shapes(Q0, 8, 128, 128))
    shapes = lora_shapes(Q0, 4, 128, 128)
    shapes[f"{PFX}{Q0}.lora_B.weight"] = (128, 2)  # A and B disagree
    with pytest.raises(AdapterConfigError, match="rank"):
        check_adapter_tensors(CONFIG, shapes)


def test_rank_pattern_sets_the_expected_rank() -> None:
    config = parse_adapter_config(doc(rank_pattern={"v_proj": 2}))
    shapes = {**lora_shapes(Q0, 4, 128, 128), **lora_shapes(V0, 2, 128, 64)}
    assert check_adapter_tensors(config, shapes, BASE)[V0].rank == 2


@pytest.mark.parametrize(
    "name",
    [
        f"{PFX}{Q0}.weight",
        f"{Q0}.lora_A.weight",  # without PEFT's prefix
        f"{PFX}{Q0}.lora_A.default.weight",
        f"{PFX}model.embed_tokens.lora_embedding_A",
        f"{PFX}{Q0}.lora_magnitude_vector",
    ],
)
def test_unexpected_tensor_names_are_refused(name: str) -> None:
    shapes = {**lora_shapes(Q0, 4, 128, 128), name: (4, 128)}
    with pytest.raises(AdapterConfigError, match=r"not a LoRA weight|embeddings"):
        check_adapter_tensors(CONFIG, shapes)


def test_empty_or_not_2d_is_refused() -> None:
    with pytest.raises(AdapterConfigError, match="no LoRA tensors"):
        check_adapter_tensors(CONFIG, {})
    shapes = lora_shapes(Q0, 4, 128, 128)
    shapes[f"{PFX}{Q0}.lora_A.weight"] = (4, 128, 1)
    with pytest.raises(AdapterConfigError, match="not 2-D"):
        check_adapter_tensors(CONFIG, shapes)


def test_adapter_for_another_base_is_refused() -> None:
    other = "model.layers.0.attn.c_attn"
    with pytest.raises(
        AdapterConfigError, match=f"another base architecture.*{other} not in the base"
    ):
        check_adapter_tensors(CONFIG, lora_shapes(other, 4, 128, 128), BASE)
    with pytest.raises(AdapterConfigError, match="another base architecture"):
        check_adapter_tensors(CONFIG, lora_shapes(V0, 4, 128, 128), BASE)  # out 128, not 64
    with pytest.raises(AdapterConfigError, match="another base architecture"):
        check_adapter_tensors(CONFIG, lora_shapes(Q0, 4, 256, 128), BASE)  # in 256, not 128
