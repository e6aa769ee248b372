"""Where a value's BSON type stands in MongoDB's sort order across types.

A query's ``$gt`` or ``$lt`` compares only within one BSON type, while a sort orders across
types: numbers before strings before objects ... before ObjectIds before dates. A walk in sort
order that has passed the last value of one type goes on with ``$type`` queries for the
types on that side, which any index on the field answers.
"""

from __future__ import annotations

import datetime
import math
import re
import uuid
from collections.abc import Sequence
from typing import Any

from bson import Binary, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp

# The $type aliases of each rank in the sort order. Arrays sort by an element, not as a
# type, and null stands for missing fields too: both are left to the callers.
RANKS: Sequence[tuple[str, ...]] = (
    ("minKey",),
    ("null",),
    ("double", "int", "long", "decimal"),
    ("string", "symbol"),
    ("object",),
    ("binData",),
    ("objectId",),
    ("bool",),
    ("date",),
    ("timestamp",),
    ("regex",),
    ("maxKey",),
)
_RANK_OF: Sequence[tuple[tuple[type, ...], int]] = (
    ((MinKey,), 0),
    ((type(None),), 1),
    ((bool,), 7),  # before int: bool is a subclass of int
    ((int, float, Int64, Decimal128), 2),
    ((str,), 3),
    ((dict,), 4),
    ((bytes, Binary, uuid.UUID), 5),
    ((ObjectId,), 6),
    ((datetime.datetime,), 8),
    ((Timestamp,), 9),
    ((Regex, re.Pattern), 10),
    ((MaxKey,), 11),
)


def rank(value: Any) -> int:
    """The rank of ``value``'s type in ``RANKS``."""
    for kinds, position in _RANK_OF:
        if isinstance(value, kinds):
            return position
    raise TypeError(f"no BSON sort rank for {type(value).__name__}")


def types_after(value: Any, direction: int, *, skip_null: bool = False) -> list[str]:
    """The ``$type`` aliases of the types that sort after ``value``'s type in ``direction``
    (1 ascending, -1 descending); without null when ``skip_null``."""
    here = rank(value)
    ranks = RANKS[here + 1 :] if direction == 1 else RANKS[:here]
    return [alias for group in ranks if not (skip_null and group == ("null",)) for alias in group]


def beyond(value: Any, op: str) -> dict[str, Any]:
    """The comparison matching the values of ``value``'s type after it in sort order, for
    ``op`` ``$gt`` (ascending) or ``$lt`` (descending).

    NaN sorts before every other number but compares false with all of them, so what follows
    it ascending is every number that is not NaN (imported data can hold NaN ids or values).
    """
    if op == "$gt" and _is_nan(value):
        return {"$gte": -math.inf}
    return {op: value}


def _is_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, Decimal128) and value.to_decimal().is_nan()
