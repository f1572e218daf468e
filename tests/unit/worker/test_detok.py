"""Incremental detokenization: held-back partial characters, stop strings across chunks."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from services.worker.detok import IncrementalDetokenizer

pytestmark = pytest.mark.unit


def byte_decode(ids: Sequence[int]) -> str:
    """A toy tokenizer: every id is one byte (what byte-level BPE does at worst)."""
    return bytes(ids).decode("utf-8", errors="replace")


def feed(d: IncrementalDetokenizer, data: bytes, *, step: int = 1) -> list[str]:
    out = []
    for i in range(0, len(data), step):
        out.append(d.add(list(data[i : i + step])))
        if d.stopped:
            break
    return out


def test_a_multibyte_character_is_held_until_complete() -> None:
    d = IncrementalDetokenizer(byte_decode)
    assert feed(d, "a€b".encode()) == ["a", "", "", "€", "b"]
    assert d.finish() == ""


def test_an_incomplete_character_at_the_end_is_flushed_by_finish() -> None:
    d = IncrementalDetokenizer(byte_decode)
    assert feed(d, b"ok\xe2\x82") == ["o", "k", "", ""]
    assert d.finish() == "\ufffd"


def test_invalid_bytes_in_the_middle_do_not_stall_the_stream() -> None:
    d = IncrementalDetokenizer(byte_decode)
    out = feed(d, b"a\x80bc")
    assert "".join(out) + d.finish() == byte_decode(b"a\x80bc")
    assert out[-1] != ""  # text kept flowing after the bad byte


def test_a_long_run_of_invalid_bytes_is_not_held_for_ever() -> None:
    d = IncrementalDetokenizer(byte_decode)
    out = feed(d, b"a" + b"\x80" * 40)
    assert sum(len(t) for t in out[1:]) >= 30  # emitted while the run goes on
    assert "".join(out) + d.finish() == byte_decode(b"a" + b"\x80" * 40)


def test_stop_string_cuts_the_text_before_it() -> None:
    d = IncrementalDetokenizer(byte_decode, stop=["END"])
    out = feed(d, b"hello END world")
    assert "".join(out) == "hello "
    assert d.stopped
    assert d.add([65]) == ""
    assert d.finish() == ""


def test_stop_string_split_across_chunks_is_never_partly_emitted() -> None:
    d = IncrementalDetokenizer(byte_decode, stop=["</s>"])
    assert d.add(list(b"ab<")) == "ab"  # "<" might start the stop string
    assert d.add(list(b"/")) == ""
    assert d.add(list(b"s")) == ""
    assert d.add(list(b">tail")) == ""
    assert d.stopped


def test_a_false_start_of_a_stop_string_is_released() -> None:
    d = IncrementalDetokenizer(byte_decode, stop=["</s>"])
    assert d.add(list(b"a</")) == "a"
    assert d.add(list(b"x")) == "</x"
    assert d.add(list(b"<")) == ""
    assert d.finish() == "<"  # the generation ended: held text is no stop string
    assert not d.stopped


def test_the_earliest_of_several_stop_strings_wins() -> None:
    d = IncrementalDetokenizer(byte_decode, stop=["world", "o w"])
    assert "".join(feed(d, b"hello world", step=4)) == "hell"
    assert d.stopped


def test_a_stop_string_can_be_a_multibyte_character() -> None:
    d = IncrementalDetokenizer(byte_decode, stop=["é"])
    assert d.add([0x61]) == "a"
    assert d.add([0xC3]) == ""  # incomplete: not yet known to be the stop string
    assert d.add([0xA9]) == ""
    assert d.stopped


def test_replayed_tokens_resume_exactly_where_the_first_worker_was() -> None:
    data = "naïve café — END of it".encode()
    whole = IncrementalDetokenizer(byte_decode, stop=["END"])
    full = feed(whole, data)
    for k in range(len(data)):
        first = IncrementalDetokenizer(byte_decode, stop=["END"])
        emitted = feed(first, data[:k])
        resumed = IncrementalDetokenizer(byte_decode, stop=["END"])
        feed(resumed, data[:k])  # replay: its output was already emitted elsewhere
        rest = feed(resumed, data[k:]) if not resumed.stopped else []
        assert "".join(emitted) + "".join(rest) == "".join(full) == "naïve café — "


def test_real_tokenizer_deltas_add_up_to_a_full_decode(tiny_tokenizer: Any) -> None:
    rng = random.Random(0)
    vocab = len(tiny_tokenizer)
    for _ in range(20):
        ids = [rng.randrange(3, vocab) for _ in range(rng.randrange(1, 60))]
        d = IncrementalDetokenizer(
            lambda x: tiny_tokenizer.decode(list(x), skip_special_tokens=True), context=[5, 6]
        )
        text = "".join(d.add([i]) for i in ids) + d.finish()
        assert text == tiny_tokenizer.decode(ids, skip_special_tokens=True)
