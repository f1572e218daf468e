"""Writes a demo model directory atomically: build in a temporary sibling, then rename."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from libs.demo.compat import add_legacy_rope_keys
from libs.demo.config import demo_config, demo_generation_config, torch_dtype
from libs.demo.errors import DemoModelError
from libs.demo.marker import MARKER_FILE, make_marker, read_marker
from libs.demo.sizes import (
    DemoSize,
    canonical_dtype,
    demo_param_count,
    demo_size,
    demo_tensor_shapes,
)
from libs.demo.tokenizer import save_tokenizer
from libs.demo.weights import fill_random_, write_random_safetensors


def _check_target(target: Path) -> dict[str, Any] | None:
    """Return the marker of an existing demo model at ``target``; refuse anything unsafe."""
    if not target.exists():
        return None
    if not target.is_dir():
        raise DemoModelError(f"{target} exists and is not a directory")
    if not any(target.iterdir()):
        return None
    marker = read_marker(target)
    if marker is None:
        raise DemoModelError(f"{target} is a non-empty directory that is not a demo model")
    return marker


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    # save_pretrained draws a progress bar on stderr; a library call should stay silent.
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _is_norm(name: str) -> bool:
    # RMSNorm weights start at one, as in transformers' own initialisation.
    return name.endswith("norm.weight")


def _build_instantiated(directory: Path, spec: DemoSize, seed: int, dtype: str) -> None:
    config = demo_config(spec, dtype=dtype)
    # Built on meta and filled from private generators: seeding torch's global RNG instead
    # would race with other threads and disturb the caller's random stream.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
            config, dtype=torch_dtype(dtype)
        )
    model.to_empty(device="cpu")
    model.tie_weights()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if _is_norm(name):
                param.fill_(1.0)
            else:
                fill_random_(param, name, seed=seed, std=spec.init_std)
    model.generation_config = demo_generation_config()
    with _quiet_progress():
        model.save_pretrained(directory)


def _build_streamed(directory: Path, spec: DemoSize, seed: int, dtype: str) -> None:
    config = demo_config(spec, dtype=dtype)
    config.save_pretrained(directory)
    demo_generation_config().save_pretrained(directory)
    shapes = demo_tensor_shapes(spec)
    write_random_safetensors(
        directory,
        shapes,
        dtype=torch_dtype(dtype),
        seed=seed,
        std=spec.init_std,
        ones=[name for name in shapes if _is_norm(name)],
    )


def _umask() -> int:
    # Reading it back via os.umask() would briefly change it for every thread.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _publish_permissions(directory: Path) -> None:
    # mkdtemp and some writers create owner-only entries; a model should read like any file.
    umask = _umask()
    for entry in directory.iterdir():
        if entry.is_file():
            entry.chmod(0o666 & ~umask)
    directory.chmod(0o777 & ~umask)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    # Without this a power cut right after the rename could expose empty files.
    for entry in directory.iterdir():
        if entry.is_file():
            _fsync(entry)
    _fsync(directory)


def _install(staging: Path, target: Path, marker: dict[str, Any]) -> None:
    try:
        # Succeeds when the target is absent or an empty directory.
        os.replace(staging, target)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    current = read_marker(target)
    if current is None:
        raise DemoModelError(f"{target} became a non-empty directory that is not a demo model")
    if current == marker:
        # Another writer finished the same model first; theirs is byte-identical.
        shutil.rmtree(staging, ignore_errors=True)
        return
    # Two renames: a directory cannot atomically replace a non-empty one. In between, the
    # target is briefly absent, never partial.
    retired = staging.with_name(staging.name + ".old")
    os.replace(target, retired)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(retired, target)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def write_demo_model(
    path: str | os.PathLike[str],
    size: str = "tiny",
    seed: int = 0,
    *,
    dtype: str | None = None,
) -> Path:
    """Write a deterministic random Llama model plus tokenizer as a Hugging Face directory.

    The directory holds ``config.json``, ``generation_config.json``, safetensors weights,
    the demo tokenizer files and a ``sllm-demo.json`` marker, and loads with
    ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` offline.
    The same ``(size, seed, dtype)`` always yields byte-identical files (for a given torch
    and transformers version on the same kind of CPU). The model is built in a temporary sibling directory and renamed into
    place, so ``path`` never holds a partial model. If ``path`` already holds the same demo
    model it is returned untouched; a different demo model there is replaced.

    Args:
        path: Target directory; it may be absent, empty, or a previous demo model.
            Missing parents are created.
        size: A key of ``DEMO_SIZES``: ``tiny`` (default), ``small``, ``medium``, ``1b``, ``3b``,
            ``8b``.
        seed: Non-negative seed of the random weights.
        dtype: Override of the size's dtype (``float32``, ``bfloat16``, ``float16``).

    Returns:
        The absolute (symlink-resolved) path of the model directory.

    Raises:
        DemoModelError: unknown size or dtype, a negative seed, or ``path`` is a file or a
            non-empty directory that is not a demo model.
    """
    spec = demo_size(size)
    dtype_name = canonical_dtype(spec.dtype if dtype is None else dtype)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DemoModelError(f"seed must be a non-negative integer, got {seed!r}")
    # Resolved, so that the final rename replaces the directory a symlink points to rather
    # than failing on the link itself.
    target = Path(os.path.realpath(path))
    marker = make_marker(spec.name, seed, dtype_name, demo_param_count(spec))
    if _check_target(target) == marker:
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        build = _build_streamed if spec.streamed else _build_instantiated
        build(staging, spec, seed, dtype_name)
        add_legacy_rope_keys(staging)
        save_tokenizer(staging, model_max_length=spec.max_position_embeddings)
        (staging / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        _publish_permissions(staging)
        _fsync_tree(staging)
        _install(staging, target, marker)
        _fsync(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
