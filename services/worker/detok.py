"""Incremental detokenization with stop strings: token ids in, safe text deltas out.

Pure logic over a ``decode(ids) -> str`` function, so it is tested with plain data. Two things
are held back until they are certain: a trailing incomplete UTF-8 character (decoded as
U+FFFD until its last byte arrives), and a trailing piece of text that may be the start of a
stop string. Decoding works on a short sliding window of ids, so each step costs O(window),
not O(tokens so far).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"

# Context ids decoded in front of the first new token, so that tokenizers which drop a
# leading space at the start of a decode (SentencePiece) still render the first token right.
CONTEXT_IDS = 5

# A UTF-8 character spans at most 4 bytes, so a replacement character that persists over this
# many tokens is invalid bytes, not an incomplete character: emit it rather than hold the text
# (and grow the window) for ever.
MAX_HELD_IDS = 8


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas that never need to be taken back.

    Args:
        decode: ids -> text (special tokens skipped), e.g. a tokenizer's ``decode``.
        context: ids before the first new token (the prompt); only the last few are used.
        stop: stop strings; the text ends just before the first one, which is not emitted.
    """

    def __init__(
        self,
        decode: Callable[[Sequence[int]], str],
        context: Sequence[int] = (),
        stop: Sequence[str] = (),
    ) -> None:
        self._decode = decode
        self._ids: list[int] = list(context[-CONTEXT_IDS:])
        self._prefix = 0  # window start: ids decoded only as context for the ones after
        self._read = len(self._ids)  # ids before this are already turned into text
        self._pending = ""  # text decoded but not yet emitted (held back for stop strings)
        self._stops = tuple(s for s in stop if s)
        self.stopped = False

    def add(self, ids: Sequence[int]) -> str:
        """Feed new ids; return the text that is now certain (possibly empty)."""
        if self.stopped:
            return ""
        self._ids.extend(ids)
        self._advance(final=False)
        return self._release(final=False)

    def finish(self) -> str:
        """The generation ended: return everything still held back (up to a stop string)."""
        if self.stopped:
            return ""
        self._advance(final=True)
        return self._release(final=True)

    def _advance(self, *, final: bool) -> None:
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        incomplete = after.endswith(REPLACEMENT) and len(self._ids) - self._read < MAX_HELD_IDS
        if len(after) <= len(before) or (incomplete and not final):
            return  # nothing new, or a character still incomplete
        self._pending += after[len(before) :]
        # Slide the window: the ids just decoded become the next step's context.
        del self._ids[: self._read]
        self._prefix, self._read = 0, len(self._ids)

    def _release(self, *, final: bool) -> str:
        text = self._pending
        cut = min((i for s in self._stops if (i := text.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return text[:cut]
        keep = 0 if final else self._stop_prefix_len(text)
        self._pending = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that begins some stop string."""
        best = 0
        for s in self._stops:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best
