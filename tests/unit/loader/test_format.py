"""The torch-free format module: one parser for the loader and the storage service. Hostile
indexes (escaping names, absurd sizes and numbers, deep nesting, bad bytes) are always an
IndexCorrupt or FormatVersionError, never another exception; sizes are bounded."""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from libs.loader.errors import (
    FormatVersionError,
    IndexCorrupt,
    LoaderError,
    PartitionMissing,
    PartitionTruncated,
)
from libs.loader.format import (
    DTYPE_SIZES,
    INDEX_FILE,
    MAX_INDEX_BYTES,
    check_sizes,
    parse_layout,
    read_index_bytes,
    read_layout,
)

pytestmark = pytest.mark.unit

CHUNK = 4096


def index_doc() -> dict[str, Any]:
    """A valid index: two partitions, a bf16 tensor, an alias, a zero-size tensor, a file."""
    return {
        "format": "sllm-checkpoint",
        "version": [1, 0],
        "alignment": 4096,
        "chunk_size": CHUNK,
        "checksum": "xxh3_64",
        "partitions": [
            {"file": "part-00000.bin", "size": 8192, "chunks": ["0" * 16, "1" * 16]},
            {"file": "part-00001.bin", "size": 4096, "chunks": ["a" * 16]},
        ],
        "tensors": [
            {
                "name": "w",
                "dtype": "bfloat16",
                "shape": [64, 32],
                "partition": 0,
                "offset": 0,
                "nbytes": 4096,
            },
            {"name": "tied", "alias_of": "w"},
            {"name": "b", "dtype": "int64", "shape": [3], "partition": 1, "offset": 0, "nbytes": 24},
            {"name": "none", "dtype": "float32", "shape": [0, 5], "partition": None, "offset": 0,
             "nbytes": 0},
        ],
        "files": [{"name": "config.json", "size": 10}],
        "metadata": {"source": "test"},
    }  # fmt: skip


def raw(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def test_a_valid_index_parses_with_sizes_and_order() -> None:
    data = raw(index_doc())
    layout = parse_layout(data, Path("/ckpt"))
    assert [p.file for p in layout.partitions] == ["part-00000.bin", "part-00001.bin"]
    assert layout.partitions[0].chunks == (0, 0x1111111111111111)
    assert [t.name for t in layout.tensors] == ["w", "b", "none"]
    assert layout.tensors[0].dtype == "bfloat16"
    assert layout.aliases == {"tied": "w"}
    assert layout.order == ("w", "tied", "b", "none")
    assert layout.partition_bytes == 12288
    assert layout.directory_bytes == 12288 + 10 + len(data)
    assert parse_layout(data).path == Path()  # bytes from a registry: no directory


def _set(path: str, value: Any) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[int(last) if last.isdigit() else last] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_set("partitions.0.file", "../../etc/passwd"), "plain file name"),
        (_set("partitions.0.file", "/abs"), "plain file name"),
        (_set("partitions.0.file", "a\\b"), "plain file name"),
        (_set("partitions.0.file", "nul\x00"), "plain file name"),
        (_set("partitions.0.file", ".sllm-verified.json"), "plain file name"),  # ours
        (_set("files.0.name", INDEX_FILE), "plain file name"),
        (_set("files.0.name", "part-00001.bin"), "same file"),  # a file over a partition
        (_set("files.0.size", -1), "files"),
        (_set("files.0.size", 1.5), "files"),
        (_set("partitions.0.size", True), "size"),
        (_set("partitions.0.size", float("nan")), "size"),
        (_set("partitions.0.size", 2**70), "chunk hashes"),  # a size the hashes cannot cover
        (_set("tensors.0.offset", 2**64), "outside the partition"),
        (_set("tensors.0.shape", [2**40, 2**40]), "does not match shape"),
        (_set("tensors.0.shape", [1] * 65), "dimensions"),
        (_set("tensors.0.dtype", "qint8"), "unknown dtype"),
        (_set("tensors.2.nbytes", 23), "does not match shape"),
        (_set("tensors.1.alias_of", "tied"), "not a stored tensor"),  # an alias of an alias
        (_set("chunk_size", 2 << 30), "chunk_size"),
        (_set("metadata", {"k": 1}), "metadata"),
        (_set("partitions", None), "list"),
    ],
)
def test_hostile_indexes_are_index_corrupt(edit: Any, match: str) -> None:
    doc = index_doc()
    edit(doc)
    with pytest.raises(IndexCorrupt, match=match):
        parse_layout(raw(doc))


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than the parser's recursion
        b'{"format": "sllm-checkpoint", "version": [1, 0], "chunk_size": 1e999}',
        b"\xff\xfe not utf-8",
        b"",
        b"null",
    ],
)
def test_garbage_bytes_are_index_corrupt(data: bytes) -> None:
    with pytest.raises(IndexCorrupt):
        parse_layout(data)


def test_an_unknown_format_or_major_version_is_format_version_error() -> None:
    for edit in (_set("format", "gguf"), _set("version", [2, 0])):
        doc = index_doc()
        edit(doc)
        with pytest.raises(FormatVersionError):
            parse_layout(raw(doc))


def test_an_index_larger_than_the_bound_is_refused_without_being_parsed(tmp_path: Path) -> None:
    with pytest.raises(IndexCorrupt, match="larger than"):
        parse_layout(b" " * (MAX_INDEX_BYTES + 1))
    (tmp_path / INDEX_FILE).write_bytes(b"")
    with open(tmp_path / INDEX_FILE, "r+b") as f:
        f.truncate(MAX_INDEX_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(IndexCorrupt, match="larger than"):
        read_index_bytes(tmp_path)


def test_fuzzed_indexes_only_ever_raise_loader_errors() -> None:
    rng = random.Random(7)
    junk: list[Any] = [None, True, -1, 0, 2**63, 1.5, "", "x" * 300, [], {}, [1, [2]]]
    failures = 0
    for _ in range(600):
        doc = index_doc()
        for _ in range(rng.randrange(1, 4)):
            nodes: list[tuple[Any, Any]] = []
            stack: list[Any] = [doc]
            while stack:
                node = stack.pop()
                keys = list(node) if isinstance(node, dict) else range(len(node))
                for k in keys:
                    nodes.append((node, k))
                    if isinstance(node[k], dict | list):
                        stack.append(node[k])
            parent, key = rng.choice(nodes)
            parent[key] = copy.deepcopy(rng.choice(junk))
        try:
            parse_layout(raw(doc))
        except LoaderError:
            failures += 1
    assert failures > 500


def test_check_sizes_names_missing_short_and_long_files(tmp_path: Path) -> None:
    layout = parse_layout(raw(index_doc()), tmp_path)
    (tmp_path / "part-00000.bin").write_bytes(b"\0" * 8192)
    (tmp_path / "part-00001.bin").write_bytes(b"\0" * 4096)
    (tmp_path / "config.json").write_bytes(b"{}")
    assert check_sizes(tmp_path, layout.partitions) == [
        tmp_path / "part-00000.bin",
        tmp_path / "part-00001.bin",
    ]
    with pytest.raises(PartitionTruncated, match="2 bytes, the index says 10") as e:
        check_sizes(tmp_path, layout.partitions, layout.files)
    assert e.value.offset == 2
    (tmp_path / "config.json").write_bytes(b"{}" * 6)
    with pytest.raises(IndexCorrupt, match="12 bytes"):
        check_sizes(tmp_path, layout.partitions, layout.files)
    (tmp_path / "part-00001.bin").unlink()
    with pytest.raises(PartitionMissing):
        check_sizes(tmp_path, layout.partitions)


def test_read_layout_takes_the_directory_or_the_index_file(tmp_path: Path) -> None:
    data = raw(index_doc())
    (tmp_path / INDEX_FILE).write_bytes(data)
    assert read_index_bytes(tmp_path) == data
    assert read_layout(tmp_path / INDEX_FILE).path == tmp_path.absolute()
    assert read_layout(tmp_path).index_bytes == len(data)


def test_the_dtype_table_agrees_with_torch() -> None:
    from libs.loader.dtypes import DTYPES

    assert {"float32", "bfloat16", "int8", "uint4"} <= set(DTYPES) <= set(DTYPE_SIZES)
    for name, dtype in DTYPES.items():
        assert dtype.itemsize == DTYPE_SIZES[name], name


def test_the_format_errors_hooks_and_seal_import_without_torch() -> None:
    code = (
        "import sys\n"
        "import libs.loader.format, libs.loader.seal, libs.loader.errors\n"
        "from libs.loader import IndexCorrupt, CancelToken, INDEX_FILE, PartitionInfo\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'libs.loader._native' not in sys.modules, 'the native engine was imported'\n"
        "from libs.loader import read_index\n"  # the torch side still works, on first use
        "assert 'torch' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
