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

from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp

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
    ("javascript", "javascriptWithScope"),
    ("maxKey",),
)
NULL = 1
_NUMBERS = 2
_RANK_OF: Sequence[tuple[tuple[type, ...], int]] = (
    ((MinKey,), 0),
    ((type(None),), NULL),
    ((bool,), 7),  # before int: bool is a subclass of int
    ((int, float, Int64, Decimal128), _NUMBERS),
    ((Code,), 11),  # before str: Code is a subclass of str
    ((str,), 3),
    ((dict,), 4),
    ((bytes, Binary, uuid.UUID), 5),
    ((ObjectId,), 6),
    ((datetime.datetime,), 8),
    ((Timestamp,), 9),
    ((Regex, re.Pattern), 10),
    ((MaxKey,), 12),
)
# NaN in either numeric type: MongoDB's equality matches it, its comparisons never do.
NANS = [float("nan"), Decimal128("NaN")]


def rank(value: Any) -> int:
    """The rank of ``value``'s type in ``RANKS``."""
    for kinds, position in _RANK_OF:
        if isinstance(value, kinds):
            return position
    raise TypeError(f"no BSON sort rank for {type(value).__name__}")


def types_after(value: Any, direction: int) -> list[str]:
    """The ``$type`` aliases of the types that sort after ``value``'s type in ``direction``
    (1 ascending, -1 descending)."""
    here = rank(value)
    return _aliases(RANKS[here + 1 :] if direction == 1 else RANKS[:here])


def later_types(key: str, value: Any, direction: int) -> list[dict[str, Any]]:
    """Queries for the values of ``key`` of the types after ``value``'s in ``direction``, in
    that order. A field that may be missing (any but ``_id``) sorts as null then, and no
    ``$type`` matches it: null is a query of its own there, between minKey and the numbers."""
    if key == "_id":
        later = types_after(value, direction)
        return [{key: {"$type": later}}] if later else []
    here = rank(value)
    if direction == 1:
        later = _aliases(RANKS[max(here, NULL) + 1 :])
        queries: list[dict[str, Any]] = [{key: None}] if here < NULL else []
        return queries + ([{key: {"$type": later}}] if later else [])
    above_null = _aliases(RANKS[NULL + 1 : here])
    queries = [{key: {"$type": above_null}}] if above_null else []
    if here > NULL:
        queries.append({key: None})
    if here > 0:
        queries.append({key: {"$type": _aliases(RANKS[:NULL])}})
    return queries


def _aliases(ranks: Sequence[tuple[str, ...]]) -> list[str]:
    return [alias for group in ranks for alias in group]


def beyond(value: Any, op: str) -> dict[str, Any] | None:
    """The comparison matching the values of ``value``'s type after it in sort order, for
    ``op`` ``$gt`` (ascending) or ``$lt`` (descending); None when none can follow it there
    (null, minKey and maxKey are types of one value).

    NaN sorts before every other number but compares false with all of them, so what follows
    it ascending is every number that is not NaN (imported data can hold NaN ids or values),
    and nothing descending.
    """
    if rank(value) in (0, NULL, len(RANKS) - 1):
        return None
    if _is_nan(value):
        return {"$gte": -math.inf} if op == "$gt" else None
    return {op: value}


def following(key: str, value: Any, direction: int) -> list[dict[str, Any]]:
    """The queries for the values of ``key`` after ``value`` in sort order (1 ascending, -1
    descending), in turn: of its type, its NaNs (after every other number, descending), then
    of the types after it."""
    after = beyond(value, "$gt" if direction == 1 else "$lt")
    queries = [{key: after}] if after is not None else []
    if direction == -1 and rank(value) == _NUMBERS and not _is_nan(value):
        queries.append({key: {"$in": NANS}})
    return queries + later_types(key, value, direction)


def _is_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, Decimal128) and value.to_decimal().is_nan()
