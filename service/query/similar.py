"""Near-duplicate lookup by perceptual hash (64-bit pHash, 16 hex digits).

Each record with a pHash stores ``phash_bands``: the hash cut into four 16-bit bands, each
tagged with its position (``"0:9f3a"``), behind a multikey index. Two hashes within Hamming
distance ``d`` differ in at most ``d`` bits, so by pigeonhole at least one band differs in at
most ``d // 4`` bits. Looking up every band value within that many bits of the query's bands
(``probe_bands``) therefore finds every record within distance ``d``; the exact distance then
decides. For ``d <= 3`` that is the four bands themselves.
"""

from __future__ import annotations

import re
from itertools import combinations
from typing import TypeGuard

BANDS = 4
BAND_BITS = 16
# Band values probed: 4 up to distance 3, 4 * 17 up to 7, 4 * 137 up to 11. The default is
# the largest distance of the middle tier.
DEFAULT_DISTANCE = 7
MAX_DISTANCE = 11
_PHASH = re.compile(r"^[0-9a-f]{16}$")


def is_phash(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _PHASH.fullmatch(value.lower()) is not None


def _band_values(phash_hex: str) -> list[int]:
    if not is_phash(phash_hex):
        raise ValueError(f"a pHash is 16 hex digits, got {phash_hex!r}")
    value = int(phash_hex, 16)
    mask = (1 << BAND_BITS) - 1
    return [(value >> (BAND_BITS * (BANDS - 1 - i))) & mask for i in range(BANDS)]


def _band(position: int, value: int) -> str:
    return f"{position}:{value:04x}"


def phash_bands(phash_hex: str) -> list[str]:
    """The four position-tagged 16-bit bands of a pHash, e.g. ``["0:9f3a", "1:04c2", ...]``."""
    return [_band(i, v) for i, v in enumerate(_band_values(phash_hex))]


def probe_bands(phash_hex: str, max_distance: int) -> list[str]:
    """Every band value that a hash within ``max_distance`` of ``phash_hex`` must share one of."""
    if not 0 <= max_distance <= MAX_DISTANCE:
        raise ValueError(f"max_distance must be in [0, {MAX_DISTANCE}]")
    radius = max_distance // BANDS
    flips = [0]
    for r in range(1, radius + 1):
        flips += [sum(1 << bit for bit in bits) for bits in combinations(range(BAND_BITS), r)]
    return [
        _band(i, value ^ flip) for i, value in enumerate(_band_values(phash_hex)) for flip in flips
    ]


def hamming(a_hex: str, b_hex: str) -> int:
    """Bits that differ between two 64-bit hashes given as hex."""
    return (int(a_hex, 16) ^ int(b_hex, 16)).bit_count()
