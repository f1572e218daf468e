"""``sllm chat``: a streamed chat with a deployment, as ``ollama run`` has.

Three forms: a prompt argument (one answer, then exit); stdin that is not a terminal (all of it
is one prompt: ``echo hi | sllm chat demo``); else a conversation at a ``>>>`` prompt that keeps
its history, where ``/bye`` or Ctrl-D exits and Ctrl-C stops the answer being written (the
stream is closed, so the router stops the generation) and gives the prompt back.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .api_client import EXIT_AUTH, EXIT_UNREACHABLE, ApiClient, ApiClientError, ApiError
from .api_cmd import EXIT_NOT_FOUND, client, describe, error_exit_code, fail, url_options

PROMPT = ">>> "
HELP = (
    "  /bye     exit (Ctrl-D too)\n"
    "  /clear   forget the conversation so far\n"
    "  /?       this help\n"
    "  Ctrl-C stops an answer being written.\n"
)
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # as a shell reports a command ended by SIGINT
# Errors a retry cannot fix (and a failed deployment's 424): the conversation ends with their
# exit code. Others (a full queue, a bad request) are printed and the prompt comes back.
FATAL_EXIT_CODES = (EXIT_UNREACHABLE, EXIT_AUTH, EXIT_NOT_FOUND)
READ_TIMEOUT_S = 300.0
"""Bound on each read of an answer: the first token may wait for a cold start."""

Write = Callable[[str], None]


@dataclass
class Conversation:
    """The messages so far, and the request that asks the next question."""

    model: str
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # max_tokens, temperature
    history: list[dict[str, str]] = field(default_factory=list)

    def request(self, prompt: str) -> dict[str, Any]:
        """The streamed ``/v1/chat/completions`` body asking ``prompt`` after the history."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return {
            "model": self.model,
            "messages": [*system, *self.history, {"role": "user", "content": prompt}],
            "stream": True,
            **self.options,
        }

    def record(self, prompt: str, answer: str) -> None:
        """Keep a turn. An answer stopped before its first word is no turn: the question
        is dropped with it, so that the next one does not follow an unanswered question."""
        if answer:
            self.history += [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": answer},
            ]

    def clear(self) -> None:
        self.history.clear()


def delta_text(event: dict[str, Any]) -> str:
    """The text a chat completion chunk adds (none for a role-only or usage-only chunk)."""
    choices = event.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ""
    delta = choices[0].get("delta") or {}
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""


@dataclass(frozen=True)
class Answer:
    text: str
    interrupted: bool = False


def stream_answer(events: Iterator[dict[str, Any]], write: Write) -> Answer:
    """Write each piece of the answer as it comes. Ctrl-C stops it; either way the stream is
    closed before this returns (closing the connection tells the router to stop)."""
    parts: list[str] = []
    try:
        for event in events:
            piece = delta_text(event)
            if piece:
                parts.append(piece)  # first: Ctrl-C in the write leaves it on the screen
                write(piece)
    except KeyboardInterrupt:
        return Answer("".join(parts), interrupted=True)
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()
    return Answer("".join(parts))


def ask(api: ApiClient, conversation: Conversation, prompt: str, write: Write) -> Answer:
    """One turn: stream the answer to ``prompt`` and keep it in the conversation."""
    events = api.stream_post("/v1/chat/completions", conversation.request(prompt))
    answer = stream_answer(events, write)
    conversation.record(prompt, answer.text)
    if not answer.text.endswith("\n"):
        write("\n")
    return answer


def repl(
    api: ApiClient,
    conversation: Conversation,
    read_line: Callable[[str], str],
    write: Write,
    error: Write,
) -> int:
    """The conversation at the prompt, until ``/bye``, end of input or a fatal error."""
    while True:
        try:
            line = read_line(PROMPT)
        except EOFError:
            write("\n")
            return 0
        except KeyboardInterrupt:
            write("\nUse Ctrl-D or /bye to exit.\n")
            continue
        text = line.strip()
        if not text:
            continue
        if text == "/bye":
            return 0
        if text == "/clear":
            conversation.clear()
            write("Cleared the conversation.\n")
            continue
        if text in ("/?", "/help"):
            write(HELP)
            continue
        try:
            ask(api, conversation, text, write)
        except ApiClientError as exc:
            code = error_exit_code(exc)
            error(f"sllm chat: {describe(exc)}\n")
            if code in FATAL_EXIT_CODES or _failed_deployment(exc):
                return code
        write("\n")


def _failed_deployment(exc: ApiClientError) -> bool:
    """The router refuses requests for a deployment that failed (424): it never will serve."""
    return isinstance(exc, ApiError) and exc.status == 424


def _stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def cmd_chat(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {}
    if args.max_tokens is not None:
        options["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        options["temperature"] = args.temperature
    conversation = Conversation(args.name, system=args.system, options=options)
    api = client(args, timeout=READ_TIMEOUT_S)
    if args.prompt is None and sys.stdin.isatty():
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        return repl(api, conversation, input, _stdout, _stderr)
    try:
        prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if not prompt.strip():
        print("sllm chat: the prompt is empty", file=sys.stderr)
        return EXIT_USAGE
    try:
        answer = ask(api, conversation, prompt, _stdout)
    except ApiClientError as exc:
        return fail("chat", exc)
    return EXIT_INTERRUPTED if answer.interrupted else 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def add_command(sub: Any) -> None:
    """Register ``chat`` on ``sllm``'s subparsers."""
    p = sub.add_parser(
        "chat",
        parents=[url_options()],
        help="chat with a deployment (streamed); a prompt argument or piped stdin: one answer",
    )
    p.add_argument("name", help="the deployment (model) to talk to")
    p.add_argument("prompt", nargs="?", help="ask this, print the answer and exit")
    p.add_argument("--system", metavar="TEXT", help="a system message that starts the conversation")
    p.add_argument("--max-tokens", type=_positive, metavar="N", help="most tokens per answer")
    p.add_argument(
        "--temperature", type=_number, metavar="T", help="sampling temperature (0: greedy)"
    )
    p.set_defaults(func=cmd_chat)
