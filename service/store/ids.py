"""How the API names records: ids as stored, and an imported ObjectId id as its 24 hex digits.

A client sees an ObjectId id as its hex digits and sends them back as a string, so every
place that takes an id from a client (a path, ``_id`` in a filter) matches either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import bson


def id_filter(record_id: str) -> dict[str, Any]:
    """The filter for the record the API names ``record_id``. Records made here have string
    ids; imported ones keep theirs, and an ObjectId id is shown as its 24 hex digits."""
    return {"_id": _id_literal(record_id)}


def with_id_aliases(filt: Mapping[str, Any]) -> dict[str, Any]:
    """``filt`` with every ``_id`` given as 24 hex digits also matching the ObjectId the API
    shows that way: as a value, in ``$eq``, ``$ne``, ``$in`` and ``$nin``, at top level and
    through ``$and``, ``$or`` and ``$nor``."""
    aliased: dict[str, Any] = {}
    for key, value in filt.items():
        if key in ("$and", "$or", "$nor") and isinstance(value, list):
            value = [with_id_aliases(part) if isinstance(part, Mapping) else part for part in value]
        elif key == "_id":
            value = _id_condition(value)
        aliased[key] = value
    return aliased


def _id_condition(value: Any) -> Any:
    if not isinstance(value, Mapping):
        return _id_literal(value)
    condition = dict(value)
    for op in ("$in", "$nin"):
        if isinstance(condition.get(op), list):
            condition[op] = [alias for v in condition[op] for alias in _aliases(v)]
    # One value under $eq or $ne becomes a list under $in or $nin; beside a list there
    # already, $eq keeps those of its aliases the list holds, $ne adds its aliases to it.
    for single, listed in (("$eq", "$in"), ("$ne", "$nin")):
        aliases = _aliases(condition[single]) if single in condition else []
        if len(aliases) < 2:
            continue
        if listed not in condition:
            condition[listed] = aliases
        elif not isinstance(others := condition[listed], list):
            continue  # the database refuses it as it is
        elif single == "$eq":
            condition[listed] = [alias for alias in aliases if alias in others]
        else:
            condition[listed] = [*others, *aliases]
        del condition[single]
    return condition


def _id_literal(value: Any) -> Any:
    aliases = _aliases(value)
    return value if len(aliases) == 1 else {"$in": aliases}


def _aliases(value: Any) -> list[Any]:
    return [value, bson.ObjectId(value)] if is_object_id_hex(value) else [value]


def is_object_id_hex(value: object) -> bool:
    """24 hex digits: how the API shows an imported record's ObjectId id."""
    return isinstance(value, str) and len(value) == 24 and bson.ObjectId.is_valid(value)
