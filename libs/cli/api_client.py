"""A small HTTP client of the router's REST API for the CLI (``sllm status``, ``deploy``, ``chat``).

Standard library only (urllib), so an installed ``sllm`` needs nothing beyond its runtime
dependencies. Errors are typed: `ApiError` for an HTTP error answer (the OpenAI-style body read
into it), `ApiUnreachable` when no answer came; `exit_code` maps either to the CLI's exit code.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.client import HTTPResponse
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8343"
"""Where ``sllm up`` serves the REST API by default (``SLLM_PORT``)."""

# Exit codes shared by the CLI's API commands.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_AUTH = 4


class ApiClientError(Exception):
    """Base of the client's errors."""


class ApiError(ApiClientError):
    """The router answered with an HTTP error status."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.code = code


class ApiUnreachable(ApiClientError):
    """No answer: the router could not be reached (refused, DNS, timeout, broken connection)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def exit_code(exc: BaseException) -> int:
    """The CLI exit code for an error: 3 unreachable, 4 key refused (401/403), 1 otherwise."""
    if isinstance(exc, ApiUnreachable):
        return EXIT_UNREACHABLE
    if isinstance(exc, ApiError) and exc.status in (401, 403):
        return EXIT_AUTH
    return EXIT_ERROR


def from_env(url: str | None = None, key: str | None = None) -> tuple[str, str | None]:
    """The router URL and API key: the arguments, else ``SLLM_URL`` / ``SLLM_API_KEY``, else
    `DEFAULT_URL` and no key."""
    resolved_url = url or os.environ.get("SLLM_URL") or DEFAULT_URL
    resolved_key = key if key is not None else (os.environ.get("SLLM_API_KEY") or None)
    return resolved_url.rstrip("/"), resolved_key


def _error_from_body(status: int, raw: bytes) -> ApiError:
    """An `ApiError` from an error answer's body (OpenAI's ``{"error": {...}}`` when it is one)."""
    text = raw.decode(errors="replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return ApiError(status, text or f"HTTP {status}")
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or text)
        code = error.get("code")
        return ApiError(status, message, str(code) if code is not None else None)
    if isinstance(body, dict) and "detail" in body:  # FastAPI's own errors (e.g. 404 route)
        return ApiError(status, str(body["detail"]))
    return ApiError(status, text)


class ApiClient:
    """Calls to one router: JSON in, JSON out, typed errors."""

    def __init__(self, url: str | None = None, key: str | None = None, timeout: float = 10.0):
        self.url, self.key = from_env(url, key)
        self.timeout = timeout

    def get(self, path: str) -> Any:
        return self._json("GET", path)

    def post(self, path: str, json: Any = None) -> Any:
        return self._json("POST", path, json)

    def patch(self, path: str, json: Any = None) -> Any:
        return self._json("PATCH", path, json)

    def delete(self, path: str) -> Any:
        return self._json("DELETE", path)

    def stream_post(self, path: str, json: Any) -> Iterator[dict[str, Any]]:
        """POST and yield each server-sent event's ``data:`` as JSON, until ``[DONE]``.

        An error event (``{"error": {...}}``) mid-stream raises `ApiError` (status 500 unless the
        body names one). The timeout bounds each read, not the whole stream."""
        response = self._open("POST", path, json, accept="text/event-stream")
        with response:
            try:
                for raw in response:
                    line = raw.decode(errors="replace").strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[len("data:") :].strip()
                    if data == "[DONE]":
                        return
                    event = _loads(data)
                    if isinstance(event, dict) and isinstance(event.get("error"), dict):
                        error = event["error"]
                        code = error.get("code")
                        raise ApiError(
                            int(error.get("status") or 500),
                            str(error.get("message") or data),
                            str(code) if code is not None else None,
                        )
                    if isinstance(event, dict):
                        yield event
            except OSError as exc:  # TimeoutError and a reset connection
                raise ApiUnreachable(f"the stream from {self.url} broke: {exc}") from exc

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        response = self._open(method, path, body)
        with response:
            try:
                raw = response.read()
            except (TimeoutError, OSError) as exc:
                raise ApiUnreachable(f"reading the answer from {self.url}: {exc}") from exc
        return _loads(raw.decode(errors="replace")) if raw.strip() else None

    def _open(
        self, method: str, path: str, body: Any = None, accept: str = "application/json"
    ) -> HTTPResponse:
        headers = {"Accept": accept}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        request = urllib.request.Request(
            self.url + "/" + path.lstrip("/"), data=data, headers=headers, method=method
        )
        try:
            response: HTTPResponse = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            with exc:
                raise _error_from_body(exc.code, exc.read()) from None
        except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiUnreachable(f"cannot reach {self.url}: {reason}") from exc
        return response


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ApiError(502, f"the answer is not JSON: {text[:200]!r}") from exc
