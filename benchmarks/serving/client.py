"""The benchmark's HTTP side: deployments, and completions timed as a client sees them."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx


class RequestFailed(RuntimeError):
    """The router answered a request with an error."""


@dataclass(frozen=True)
class Streamed:
    """One streamed completion, timed from just before the request was sent."""

    ttft_s: float  # to the first SSE event carrying a choice (text, or the finish)
    headers_s: float  # to the response headers (the router found a ready instance)
    total_s: float  # to ``data: [DONE]``
    text: str
    sent_at: float  # time.time() just before sending


class Api:
    """One keep-alive `httpx.Client` to the router."""

    def __init__(self, base_url: str, timeout: float) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=httpx.Timeout(timeout, connect=10.0))

    def close(self) -> None:
        self.http.close()

    def deploy(self, name: str, uri: str) -> None:
        body = {"name": name, "checkpoint_uri": uri, "keep_alive_s": 3600.0, "max_instances": 1}
        r = self.http.post("/v1/deployments", json=body, timeout=60)
        if r.status_code not in (200, 201):
            raise RequestFailed(f"deploy {name}: HTTP {r.status_code}: {r.text}")

    def delete(self, name: str) -> None:
        """Delete the deployment; the scheduler unloads its instances before answering."""
        r = self.http.delete(f"/v1/deployments/{name}", timeout=120)
        if r.status_code not in (200, 404):
            raise RequestFailed(f"delete {name}: HTTP {r.status_code}: {r.text}")

    def stream(self, model: str, prompt: str, max_tokens: int) -> Streamed:
        """A greedy streamed completion; TTFT is the first event with a choice."""
        body = {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": True,
        }
        sent_at = time.time()
        t0 = time.perf_counter()
        ttft = headers = None
        parts: list[str] = []
        with self.http.stream("POST", "/v1/completions", json=body) as resp:
            headers = time.perf_counter() - t0
            if resp.status_code != 200:
                resp.read()
                raise RequestFailed(f"completion of {model}: HTTP {resp.status_code}: {resp.text}")
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RequestFailed(f"completion of {model}: {chunk['error']}")
                if chunk.get("choices"):
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    parts.append(chunk["choices"][0].get("text") or "")
        total = time.perf_counter() - t0
        if ttft is None:
            raise RequestFailed(f"completion of {model}: the stream carried no choice")
        return Streamed(ttft, headers, total, "".join(parts), sent_at)

    def complete(self, model: str, prompt: str) -> tuple[float, str, str]:
        """A greedy non-streamed completion of one token: ``(seconds, text, request id)``."""
        body = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0}
        t0 = time.perf_counter()
        r = self.http.post("/v1/completions", json=body)
        seconds = time.perf_counter() - t0
        if r.status_code != 200:
            raise RequestFailed(f"completion of {model}: HTTP {r.status_code}: {r.text}")
        body = r.json()
        return seconds, str(body["choices"][0]["text"]), str(body["id"])


class LeanClient:
    """One keep-alive `http.client` connection, for the warm-request overhead: its own CPU per
    request is a few tens of microseconds, where `httpx` spends about 1 ms on this 2-core VM,
    time the machine's cores would take from the system under test."""

    def __init__(self, base_url: str, timeout: float) -> None:
        url = urlsplit(base_url)
        self.conn = http.client.HTTPConnection(
            url.hostname or "127.0.0.1", url.port, timeout=timeout
        )

    def close(self) -> None:
        self.conn.close()

    def complete(self, model: str, prompt: str) -> tuple[float, str, str]:
        """A greedy non-streamed completion of one token: ``(seconds, text, request id)``."""
        body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0})
        headers = {"Content-Type": "application/json"}
        t0 = time.perf_counter()
        self.conn.request("POST", "/v1/completions", body.encode(), headers)
        resp = self.conn.getresponse()
        data = resp.read()
        seconds = time.perf_counter() - t0
        if resp.status != 200:
            raise RequestFailed(f"completion of {model}: HTTP {resp.status}: {data[:500]!r}")
        answer = json.loads(data)
        return seconds, str(answer["choices"][0]["text"]), str(answer["id"])
