"""What the CLI's REST API commands (``deploy``, ``ls``, ``rm``, ``chat``) share: the ``--url``
option, the client they build from it, and how a failed call becomes a message and an exit code.

Exit codes: 0 ok, 1 the server answered an error, 2 usage error (argparse's own), 3 cannot
connect, 4 key refused (401/403), 5 not found (404).
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from .api_client import DEFAULT_URL, ApiClient, ApiClientError, ApiError, exit_code

EXIT_NOT_FOUND = 5


def url_options() -> argparse.ArgumentParser:
    """A parent parser with ``--url``, for every subcommand that calls the router."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--url",
        default=None,
        help=f"the router (default: $SLLM_URL, else {DEFAULT_URL}, where `sllm up` serves); "
        "the API key comes from $SLLM_API_KEY",
    )
    return parent


def client(args: argparse.Namespace, timeout: float = 60.0) -> ApiClient:
    """The client for ``args.url`` (or the environment's), key from ``SLLM_API_KEY``."""
    return ApiClient(url=args.url, timeout=timeout)


def error_exit_code(exc: ApiClientError) -> int:
    """`api_client.exit_code`, with a 404 told apart (5), so scripts can test for absence."""
    if isinstance(exc, ApiError) and exc.status == 404:
        return EXIT_NOT_FOUND
    return exit_code(exc)


def fail(command: str, exc: ApiClientError, stream: TextIO | None = None) -> int:
    """Print what went wrong as ``sllm COMMAND: ...`` on stderr; return the exit code."""
    print(f"sllm {command}: {describe(exc)}", file=stream or sys.stderr)
    return error_exit_code(exc)


def describe(exc: ApiClientError) -> str:
    """One line for a person: the server's message, with what to do for the common cases."""
    if isinstance(exc, ApiError):
        if exc.status == 401:
            return f"{exc.message} (set SLLM_API_KEY to a key the router accepts)"
        if exc.status == 403:
            return f"{exc.message} (the key in SLLM_API_KEY may not do this: deployments need an admin key)"
        return exc.message
    return str(exc)
