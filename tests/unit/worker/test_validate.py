"""Request checks and model limits (pure)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from libs.protocol.errors import BadRequestError
from services.worker.validate import (
    check_fits_context,
    check_generated,
    check_token_ids,
    context_length,
    eos_ids,
)

pytestmark = pytest.mark.unit


def test_context_check_names_the_numbers() -> None:
    check_fits_context(100, 3996, 4096)
    check_fits_context(100, 10**6, None)
    with pytest.raises(BadRequestError, match=r"100 tokens \+ max_tokens 4000 = 4100 .* 4096"):
        check_fits_context(100, 4000, 4096)


def test_token_ids_must_be_in_the_vocabulary() -> None:
    check_token_ids([0, 5, 1023], 1024, "prompt_token_ids")
    with pytest.raises(BadRequestError, match=r"prompt_token_ids holds token id 1024"):
        check_token_ids([3, 1024], 1024, "prompt_token_ids")
    with pytest.raises(BadRequestError, match="-1"):
        check_token_ids([-1], 1024, "generated_token_ids")


def test_generated_tokens_count_toward_max_tokens() -> None:
    check_generated(16, 16)
    with pytest.raises(BadRequestError, match="more than max_tokens"):
        check_generated(17, 16)


def test_eos_ids_accept_ints_lists_and_none() -> None:
    assert eos_ids(2, None) == {2}
    assert eos_ids([128001, 128009], 128001) == {128001, 128009}
    assert eos_ids(None, None) == frozenset()
    assert eos_ids(True, "x") == frozenset()


def test_context_length_reads_the_usual_config_names() -> None:
    assert context_length(SimpleNamespace(max_position_embeddings=4096)) == 4096
    assert context_length(SimpleNamespace(n_positions=1024)) == 1024
    assert context_length(SimpleNamespace()) is None
