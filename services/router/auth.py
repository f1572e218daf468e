"""Optional API keys: ``Authorization: Bearer <key>``, checked the same way on every route."""

from __future__ import annotations

import hmac

from .errors import unauthorized


class ApiKeys:
    """The accepted keys; none means the API is open."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.accepted = [k.encode() for k in keys]

    def check(self, authorization: str | None) -> None:
        """Raise a 401 `ApiError` unless ``authorization`` carries an accepted key."""
        if not self.accepted:
            return
        if not authorization:
            raise unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(" ")
        given = token.strip().encode()
        # Compare against every key, in constant time, so timing says nothing about the keys.
        matches = [hmac.compare_digest(given, k) for k in self.accepted]
        if scheme.lower() != "bearer" or not any(matches):
            raise unauthorized("invalid API key")
