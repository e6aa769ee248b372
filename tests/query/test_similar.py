"""pHash bands: probing to a distance finds every hash within it."""

from __future__ import annotations

import random

import pytest

from service.query.similar import (
    MAX_DISTANCE,
    hamming,
    is_phash,
    phash_bands,
    probe_bands,
)


def test_bands() -> None:
    assert phash_bands("0123456789abcdef") == ["0:0123", "1:4567", "2:89ab", "3:cdef"]
    assert phash_bands("0123456789ABCDEF") == phash_bands("0123456789abcdef")
    for bad in ("", "0123", "0123456789abcdeg", "0123456789abcdef0"):
        assert not is_phash(bad)
        with pytest.raises(ValueError, match="16 hex digits"):
            phash_bands(bad)
    assert hamming("ffffffffffffffff", "0000000000000000") == 64
    assert hamming("0000000000000001", "0000000000000003") == 1


def test_probe_sizes() -> None:
    assert sorted(probe_bands("0123456789abcdef", 3)) == sorted(phash_bands("0123456789abcdef"))
    assert len(probe_bands("0123456789abcdef", 7)) == 4 * 17
    assert len(probe_bands("0123456789abcdef", MAX_DISTANCE)) == 4 * 137
    with pytest.raises(ValueError, match="max_distance"):
        probe_bands("0123456789abcdef", MAX_DISTANCE + 1)


@pytest.mark.parametrize("distance", [0, 1, 3, 4, 7, 8, MAX_DISTANCE])
def test_probing_finds_every_hash_within_the_distance(distance: int) -> None:
    rng = random.Random(distance)
    for _ in range(300):
        base = rng.getrandbits(64)
        flipped = base
        for bit in rng.sample(range(64), distance):
            flipped ^= 1 << bit
        a, b = f"{base:016x}", f"{flipped:016x}"
        assert hamming(a, b) == distance
        assert set(phash_bands(b)) & set(probe_bands(a, distance))
