"""`sllm chat`: the streamed answer, the conversation's history, the prompt's commands, Ctrl-C,
and the one-shot forms, against a scripted router on 127.0.0.1."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest

from libs.cli.api_client import ApiClient
from libs.cli.chat import Conversation, delta_text, repl
from libs.cli.main import main

from .fake_router import FakeRouter, Reply, chunk

pytestmark = pytest.mark.unit

CHAT = "/v1/chat/completions"


@pytest.fixture
def router(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRouter]:
    monkeypatch.delenv("SLLM_API_KEY", raising=False)
    with FakeRouter() as fake:
        monkeypatch.setenv("SLLM_URL", fake.url)
        yield fake


class Terminal:
    """The prompt's input lines and everything written, for `repl`."""

    def __init__(self, *lines: str | type[BaseException]) -> None:
        self.lines = list(lines)
        self.out: list[str] = []
        self.err: list[str] = []
        self.prompts = 0

    def read_line(self, prompt: str) -> str:
        assert prompt == ">>> "
        self.prompts += 1
        if not self.lines:
            raise EOFError
        line = self.lines.pop(0)
        if isinstance(line, type):
            raise line()
        return line

    def write(self, text: str) -> None:
        self.out.append(text)

    def error(self, text: str) -> None:
        self.err.append(text)

    @property
    def text(self) -> str:
        return "".join(self.out)


def run_repl(fake: FakeRouter, terminal: Terminal, **kw: Any) -> int:
    conversation = Conversation("m", **kw)
    return repl(
        ApiClient(fake.url, timeout=10),
        conversation,
        terminal.read_line,
        terminal.write,
        terminal.error,
    )


# --- pure parts --------------------------------------------------------------------------


def test_delta_text_reads_content_and_ignores_other_chunks() -> None:
    assert delta_text(chunk("Hel")) == "Hel"
    assert delta_text({"choices": [{"delta": {"role": "assistant"}}]}) == ""
    assert delta_text({"choices": [], "usage": {"total_tokens": 3}}) == ""
    assert delta_text({"choices": [{"delta": {"content": None}}]}) == ""


def test_the_request_carries_system_history_prompt_and_options() -> None:
    c = Conversation("m", system="be brief", options={"max_tokens": 8, "temperature": 0.0})
    c.record("hi", "hello")
    assert c.request("again") == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"},
        ],
        "stream": True,
        "max_tokens": 8,
        "temperature": 0.0,
    }


def test_a_question_without_any_answer_is_not_kept() -> None:
    c = Conversation("m")
    c.record("lost", "")
    assert c.history == []


# --- the conversation at the prompt ------------------------------------------------------


def test_each_turn_streams_and_the_next_one_carries_the_history(router: FakeRouter) -> None:
    router.on(
        "POST",
        CHAT,
        Reply(events=[{"choices": [{"delta": {"role": "assistant"}}]}, chunk("Hel"), chunk("lo")]),
        Reply(events=[chunk("Fine.")]),
    )
    terminal = Terminal("hi", "", "how are you?", "/bye", "never read")
    assert run_repl(router, terminal, system="sys") == 0
    assert terminal.out == ["Hel", "lo", "\n", "\n", "Fine.", "\n", "\n"]
    first, second = (r.body for r in router.seen("POST", CHAT))
    assert first["stream"] is True
    assert first["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
    ]
    assert second["messages"][1:] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "how are you?"},
    ]
    assert terminal.lines == ["never read"]


def test_clear_forgets_the_history_and_end_of_input_exits(router: FakeRouter) -> None:
    router.on("POST", CHAT, Reply(events=[chunk("a")]))
    terminal = Terminal("one", "/clear", "two", "/?")
    assert run_repl(router, terminal) == 0
    second = router.seen("POST", CHAT)[1].body
    assert second["messages"] == [{"role": "user", "content": "two"}]
    assert "Cleared the conversation." in terminal.text
    assert "/bye" in terminal.text  # the help


def test_ctrl_c_at_the_prompt_does_not_exit(router: FakeRouter) -> None:
    terminal = Terminal(KeyboardInterrupt, "/bye")
    assert run_repl(router, terminal) == 0
    assert "Use Ctrl-D or /bye to exit." in terminal.text
    assert terminal.prompts == 2


def test_ctrl_c_during_an_answer_closes_the_stream_and_returns_to_the_prompt(
    router: FakeRouter,
) -> None:
    slow = Reply(events=[chunk(f"t{i} ") for i in range(200)], gap_s=0.02)
    router.on("POST", CHAT, slow, Reply(events=[chunk("ok")]))
    terminal = Terminal("long story", "next", "/bye")
    pieces = 0

    def write(text: str) -> None:
        nonlocal pieces
        terminal.out.append(text)
        if text.startswith("t"):
            pieces += 1
            if pieces == 3:
                raise KeyboardInterrupt

    conversation = Conversation("m")
    api = ApiClient(router.url, timeout=10)
    assert repl(api, conversation, terminal.read_line, write, terminal.error) == 0
    assert router.disconnected.wait(5), "the router never saw the stream closed"
    assert terminal.prompts == 3
    # The part that was shown stays in the conversation; the next question follows it.
    second = router.seen("POST", CHAT)[1].body
    assert second["messages"] == [
        {"role": "user", "content": "long story"},
        {"role": "assistant", "content": "t0 t1 t2 "},
        {"role": "user", "content": "next"},
    ]
    assert conversation.history[-1] == {"role": "assistant", "content": "ok"}


def test_an_error_mid_stream_is_shown_and_the_prompt_comes_back(router: FakeRouter) -> None:
    broken = {"error": {"message": "the worker died", "code": "internal_error"}}
    router.on("POST", CHAT, Reply(events=[chunk("par"), broken]), Reply(events=[chunk("ok")]))
    terminal = Terminal("one", "two")
    assert run_repl(router, terminal) == 0
    assert terminal.err == ["sllm chat: the worker died\n"]
    assert "ok" in terminal.out


def test_an_unknown_model_ends_the_conversation_with_exit_5(router: FakeRouter) -> None:
    missing = {"error": {"message": "The model 'm' does not exist", "code": "model_not_found"}}
    router.on("POST", CHAT, Reply(404, missing))
    terminal = Terminal("hi", "never read")
    assert run_repl(router, terminal) == 5
    assert terminal.err == ["sllm chat: The model 'm' does not exist\n"]
    assert terminal.lines == ["never read"]


def test_a_failed_deployment_ends_the_conversation_with_exit_1(router: FakeRouter) -> None:
    failed = {"error": {"message": "deployment 'm' failed: bad checkpoint", "code": "failed"}}
    router.on("POST", CHAT, Reply(424, failed))
    terminal = Terminal("hi", "never read")
    assert run_repl(router, terminal) == 1
    assert terminal.lines == ["never read"]


def test_a_full_queue_is_not_fatal(router: FakeRouter) -> None:
    router.on(
        "POST",
        CHAT,
        Reply(429, {"error": {"message": "queue full", "code": "rate_limit"}}),
        Reply(events=[chunk("ok")]),
    )
    terminal = Terminal("hi", "again")
    assert run_repl(router, terminal) == 0
    assert terminal.err == ["sllm chat: queue full\n"]
    assert "ok" in terminal.out


# --- one-shot forms through `sllm chat` --------------------------------------------------


def test_a_prompt_argument_prints_one_answer(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    router.on("POST", CHAT, Reply(events=[chunk("Hi"), chunk(" there")]))
    argv = ["chat", "m", "hello", "--max-tokens", "8", "--temperature", "0", "--system", "s"]
    assert main(argv) == 0
    assert capsys.readouterr().out == "Hi there\n"
    (request,) = router.seen("POST", CHAT)
    assert request.body == {
        "model": "m",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hello"}],
        "stream": True,
        "max_tokens": 8,
        "temperature": 0.0,
    }


def test_piped_stdin_is_one_prompt(
    router: FakeRouter, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    router.on("POST", CHAT, Reply(events=[chunk("answer\n")]))
    monkeypatch.setattr("sys.stdin", io.StringIO("line one\nline two\n"))
    assert main(["chat", "m"]) == 0
    assert capsys.readouterr().out == "answer\n"
    content = router.seen("POST", CHAT)[0].body["messages"][0]["content"]
    assert content == "line one\nline two\n"


def test_empty_stdin_is_a_usage_error(
    router: FakeRouter, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("  \n"))
    assert main(["chat", "m"]) == 2
    assert "the prompt is empty" in capsys.readouterr().err
    assert router.requests == []


def test_one_shot_errors_map_to_exit_codes(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    router.on("POST", CHAT, Reply(401, {"error": {"message": "missing API key"}}))
    assert main(["chat", "m", "hi"]) == 4
    assert "missing API key" in capsys.readouterr().err
    with FakeRouter() as gone:
        url = gone.url
    assert main(["chat", "m", "hi", "--url", url]) == 3


def test_chat_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["chat"], ["chat", "m", "--max-tokens", "0"], ["chat", "m", "--temperature", "x"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
    assert "--max-tokens: '0' is not a whole number >= 1" in capsys.readouterr().err
