"""The engine's own XXH3-64 agrees with the xxhash library on every kernel and length."""

from __future__ import annotations

import random

import pytest
import xxhash

from libs.loader import _native

pytestmark = pytest.mark.unit

LENGTHS = [*range(0, 300), 1023, 1024, 1025, 4096, 65_537, 1 << 20, (4 << 20) + 3]


@pytest.mark.parametrize("kernel", [-1, 0, 1, 2])
def test_xxh3_matches_reference_for_every_length(kernel: int) -> None:
    rng = random.Random(kernel)
    for n in LENGTHS:
        data = rng.randbytes(n)
        try:
            got = _native.xxh3_64(data, kernel)
        except ValueError:
            pytest.skip("this CPU lacks the kernel")
        assert got == xxhash.xxh3_64_intdigest(data), n


def test_xxh3_rejects_non_contiguous_buffers() -> None:
    with pytest.raises(BufferError):
        _native.xxh3_64(memoryview(bytearray(64))[::2])
