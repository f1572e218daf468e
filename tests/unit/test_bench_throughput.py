"""The throughput benchmark's pure parts: exact-length prompts, a point's figures, the targets."""

from __future__ import annotations

import math

import pytest

from benchmarks.throughput.inprocess import Bound
from benchmarks.throughput.prompts import exact_prompts
from benchmarks.throughput.report import (
    T_BOUND,
    T_C1,
    T_FAIR,
    T_FIFO,
    T_PEER,
    Row,
    summary,
    targets,
)
from benchmarks.throughput.stats import Point, Request, fifo_inversions, per_client, summarize

pytestmark = pytest.mark.unit


def _chars(text: str) -> list[int]:
    return [ord(c) for c in text]


def _text(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids)


def test_exact_prompts_have_the_length_and_round_trip_and_distinct_starts() -> None:
    corpus = _chars("the quick brown fox jumps over the lazy dog " * 20)
    prompts = exact_prompts(_chars, _text, corpus, 16, 30, seed=3)
    assert len(prompts) == 30
    assert all(len(p.ids) == 16 and _chars(p.text) == list(p.ids) for p in prompts)
    assert prompts == exact_prompts(_chars, _text, corpus, 16, 30, seed=3)


def test_exact_prompts_skip_windows_that_do_not_round_trip() -> None:
    def encode(text: str) -> list[int]:  # "ab" merges into one token, as BPE would
        return _chars(text.replace("ab", "\x01"))

    corpus = encode("xaby" * 10)
    prompts = exact_prompts(encode, lambda ids: _text(ids).replace("\x01", "ab"), corpus, 3, 5)
    assert all(encode(p.text) == list(p.ids) for p in prompts)
    with pytest.raises(ValueError, match="corpus has"):
        exact_prompts(encode, _text, corpus, len(corpus), 1)


def test_per_client_shares_the_total_with_a_floor() -> None:
    assert per_client(32, 1, 2) == 32
    assert per_client(32, 4, 2) == 8
    assert per_client(32, 16, 2) == 2
    assert per_client(32, 32, 2) == 2
    assert per_client(10, 4, 1) == 3


def test_itl_divides_chunk_gaps_by_tokens_per_chunk() -> None:
    r = Request(client=0, prompt_tokens=8, sent_at=0.0, chunk_s=[0.5, 0.7, 0.9, 1.1])
    assert r.ttft_s == 0.5
    assert r.tokens == 4
    assert r.itl_s() == pytest.approx([0.2, 0.2, 0.2])
    r.completion_tokens = 8  # two tokens per chunk
    assert r.itl_s() == pytest.approx([0.1, 0.1, 0.1])


def test_summarize_counts_tokens_of_finished_requests_over_the_wall_time() -> None:
    good = Request(0, 8, 0.0, chunk_s=[0.1, 0.2], completion_tokens=4, done_s=0.3)
    short = Request(1, 8, 0.0, chunk_s=[0.3], completion_tokens=1, done_s=0.4)
    bad = Request(2, 8, 0.0, error="HTTP 500: boom")
    p = summarize([good, short, bad], wall_s=2.0, max_tokens=4)
    assert (p.requests, p.failed, p.tokens, p.short) == (3, 1, 5, 1)
    assert p.tokens_per_s == 2.5
    assert p.ttft_p50_s == pytest.approx(0.2)
    assert p.errors == ("HTTP 500: boom",)


def _point(
    tps: float, p50: float = 1.0, p99: float = 2.0, pairs: int = 0, inversions: int = 0
) -> Point:
    return Point(10, 0, 100, 1.0, tps, p50, p99, 0.01, 0.02, 0, (), pairs, inversions)


def test_fifo_inversions_count_overtakes_of_requests_sent_apart_only() -> None:
    first_wave = [Request(c, 8, 0.0 + 0.001 * c, chunk_s=[1.0 + 0.5 * (3 - c)]) for c in range(4)]
    # Sent together: no pairs, whatever the order of their first tokens.
    assert fifo_inversions(first_wave) == (0, 0)
    early = Request(0, 8, 10.0, chunk_s=[2.0])  # first token at 12.0
    late_fair = Request(1, 8, 10.5, chunk_s=[2.0])  # 12.5: after the early one
    late_unfair = Request(2, 8, 11.0, chunk_s=[0.5])  # 11.5: overtakes the early one
    failed = Request(3, 8, 9.0, error="HTTP 500")
    assert fifo_inversions([early, late_fair, failed]) == (1, 0)
    assert fifo_inversions([early, late_fair, late_unfair]) == (3, 2)
    p = summarize([early, late_fair, late_unfair], wall_s=3.0, max_tokens=1)
    assert (p.fifo_pairs, p.fifo_inversions) == (3, 2)


def test_the_fifo_target_judges_sllm_where_it_has_pairs() -> None:
    assert targets(Row(64, 4, 4, sllm=_point(1.0, pairs=6)))[T_FIFO] == "PASS"
    assert targets(Row(64, 4, 4, sllm=_point(1.0, pairs=6, inversions=1)))[T_FIFO] == "FAIL"
    assert T_FIFO not in targets(Row(64, 4, 4, sllm=_point(1.0)))


def test_targets_judge_only_the_points_they_apply_to() -> None:
    bound = Bound(tokens_per_s={"generate": 100.0, "generate_batch": float("nan")})
    assert bound.best == ("generate", 100.0)
    row = Row(64, 16, 2, sllm=_point(90.0, 1.0, 2.9), peer=_point(80.0), bound=bound)
    assert targets(row) == {T_PEER: "PASS", T_BOUND: "PASS", T_FAIR: "PASS"}
    slow = Row(512, 4, 8, sllm=_point(70.0), peer=_point(80.0), bound=bound)
    assert targets(slow) == {T_PEER: "FAIL", T_BOUND: "FAIL"}
    one = Row(64, 1, 32, sllm=_point(95.0), reference_tps=100.0)
    assert targets(one) == {T_C1: "PASS"}
    assert targets(Row(64, 1, 32, sllm=_point(95.0))) == {T_C1: "n/a"}
    lines = summary([row, slow, one])
    assert lines[0].startswith(f"- {T_PEER}: 1/2 points")
    assert "FAIL (prompt 512" in lines[0]
    tail = Row(64, 16, 2, sllm=_point(90.0, 1.0, 3.5))
    assert targets(tail)[T_FAIR] == "FAIL"


def test_a_failed_bound_is_no_bound() -> None:
    method, best = Bound(tokens_per_s={"generate": float("nan")}).best
    assert method == ""
    assert math.isnan(best)
