"""Token choice: greedy, top-p filtering, and randomness as a pure function of (seed, position)."""

from __future__ import annotations

import pytest
import torch

from services.worker.sampling import Sampling, choose_token, position_seed, top_p_filter

pytestmark = pytest.mark.unit


def test_top_p_keeps_the_smallest_prefix_reaching_the_mass() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    assert top_p_filter(probs, 0.5).tolist() == [0.5, 0.0, 0.0, 0.0]
    assert top_p_filter(probs, 0.6).tolist() == pytest.approx([0.5, 0.3, 0.0, 0.0])
    assert top_p_filter(probs, 0.8).tolist() == pytest.approx([0.5, 0.3, 0.0, 0.0])
    assert top_p_filter(probs, 0.81).tolist() == pytest.approx([0.5, 0.3, 0.15, 0.0])
    assert top_p_filter(probs, 1.0).tolist() == pytest.approx(probs.tolist())


def test_top_p_always_keeps_the_most_likely_token() -> None:
    probs = torch.tensor([0.9, 0.1])
    assert top_p_filter(probs, 1e-6).tolist() == pytest.approx([0.9, 0.0])


def test_position_seed_is_deterministic_and_spreads() -> None:
    assert position_seed(7, 100) == position_seed(7, 100)
    seeds = {position_seed(s, p) for s in range(20) for p in range(50)}
    assert len(seeds) == 1000  # no two (seed, position) pairs share a stream
    assert all(0 <= s < 1 << 63 for s in seeds)
    # Neighbouring seeds are not shifted copies of each other.
    assert position_seed(1, 5) != position_seed(0, 6)


def test_greedy_is_argmax() -> None:
    logits = torch.tensor([0.1, 3.0, -1.0, 2.9])
    assert choose_token(logits, Sampling(temperature=0.0), position=3) == 1


def test_sampling_depends_only_on_seed_and_position() -> None:
    torch.manual_seed(0)
    logits = torch.randn(512)
    s = Sampling(temperature=1.0, top_p=1.0, seed=1234)
    draws = [choose_token(logits, s, position=p) for p in range(40)]
    torch.manual_seed(99)  # the global RNG plays no part
    assert [choose_token(logits, s, position=p) for p in range(40)] == draws
    assert len(set(draws)) > 10  # it does sample
    other = [choose_token(logits, Sampling(1.0, 1.0, seed=1235), position=p) for p in range(40)]
    assert other != draws


def test_sampling_never_returns_a_token_outside_the_nucleus() -> None:
    logits = torch.log(torch.tensor([0.6, 0.25, 0.1, 0.05]))
    s = Sampling(temperature=1.0, top_p=0.7, seed=5)
    picks = {choose_token(logits, s, position=p) for p in range(300)}
    assert picks == {0, 1}


def test_sampling_follows_the_distribution() -> None:
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1]))
    s = Sampling(temperature=1.0, top_p=1.0, seed=11)
    picks = [choose_token(logits, s, position=p) for p in range(3000)]
    freq = [picks.count(i) / len(picks) for i in range(3)]
    assert freq == pytest.approx([0.7, 0.2, 0.1], abs=0.04)


def test_low_temperature_concentrates_on_the_top_token() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0])
    s = Sampling(temperature=0.05, top_p=1.0, seed=3)
    assert {choose_token(logits, s, position=p) for p in range(200)} == {0}
