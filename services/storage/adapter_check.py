"""Deploy-time checks of a LoRA adapter against its base (blocking: run it in a thread).

A PEFT adapter directory (or its sllm copy) is checked without loading a weight: its
``adapter_config.json`` asks for nothing the engine lacks (`libs.loader.adapter`), its tensors
have the rank the config says, and, where this node can read the base checkpoint's tensor
shapes (a local sllm checkpoint or Hugging Face directory), every module it adapts exists in
the base with the same input and output sizes: an adapter trained for another architecture is
refused here (422), not at its first request. A remote source is checked when it is fetched,
and the worker checks every adapter against the loaded base again when it installs it.
"""

from __future__ import annotations

from libs.loader.adapter import AdapterConfigError, check_adapter_tensors, read_adapter_config
from libs.loader.errors import LoaderError
from libs.loader.shapes import checkpoint_shapes
from libs.protocol.errors import (
    BadRequestError,
    CorruptError,
    InvalidCheckpointError,
    NotFoundError,
)
from libs.protocol.messages import InspectReply

from .sources import prepare
from .uri import RegistrySource

ADAPTER_ARCHITECTURE = "lora"


def inspect_adapter(
    source: RegistrySource, base: RegistrySource | None, timeout: float
) -> InspectReply:
    """Check the adapter at ``source`` (against ``base`` when given), as described above."""
    uri = source.uri
    try:
        plan = prepare(source, timeout)
    except (NotFoundError, BadRequestError, CorruptError) as exc:
        raise _invalid(exc.message) from None
    if source.path is None:
        # Remote: its config is checked now where the metadata can be read without the
        # weights (the Hub); its tensors when it is installed on a base (a 400 then).
        try:
            if plan.kind == "hf-hub" and source.hub is not None and plan.hub is not None:
                from .hub import hub_metadata

                read_adapter_config(hub_metadata(source.hub, timeout, plan.hub.commit))
        except AdapterConfigError as exc:
            raise _invalid(f"adapter {uri}: {exc}") from None
        return InspectReply(
            kind=plan.kind,
            bytes=plan.need_bytes,
            architecture=ADAPTER_ARCHITECTURE,
            deferred=["adapter tensors"],
        )
    try:
        config = read_adapter_config(source.path)
        shapes = checkpoint_shapes(source.path)
        base_shapes = _base_shapes(base, timeout)
        check_adapter_tensors(config, shapes, base_shapes)
    except AdapterConfigError as exc:
        raise _invalid(f"adapter {uri}: {exc}") from None
    except (LoaderError, OSError) as exc:
        raise _invalid(f"adapter {uri}: unreadable ({exc})") from None
    deferred = [] if base_shapes is not None else ["base shapes"]
    nbytes = plan.files.total_bytes if plan.files is not None else plan.need_bytes
    return InspectReply(
        kind=plan.kind, bytes=nbytes, architecture=ADAPTER_ARCHITECTURE, deferred=deferred
    )


def _base_shapes(base: RegistrySource | None, timeout: float) -> dict[str, tuple[int, ...]] | None:
    """The base checkpoint's tensor shapes when it is a directory this node reads."""
    if base is None or base.path is None:
        return None
    try:
        prepare(base, timeout)
        return checkpoint_shapes(base.path)
    except (NotFoundError, BadRequestError, CorruptError, LoaderError, OSError):
        return None  # the base's own deployment was checked; its load will say


def _invalid(message: str) -> InvalidCheckpointError:
    return InvalidCheckpointError(message, detail={"param": "adapter_uri"})
