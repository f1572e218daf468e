"""Fetching a checkpoint from the registry (``file://`` sllm or Hugging Face directory,
``http(s)://`` sllm directory) or from another tier. Blocking: callers run these in threads."""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from libs.protocol.errors import (
    BadRequestError,
    BusTimeoutError,
    CorruptError,
    NotFoundError,
    UnavailableError,
)

from .checkpoint import (
    INDEX_FILE,
    MAX_INDEX_BYTES,
    CheckpointFiles,
    parse_index,
    read_index_bytes,
)
from .transfer import Meter, copy_exact, open_direct, storage_full, verify_exact, write_bytes
from .uri import RegistrySource

SourceKind = Literal["sllm-file", "hf-file", "sllm-http"]
_HF_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")


@dataclass(frozen=True)
class FetchPlan:
    """A registry source after a first look: what it is and how many bytes it will take."""

    source: RegistrySource
    kind: SourceKind
    need_bytes: int
    index_raw: bytes = b""
    files: CheckpointFiles | None = None


def prepare(source: RegistrySource, timeout: float) -> FetchPlan:
    """Look at the source without copying data: `NotFoundError` if it does not exist,
    `BadRequestError` if it is not a checkpoint we can use."""
    if source.kind == "http":
        raw = _http_get_small(source.base_url + INDEX_FILE, timeout, source.uri)
        files = parse_index(raw)
        return FetchPlan(source, "sllm-http", files.total_bytes, raw, files)
    assert source.path is not None
    path = source.path
    try:
        if not path.exists():
            raise NotFoundError(f"checkpoint {source.uri}: {path} does not exist")
        if not path.is_dir():
            raise BadRequestError(f"checkpoint {source.uri}: {path} is not a directory")
        if (path / INDEX_FILE).is_file():
            raw = read_index_bytes(path)
            files = parse_index(raw)
            return FetchPlan(source, "sllm-file", files.total_bytes, raw, files)
        if (path / "config.json").is_file() and any(next(path.glob(p), None) for p in _HF_WEIGHTS):
            need = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
            return FetchPlan(source, "hf-file", need)
    except PermissionError as exc:
        raise BadRequestError(f"checkpoint {source.uri}: cannot read: {exc}") from None
    raise BadRequestError(
        f"checkpoint {source.uri}: {path} holds neither an sllm checkpoint ({INDEX_FILE}) "
        "nor a Hugging Face model (config.json and *.safetensors)"
    )


def fetch(plan: FetchPlan, dst: Path, meter: Meter, timeout: float) -> CheckpointFiles:
    """Materialise the source as a verified sllm checkpoint in the new directory ``dst``."""
    if plan.kind == "hf-file":
        return _convert(plan, dst, meter)
    assert plan.files is not None
    dst.mkdir()
    if plan.kind == "sllm-file":
        assert plan.source.path is not None
        copy_checkpoint(plan.source.path, plan.files, plan.index_raw, dst, meter, "ssd")
    else:
        _fetch_http(plan, plan.files, dst, meter, timeout)
    return plan.files


def copy_checkpoint(
    src: Path,
    files: CheckpointFiles,
    index_raw: bytes,
    dst: Path,
    meter: Meter,
    tier: str,
    *,
    direct: bool = False,
) -> None:
    """Copy a local checkpoint into ``dst`` (an existing directory), verifying partitions."""
    for p in files.partitions:
        _copy_local(src / p.file, dst / p.file, p.size, meter, tier, direct, files, p.chunks)
    for f in files.files:
        _copy_local(src / f.name, dst / f.name, f.size, meter, tier, False, files, ())
    write_bytes(dst / INDEX_FILE, index_raw, tier)


def _copy_local(
    src: Path,
    dst: Path,
    size: int,
    meter: Meter,
    tier: str,
    direct: bool,
    files: CheckpointFiles,
    hashes: tuple[int, ...],
) -> None:
    try:
        fd, _ = open_direct(src) if direct else (os.open(src, os.O_RDONLY | os.O_CLOEXEC), False)
    except FileNotFoundError:
        raise CorruptError(f"{src}: missing (the index names it)") from None
    with open(fd, "rb", buffering=0) as f:
        actual = os.fstat(fd).st_size
        if actual != size:
            raise CorruptError(f"{src}: {actual} bytes, the index says {size}")
        copy_exact(
            f,
            dst,
            size,
            meter,
            what=str(src),
            tier=tier,
            chunk_size=files.chunk_size,
            hashes=hashes,
        )


def verify_checkpoint(directory: Path, files: CheckpointFiles, meter: Meter) -> None:
    """Read every partition of ``directory`` back and check it against the index's hashes."""
    for p in files.partitions:
        path = directory / p.file
        fd, _ = open_direct(path)
        with open(fd, "rb", buffering=0) as f:
            if os.fstat(fd).st_size != p.size:
                raise CorruptError(f"{path}: size differs from the index")
            verify_exact(
                f, p.size, meter, what=str(path), chunk_size=files.chunk_size, hashes=p.chunks
            )


def _convert(plan: FetchPlan, dst: Path, meter: Meter) -> CheckpointFiles:
    # libs.loader imports torch: only a Hugging Face source pays for it, and only once.
    from libs.loader import LoaderError, convert_hf

    assert plan.source.path is not None

    def progress(done: int, total: int) -> None:
        meter.check()  # raising here aborts the conversion
        if meter.progress is not None:
            meter.progress(done, total)

    try:
        convert_hf(plan.source.path, dst, progress=progress)
    except LoaderError as exc:
        full = storage_full(exc, "ssd", dst)
        if full is not None:
            raise full from exc
        raise BadRequestError(f"checkpoint {plan.source.uri}: cannot convert: {exc}") from None
    except OSError as exc:
        full = storage_full(exc, "ssd", dst)
        if full is None:
            raise
        raise full from exc
    files = parse_index(read_index_bytes(dst))
    verify_checkpoint(dst, files, Meter(total=files.total_bytes, cancel=meter.cancel))
    meter.done = files.total_bytes
    return files


# --- HTTP -------------------------------------------------------------------------------------


def _open_url(url: str, timeout: float, uri: str) -> http.client.HTTPResponse:
    try:
        resp = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 404:
            raise NotFoundError(f"checkpoint {uri}: {url} not found (HTTP 404)") from None
        raise UnavailableError(f"checkpoint {uri}: {url} answered HTTP {exc.code}") from None
    except TimeoutError:
        raise BusTimeoutError(
            f"checkpoint {uri}: {url} did not answer within {timeout:g}s"
        ) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise BusTimeoutError(
                f"checkpoint {uri}: {url} did not answer within {timeout:g}s"
            ) from None
        raise UnavailableError(f"checkpoint {uri}: cannot reach {url}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise UnavailableError(f"checkpoint {uri}: cannot reach {url}: {exc}") from None
    assert isinstance(resp, http.client.HTTPResponse)
    return resp


def _http_get_small(url: str, timeout: float, uri: str) -> bytes:
    with _open_url(url, timeout, uri) as resp:
        try:
            raw = resp.read(MAX_INDEX_BYTES + 1)
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise UnavailableError(f"checkpoint {uri}: reading {url} failed: {exc}") from None
    if len(raw) > MAX_INDEX_BYTES:
        raise CorruptError(f"checkpoint {uri}: index larger than {MAX_INDEX_BYTES} bytes")
    return raw


def _fetch_http(
    plan: FetchPlan, files: CheckpointFiles, dst: Path, meter: Meter, timeout: float
) -> None:
    items = [(p.file, p.size, p.chunks) for p in files.partitions]
    items += [(f.name, f.size, ()) for f in files.files]
    for name, size, hashes in items:
        url = plan.source.base_url + quote(name)
        with _open_url(url, timeout, plan.source.uri) as resp:
            length = resp.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) != size:
                raise CorruptError(f"{url}: {length} bytes, the index says {size}")
            try:
                copy_exact(
                    resp,
                    dst / name,
                    size,
                    meter,
                    what=url,
                    tier="ssd",
                    chunk_size=files.chunk_size,
                    hashes=hashes,
                )
                extra = resp.read(1)
            except TimeoutError:
                raise BusTimeoutError(f"{url}: stalled for {timeout:g}s") from None
            except (ConnectionError, http.client.HTTPException) as exc:
                raise UnavailableError(f"{url}: transfer failed: {exc}") from None
            if extra:
                raise CorruptError(f"{url}: longer than the {size} bytes the index says")
    write_bytes(dst / INDEX_FILE, plan.index_raw, "ssd")
