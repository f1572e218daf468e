"""Fetching a checkpoint from the registry (``file://`` sllm or Hugging Face directory,
``http(s)://`` sllm directory, ``hf://`` Hugging Face Hub repository: `hub`) or from another
tier. Blocking: callers run these in threads.

A registry source passed the allow-list by its URI already (`parse_registry_uri`); here the
node checks what only it can see: where symlinks lead and what a host name resolves to. Errors
name the URI, never a local path or what a remote host said (that goes to the log)."""

from __future__ import annotations

import http.client
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from libs.common.registry_allow import SourceRefused
from libs.protocol.errors import (
    BadRequestError,
    BusTimeoutError,
    CorruptError,
    NotFoundError,
    UnavailableError,
)

from . import registry_http
from .checkpoint import (
    INDEX_FILE,
    CheckpointFiles,
    parse_index,
    read_index_bytes,
)
from .registry_http import MAX_REGISTRY_INDEX_BYTES
from .transfer import Meter, copy_exact, open_direct, storage_full, verify_exact, write_bytes
from .uri import RegistrySource

if TYPE_CHECKING:
    from .hub import HubListing

log = logging.getLogger(__name__)

SourceKind = Literal["sllm-file", "hf-file", "sllm-http", "hf-hub"]
_HF_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")
# A PEFT adapter directory: adapter_config.json and one of these.
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class FetchPlan:
    """A registry source after a first look: what it is and how many bytes it will take."""

    source: RegistrySource
    kind: SourceKind
    need_bytes: int
    index_raw: bytes = b""
    files: CheckpointFiles | None = None
    addresses: tuple[str, ...] = ()  # an HTTP source's checked addresses: fetch uses these
    hub: HubListing | None = None  # a Hub source's commit and files: fetch takes these


def prepare(source: RegistrySource, timeout: float) -> FetchPlan:
    """Look at the source without copying data: `NotFoundError` if it does not exist,
    `BadRequestError` if the node refuses it or it is not a checkpoint we can use."""
    if source.kind == "hub":
        from . import hub  # huggingface_hub: imported by nodes that fetch from the Hub only

        return hub.prepare_hub(source, timeout)
    if source.kind == "http":
        addresses = registry_http.resolve(source)
        raw = registry_http.read_index(source, addresses, INDEX_FILE, timeout)
        files = _parse_remote_index(source, raw)
        return FetchPlan(source, "sllm-http", files.total_bytes, raw, files, addresses)
    assert source.path is not None
    path = source.path
    uri = source.uri
    try:
        _check_local(source, path)
        if not path.exists():
            raise NotFoundError(f"checkpoint {uri} does not exist")
        if not path.is_dir():
            raise BadRequestError(f"checkpoint {uri} is not a directory")
        if (path / INDEX_FILE).is_file():
            raw = _read_local_index(source, path / INDEX_FILE)
            files = parse_index(raw)
            for name in [p.file for p in files.partitions] + [f.name for f in files.files]:
                _check_local(source, path / name)
            return FetchPlan(source, "sllm-file", files.total_bytes, raw, files)
        model = (path / "config.json").is_file() and any(
            next(path.glob(p), None) for p in _HF_WEIGHTS
        )
        adapter = (path / "adapter_config.json").is_file() and any(
            (path / w).is_file() for w in _ADAPTER_WEIGHTS
        )
        if model or adapter:
            entries = [f for f in path.iterdir() if f.is_file()]
            for f in entries:
                _check_local(source, f)
            return FetchPlan(source, "hf-file", sum(f.stat().st_size for f in entries))
    except PermissionError as exc:
        log.warning("checkpoint %s: %r", uri, exc)
        raise BadRequestError(f"checkpoint {uri}: the storage service cannot read it") from None
    raise BadRequestError(
        f"checkpoint {uri} holds neither an sllm checkpoint ({INDEX_FILE}), a Hugging Face "
        "model (config.json and *.safetensors) nor a PEFT adapter (adapter_config.json and "
        "adapter_model.safetensors)"
    )


def _check_local(source: RegistrySource, path: Path) -> None:
    """Symlinks (the directory's or a file's) must not lead out of the registry directories."""
    try:
        source.allow.check_local(path)
    except SourceRefused as exc:
        where = f"{path} -> {os.path.realpath(path)}"
        raise registry_http.refused(source, f"{where}: {exc.reason}") from None


def _read_local_index(source: RegistrySource, path: Path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read(MAX_REGISTRY_INDEX_BYTES + 1)
    if len(raw) > MAX_REGISTRY_INDEX_BYTES:
        raise CorruptError(
            f"checkpoint {source.uri}: the index is larger than {MAX_REGISTRY_INDEX_BYTES} bytes"
        )
    return raw


def _parse_remote_index(source: RegistrySource, raw: bytes) -> CheckpointFiles:
    try:
        return parse_index(raw)
    except CorruptError as exc:
        # The message may quote what the far end sent: the log gets it, the client does not.
        log.warning("checkpoint %s: bad index: %s", source.uri, exc.message)
        raise CorruptError(
            f"checkpoint {source.uri}: the registry's {INDEX_FILE} is not a valid sllm index"
        ) from None


def fetch(plan: FetchPlan, dst: Path, meter: Meter, timeout: float) -> CheckpointFiles:
    """Materialise the source as a verified sllm checkpoint in the new directory ``dst``."""
    if plan.kind == "hf-file":
        return _convert(plan, dst, meter)
    if plan.kind == "hf-hub":
        from . import hub

        # Downloaded into the Hub cache, then converted like a local directory.
        return hub.fetch_hub(plan, dst, meter, timeout, convert=_convert)
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


def verify_checkpoint(
    directory: Path, files: CheckpointFiles, meter: Meter, *, direct: bool = True
) -> None:
    """Read every partition of ``directory`` back and check it against the index's hashes.

    ``direct``: read the disk (O_DIRECT where the file system has it). Without it the files are
    hashed where they are, usually the page cache right after they were written: a check that
    nothing changed them since their hashes were taken, at memory speed, and the pages stay
    for the load that follows."""
    import mmap

    import xxhash

    for p in files.partitions:
        path = directory / p.file
        if not direct:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size != p.size:
                    raise CorruptError(f"{path}: size differs from the index")
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m, memoryview(m) as v:
                    for i, want in enumerate(p.chunks):
                        meter.check()
                        chunk = v[i * files.chunk_size : (i + 1) * files.chunk_size]
                        actual = xxhash.xxh3_64_intdigest(chunk)
                        chunk.release()
                        if actual != want:
                            raise CorruptError(
                                f"{path}: chunk {i} at byte {i * files.chunk_size}: XXH3-64 "
                                f"{actual:016x}, index says {want:016x}"
                            )
                        meter.add(min(files.chunk_size, p.size - i * files.chunk_size))
            continue
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
        # One pass at the disk's speed: every source byte is read once, and each chunk's hash
        # in the index is taken from the very buffer that is written (libs/loader
        # partition_writer.py); a source shorter than its header says is a ConversionError.
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
    # No second read of the disk (that took 1.4 s of the 1b model's 9.7 s): the pages just
    # written are hashed where they are, which catches a file changed after the writer hashed
    # it, at memory speed (~0.3 s for 2.5 GB), and the worker's load verifies every chunk again.
    verify_checkpoint(dst, files, Meter(total=files.total_bytes, cancel=meter.cancel), direct=False)
    meter.done = files.total_bytes
    return files


# --- HTTP -------------------------------------------------------------------------------------


def _fetch_http(
    plan: FetchPlan, files: CheckpointFiles, dst: Path, meter: Meter, timeout: float
) -> None:
    uri = plan.source.uri
    items = [(p.file, p.size, p.chunks) for p in files.partitions]
    items += [(f.name, f.size, ()) for f in files.files]
    for name, size, hashes in items:
        # At most the bytes the index declares: a longer (or endless) body is cut off there.
        with registry_http.get(plan.source, plan.addresses, name, timeout) as resp:
            length = resp.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) != size:
                raise CorruptError(
                    f"checkpoint {uri}: {name} is {length} bytes, the index says {size}"
                )
            try:
                copy_exact(
                    registry_http.Body(resp, meter.cancel),
                    dst / name,
                    size,
                    meter,
                    what=f"checkpoint {uri}: {name}",
                    tier="ssd",
                    chunk_size=files.chunk_size,
                    hashes=hashes,
                )
                extra = resp.read(1)
            except TimeoutError:
                raise BusTimeoutError(
                    f"checkpoint {uri}: the registry stalled for {timeout:g}s"
                ) from None
            except (ConnectionError, http.client.HTTPException) as exc:
                registry_http.log.warning("checkpoint %s: reading %s: %r", uri, name, exc)
                raise UnavailableError(f"checkpoint {uri}: reading {name} failed") from None
            if extra:
                raise CorruptError(f"checkpoint {uri}: {name} is longer than the index says")
    write_bytes(dst / INDEX_FILE, plan.index_raw, "ssd")
