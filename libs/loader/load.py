"""load_checkpoint: validate, check partitions, then the CPU or the staged (GPU) path."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from .cpu import load_cpu
from .format import check_sizes
from .hooks import Cancel, LoadStats, ProgressFn, raise_if_cancelled
from .index import CheckpointIndex, read_index
from .pool import HostPool
from .staged import load_staged

__all__ = ["DeviceSpec", "load_checkpoint", "partition_paths", "resolve_placement"]

DeviceSpec = str | torch.device | Mapping[str, str | torch.device]


def load_checkpoint(
    path: str | os.PathLike[str],
    device: DeviceSpec = "cpu",
    *,
    pool: HostPool | None = None,
    verify: bool = True,
    threads: int | None = None,
    progress: ProgressFn | None = None,
    cancel: Cancel | None = None,
    zero_copy: bool | None = None,
    prefault: bool = True,
    stats: LoadStats | None = None,
) -> dict[str, torch.Tensor]:
    """Load every tensor of the checkpoint at ``path``; return them by name, in index order.

    The tensors are views into one buffer per device (tied weights: the same tensor object under
    each name); nothing is allocated or copied per tensor. On the CPU, a checkpoint whose files
    are already in memory (tmpfs DRAM tier, or fully in the page cache) is mapped copy-on-write
    and returned as zero-copy views; otherwise it is read by the native engine's threads (O_DIRECT
    for data not in the page cache) into one host buffer, from ``pool`` when given. For CUDA
    devices the engine reads through a ring of pinned staging buffers while copies to the device
    overlap the reads, into one device allocation per device.

    Args:
        path: checkpoint directory.
        device: ``"cpu"``, ``"cuda:N"``, a ``torch.device``, or a device map
            ``{tensor-name prefix: device}`` (longest prefix wins; ``""`` is the default).
        pool: a :class:`HostPool` to carve the host buffer (or the GPU staging ring) from. The
            region returns to the pool when the returned tensors are garbage collected.
        verify: check every chunk's XXH3-64 as it arrives. A mapped tmpfs partition is not
            hashed again if it has not changed since this process verified it, or since its
            verifier sealed it (seal.py: the storage service seals the DRAM tier's copies).
        threads: engine worker threads (default: 8 for reads, all CPUs for mapped data).
        progress: ``progress(bytes_done, bytes_total)``, called from this thread; an exception
            it raises aborts the load and propagates.
        cancel: a :class:`CancelToken` or ``threading.Event``; setting it aborts the load with
            :class:`LoadCancelled`.
        zero_copy: CPU only: True always maps, False always reads, None maps when the data is
            already in memory. Mapped views are private: writing to them never changes the file.
        prefault: CPU mapped path: False skips faulting in the pages of partitions that are
            not hashed (``verify=False``, or trusted as above); they fault in lazily, with the
            kernel's fault-around, when first read: about twice as fast on tmpfs. Only for
            files that are never truncated or rewritten in place while mapped, like the DRAM
            tier's files, which the storage service writes once, atomically, and verifies;
            otherwise a truncated file would raise SIGBUS on first read instead of a typed
            error during the load. Hashed partitions are faulted in by the hashing itself.
        stats: a :class:`LoadStats` to fill in (tier, mode, bytes, seconds, phases...).

    Raises:
        LoaderError: a typed subclass naming the file and offset; nothing partly loaded survives.
    """
    t0 = time.perf_counter()
    st = stats if stats is not None else LoadStats()
    st.reset()
    raise_if_cancelled(cancel)
    index = read_index(path)
    placement = resolve_placement(device, index)
    paths = partition_paths(index)
    st.tensor_bytes = index.tensor_bytes
    st.devices = sorted({str(d) for d in placement.values()}) or ["cpu"]
    st.phases["index"] = time.perf_counter() - t0
    if all(d.type == "cpu" for d in placement.values()):
        out = load_cpu(
            index,
            paths,
            pool=pool,
            verify=verify,
            threads=threads,
            progress=progress,
            cancel=cancel,
            zero_copy=zero_copy,
            prefault=prefault,
            stats=st,
        )
    else:
        out = load_staged(
            index,
            paths,
            placement,
            pool=pool,
            verify=verify,
            threads=threads,
            progress=progress,
            cancel=cancel,
            stats=st,
        )
    st.seconds = time.perf_counter() - t0
    return out


def _device(d: str | torch.device) -> torch.device:
    dev = torch.device(d)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {dev}")
    return dev


def resolve_placement(device: DeviceSpec, index: CheckpointIndex) -> dict[str, torch.device]:
    """The device of every stored tensor (aliases follow their target)."""
    if not isinstance(device, Mapping):
        dev = _device(device)
        return {t.name: dev for t in index.tensors}
    rules = sorted(((prefix, _device(d)) for prefix, d in device.items()), key=lambda r: -len(r[0]))
    out: dict[str, torch.device] = {}
    for t in index.tensors:
        match = next((d for prefix, d in rules if t.name.startswith(prefix)), None)
        if match is None:
            raise ValueError(f"device map has no entry for {t.name!r} (add a default under '')")
        out[t.name] = match
    return out


def partition_paths(index: CheckpointIndex) -> list[Path]:
    """Partition paths, after checking that each exists with exactly the declared size."""
    return check_sizes(index.path, index.partitions)
