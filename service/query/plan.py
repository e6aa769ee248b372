"""Shaping validated filters so that servers can answer them from an index.

``conjoin`` ANDs filters into one flat query document: top-level ``$and`` lists are
spread into plain keys where no key repeats, and keys are ordered most selective first
(point lookups, then indexed equality and ``$in``, then indexed ranges, then the rest).
A query document's keys are ANDed whatever their order, so the result matches exactly the
same records; but planners that do not enumerate plans (the development server takes the
first indexed key, and gives up on any top-level operator) can then use an index.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import bson

_SCALARS = (str, int, float, bool)
_RANGE = frozenset({"$gt", "$gte", "$lt", "$lte"})


@dataclass(frozen=True, slots=True)
class IndexedFields:
    """Fields a collection has indexes on: ``point`` ones are (nearly) unique."""

    fields: frozenset[str]
    point: frozenset[str]


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, _SCALARS)


def _operators(value: Any) -> set[str] | None:
    if isinstance(value, Mapping) and value and all(str(k).startswith("$") for k in value):
        return {str(k) for k in value}
    return None


def condition_kind(value: Any) -> str:
    """``"eq"``, ``"in"``, ``"range"`` or ``"other"``: what an index can do with a condition."""
    if _is_scalar(value):
        return "eq"
    ops = _operators(value)
    if ops is None:
        return "other"
    if ops == {"$eq"} and _is_scalar(value["$eq"]):
        return "eq"
    if ops == {"$in"} and isinstance(value["$in"], list) and all(map(_is_scalar, value["$in"])):
        return "in"
    if ops <= _RANGE and all(_is_scalar(value[op]) for op in ops):
        return "range"
    return "other"


def _rank(key: str, value: Any, indexed: IndexedFields) -> int:
    if key.startswith("$"):
        return 4
    if key not in indexed.fields:
        return 3
    kind = condition_kind(value)
    if kind == "eq":
        return 0 if key in indexed.point else 1
    return {"in": 1, "range": 2}.get(kind, 3)


def _same(a: Any, b: Any) -> bool:
    # BSON equality is order-sensitive for embedded documents, where ``==`` is not.
    return bson.encode({"v": a}) == bson.encode({"v": b})


def _conjuncts(filt: Mapping[str, Any], into: list[tuple[str, Any]]) -> None:
    for key, value in filt.items():
        if key == "$and" and isinstance(value, list) and all(isinstance(v, Mapping) for v in value):
            for item in value:
                _conjuncts(item, into)
        else:
            into.append((key, value))


def conjoin(*filters: Mapping[str, Any], indexed: IndexedFields) -> dict[str, Any]:
    """The AND of ``filters`` as one flat query document, most selective keys first."""
    items: list[tuple[str, Any]] = []
    for filt in filters:
        _conjuncts(filt, items)
    items.sort(key=lambda item: _rank(item[0], item[1], indexed))
    merged: dict[str, Any] = {}
    rest: list[dict[str, Any]] = []
    for key, value in items:
        if key not in merged:
            merged[key] = value
        elif not _same(merged[key], value) and not any(
            key in r and _same(r[key], value) for r in rest
        ):
            rest.append({key: value})
    if rest:
        earlier = merged.get("$and")
        if isinstance(earlier, list):
            rest = [*earlier, *rest]
        elif earlier is not None:  # not a valid $and: keep it for the server to refuse
            rest.insert(0, {"$and": earlier})
        merged["$and"] = rest
    return merged


def is_point_lookup(filt: Mapping[str, Any], indexed: IndexedFields) -> bool:
    """Whether ``filt`` (as ``conjoin`` orders it) starts with an equality on a (nearly)
    unique indexed field: a handful of matches at most, so one page holds them all."""
    if not filt:
        return False
    key, value = next(iter(filt.items()))
    return key in indexed.point and condition_kind(value) == "eq"
