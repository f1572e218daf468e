"""A local stand-in for the Hugging Face Hub: the requests ``huggingface_hub`` makes for
`snapshot_download`, `hf_hub_download` and `model_info`, answered from directories on disk.

- ``GET /api/models/{org}/{name}[/revision/{rev}]``: the repository's ``sha`` and ``siblings``
  (sizes and blob ids with ``?blobs=True``);
- ``GET /api/models/{org}/{name}/tree/{rev}``: the file list (one page);
- ``HEAD``/``GET /{org}/{name}/resolve/{rev}/{path}``: a file, with ``X-Repo-Commit``,
  ``ETag`` and ``Content-Length``.
Unknown repositories and revisions are 404s with the Hub's ``X-Error-Code``; a gated
repository serves its files only with ``Authorization: Bearer <token>`` (401 ``GatedRepo``
otherwise), as the Hub does. Every request is recorded in ``requests``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit


@dataclass
class HubRepo:
    """A repository: the files of ``path`` (recursively) at one commit."""

    path: Path
    token: str | None = None  # gated: files need this bearer token
    delay: float = 0.0  # seconds between 64 KiB chunks of a file body (a slow Hub)
    files: dict[str, bytes] = field(init=False)
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        self.files = {
            p.relative_to(self.path).as_posix(): p.read_bytes()
            for p in sorted(self.path.rglob("*"))
            if p.is_file()
        }
        digest = hashlib.sha1()
        for name, data in self.files.items():
            digest.update(name.encode() + b"\0" + hashlib.sha1(data).digest())
        self.sha = digest.hexdigest()

    def blob_id(self, name: str) -> str:
        return hashlib.sha1(self.files[name]).hexdigest()


class HubServer:
    """The server on 127.0.0.1 (a free port) in a thread; a context manager."""

    def __init__(self, repos: dict[str, HubRepo]) -> None:
        self.repos = repos
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def downloads(self) -> list[str]:
        """The paths of the file bodies served (GETs of /resolve/)."""
        with self._lock:
            return [p for m, p in self.requests if m == "GET" and "/resolve/" in p]

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    server_hub: HubServer

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        hub = self.server_hub
        hub.record(self.command, self.path)
        parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            self._api(parts[2:], body)
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), body)
        else:
            self._error(404, "EntryNotFound", body)

    def _repo(self, repo_id: str, revision: str, body: bool) -> HubRepo | None:
        repo = self.server_hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", body)
            return None
        if revision not in ("main", repo.sha):
            self._error(404, "RevisionNotFound", body)
            return None
        return repo

    def _api(self, parts: list[str], body: bool) -> None:
        repo_id, rest = f"{parts[0]}/{parts[1]}", parts[2:]
        revision = rest[1] if len(rest) >= 2 else "main"
        repo = self._repo(repo_id, revision, body)
        if repo is None:
            return
        if rest[:1] == ["tree"]:
            doc: object = [
                {"type": "file", "path": n, "size": len(d), "oid": repo.blob_id(n)}
                for n, d in repo.files.items()
            ]
        elif not rest or rest[0] == "revision":
            doc = {
                "id": repo_id,
                "sha": repo.sha,
                "private": False,
                "gated": "auto" if repo.token else False,
                "siblings": [
                    {"rfilename": n, "size": len(d), "blobId": repo.blob_id(n)}
                    for n, d in repo.files.items()
                ],
            }
        else:
            self._error(404, "EntryNotFound", body)
            return
        self._send(200, json.dumps(doc).encode(), {"Content-Type": "application/json"}, body)

    def _resolve(self, repo_id: str, revision: str, name: str, body: bool) -> None:
        repo = self._repo(repo_id, revision, body)
        if repo is None:
            return
        if repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}":
            self._error(401, "GatedRepo", body)
            return
        if name not in repo.files:
            self._error(404, "EntryNotFound", body, {"X-Repo-Commit": repo.sha})
            return
        headers = {
            "X-Repo-Commit": repo.sha,
            "ETag": f'"{repo.blob_id(name)}"',
            "Content-Type": "application/octet-stream",
        }
        self._send(200, repo.files[name], headers, body, repo.delay)

    def _error(
        self, status: int, code: str, body: bool, extra: dict[str, str] | None = None
    ) -> None:
        doc = json.dumps({"error": code}).encode()
        self._send(status, doc, {"X-Error-Code": code, **(extra or {})}, body)

    def _send(
        self, status: int, data: bytes, headers: dict[str, str], body: bool, delay: float = 0.0
    ) -> None:
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                for chunk in _chunks(data):
                    self.wfile.write(chunk)
                    if delay:
                        self.wfile.flush()
                        time.sleep(delay)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a cancelled download)


def _chunks(data: bytes, size: int = 64 << 10) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
