"""Chat answers that call tools, whole and streamed, as the openai SDK reads them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessageFunctionToolCall,
)

from libs.protocol.messages import SamplingParams, TokenChunk, TokenLogprob, Usage
from services.router.api_schema import ChatCompletionRequest
from services.router.responses import ToolCallFormat
from services.router.sse import DONE

pytestmark = pytest.mark.unit

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "time"}},
]
USAGE = Usage(prompt_tokens=7, completion_tokens=5)
NAMED = {"type": "function", "function": {"name": "weather"}}
REQUIRED_TEXT = (
    '[{"name": "weather", "arguments": {"city": "Nice"}}, {"name": "time", "arguments": {}}]'
)


def answer_format(tool_choice: Any = None, logprobs: bool = False) -> ToolCallFormat:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    body |= {"tools": TOOLS} | ({"tool_choice": tool_choice} if tool_choice else {})
    plan = ChatCompletionRequest.model_validate(body).tool_plan
    params = SamplingParams(logprobs=logprobs)
    return ToolCallFormat("chatcmpl-1", "m", True, params, plan)


def whole(fmt: ToolCallFormat, text: str, reason: str = "stop") -> ChatCompletion:
    return ChatCompletion.model_validate(fmt.whole(text, [], reason, USAGE))


def streamed(fmt: ToolCallFormat, pieces: list[str], reason: str = "stop") -> list[Any]:
    """The SSE events of a stream of ``pieces`` (validated as the SDK's chunks)."""
    frames: list[bytes | None] = [*fmt.opening()]
    for piece in pieces:
        logprobs = [TokenLogprob(token_id=1, token=piece, logprob=-0.5)]
        frames.append(fmt.tokens(TokenChunk(token_ids=[1], text=piece, logprobs=logprobs)))
    frames += [fmt.finish(reason), fmt.usage(USAGE), DONE]
    events = b"".join(f for f in frames if f is not None).split(b"\n\n")
    assert events.pop() == b""
    assert events.pop() == b"data: [DONE]"
    return [ChatCompletionChunk.model_validate_json(e.removeprefix(b"data: ")) for e in events]


def accumulated(chunks: list[ChatCompletionChunk]) -> Any:
    """What the SDK's streaming helper makes of the chunks."""
    state = ChatCompletionStreamState(input_tools=TOOLS)
    for chunk in chunks:
        list(state.handle_chunk(chunk))
    return state.get_final_completion()


def called(calls: list[Any] | None) -> list[tuple[str, Any]]:
    """Each function call's name and parsed arguments."""
    out = []
    for call in calls or ():
        assert isinstance(call, ChatCompletionMessageFunctionToolCall)
        assert call.type == "function"
        assert call.id.startswith("call_")
        out.append((call.function.name, json.loads(call.function.arguments)))
    return out


def test_named_whole_answer_is_one_call() -> None:
    reply = whole(answer_format(NAMED), '{"city": "Paris"}')
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert called(choice.message.tool_calls) == [("weather", {"city": "Paris"})]


def test_named_arguments_stream_as_they_come() -> None:
    chunks = streamed(answer_format(NAMED), ['{"city"', ': "Pa', 'ris"}'])
    deltas = [c.choices[0].delta.tool_calls or [] for c in chunks if c.choices]
    first = deltas[1][0]
    assert first.function is not None
    assert (first.index, first.type, first.function.name) == (0, "function", "weather")
    arguments = [d[0].function.arguments if d[0].function else None for d in deltas[1:4]]
    assert arguments == ['{"city"', ': "Pa', 'ris"}']
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].usage is not None
    final = accumulated(chunks).choices[0]
    assert called(final.message.tool_calls) == [("weather", {"city": "Paris"})]
    assert final.message.content is None
    assert final.finish_reason == "tool_calls"


def test_required_whole_and_streamed_answers_carry_every_call() -> None:
    reply = whole(answer_format("required"), REQUIRED_TEXT)
    calls = reply.choices[0].message.tool_calls or []
    assert called(calls) == [("weather", {"city": "Nice"}), ("time", {})]
    assert len({c.id for c in calls}) == 2
    chunks = streamed(
        answer_format("required", logprobs=True), [REQUIRED_TEXT[:20], REQUIRED_TEXT[20:]]
    )
    # Held to the end: the opening, the calls (with every token's logprobs), the finish, usage.
    assert len(chunks) == 4
    delta = chunks[1].choices[0]
    assert [c.index for c in delta.delta.tool_calls or []] == [0, 1]
    assert delta.logprobs is not None
    assert len(delta.logprobs.content or []) == 2
    final = accumulated(chunks).choices[0]
    assert called(final.message.tool_calls) == [("weather", {"city": "Nice"}), ("time", {})]
    assert final.finish_reason == "tool_calls"


def test_auto_answer_with_hermes_calls_and_without() -> None:
    text = 'Checking.<tool_call>{"name": "time", "arguments": {}}</tool_call>'
    reply = whole(answer_format(), text)
    message = reply.choices[0].message
    assert (message.content, reply.choices[0].finish_reason) == ("Checking.", "tool_calls")
    assert called(message.tool_calls) == [("time", {})]
    final = accumulated(streamed(answer_format(), [text[:12], text[12:]])).choices[0]
    assert final.message.content == "Checking."
    assert called(final.message.tool_calls) == [("time", {})]

    plain = whole(answer_format(), "Just words.")
    assert plain.choices[0].message.content == "Just words."
    assert plain.choices[0].message.tool_calls is None
    assert plain.choices[0].finish_reason == "stop"
    final = accumulated(streamed(answer_format(), ["Just ", "words."])).choices[0]
    assert (final.message.content, final.message.tool_calls, final.finish_reason) == (
        "Just words.",
        None,
        "stop",
    )


def test_cut_output_keeps_finish_reason_length() -> None:
    cut = whole(answer_format("required"), '[{"name": "weath', "length")
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == (
        '[{"name": "weath',
        "length",
    )
    named = whole(answer_format(NAMED), '{"ci', "length")
    assert named.choices[0].finish_reason == "length"
    assert named.choices[0].message.tool_calls is not None
