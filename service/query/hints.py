"""Rewriting vetted filters so that indexes can serve them.

Records keep detections in the legacy nested shape ``object_analysis: [[box, ...]]``,
which no index can serve; ``classes`` is its flat, indexed twin. ``add_index_hints``
replaces or accompanies conditions on the nested shape with conditions on ``classes``,
never changing which records match.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from service.query.operators import LOGICAL


def add_index_hints(filt: dict[str, Any]) -> dict[str, Any]:
    """Return an equivalent filter with implied predicates on the indexed ``classes`` field.

    Records keep detections in the legacy nested shape ``object_analysis: [[box, ...]]``,
    which no index can serve. ``classes`` is the flat, indexed list of classnames, and
    this relies on the invariant every writer of records must keep: *every ``classname``
    of every box in every inner list of ``object_analysis`` is an element of
    ``classes``*. So a record matching

        {"object_analysis": {"$elemMatch": {"$elemMatch": {"classname": X, ...}}}}

    has a box whose classname is X (or, for ``{"$in": L}``, one of L), hence also matches
    ``{"classes": X}`` (``{"classes": {"$in": L}}``). AND-ing that implied predicate onto
    the filter therefore never changes which records match, and it lets the planner use
    the ``classes`` index.

    Only conditions that every match must satisfy are used: those at top level or inside
    a top-level ``$and`` (recursively through ``$and`` alone). Conditions under ``$or``,
    ``$nor``, ``$not`` or an outer ``$elemMatch`` are not implied by a match and are left
    alone, as are classname conditions other than a string, ``{"$eq": str}`` or
    ``{"$in": [str, ...]}`` (``$regex``, ``$ne``, ``$nin``, ``$exists``...).

    Hints become extra items of the top-level ``$and`` (created as
    ``{"$and": [original, hint, ...]}`` when there is none). The input is not modified;
    applying the function twice adds nothing more.

    Records written by this service keep the stronger invariant that ``classes`` is
    *exactly* the set of classnames in ``object_analysis``. Then the bare Cortex form, whose
    innermost document holds nothing but the classname condition, is not just implied by
    but equivalent to ``{"classes": X}``, and is replaced by it outright: the server answers
    from the index without reading each candidate's nested boxes.
    """
    result: dict[str, Any] = copy.deepcopy(dict(filt))
    hints: list[dict[str, Any]] = []
    _collect_hints(result, hints)
    existing = result.get("$and")
    present: list[Any] = existing if isinstance(existing, list) else []
    new: list[dict[str, Any]] = []
    for hint in hints:
        already = hint in new or hint in present
        if already or ("classes" in result and result["classes"] == hint["classes"]):
            continue
        new.append(hint)
    if not new:
        return result
    if isinstance(existing, list):
        result["$and"] = [*existing, *new]
        return result
    return {"$and": [result, *new]}


def _collect_hints(doc: dict[str, Any], hints: list[dict[str, Any]]) -> None:
    equivalent = _equivalent_classes(doc.get("object_analysis"))
    if equivalent is not None and "classes" not in doc:
        del doc["object_analysis"]
        doc["classes"] = equivalent
    for key, value in doc.items():
        if key == "$and" and isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    _collect_hints(item, hints)
        elif key == "object_analysis":
            outer = _elem_match_argument(value)
            inner = _elem_match_argument(outer) if outer is not None else None
            if inner is None or "classname" not in inner:
                continue
            if any(
                not isinstance(k, str) or (k.startswith("$") and k not in LOGICAL) for k in inner
            ):
                continue  # not a valid query document; leave it to the server to refuse
            implied = _implied_classes(inner["classname"])
            if implied is not None:
                hints.append({"classes": implied})


def _equivalent_classes(condition: Any) -> Any:
    """``X`` when ``condition`` is exactly ``{"$elemMatch": {"$elemMatch": {"classname": X}}}``
    with X a string, ``{"$eq": str}`` or ``{"$in": [str, ...]}``; else None."""
    if not isinstance(condition, Mapping) or set(condition) != {"$elemMatch"}:
        return None
    outer = condition["$elemMatch"]
    if not isinstance(outer, Mapping) or set(outer) != {"$elemMatch"}:
        return None
    inner = outer["$elemMatch"]
    if not isinstance(inner, Mapping) or set(inner) != {"classname"}:
        return None
    classname = inner["classname"]
    # Only a lone $eq or $in: beside other operators it is implied, not equivalent.
    if isinstance(classname, Mapping) and len(classname) != 1:
        return None
    return _implied_classes(classname)


def _elem_match_argument(condition: Any) -> Mapping[str, Any] | None:
    """The argument of ``$elemMatch`` in an operator document, if it has one.

    Every operator in such a document must hold, so ``$elemMatch`` beside others still
    must; an ``$elemMatch`` under ``$not`` is not a key of this document and is not seen.
    """
    if not isinstance(condition, Mapping) or "$elemMatch" not in condition:
        return None
    if not all(isinstance(k, str) and k.startswith("$") and k not in LOGICAL for k in condition):
        return None
    argument = condition["$elemMatch"]
    return argument if isinstance(argument, Mapping) else None


def _implied_classes(classname: Any) -> Any:
    if isinstance(classname, str):
        return classname
    if not isinstance(classname, Mapping) or not all(
        isinstance(k, str) and k.startswith("$") for k in classname
    ):
        return None
    equal = classname.get("$eq")
    if isinstance(equal, str):
        return equal
    members = classname.get("$in")
    if isinstance(members, list) and members and all(isinstance(m, str) for m in members):
        return {"$in": list(members)}
    return None
