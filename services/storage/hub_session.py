"""How ``huggingface_hub``'s requests for one fetch are bounded: each carries a header that ties
it to its fetch (removed before it is sent), so that hooks on ``huggingface_hub``'s HTTP client
can refuse a request of a cancelled fetch, stop a response body at the next network read once
it is cancelled, and give a timeout to requests sent without one. Progress comes through the
``tqdm_class`` hook of `snapshot_download`."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
from huggingface_hub import set_client_factory
from huggingface_hub.utils._http import default_client_factory
from huggingface_hub.utils.tqdm import tqdm as hf_tqdm

from libs.protocol.errors import CancelledError

from .transfer import Meter

_FETCH_HEADER = "X-Sllm-Fetch"


@dataclass(frozen=True)
class _Fetch:
    cancel: threading.Event
    timeout: float


_fetches: dict[str, _Fetch] = {}
_ids = itertools.count()
_lock = threading.Lock()
_installed = False


@contextlib.contextmanager
def tracked(cancel: threading.Event, timeout: float) -> Iterator[dict[str, str]]:
    """Headers that tie the requests of one fetch to its cancel event and timeout."""
    global _installed
    with _lock:
        if not _installed:
            # One client for the process, as huggingface_hub keeps, with our hooks added.
            set_client_factory(_client)
            _installed = True
        key = f"{os.getpid()}-{next(_ids)}"
        _fetches[key] = _Fetch(cancel, timeout)
    try:
        yield {_FETCH_HEADER: key}
    finally:
        with _lock:
            _fetches.pop(key, None)


def _client() -> httpx2.Client:
    client = default_client_factory()
    hooks = client.event_hooks
    client.event_hooks = {
        "request": [*hooks["request"], _on_request],
        "response": [*hooks["response"], _on_response],
    }
    return client


def _on_request(request: httpx2.Request) -> None:
    key = request.headers.pop(_FETCH_HEADER, None)
    if key is not None:
        request.extensions["sllm_fetch"] = key  # redirects copy extensions, not this header
    fetch = _fetches.get(request.extensions.get("sllm_fetch", ""))
    if fetch is None:
        return
    if fetch.cancel.is_set():
        raise CancelledError("transfer cancelled")
    # huggingface_hub asks for no timeout on some calls (model info, the file tree).
    bounds = dict(request.extensions.get("timeout") or {})
    for kind in ("connect", "read", "write", "pool"):
        if bounds.get(kind) is None:
            bounds[kind] = fetch.timeout
    request.extensions["timeout"] = bounds


def _on_response(response: httpx2.Response) -> None:
    fetch = _fetches.get(response.request.extensions.get("sllm_fetch", ""))
    if fetch is not None and isinstance(response.stream, httpx2.SyncByteStream):
        response.stream = _Cancellable(response.stream, fetch.cancel)


class _Cancellable(httpx2.SyncByteStream):
    """A response body that stops at the next network read once its fetch is cancelled."""

    def __init__(self, inner: httpx2.SyncByteStream, cancel: threading.Event) -> None:
        self.inner = inner
        self.cancel = cancel

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            if self.cancel.is_set():
                raise CancelledError("transfer cancelled")
            yield chunk

    def close(self) -> None:
        self.inner.close()


def progress_class(meter: Meter | None, cancel: threading.Event) -> type[hf_tqdm]:
    """A silent progress bar class for `snapshot_download` that reports the bytes written to
    ``meter`` (the bar named for them: the others count files or network bytes)."""
    lock = threading.Lock()

    class Progress(hf_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.counts = kwargs.get("name") == "huggingface_hub.snapshot_download"
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]

        def update(self, n: float | None = 1) -> bool | None:
            if cancel.is_set():
                raise CancelledError("transfer cancelled")
            if meter is not None and self.counts and n:
                with lock:
                    meter.add(int(n))
            return super().update(n)

    return Progress
