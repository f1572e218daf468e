"""load_model: a transformers model whose parameters are the loaded views, built without weights."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import IncompatibleCheckpoint
from .index import read_index
from .load import load_checkpoint
from .readahead import read_ahead

__all__ = ["load_model", "load_model_safetensors"]

log = logging.getLogger(__name__)


def load_model(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    *,
    dtype: torch.dtype | None = None,
    **load_checkpoint_kwargs: Any,
) -> Any:
    """Build the checkpoint's transformers model and give it the loaded tensors, in eval mode.

    The model class comes from the checkpoint's ``config.json`` (``architectures``, else
    ``AutoModelForCausalLM``). Its parameters are created on the meta device (no memory, no
    random init) while the checkpoint loads in the same call, then replaced by the loaded views:
    no copy. Non-persistent buffers (rotary ``inv_freq``...) are computed by the modules' own
    constructors, as ``from_pretrained`` does; tied weights stay tied. The result equals
    ``AutoModelForCausalLM.from_pretrained`` of the source model tensor for tensor.

    Args:
        path: checkpoint directory (with ``config.json``; ``generation_config.json`` is used too).
        device: one device (``"cpu"``, ``"cuda:N"``).
        dtype: convert floating-point weights to this dtype (a copy); None keeps the stored dtypes.
        **load_checkpoint_kwargs: ``pool``, ``verify``, ``threads``, ``progress``, ``cancel``,
            ``zero_copy``, ``stats``: see :func:`load_checkpoint`.

    Returns:
        A ``transformers.PreTrainedModel`` in eval mode. Its parameters require grad, as
        ``from_pretrained``'s do (run it under ``torch.inference_mode()`` or ``no_grad``): with
        ``requires_grad=False``, PyTorch's matmul does not fold the ``[1, 1, hidden]`` slice that
        ``logits_to_keep=1`` (``generate``'s prefill) feeds the LM head into one matrix product,
        and copies the whole transposed head instead (1.3 s per prefill of a 1B Llama on 2 CPU
        cores, against 0.05 s).

    Raises:
        LoaderError: the load failed; IncompatibleCheckpoint: tensors do not fit the model.
    """
    from transformers import AutoConfig, GenerationConfig

    if isinstance(device, Mapping):
        raise ValueError("load_model takes one device; use load_checkpoint for device maps")
    root = Path(path)
    index = read_index(root)
    config = AutoConfig.from_pretrained(root)
    build_dtype = dtype or _config_dtype(config) or _stored_float_dtype(index.tensors)
    built: dict[str, Any] = {}

    def build() -> None:
        try:
            built["model"] = _skeleton(config, build_dtype)
        except BaseException as e:  # re-raised in the caller's thread
            built["error"] = e

    # Constructing even a large model is pure Python work; do it while the engine reads.
    builder = threading.Thread(target=build, name="sllm-load-model-build", daemon=True)
    builder.start()
    try:
        tensors = load_checkpoint(root, device, **load_checkpoint_kwargs)
    finally:
        builder.join()
    if "error" in built:
        raise built["error"]
    model = built["model"]
    _assign(model, tensors, torch.device(device), dtype, str(root))
    model.eval()
    if (root / "generation_config.json").is_file() and getattr(
        model, "generation_config", None
    ) is not None:
        model.generation_config = GenerationConfig.from_pretrained(root)
    return model


def load_model_safetensors(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[Any, int]:
    """Build a Hugging Face model directory's transformers model from its ``*.safetensors``
    files as they are (mapped, not copied, on a CPU), the way `load_model` builds an sllm
    checkpoint's: the skeleton on the meta device, then the tensors assigned. For serving a
    model straight from its source while its sllm copy is still being written. Returns the
    model and the bytes of weights read.

    Raises:
        IncompatibleCheckpoint: the directory holds no safetensors, or tensors that do not fit.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, GenerationConfig

    root = Path(path)
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise IncompatibleCheckpoint("no *.safetensors weights", path=str(root))
    config = AutoConfig.from_pretrained(root)
    target = torch.device(device)
    built: dict[str, Any] = {}

    def build() -> None:
        try:
            built["model"] = _skeleton(config, _config_dtype(config))
        except BaseException as e:  # re-raised in the caller's thread
            built["error"] = e

    # The model is constructed while the files are read (into the page cache, in parallel:
    # `read_ahead`), and the tensors map what was read.
    builder = threading.Thread(target=build, name="sllm-load-model-build", daemon=True)
    builder.start()
    try:
        read_ahead(files)
        tensors: dict[str, torch.Tensor] = {}
        for f in files:
            tensors.update(load_file(f, device=str(target)))
    finally:
        builder.join()
    if "error" in built:
        raise built["error"]
    model = built["model"]
    _assign(model, tensors, target, None, str(root))
    model.eval()
    if (root / "generation_config.json").is_file() and getattr(
        model, "generation_config", None
    ) is not None:
        model.generation_config = GenerationConfig.from_pretrained(root)
    return model, sum(f.stat().st_size for f in files)


def _config_dtype(config: Any) -> torch.dtype | None:
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype):
        value = getattr(torch, value)
    return value if isinstance(value, torch.dtype) else None


def _stored_float_dtype(tensors: Any) -> torch.dtype | None:
    return next((t.dtype for t in tensors if t.dtype.is_floating_point), None)


def _model_class(config: Any) -> Any:
    import transformers

    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModelForCausalLM


def _skeleton(config: Any, dtype: torch.dtype | None) -> Any:
    cls = _model_class(config)
    with _parameters_on_meta():
        if hasattr(cls, "_from_config"):
            return (
                cls._from_config(config, dtype=dtype)
                if dtype is not None
                else cls._from_config(config)
            )
        return cls.from_config(config)


# --- parameters on meta, buffers real ----------------------------------------------------------
# Unlike `with torch.device("meta")`, only parameters go to meta: buffers are computed for real by
# the constructors, exactly as a normal construction does. The patches act only in the building
# thread, so modules that other threads construct meanwhile are untouched.

_patch_lock = threading.Lock()
_patch_users = 0
_local = threading.local()
_original_register_parameter = nn.Module.register_parameter


def _register_parameter(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
    _original_register_parameter(self, name, param)
    if param is not None and getattr(_local, "active", False) and not param.is_meta:
        self._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)


def _init_hook(original: Any) -> Any:
    """transformers' per-module weight init, skipped for modules without buffers while building:
    their parameters are on meta (init would be a no-op that costs most of the build time)."""

    def initialize(self: Any, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if getattr(_local, "active", False) and next(module.buffers(recurse=False), None) is None:
            return None
        return original(self, module, *args, **kwargs)

    return initialize


_saved_init: list[Any] = []  # transformers' original _initialize_weights while patched


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    global _patch_users
    from transformers import PreTrainedModel

    with _patch_lock:
        if _patch_users == 0:
            nn.Module.register_parameter = _register_parameter  # type: ignore[method-assign]
            # transformers >= 5 initialises module by module here; older ones lack it (still correct).
            original = PreTrainedModel.__dict__.get("_initialize_weights")
            if original is not None:
                _saved_init.append(original)
                PreTrainedModel._initialize_weights = _init_hook(original)  # type: ignore[method-assign]
        _patch_users += 1
    _local.active = True
    try:
        yield
    finally:
        _local.active = False
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0:
                nn.Module.register_parameter = _original_register_parameter  # type: ignore[method-assign]
                if _saved_init:
                    PreTrainedModel._initialize_weights = _saved_init.pop()  # type: ignore[method-assign]


# --- assignment ----------------------------------------------------------------------------------


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, leaf = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), leaf


def _lookup(tensors: Mapping[str, torch.Tensor], name: str, prefix: str) -> torch.Tensor | None:
    """The checkpoint tensor for a model name, tolerating a base-model prefix on either side."""
    if name in tensors:
        return tensors[name]
    if prefix and name.startswith(prefix + "."):
        return tensors.get(name[len(prefix) + 1 :])
    return tensors.get(f"{prefix}.{name}") if prefix else None


def _assign(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    device: torch.device,
    dtype: torch.dtype | None,
    where: str,
) -> None:
    prefix = str(getattr(model, "base_model_prefix", "") or "")

    def convert(t: torch.Tensor) -> torch.Tensor:
        return (
            t.to(dtype) if dtype is not None and t.is_floating_point() and t.dtype != dtype else t
        )

    groups: dict[int, tuple[nn.Parameter, list[str]]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), (p, []))[1].append(name)
    missing: list[str] = []
    for param, names in groups.values():
        found = next((t for n in names if (t := _lookup(tensors, n, prefix)) is not None), None)
        if found is None:
            missing.append(names[0])
            continue
        if tuple(found.shape) != tuple(param.shape):
            raise IncompatibleCheckpoint(
                f"{names[0]}: checkpoint shape {list(found.shape)}, model expects {list(param.shape)}",
                path=where,
            )
        new = nn.Parameter(convert(found))  # requires grad: see the docstring of load_model
        for n in names:  # tied parameters stay one object
            module, leaf = _owner(model, n)
            module._parameters[leaf] = new
    if missing:
        raise IncompatibleCheckpoint(
            f"checkpoint lacks {len(missing)} parameters, e.g. {missing[:5]}", path=where
        )
    for name, buf in list(model.named_buffers(remove_duplicate=False)):
        module, leaf = _owner(model, name)
        found = (
            None if leaf in module._non_persistent_buffers_set else _lookup(tensors, name, prefix)
        )
        if found is not None:
            module._buffers[leaf] = convert(found)
        elif buf.is_meta:
            raise IncompatibleCheckpoint(
                f"buffer {name} is neither stored nor computable", path=where
            )
        else:
            # Non-persistent (or unsaved) buffers keep the value their constructor computed.
            module._buffers[leaf] = buf.to(device)
    log.debug("load_model: %d parameter groups from %s", len(groups), where)
