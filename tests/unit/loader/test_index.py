"""Index validation: every lie in FORMAT.md's reader rules is an IndexCorrupt, never a crash."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from libs.loader import (
    INDEX_FILE,
    CheckpointNotFound,
    FormatVersionError,
    IndexCorrupt,
    LoaderError,
    load_checkpoint,
    read_index,
)

pytestmark = pytest.mark.unit


def rewrite(ckpt: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads((ckpt / INDEX_FILE).read_text())
    edit(doc)
    (ckpt / INDEX_FILE).write_text(json.dumps(doc))


def entry(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in doc["tensors"] if t["name"] == name)


def test_index_round_trips_through_json(ckpt: Path) -> None:
    index = read_index(ckpt)
    assert index.to_json() == json.loads((ckpt / INDEX_FILE).read_text())
    assert index.aliases == {"head.weight": "embed.weight"}
    assert len(index.partitions) > 1
    assert all(t.offset % 4096 == 0 for t in index.tensors)


def test_missing_index_is_checkpoint_not_found(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFound) as e:
        read_index(tmp_path)
    assert e.value.path == str(tmp_path / INDEX_FILE)


def test_unknown_major_version_is_format_version_error(ckpt: Path) -> None:
    rewrite(ckpt, lambda d: d.update(version=[2, 0]))
    with pytest.raises(FormatVersionError, match=r"2\.0"):
        load_checkpoint(ckpt)


def test_newer_minor_version_and_unknown_fields_are_accepted(ckpt: Path) -> None:
    rewrite(ckpt, lambda d: d.update(version=[1, 7], future_field={"x": 1}))
    assert read_index(ckpt).version == (1, 7)


def test_non_json_index_names_file_and_offset(ckpt: Path) -> None:
    (ckpt / INDEX_FILE).write_text('{"format": "sllm-checkpoint", oops}')
    with pytest.raises(IndexCorrupt) as e:
        read_index(ckpt)
    assert e.value.path == str(ckpt / INDEX_FILE)
    assert e.value.offset == 30


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: entry(d, "big").update(offset=4096 * 10**6), "outside the partition"),
        (lambda d: entry(d, "big").update(offset=4096 * 1000), "outside the partition"),
        (lambda d: entry(d, "big").update(offset=100), "aligned"),
        (lambda d: entry(d, "big").update(dtype="float128"), "unknown dtype"),
        (lambda d: entry(d, "big").update(nbytes=8), "does not match shape"),
        (lambda d: entry(d, "big").update(shape=[-1, 5]), "shape"),
        (lambda d: entry(d, "big").update(partition=99), "does not exist"),
        (lambda d: entry(d, "big").update(partition=True), "partition"),
        (lambda d: entry(d, "head.weight").update(alias_of="nope"), "not a stored tensor"),
        (lambda d: d["tensors"].append(dict(entry(d, "odd"))), "duplicate"),
        (lambda d: d["partitions"][0].update(size=4095), "multiple of 4096"),
        (lambda d: d["partitions"][0]["chunks"].pop(), "chunk hashes"),
        (lambda d: d["partitions"][0]["chunks"].__setitem__(0, "XYZ"), "hex"),
        (lambda d: d["partitions"][0].update(file="../etc/passwd"), "plain file name"),
        (lambda d: d["partitions"][1].update(file=d["partitions"][0]["file"]), "same file"),
        (lambda d: d.update(chunk_size=1000), "chunk_size"),
        (lambda d: d.update(checksum="md5"), "checksum"),
        (lambda d: d.update(alignment=512), "alignment"),
        (lambda d: d.update(tensors={}), "list"),
    ],
)
def test_lying_index_is_index_corrupt(
    ckpt: Path, edit: Callable[[dict[str, Any]], None], match: str
) -> None:
    rewrite(ckpt, edit)
    with pytest.raises(IndexCorrupt, match=match):
        load_checkpoint(ckpt)


def test_overlapping_tensors_are_index_corrupt_naming_partition_and_offset(ckpt: Path) -> None:
    doc = json.loads((ckpt / INDEX_FILE).read_text())
    data = [t for t in doc["tensors"] if "alias_of" not in t and t["nbytes"]]
    by_part: dict[int, list[dict[str, Any]]] = {}
    for t in data:
        by_part.setdefault(t["partition"], []).append(t)
    a, b = next(v for v in by_part.values() if len(v) >= 2)[:2]
    b["offset"] = a["offset"]
    (ckpt / INDEX_FILE).write_text(json.dumps(doc))
    with pytest.raises(IndexCorrupt, match="overlap") as e:
        load_checkpoint(ckpt)
    assert e.value.path == str(ckpt / doc["partitions"][a["partition"]]["file"])
    assert e.value.offset == a["offset"]


_JUNK: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    4096,
    2**64,
    1.5,
    "",
    "x",
    "bfloat16",
    [],
    [1, 2],
    {},
    {"a": 1},
]


def _mutate(doc: Any, rng: random.Random) -> Any:
    """One random structural or value mutation somewhere in the document."""
    paths: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k in list(node):
                paths.append((node, k))
                walk(node[k])
        elif isinstance(node, list):
            for i in range(len(node)):
                paths.append((node, i))
                walk(node[i])

    walk(doc)
    parent, key = rng.choice(paths)
    op = rng.randrange(5)
    if op == 0:
        parent[key] = rng.choice(_JUNK)
    elif op == 1 and isinstance(parent[key], int) and not isinstance(parent[key], bool):
        parent[key] = parent[key] + rng.choice([-4096, -1, 1, 4096, 10**6])
    elif op == 2:
        del parent[key]
    elif op == 3 and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))
    else:
        parent[key] = copy.deepcopy(rng.choice(paths)[0])
    return doc


def test_fuzzed_index_only_ever_raises_loader_errors(ckpt: Path) -> None:
    rng = random.Random(1234)
    original = json.loads((ckpt / INDEX_FILE).read_text())
    text = json.dumps(original)
    outcomes = {"ok": 0, "error": 0}
    for case in range(400):
        if case % 5 == 4:  # byte-level damage: truncation or a flipped character
            cut = rng.randrange(len(text))
            raw = (
                text[:cut]
                if case % 2
                else text[:cut] + chr(rng.randrange(32, 127)) + text[cut + 1 :]
            )
        else:
            doc = copy.deepcopy(original)
            for _ in range(rng.randrange(1, 4)):
                doc = _mutate(doc, rng)
            raw = json.dumps(doc)
        (ckpt / INDEX_FILE).write_text(raw)
        try:
            load_checkpoint(ckpt, zero_copy=bool(case % 2))
            outcomes["ok"] += 1
        except LoaderError:
            outcomes["error"] += 1
    assert outcomes["error"] > 300  # nearly every mutation is caught, none crashes
