"""The Hugging Face Hub as a registry: ``hf://org/name[@revision]`` sources, read through
``huggingface_hub``. Blocking: callers run these in threads.

Where: the Hub at ``HF_ENDPOINT`` (default https://huggingface.co), with the token
``huggingface_hub`` finds (``HF_TOKEN``, else the one ``hf auth login`` stored), into the Hub's
own cache (``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``), shared
with every other Hugging Face tool on the node. All three are read from the environment at
each call, not at import (``huggingface_hub`` reads ``HF_ENDPOINT`` once, when imported).

What: `listing` looks at a repository without downloading (its commit and the files a
checkpoint needs, with their sizes); `download` fetches those files of that commit into the
cache (a file already there is not fetched again) and returns the snapshot directory, which
the storage service then converts like a local Hugging Face directory. `hub_metadata` and
`weights` serve deploy-time checks. Every request made for a fetch has a timeout (the storage
service's fetch timeout where ``huggingface_hub`` sets none) and checks the fetch's cancel
event before it is sent and at every chunk it receives (`hub_session`). When the Hub is out of
reach (or ``HF_HUB_OFFLINE`` is set), a commit the cache holds whole still serves.

Errors name the URI, never the token or what the Hub said (that goes to the log).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, get_token, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils._paths import filter_repo_objects

from libs.common.hub_ids import HubSource
from libs.protocol.errors import (
    BadRequestError,
    CancelledError,
    CorruptError,
    NotFoundError,
    UnavailableError,
)

from .checkpoint import CheckpointFiles
from .hub_session import progress_class, tracked
from .sources import FetchPlan
from .transfer import Meter, storage_full
from .uri import RegistrySource

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
CONFIG_FILE = "config.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
METADATA_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.*",
    "merges.txt",
    "added_tokens.json",
    "chat_template.*",
    "adapter_config.json",  # a PEFT LoRA adapter (its weights: adapter_model.safetensors)
)
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
# Sentence-transformers models (embeddings) keep their pooling beside the weights.
EXTRA_PATTERNS = ("modules.json", "sentence_bert_config.json", "1_Pooling/*")
CHECKPOINT_PATTERNS = METADATA_PATTERNS + WEIGHT_PATTERNS + EXTRA_PATTERNS
_DOWNLOAD_WORKERS = 4


@dataclass(frozen=True)
class HubConfig:
    """The Hub endpoint and cache, from the environment as it is now."""

    endpoint: str
    cache_dir: Path

    @classmethod
    def from_env(cls) -> HubConfig:
        env = os.environ
        home = env.get("HF_HOME") or os.path.join(
            env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
        )
        cache = env.get("HF_HUB_CACHE") or os.path.join(home, "hub")
        endpoint = (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        return cls(endpoint, Path(cache).expanduser())


@dataclass(frozen=True)
class HubListing:
    """A repository at one commit: the files a checkpoint takes from it, with their sizes."""

    commit: str
    files: tuple[tuple[str, int], ...]

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    @property
    def weights(self) -> list[tuple[str, int]]:
        return [(n, s) for n, s in self.files if n.endswith(".safetensors")]


def prepare_hub(source: RegistrySource, timeout: float) -> FetchPlan:
    """The fetch plan of a Hub source: its commit and files (`listing`), nothing downloaded."""
    assert source.hub is not None
    found = listing(source.hub, timeout)
    return FetchPlan(source, "hf-hub", found.total_bytes, hub=found)


def fetch_hub(
    plan: FetchPlan,
    dst: Path,
    meter: Meter,
    timeout: float,
    *,
    convert: Callable[[FetchPlan, Path, Meter], CheckpointFiles],
) -> CheckpointFiles:
    """Download the plan's files into the Hub cache, then ``convert`` that snapshot as the
    local Hugging Face directory it now is (``sources``' conversion, verified)."""
    assert plan.source.hub is not None
    assert plan.hub is not None
    snapshot = download(plan.source.hub, plan.hub, meter, timeout)
    local = replace(plan.source, kind="file", path=snapshot)
    return convert(replace(plan, source=local, kind="hf-file"), dst, meter)


def listing(source: HubSource, timeout: float) -> HubListing:
    """The commit ``source`` names now and its checkpoint files: `NotFoundError` (no such
    repository or revision), `BadRequestError` (gated or private without a token, or not a
    model sllm can use: no config.json or no safetensors weights), `UnavailableError`."""
    config = HubConfig.from_env()
    try:
        with tracked(threading.Event(), timeout) as headers, _hub_errors(source, config):
            info = HfApi(endpoint=config.endpoint, headers=headers).model_info(
                source.repo_id, revision=source.revision, files_metadata=True, timeout=timeout
            )
    except UnavailableError:
        cached = _cached_listing(source, config)
        if cached is None:
            raise
        log.warning("checkpoint %s: the Hub is out of reach; serving the cached commit", source.uri)
        return cached
    sizes = {s.rfilename: s.size or 0 for s in info.siblings or ()}
    names = filter_repo_objects(sizes, allow_patterns=list(CHECKPOINT_PATTERNS))
    found = HubListing(str(info.sha or ""), tuple(sorted((n, sizes[n]) for n in names)))
    _check_usable(source, found)
    return found


def _cached_listing(source: HubSource, config: HubConfig) -> HubListing | None:
    """The complete checkpoint of ``source`` in the Hub cache (offline, or the Hub down)."""
    try:
        path = Path(
            snapshot_download(
                source.repo_id,
                revision=source.revision,
                cache_dir=config.cache_dir,
                allow_patterns=list(CHECKPOINT_PATTERNS),
                local_files_only=True,
            )
        )
    except (OSError, ValueError):  # LocalEntryNotFoundError, IncompleteSnapshotError...
        return None
    sizes = {p.relative_to(path).as_posix(): p.stat().st_size for p in path.rglob("*")}
    names = filter_repo_objects(sizes, allow_patterns=list(CHECKPOINT_PATTERNS))
    found = HubListing(path.name, tuple(sorted((n, sizes[n]) for n in names)))
    try:
        _check_usable(source, found)
    except BadRequestError:
        return None  # e.g. only the metadata of a deploy-time check
    return found


def _check_usable(source: HubSource, found: HubListing) -> None:
    present = {n for n, _ in found.files}
    configured = CONFIG_FILE in present or ADAPTER_CONFIG_FILE in present
    if not found.commit or not configured or not found.weights:
        missing = "a commit" if not found.commit else CONFIG_FILE if found.weights else "weights"
        raise BadRequestError(
            f"checkpoint {source.uri}: the repository has no {missing} "
            "(sllm serves models with config.json and *.safetensors weights, and adapters "
            "with adapter_config.json and adapter_model.safetensors)"
        )


def weights(source: HubSource, timeout: float) -> list[tuple[str, int]]:
    """The repository's safetensors weight files and their sizes, downloading nothing."""
    return listing(source, timeout).weights


def hub_metadata(source: HubSource, timeout: float, commit: str | None = None) -> Path:
    """Download only the config, generation config and tokenizer files of ``source`` (no
    weights) into the Hub cache; the local snapshot directory holding them. ``commit``: the
    one a `listing` found (else it is looked up; a repository without weights is refused)."""
    commit = commit or listing(source, timeout).commit
    return _snapshot(source, commit, METADATA_PATTERNS, None, threading.Event(), timeout)


def download(source: HubSource, found: HubListing, meter: Meter, timeout: float) -> Path:
    """Fetch the checkpoint files of commit ``found.commit`` into the Hub cache (what is there
    already is not fetched again), reporting bytes to ``meter``; the snapshot directory."""
    return _snapshot(source, found.commit, CHECKPOINT_PATTERNS, meter, meter.cancel, timeout)


def _snapshot(
    source: HubSource,
    commit: str,
    patterns: tuple[str, ...],
    meter: Meter | None,
    cancel: threading.Event,
    timeout: float,
) -> Path:
    config = HubConfig.from_env()
    with tracked(cancel, timeout) as headers, _hub_errors(source, config):
        path = snapshot_download(
            source.repo_id,
            revision=commit,  # a commit: no second look-up of the branch, cached files stay put
            cache_dir=config.cache_dir,
            endpoint=config.endpoint,
            allow_patterns=list(patterns),
            etag_timeout=timeout,
            headers=headers,
            max_workers=_DOWNLOAD_WORKERS,
            tqdm_class=progress_class(meter, cancel),
        )
    _remember_ref(Path(path), source.revision or "main", commit)
    return Path(path)


def _remember_ref(snapshot: Path, revision: str, commit: str) -> None:
    """Record in the cache that ``revision`` was ``commit`` (as ``huggingface_hub`` does when
    it resolves a branch itself), so that the cached copy serves when the Hub is out of reach."""
    if revision == commit:
        return
    ref = snapshot.parent.parent / "refs" / revision
    with contextlib.suppress(OSError):  # a read-only cache: only the fallback is lost
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.is_file() or ref.read_text() != commit:
            tmp = ref.with_name(f"{ref.name}.{os.getpid()}.tmp")
            tmp.write_text(commit)
            os.replace(tmp, ref)


# --- errors -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _hub_errors(source: HubSource, config: HubConfig) -> Iterator[None]:
    """``huggingface_hub``'s and ``httpx``'s errors as the bus's, naming only the URI."""
    uri = source.uri
    try:
        yield
    except (CancelledError, BadRequestError, NotFoundError, UnavailableError):
        raise
    except RevisionNotFoundError as exc:
        log.info("checkpoint %s: %s", uri, exc)
        raise NotFoundError(f"checkpoint {uri}: no such revision on the Hugging Face Hub") from None
    except GatedRepoError as exc:
        log.info("checkpoint %s: %s", uri, exc)
        raise _token_needed(uri, "the repository is gated") from None
    except RepositoryNotFoundError as exc:
        log.info("checkpoint %s: %s", uri, exc)
        private = "" if get_token() else " (if it is private, set HF_TOKEN)"
        raise NotFoundError(
            f"checkpoint {uri}: no such repository on the Hugging Face Hub{private}"
        ) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        log.warning(
            "checkpoint %s: the Hub (%s) answered %s: %s", uri, config.endpoint, status, exc
        )
        if status in (401, 403):
            raise _token_needed(uri, f"the Hub refused access ({status})") from None
        if status == 404:
            raise NotFoundError(f"checkpoint {uri}: not found on the Hugging Face Hub") from None
        raise UnavailableError(
            f"checkpoint {uri}: the Hugging Face Hub answered HTTP {status}"
        ) from None
    except OfflineModeIsEnabled:
        raise UnavailableError(
            f"checkpoint {uri}: the Hugging Face Hub is off for this node (HF_HUB_OFFLINE is set)"
        ) from None
    except (LocalEntryNotFoundError, httpx2.TransportError) as exc:
        # Unreachable or timed out, and the cache does not hold the files either.
        log.warning("checkpoint %s: the Hub (%s) is unreachable: %r", uri, config.endpoint, exc)
        raise UnavailableError(
            f"checkpoint {uri}: the Hugging Face Hub ({config.endpoint}) is unreachable"
        ) from None
    except EntryNotFoundError as exc:
        log.warning("checkpoint %s: %s", uri, exc)
        raise NotFoundError(f"checkpoint {uri}: a file it lists is missing on the Hub") from None
    except OSError as exc:
        full = storage_full(exc, "hub cache", config.cache_dir)
        if full is not None:
            raise full from exc
        # huggingface_hub: "Consistency check failed" (a short or long body), or the cache.
        log.warning("checkpoint %s: download failed: %r", uri, exc)
        raise CorruptError(f"checkpoint {uri}: a download from the Hub was incomplete") from None


def _token_needed(uri: str, why: str) -> BadRequestError:
    if get_token():
        return BadRequestError(f"checkpoint {uri}: {why}: the token set (HF_TOKEN) has no access")
    return BadRequestError(
        f"checkpoint {uri}: {why}: a Hugging Face token with access is needed "
        "(set HF_TOKEN for the storage service)"
    )
