"""A model's first load served from its registry source while its tier copy is made.

A deployment whose checkpoint is a local Hugging Face directory has no sllm copy until the
storage service converts one into the SSD tier, and converting means reading and writing every
byte. A worker about to load (`EnsureRequest.source_ok`) need not wait for that: when no tier of
this node holds a copy and the source is such a directory with safetensors weights, it is told
to load the directory as it is (`EnsureReply.hf_source`), and the copy is made meanwhile, under
the model's lock as any fetch; the loads after it read the copy. The worker then reads the
source once, as a user's own ``from_pretrained`` would, instead of waiting for a read and a
write (`benchmarks/README.md`, the registry case).
"""

from __future__ import annotations

from libs.protocol.errors import BusError

from .concurrency import BlockingPool
from .sources import prepare
from .tiers import TierManager
from .uri import RegistrySource


def has_copy(tiers: TierManager, model: str, uri: str) -> bool:
    """Whether a tier of this node holds (or is known to hold) a copy of ``uri``'s model."""
    for catalog in (tiers.dram, tiers.ssd):
        entry = catalog.get(model)
        if entry is not None and entry.uri == uri:
            return True
    return False


async def loadable_source(
    tiers: TierManager, pool: BlockingPool, model: str, source: RegistrySource, timeout: float
) -> int | None:
    """The bytes of ``source``'s weights if a worker may load it as it is now, else None (no
    local Hugging Face directory with safetensors, or a tier has a copy: ensure as usual)."""
    if source.kind != "file" or source.path is None or has_copy(tiers, model, source.uri):
        return None
    path = source.path
    try:
        # The same checks as a fetch (it exists, symlinks stay inside the registry).
        plan = await pool.run(lambda _: prepare(source, timeout))
    except BusError:
        return None  # the usual ensure reports it
    if plan.kind != "hf-file" or not any(path.glob("*.safetensors")):
        return None
    return plan.need_bytes
