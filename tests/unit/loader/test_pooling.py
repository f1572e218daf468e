"""How an embedding model pools: sentence-transformers files read, unsupported ones refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from libs.loader.pooling import POOLING_FILE, Pooling, PoolingError, read_pooling

pytestmark = pytest.mark.unit

TRANSFORMER = {
    "idx": 0,
    "name": "0",
    "path": "",
    "type": "sentence_transformers.models.Transformer",
}
POOLING = {
    "idx": 1,
    "name": "1",
    "path": "1_Pooling",
    "type": "sentence_transformers.models.Pooling",
}
NORMALIZE = {
    "idx": 2,
    "name": "2",
    "path": "2_Normalize",
    "type": "sentence_transformers.models.Normalize",
}
DENSE = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}


def _write(root: Path, modules: list[dict[str, object]], pooling: dict[str, object]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "modules.json").write_text(json.dumps(modules))
    (root / "1_Pooling").mkdir(exist_ok=True)
    (root / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return root


def test_no_sentence_transformers_files_means_mean_pooling_normalised(tmp_path: Path) -> None:
    assert read_pooling(tmp_path) == Pooling("mean", True, "default")


def test_cls_pooling_with_normalize_and_max_seq_length(tmp_path: Path) -> None:
    root = _write(tmp_path, [TRANSFORMER, POOLING, NORMALIZE], {"pooling_mode_cls_token": True})
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    assert read_pooling(root) == Pooling("cls", True, "sentence-transformers", 128)


def test_carried_pooling_file_is_read_without_the_subdirectory(tmp_path: Path) -> None:
    root = _write(tmp_path, [TRANSFORMER, POOLING], {"pooling_mode_max_tokens": True})
    (root / POOLING_FILE).write_text((root / "1_Pooling" / "config.json").read_text())
    (root / "1_Pooling" / "config.json").unlink()
    assert read_pooling(root) == Pooling("max", False, "sentence-transformers")


@pytest.mark.parametrize(
    ("modules", "pooling", "words"),
    [
        ([TRANSFORMER, POOLING, DENSE], {"pooling_mode_mean_tokens": True}, "Dense"),
        ([TRANSFORMER, POOLING], {"pooling_mode_weightedmean_tokens": True}, "weightedmean"),
        (
            [TRANSFORMER, POOLING],
            {"pooling_mode_mean_tokens": True, "include_prompt": False},
            "include_prompt",
        ),
        (
            [TRANSFORMER, POOLING],
            {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True},
            "exactly one",
        ),
    ],
)
def test_what_would_change_the_vectors_is_refused(
    tmp_path: Path, modules: list[dict[str, object]], pooling: dict[str, object], words: str
) -> None:
    with pytest.raises(PoolingError, match=words):
        read_pooling(_write(tmp_path, modules, pooling))
