"""A tiny sentence-transformers BERT written locally, for embedding tests without a model hub."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizer

from libs.demo.writer import _quiet_progress

__all__ = ["TINY_BERT_WORDS", "write_tiny_sentence_bert"]

# Whole words and "##" continuations: enough for test sentences to split into a few tokens
# each, with [UNK] for the rest.
_WORDS = (
    "the a an is are was of to in on and or not it this that with for as by at be from "
    "hello world cat dog sat mat sun moon red blue green fast slow model vector token "
    "embed embedding serve server worker batch query document search text one two three"
)
TINY_BERT_WORDS = tuple(_WORDS.split())
_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_CONTINUATIONS = ["##s", "##ed", "##ing", "##er", "##ly"]
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")

_POOLING_FLAGS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "last": "pooling_mode_lasttoken",
}


def write_tiny_sentence_bert(
    directory: str | Path,
    pooling: str = "cls",
    *,
    normalize: bool = True,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    max_positions: int = 64,
    seed: int = 0,
) -> Path:
    """Write a random tiny ``BertModel`` in sentence-transformers' layout into ``directory``.

    The top level holds what ``save_pretrained`` writes (``config.json``, ``model.safetensors``,
    a WordPiece tokenizer) plus ``modules.json``; ``1_Pooling/config.json`` selects
    ``pooling`` (cls, mean, max or last) and a ``Normalize`` module is listed when
    ``normalize``. Deterministic in ``seed``; torch's global random state is untouched.

    Returns:
        The directory.
    """
    if pooling not in _POOLING_FLAGS:
        raise ValueError(f"pooling must be one of {sorted(_POOLING_FLAGS)}, not {pooling!r}")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    vocab = _SPECIALS + list(TINY_BERT_WORDS) + _CONTINUATIONS + _CHARS + [f"##{c}" for c in _CHARS]
    tokenizer = BertTokenizer(  # transformers 5 takes the WordPiece vocabulary itself
        vocab={token: i for i, token in enumerate(vocab)},
        do_lower_case=True,
        model_max_length=max_positions,
    )
    tokenizer.save_pretrained(root)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=max_positions,
        pad_token_id=0,
        architectures=["BertModel"],
    )
    model = BertModel(config)
    _randomize(model, seed)
    with _quiet_progress():
        model.save_pretrained(root)
    _write_sentence_transformers(root, pooling, normalize, hidden_size, max_positions)
    return root


def _randomize(model: torch.nn.Module, seed: int) -> None:
    # A private generator: seeding torch's global one would disturb the caller's random stream.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm.weight" in name:
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)


def _write_sentence_transformers(
    root: Path, pooling: str, normalize: bool, dim: int, max_positions: int
) -> None:
    modules: list[dict[str, object]] = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
        (root / "2_Normalize").mkdir(exist_ok=True)
    (root / "modules.json").write_text(json.dumps(modules, indent=2), encoding="utf-8")
    settings: dict[str, object] = {"word_embedding_dimension": dim}
    for mode, flag in _POOLING_FLAGS.items():
        settings[flag] = mode == pooling
    settings["pooling_mode_mean_sqrt_len_tokens"] = False
    settings["pooling_mode_weightedmean_tokens"] = False
    settings["include_prompt"] = True
    (root / "1_Pooling").mkdir(exist_ok=True)
    (root / "1_Pooling" / "config.json").write_text(json.dumps(settings, indent=2), "utf-8")
    (root / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_positions, "do_lower_case": False}), "utf-8"
    )
