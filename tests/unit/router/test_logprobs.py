"""Logprobs in OpenAI's shapes, whole and streamed, checked with the openai SDK's own types."""

from __future__ import annotations

import json
import math
from typing import Any

import openai.types
import openai.types.chat
import pytest
from openai.types.completion_choice import Logprobs

from libs.protocol.messages import SamplingParams, TokenChunk, TokenLogprob, TopLogprob, Usage
from services.router.logprobs import MIN_LOGPROB, chat_logprobs, completion_logprobs
from services.router.responses import ChatFormat, CompletionFormat

pytestmark = pytest.mark.unit


def lp(token_id: int, token: str, logprob: float, *top: tuple[int, str, float]) -> TokenLogprob:
    return TokenLogprob(
        token_id=token_id,
        token=token,
        logprob=logprob,
        top=[TopLogprob(token_id=i, token=t, logprob=p) for i, t, p in top],
    )


# What a worker sends for "Hello, wörld" asked for 2 alternatives: the second chunk's token
# holds half of "ö" (its text held back), the third completes it.
CHUNKS = [
    TokenChunk(
        token_ids=[10, 11],
        text="Hello,",
        logprobs=[
            lp(10, "Hello", -0.1, (10, "Hello", -0.1), (12, "Hi", -2.5)),
            lp(11, ",", -0.2, (11, ",", -0.2), (13, "!", -1.7)),
        ],
    ),
    TokenChunk(
        token_ids=[14],
        text="",
        logprobs=[lp(14, " w\ufffd", -1.0, (14, " w\ufffd", -1.0), (15, " world", -1.1))],
    ),
    TokenChunk(
        token_ids=[16],
        text=" wörld",
        logprobs=[lp(16, "\ufffdrld", -float("inf"), (16, "\ufffdrld", -0.5), (17, "rld", -3.0))],
        finish_reason="stop",
        usage=Usage(prompt_tokens=3, completion_tokens=4),
    ),
]
ENTRIES = [e for c in CHUNKS for e in c.logprobs or ()]
TOKENS = ["Hello", ",", " w\ufffd", "\ufffdrld"]
USAGE = Usage(prompt_tokens=3, completion_tokens=4)


def params(top: int | None) -> SamplingParams:
    """A request's params: no logprobs (None) or logprobs with ``top`` alternatives."""
    return SamplingParams(logprobs=top is not None, top_logprobs=top or 0)


def events(fmt: ChatFormat | CompletionFormat) -> list[dict[str, Any]]:
    """The streamed answer's chunks, as the serving loop produces them."""
    raw = list(fmt.opening())
    raw += [data for c in CHUNKS if (data := fmt.tokens(c)) is not None]
    raw += [fmt.finish("stop"), fmt.usage(USAGE)]
    return [json.loads(e.removeprefix(b"data: ")) for e in raw]


def test_chat_logprobs_carry_bytes_and_at_most_top_alternatives() -> None:
    out = chat_logprobs(ENTRIES[:1], top=1).model_dump()
    assert out == {
        "content": [
            {
                "token": "Hello",
                "logprob": -0.1,
                "bytes": list(b"Hello"),
                "top_logprobs": [{"token": "Hello", "logprob": -0.1, "bytes": list(b"Hello")}],
            }
        ],
        "refusal": None,
    }
    assert chat_logprobs(ENTRIES, top=0).content is not None
    assert all(not e.top_logprobs for e in chat_logprobs(ENTRIES, top=0).content or ())


def test_impossible_tokens_get_a_finite_floor_json_can_carry() -> None:
    out = chat_logprobs([lp(1, "x", -math.inf), lp(2, "y", math.nan)], top=0)
    assert [e.logprob for e in out.content or ()] == [MIN_LOGPROB, MIN_LOGPROB]
    logprobs, _ = completion_logprobs([lp(1, "x", -math.inf)], top=0)
    assert logprobs.token_logprobs == [MIN_LOGPROB]


def test_completion_logprobs_always_hold_the_chosen_token_and_continue_the_offsets() -> None:
    first, offset = completion_logprobs(ENTRIES[:2], top=1)
    assert first.model_dump() == {
        "tokens": ["Hello", ","],
        "token_logprobs": [-0.1, -0.2],
        "top_logprobs": [{"Hello": -0.1}, {",": -0.2}],
        "text_offset": [0, 5],
    }
    second, end = completion_logprobs(ENTRIES[2:], top=1, offset=offset)
    assert second.text_offset == [6, 9]
    assert end == sum(len(t) for t in TOKENS)
    # Sampled outside the top 1: the chosen token is added, as OpenAI does (top + 1 entries).
    chosen = completion_logprobs([lp(5, "b", -2.0, (4, "a", -0.5))], top=1)[0]
    assert chosen.top_logprobs == [{"a": -0.5, "b": -2.0}]


def test_whole_chat_answer_with_logprobs_is_an_openai_chat_completion() -> None:
    fmt = ChatFormat("chatcmpl-1", "m", include_usage=False, params=params(2))
    body = fmt.whole("Hello, wörld", ENTRIES, "stop", USAGE)
    answer = openai.types.chat.ChatCompletion.model_validate(body)
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    assert [t.token for t in logprobs.content] == TOKENS
    assert [t.logprob for t in logprobs.content] == [-0.1, -0.2, -1.0, MIN_LOGPROB]
    assert logprobs.content[2].bytes == list(" w\ufffd".encode())
    assert [a.token for a in logprobs.content[0].top_logprobs] == ["Hello", "Hi"]
    assert [a.logprob for a in logprobs.content[3].top_logprobs] == [-0.5, -3.0]
    assert logprobs.refusal is None


def test_streamed_chat_chunks_carry_the_logprobs_of_their_tokens() -> None:
    fmt = ChatFormat("chatcmpl-1", "m", include_usage=True, params=params(1))
    chunks = [openai.types.chat.ChatCompletionChunk.model_validate(e) for e in events(fmt)]
    opening, *texts, finish, usage = chunks
    assert opening.choices[0].logprobs is None
    # The held-back token's logprobs come in a chunk of their own, with no text.
    assert [c.choices[0].delta.content for c in texts] == ["Hello,", "", " wörld"]
    per_chunk = [c.choices[0].logprobs for c in texts]
    content = [lp.content if lp is not None else None for lp in per_chunk]
    assert [[t.token for t in c or ()] for c in content] == [
        ["Hello", ","],
        [" w\ufffd"],
        ["\ufffdrld"],
    ]
    assert all(len(t.top_logprobs) == 1 for c in content for t in c or ())
    assert finish.choices[0].finish_reason == "stop"
    assert finish.choices[0].logprobs is None
    assert usage.usage is not None
    assert usage.usage.completion_tokens == 4


def test_whole_completion_with_logprobs_is_an_openai_completion() -> None:
    fmt = CompletionFormat("cmpl-1", "m", include_usage=False, params=params(2))
    answer = openai.types.Completion.model_validate(
        fmt.whole("Hello, wörld", ENTRIES, "stop", USAGE)
    )
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens == TOKENS
    assert logprobs.token_logprobs == [-0.1, -0.2, -1.0, MIN_LOGPROB]
    assert logprobs.text_offset == [0, 5, 6, 9]
    assert logprobs.top_logprobs is not None
    assert logprobs.top_logprobs[0] == {"Hello": -0.1, "Hi": -2.5}
    assert logprobs.top_logprobs[3] == {"\ufffdrld": -0.5, "rld": -3.0}


def test_streamed_completion_chunks_continue_the_text_offsets() -> None:
    fmt = CompletionFormat("cmpl-1", "m", include_usage=True, params=params(0))
    *texts, finish, usage = events(fmt)
    # The SDK's Completion type wants a finish_reason, which streamed chunks have only at the
    # end (the SDK builds stream chunks without validation): check the parts instead.
    assert [c["choices"][0]["text"] for c in texts] == ["Hello,", "", " wörld"]
    logprobs = [Logprobs.model_validate(c["choices"][0]["logprobs"]) for c in texts]
    assert [lp.tokens for lp in logprobs] == [["Hello", ","], [" w\ufffd"], ["\ufffdrld"]]
    assert [lp.text_offset for lp in logprobs] == [[0, 5], [6], [9]]
    # logprobs=0: the chosen token only.
    assert logprobs[0].top_logprobs == [{"Hello": -0.1}, {",": -0.2}]
    openai.types.Completion.model_validate(finish)
    assert finish["choices"][0]["logprobs"] is None
    assert openai.types.Completion.model_validate(usage).usage is not None


@pytest.mark.parametrize("fmt_type", [ChatFormat, CompletionFormat])
def test_logprobs_stay_null_unless_asked_for(fmt_type: type[ChatFormat | CompletionFormat]) -> None:
    fmt = fmt_type("id-1", "m", include_usage=False, params=params(None))
    whole = fmt.whole("Hello, wörld", ENTRIES, "stop", USAGE)
    assert whole["choices"][0]["logprobs"] is None
    for chunk in events(fmt):
        assert all(choice["logprobs"] is None for choice in chunk["choices"])
