"""What one streamed request recorded, and a point's figures from its requests (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.serving.common import percentile


@dataclass
class Request:
    """One streamed completion as the client saw it; times in seconds after it was sent."""

    client: int
    prompt_tokens: int
    sent_at: float  # perf_counter of the send, for the point's wall time
    chunk_s: list[float] = field(default_factory=list)  # each content chunk (non-empty text)
    completion_tokens: int | None = None  # usage.completion_tokens, when the stream carried it
    done_s: float | None = None  # the end of the stream
    error: str = ""

    @property
    def ttft_s(self) -> float | None:
        """To the first content chunk."""
        return self.chunk_s[0] if self.chunk_s else None

    @property
    def tokens(self) -> int:
        """Output tokens received: the usage's count, else one per content chunk."""
        if self.completion_tokens is not None:
            return self.completion_tokens
        return len(self.chunk_s)

    def itl_s(self) -> list[float]:
        """Inter-token latencies: each gap between content chunks over the request's mean tokens
        per chunk (a chunk carries several tokens where the server merged them, or where a token
        ended inside a UTF-8 character)."""
        if len(self.chunk_s) < 2:
            return []
        per_chunk = max(1.0, self.tokens / len(self.chunk_s))
        return [(b - a) / per_chunk for a, b in zip(self.chunk_s, self.chunk_s[1:], strict=False)]


@dataclass(frozen=True)
class Point:
    """One system at one (prompt length, concurrency) point."""

    requests: int
    failed: int
    tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    itl_p50_s: float
    itl_p99_s: float
    short: int  # finished requests that returned fewer tokens than asked
    errors: tuple[str, ...] = ()
    # Fairness: pairs of finished requests sent more than `FIFO_SLACK_S` apart, and those of
    # them whose first tokens came in the other order (the later one overtook).
    fifo_pairs: int = 0
    fifo_inversions: int = 0


def summarize(records: Sequence[Request], wall_s: float, max_tokens: int) -> Point:
    """Output tokens/s over the point's wall time (first send to last end), TTFT and ITL
    percentiles over its finished requests; failed requests count no tokens."""
    ok = [r for r in records if not r.error]
    ttfts = [t for r in ok if (t := r.ttft_s) is not None]
    itls = [x for r in ok for x in r.itl_s()]
    tokens = sum(r.tokens for r in ok)
    errors = tuple(sorted({r.error for r in records if r.error}))
    pairs, inversions = fifo_inversions(records)
    return Point(
        requests=len(records),
        failed=len(records) - len(ok),
        tokens=tokens,
        wall_s=wall_s,
        tokens_per_s=tokens / wall_s if wall_s > 0 else float("nan"),
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p99_s=percentile(ttfts, 99),
        itl_p50_s=percentile(itls, 50),
        itl_p99_s=percentile(itls, 99),
        short=sum(1 for r in ok if r.tokens < max_tokens),
        errors=errors[:5],
        fifo_pairs=pairs,
        fifo_inversions=inversions,
    )


FIFO_SLACK_S = 0.05


def fifo_inversions(records: Sequence[Request], slack_s: float = FIFO_SLACK_S) -> tuple[int, int]:
    """(pairs, inversions): of the finished requests sent more than ``slack_s`` apart, how
    many pairs there are and in how many the later-sent one got its first token more than
    ``slack_s`` before the earlier one. Requests sent together (a closed loop's first wave) are
    no pair: their order is the network's. Every prompt of a point has the same length, so a
    first-come-first-served server inverts none."""
    firsts = sorted(
        (r.sent_at, r.sent_at + t) for r in records if not r.error and (t := r.ttft_s) is not None
    )
    pairs = inversions = 0
    for i, (sent_a, first_a) in enumerate(firsts):
        for sent_b, first_b in firsts[i + 1 :]:
            if sent_b - sent_a <= slack_s:
                continue
            pairs += 1
            if first_b < first_a - slack_s:
                inversions += 1
    return pairs, inversions


def per_client(total: int, concurrency: int, minimum: int) -> int:
    """Requests each of ``concurrency`` closed-loop clients sends: ``total`` shared out, at least
    ``minimum`` each (so the high-concurrency points still see requests join a running batch)."""
    return max(minimum, -(-total // concurrency))
