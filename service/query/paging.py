"""Paging parameters: sort order, keyset cursors and field projections.

A cursor is opaque to clients: base64url of the JSON ``{"k": sort key, "d": direction,
"v": the last record's sort value, "i": its _id}``. The next page is the records strictly
after that position in (sort key, _id) order, so a walk returns every record that existed
when it started exactly once, however many are inserted meanwhile. Cursors are checked on
decode; a bad one is an ``InvalidQuery`` (400).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.errors import InvalidQuery
from service.query.filters import encodable

# Sort keys with an index on (key, _id): the order a walk follows without an in-memory sort.
SORTABLE = ("_id", "datetime", "label_quality_estimation", "width", "height")
SCORE = "_score"  # the search ranking: computed in the query pipeline, not stored
MAX_CURSOR_LENGTH = 1024
MAX_FIELDS = 50
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")
_INT64 = 2**63


@dataclass(frozen=True, slots=True)
class SortOrder:
    key: str
    direction: int  # 1 ascending, -1 descending; _id breaks ties in the same direction

    def spec(self) -> list[tuple[str, int]]:
        if self.key == "_id":
            return [("_id", self.direction)]
        return [(self.key, self.direction), ("_id", self.direction)]

    @property
    def after_op(self) -> str:
        return "$gt" if self.direction == 1 else "$lt"


BY_ID = SortOrder("_id", 1)
NEWEST = SortOrder("_id", -1)  # record ids begin with their creation time
BY_SCORE = SortOrder(SCORE, -1)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page ended: the last record's sort value and id."""

    value: Any
    id: str


def parse_sort(raw: str | None) -> SortOrder:
    """``"datetime"`` (ascending) or ``"-datetime"`` (descending); only indexed keys."""
    if not raw:
        return BY_ID
    direction = -1 if raw.startswith("-") else 1
    key = raw[1:] if raw[0] in "+-" else raw
    if key not in SORTABLE:
        raise InvalidQuery(
            f"cannot sort by {raw[:60]!r}: sort by one of {', '.join(SORTABLE)}, "
            "with a leading '-' for descending order"
        )
    return SortOrder(key, direction)


def parse_fields(raw: str | None) -> dict[str, int] | None:
    """A projection from ``"url,classes,width"``; ``_id`` is always returned."""
    if not raw:
        return None
    names = [name.strip() for name in raw.split(",") if name.strip()]
    if not names:
        return None
    if len(names) > MAX_FIELDS:
        raise InvalidQuery(f"fields lists {len(names)} names, more than the limit of {MAX_FIELDS}")
    for name in names:
        if len(name) > 200 or not _FIELD.fullmatch(name):
            raise InvalidQuery(f"fields: {name[:60]!r} is not a field name")
    return projection_of([*names, "_id"])


def projection_of(paths: Iterable[str]) -> dict[str, int]:
    """An inclusion projection of ``paths``. A path and its parent together are a projection
    error on the server (path collision), so the parent is kept and the path dropped."""
    unique = set(paths)
    return {
        path: 1
        for path in sorted(unique)
        if not any(path.startswith(other + ".") for other in unique)
    }


def sort_value(document: Mapping[str, Any], key: str) -> Any:
    value: Any = document
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def encode_cursor(order: SortOrder, document: Mapping[str, Any]) -> str:
    """The cursor for the page that follows ``document``."""
    value = None if order.key == "_id" else sort_value(document, order.key)
    payload = {"k": order.key, "d": order.direction, "v": value, "i": document["_id"]}
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=True)
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode("ascii")


def _refuse(detail: str) -> InvalidQuery:
    return InvalidQuery(f"cursor is not valid: {detail}; start again without one")


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _is_text(value: object, max_length: int) -> bool:
    """A non-empty string the database can store."""
    return isinstance(value, str) and 0 < len(value) <= max_length and encodable(value)


def decode_cursor(token: str, order: SortOrder) -> Position:
    """The position a cursor from ``encode_cursor`` stands for, checked against ``order``."""
    if len(token) > MAX_CURSOR_LENGTH:
        raise _refuse("too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw, parse_constant=_reject_constant)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _refuse("not a cursor this service issued") from None
    if not isinstance(payload, dict) or set(payload) != {"k", "d", "v", "i"}:
        raise _refuse("not a cursor this service issued")
    if payload["k"] != order.key or payload["d"] != order.direction:
        raise _refuse("it was issued for another sort order")
    record_id, value = payload["i"], payload["v"]
    if not _is_text(record_id, 200):
        raise _refuse("bad record id")
    if value is not None and not (
        isinstance(value, str | int | float)
        and not isinstance(value, bool)
        and (not isinstance(value, float) or math.isfinite(value))
        and (not isinstance(value, int) or -_INT64 <= value < _INT64)
        and (not isinstance(value, str) or _is_text(value, 400))
    ):
        raise _refuse("bad sort value")
    if order.key == "_id":
        value = record_id
    return Position(value=value, id=record_id)


def after_filters(order: SortOrder, position: Position) -> list[dict[str, Any]]:
    """Filters for the records after ``position``, in order: ties on the sort key, then the rest.

    Kept as separate plain queries (rather than one ``$or``) so that each can be answered
    from an index, on any server.
    """
    op = order.after_op
    if order.key == "_id":
        return [{"_id": {op: position.id}}]
    ties = {order.key: position.value, "_id": {op: position.id}}
    # Missing (and null) values sort before all others: first in ascending order, last in
    # descending order, and no comparison operator matches them.
    if position.value is None:
        return [ties, {order.key: {"$ne": None}}] if order.direction == 1 else [ties]
    rest = [ties, {order.key: {op: position.value}}]
    return rest if order.direction == 1 else [*rest, {order.key: None}]


def after_match(order: SortOrder, position: Position) -> dict[str, Any]:
    """The same condition as one filter, for a pipeline stage."""
    parts = after_filters(order, position)
    return parts[0] if len(parts) == 1 else {"$or": parts}


def strip_fields(
    documents: Sequence[dict[str, Any]], requested: Mapping[str, int], fetched: Mapping[str, int]
) -> None:
    """Drop top-level fields that were fetched only to build a cursor."""
    extra = {name.split(".")[0] for name in fetched} - {name.split(".")[0] for name in requested}
    for document in documents:
        for name in extra:
            document.pop(name, None)
