"""OpenAI's ``logprobs`` shapes (chat, completions) from the worker's per-token log-probabilities.

Chat gives each token with its bytes and its ``top_logprobs`` alternatives; completions give
parallel lists (``tokens``, ``token_logprobs``, ``top_logprobs`` as token → logprob maps that
also hold the chosen token, ``text_offset``: where each token's text starts in the completion,
counted over the token strings, continuing from chunk to chunk when streamed).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from libs.protocol.messages import TokenLogprob

# JSON has no -inf: what OpenAI-compatible servers (vLLM) report for an impossible token.
MIN_LOGPROB = -9999.0


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TopLogprobOut(_Out):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(_Out):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprobOut]


class ChatLogprobs(_Out):
    content: list[TokenLogprobOut] | None
    refusal: list[TokenLogprobOut] | None = None


class CompletionLogprobs(_Out):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


def _finite(logprob: float) -> float:
    return logprob if logprob > MIN_LOGPROB else MIN_LOGPROB  # also turns NaN into the floor


def _bytes(token: str) -> list[int]:
    # The worker sends each token decoded alone; a token holding part of a UTF-8 character
    # arrives with U+FFFD in its place, so these are the bytes of that text.
    return list(token.encode("utf-8"))


def chat_logprobs(entries: Sequence[TokenLogprob], top: int) -> ChatLogprobs:
    """Chat's ``logprobs`` for ``entries``, with at most ``top`` alternatives each."""
    return ChatLogprobs(
        content=[
            TokenLogprobOut(
                token=e.token,
                logprob=_finite(e.logprob),
                bytes=_bytes(e.token),
                top_logprobs=[
                    TopLogprobOut(token=t.token, logprob=_finite(t.logprob), bytes=_bytes(t.token))
                    for t in e.top[:top]
                ],
            )
            for e in entries
        ]
    )


def completion_logprobs(
    entries: Sequence[TokenLogprob], top: int, offset: int = 0
) -> tuple[CompletionLogprobs, int]:
    """Completions' ``logprobs`` for ``entries`` whose text starts at ``offset`` in the
    completion, and the offset after them (where the next chunk's tokens start)."""
    offsets: list[int] = []
    tops: list[dict[str, float]] = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
        alternatives = {t.token: _finite(t.logprob) for t in e.top[:top]}
        # OpenAI always includes the sampled token: up to ``top`` + 1 entries.
        alternatives.setdefault(e.token, _finite(e.logprob))
        tops.append(alternatives)
    out = CompletionLogprobs(
        tokens=[e.token for e in entries],
        token_logprobs=[_finite(e.logprob) for e in entries],
        top_logprobs=tops,
        text_offset=offsets,
    )
    return out, offset
