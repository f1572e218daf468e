"""The peers, each used the way its documentation shows for loading a checkpoint to CPU.

Each ``load_*`` returns ``(holder, tensors)``: ``holder`` keeps whatever owns the memory alive while
the caller touches ``tensors``.

- safetensors: ``safetensors.torch.load_file(path)`` (copies every tensor out of its mapping).
- torch: ``torch.load(path, mmap=True, weights_only=True)``; the bytes arrive when touched.
- runai-model-streamer: ``SafetensorsStreamer().stream_file(path)`` then ``get_tensors()`` over the
  safetensors file, with its defaults (``owned=True``: every yielded tensor stays valid for as long
  as it is held, so none is cloned; ``RUNAI_STREAMER_CONCURRENCY`` as in the environment).
- tensorizer: ``TensorDeserializer(path, device="cpu")`` (eager, its default number of reader
  threads; ``plaid_mode`` is a no-op in this version), every key read into a dict.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.loader.common import Loaded


def load_safetensors(path: Path) -> Loaded:
    from safetensors.torch import load_file

    sd = load_file(str(path))
    return sd, sd.values()


def load_torch(path: Path) -> Loaded:
    sd = torch.load(str(path), mmap=True, weights_only=True)
    return sd, sd.values()


def load_runai(path: Path) -> Loaded:
    from runai_model_streamer import SafetensorsStreamer

    sd: dict[str, torch.Tensor] = {}
    with SafetensorsStreamer() as streamer:
        streamer.stream_file(str(path))
        for name, tensor in streamer.get_tensors():
            sd[name] = tensor
    return sd, sd.values()


def load_tensorizer(path: Path) -> Loaded:
    from tensorizer import TensorDeserializer

    with TensorDeserializer(str(path), device="cpu") as deser:
        sd = {name: deser[name] for name in deser}
    return sd, sd.values()


LOADERS: dict[str, Callable[[Path], Loaded]] = {
    "safetensors": load_safetensors,
    "torch": load_torch,
    "runai": load_runai,
    "tensorizer": load_tensorizer,
}
