"""Paging parameters: sort order, keyset cursors and field projections.

A cursor is opaque to clients: base64url of the JSON ``{"k": sort key, "d": direction,
"v": the last record's sort value, "i": its _id}``, values that JSON lacks (an imported
ObjectId id) in MongoDB Extended JSON. The next page is the records strictly after that
position in (sort key, _id) order, so a walk returns every record that existed when it
started exactly once, however many are inserted meanwhile. Cursors are checked on decode; a
bad one is an ``InvalidQuery`` (400).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bson import Binary, Code, Decimal128, MaxKey, MinKey, ObjectId, Timestamp, json_util

from service.errors import InvalidQuery
from service.query.bson_order import following
from service.query.filters import encodable

# Sort keys with an index on (key, _id): the order a walk follows without an in-memory sort.
SORTABLE = ("_id", "datetime", "label_quality_estimation", "width", "height")
SCORE = "_score"  # the search ranking: computed in the query pipeline, not stored
# The sort key's value, fetched beside a projection to make the next cursor from. Not a name
# that ``fields`` accepts, so it never stands for a stored field.
CURSOR_VALUE = "cursor-value"
MAX_CURSOR_LENGTH = 8192
MAX_FIELDS = 50
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")
_INT64 = 2**63
# Besides strings and finite numbers, the types a cursor may carry (from Extended JSON).
# Not regular expressions or JavaScript code: a regex in a query is a pattern to match.
_EXTENDED_TYPES = (
    ObjectId,
    datetime.datetime,
    Decimal128,
    Binary,
    bytes,  # binary data of subtype 0, as Extended JSON gives it back
    uuid.UUID,
    Timestamp,
    MinKey,
    MaxKey,
)


@dataclass(frozen=True, slots=True)
class SortOrder:
    key: str
    direction: int  # 1 ascending, -1 descending; _id breaks ties in the same direction

    def spec(self) -> list[tuple[str, int]]:
        if self.key == "_id":
            return [("_id", self.direction)]
        return [(self.key, self.direction), ("_id", self.direction)]


BY_ID = SortOrder("_id", 1)
NEWEST = SortOrder("_id", -1)  # record ids begin with their creation time
BY_SCORE = SortOrder(SCORE, -1)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page ended: the last record's sort value and id."""

    value: Any
    id: Any


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


def with_cursor_value(
    projection: Mapping[str, int] | None, order: SortOrder
) -> Mapping[str, Any] | None:
    """The projection to fetch for a page: the requested one, plus the sort key's value as
    ``CURSOR_VALUE`` when the key is not among the fields. Fetched as the key itself, it
    would collide with a requested path inside it (``fields=width.px&sort=width``) and
    come back whole."""
    if projection is None or order.key in projection or order.key == SCORE:
        return projection
    return {**projection, CURSOR_VALUE: f"${order.key}"}


def encode_cursor(order: SortOrder, document: Mapping[str, Any]) -> str:
    """The cursor for the page that follows ``document``."""
    value = None
    if order.key != "_id":
        value = document.get(CURSOR_VALUE, sort_value(document, order.key))
    payload = {
        "k": order.key,
        "d": order.direction,
        "v": _as_json(value),
        "i": _as_json(document["_id"]),
    }
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=True)
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode("ascii")


def _as_json(value: Any) -> Any:
    if value is None or _is_plain(value):
        return value
    return json.loads(json_util.dumps(value, json_options=json_util.CANONICAL_JSON_OPTIONS))


def _is_plain(value: object) -> bool:
    """A value JSON carries as it is: a string the database can store, a bool, or a finite
    number in the int64 or double range. (The cursor's length bounds a string's.)"""
    if isinstance(value, str):
        return encodable(value) and not isinstance(value, Code)
    if isinstance(value, bool):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and -_INT64 <= value < _INT64


def _is_document(value: object) -> bool:
    """An embedded document of literal values: no key is an operator, so that ``{key:
    value}`` is an exact match and never a query."""
    if isinstance(value, dict):
        return all(
            isinstance(key, str) and not key.startswith("$") and encodable(key) and _is_value(item)
            for key, item in value.items()
        )
    return False


def _is_value(value: object) -> bool:
    if isinstance(value, list):
        return all(_is_value(item) for item in value)
    if value is None or isinstance(value, _EXTENDED_TYPES):
        return True
    return _is_plain(value) or _is_document(value)


def _from_json(value: Any) -> Any:
    """A sort value or id back from ``_as_json``; ``ValueError`` when it is not one. Arrays
    are refused: a keyset position cannot stand on one (they sort by an element)."""
    if _is_plain(value):
        return value
    if isinstance(value, dict):
        try:
            decoded = json_util.loads(json.dumps(value))
        except Exception:  # untrusted text: the parser raises many kinds (InvalidId, ...)
            raise ValueError("bad extended JSON") from None
        if isinstance(decoded, (*_EXTENDED_TYPES, float, int)) or _is_document(decoded):
            return decoded  # Extended JSON numbers: NaN and infinities, Int64
    raise ValueError("not a cursor value")


def _refuse(detail: str) -> InvalidQuery:
    return InvalidQuery(f"cursor is not valid: {detail}; start again without one")


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def decode_cursor(token: str, order: SortOrder) -> Position:
    """The position a cursor from ``encode_cursor`` stands for, checked against ``order``."""
    if len(token) > MAX_CURSOR_LENGTH:
        raise _refuse("too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw, parse_constant=_reject_constant)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise _refuse("not a cursor this service issued") from None
    if not isinstance(payload, dict) or set(payload) != {"k", "d", "v", "i"}:
        raise _refuse("not a cursor this service issued")
    if payload["k"] != order.key or payload["d"] != order.direction:
        raise _refuse("it was issued for another sort order")
    # RecursionError: a cursor of objects nested hundreds deep (the length allows it). The
    # id may be null: MongoDB allows one record that id.
    try:
        record_id = None if payload["i"] is None else _from_json(payload["i"])
    except (ValueError, RecursionError):
        raise _refuse("bad record id") from None
    try:
        value = None if payload["v"] is None else _from_json(payload["v"])
    except (ValueError, RecursionError):
        raise _refuse("bad sort value") from None
    if order.key == "_id":
        value = record_id
    return Position(value=value, id=record_id)


def after_filters(order: SortOrder, position: Position) -> list[dict[str, Any]]:
    """Filters for the records after ``position``, in order: ties on the sort key, then the rest.

    Kept as separate plain queries (rather than one ``$or``) so that each can be answered
    from an index, on any server. A comparison matches one BSON type only, so each is
    followed by the types that sort after it (``bson_order``): imported ids may be ObjectIds.
    """
    key, direction = order.key, order.direction
    later_ids = following("_id", position.id, direction)
    if key == "_id":
        return later_ids
    ties = [{key: position.value, **later} for later in later_ids]
    return ties + following(key, position.value, direction)


def after_match(order: SortOrder, position: Position) -> dict[str, Any]:
    """The same condition as one filter, for a pipeline stage."""
    parts = after_filters(order, position)
    return parts[0] if len(parts) == 1 else {"$or": parts}


def drop_cursor_values(documents: Sequence[dict[str, Any]]) -> None:
    """Drop the sort values fetched only to make a cursor (``with_cursor_value``)."""
    for document in documents:
        document.pop(CURSOR_VALUE, None)
