"""Client-supplied MongoDB filters: parsing and validation.

API-key holders query records with a MongoDB filter sent as JSON (``?q=``).
``parse_filter`` and ``validate_filter`` accept a read-only subset of the query language
and return a fresh copy built only from vetted parts. Anything else raises
``InvalidQuery`` whose detail names the operator or field and where it sits:

* Operators: ``$and $or $nor`` at query level only, each with a non-empty list of query
  objects; ``$eq $ne $gt $gte $lt $lte $in $nin $exists $type $all $size $elemMatch $not
  $regex $options`` inside a field condition. Server-side JavaScript (``$where``,
  ``$function``, ``$accumulator``), ``$expr``, ``$jsonSchema``, ``$text`` and every other
  operator are refused.
* Field names: non-empty, at most 200 characters, no NUL, no dotted-path segment that is
  empty or starts with ``$``. Literal values are plain JSON: no ``$`` keys inside them,
  no NaN or infinities, integers within int64, strings that encode as UTF-8.
* Size: raw text up to ``max_bytes``, nesting up to ``max_depth`` objects/arrays,
  ``max_nodes`` keys and list items in all, ``max_list_length`` items per
  ``$in``/``$nin``/``$all``/``$type`` list.
* Regexes: up to ``max_regex_length`` characters, ``$options`` letters from ``imsx``,
  and a shape that cannot backtrack catastrophically (``service.query.regex_shape``).

The operator tables are ``service.query.operators``; rewriting a vetted filter so that
indexes can serve it is ``service.query.hints``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from service.errors import InvalidQuery
from service.query.operators import (
    COMPARISONS,
    FIELD_OPERATORS,
    LOGICAL,
    REFUSED,
    REGEX_OPTIONS,
    TYPE_ALIASES,
    TYPE_CODES,
    UNSUPPORTED,
)
from service.query.regex_shape import RegexRefused, check_regex_shape
from service.query.regex_shape import printable as _show

__all__ = ["FilterLimits", "parse_filter", "validate_filter"]


@dataclass(frozen=True, slots=True)
class FilterLimits:
    max_depth: int = 12  # nesting depth of objects/arrays in the filter
    max_nodes: int = 500  # total number of dict keys + list items
    max_list_length: int = 500  # for $in/$nin/$all/$type (items count as nodes too)
    max_regex_length: int = 256
    max_bytes: int = 16_384  # of the raw JSON text


MAX_FIELD_NAME_LENGTH = 200

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def parse_filter(raw: str | bytes | None, limits: FilterLimits = FilterLimits()) -> dict[str, Any]:
    """Parse the JSON text of a ``?q=`` filter and return the validated filter.

    ``None`` and the empty string mean "no filter" and give ``{}``.
    """
    if raw is None or len(raw) == 0:
        return {}
    if isinstance(raw, bytes):
        size = len(raw)
    else:
        # A character is at least one byte, so this skips encoding huge strings.
        size = (
            len(raw) if len(raw) > limits.max_bytes else len(raw.encode("utf-8", "surrogatepass"))
        )
    if size > limits.max_bytes:
        raise InvalidQuery(
            f"filter is {size} bytes, more than the limit of {limits.max_bytes} bytes"
        )
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidQuery("filter is not valid UTF-8") from None
    else:
        text = raw
    try:
        value = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise InvalidQuery(
            f"filter is nested too deeply: more than {limits.max_depth} levels"
        ) from None
    except json.JSONDecodeError as exc:
        raise InvalidQuery(
            f"filter is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except ValueError as exc:  # e.g. an integer literal with too many digits
        raise InvalidQuery(f"filter is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidQuery(f"filter must be a JSON object, not {_kind(value)}")
    return validate_filter(value, limits)


def validate_filter(
    filt: Mapping[str, Any], limits: FilterLimits = FilterLimits()
) -> dict[str, Any]:
    """Check ``filt`` against the rules above; return a deep copy made of vetted parts."""
    if not isinstance(filt, Mapping):
        raise InvalidQuery(f"filter must be an object, not {_kind(filt)}")
    return _Validator(limits).query(filt, "", 1)


# --- validation -------------------------------------------------------------------------


def _refuse_constant(name: str) -> NoReturn:
    raise InvalidQuery(f"{name} is not allowed in a filter: numbers must be finite")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidQuery(f"duplicate key {_show(key)!r} in filter")
        result[key] = value
    return result


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def encodable(text: str) -> bool:
    """Whether ``text`` can be sent as BSON: JSON escapes can carry lone surrogates."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _at(path: str) -> str:
    return f" (at {path})" if path else ""


def _join(path: str, key: str) -> str:
    return f"{path}.{_show(key)}" if path else _show(key)


def _is_operator_doc(value: Any) -> bool:
    return isinstance(value, Mapping) and any(
        isinstance(k, str) and k.startswith("$") for k in value
    )


class _Validator:
    """One validation pass: carries the limits and the running node count."""

    __slots__ = ("limits", "nodes")

    def __init__(self, limits: FilterLimits) -> None:
        self.limits = limits
        self.nodes = 0

    def enter(self, depth: int, path: str, items: int) -> None:
        """Account for an object or array at ``depth`` holding ``items`` keys or items."""
        if depth > self.limits.max_depth:
            raise InvalidQuery(
                f"filter is nested too deeply: more than {self.limits.max_depth} levels{_at(path)}"
            )
        self.nodes += items
        if self.nodes > self.limits.max_nodes:
            raise InvalidQuery(
                f"filter is too large (more than {self.limits.max_nodes} keys and list items)"
            )

    # -- query documents

    def query(self, doc: Any, path: str, depth: int) -> dict[str, Any]:
        if not isinstance(doc, Mapping):
            raise InvalidQuery(f"expected a query object{_at(path)}, got {_kind(doc)}")
        self.enter(depth, path, len(doc))
        out: dict[str, Any] = {}
        for key, value in doc.items():
            if not isinstance(key, str):
                raise InvalidQuery(f"field names must be strings{_at(path)}")
            if key.startswith("$"):
                if key not in LOGICAL:
                    self.refuse_at_query_level(key, path)
                out[key] = self.logical(key, value, _join(path, key), depth)
            else:
                self.field_name(key, path)
                out[key] = self.condition(value, _join(path, key), depth + 1)
        return out

    def refuse_at_query_level(self, op: str, path: str) -> NoReturn:
        if op in FIELD_OPERATORS:
            raise InvalidQuery(
                f"operator {op} is not valid at query level{_at(path)}: "
                f'use it in a field condition, as in {{"field": {{"{op}": ...}}}}'
            )
        self.refuse_operator(op, path)

    def refuse_operator(self, op: str, path: str) -> NoReturn:
        if op in REFUSED:
            raise InvalidQuery(f"operator {op} is not allowed{_at(path)}: {REFUSED[op]}")
        if op in UNSUPPORTED:
            raise InvalidQuery(f"operator {op} is not supported{_at(path)}")
        raise InvalidQuery(f"unknown operator {_show(op)}{_at(path)}")

    def logical(self, op: str, value: Any, path: str, depth: int) -> list[dict[str, Any]]:
        if not isinstance(value, list | tuple) or not value:
            got = "an empty array" if isinstance(value, list | tuple) else _kind(value)
            raise InvalidQuery(
                f"{op} takes a non-empty array of query objects{_at(path)}, got {got}"
            )
        self.enter(depth + 1, path, len(value))
        return [self.query(item, f"{path}[{i}]", depth + 2) for i, item in enumerate(value)]

    def field_name(self, name: str, path: str) -> None:
        where = _at(path)
        if not name:
            raise InvalidQuery(f"empty field name{where}")
        if len(name) > MAX_FIELD_NAME_LENGTH:
            raise InvalidQuery(
                f"field name {_show(name, 40)!r} is longer than "
                f"{MAX_FIELD_NAME_LENGTH} characters{where}"
            )
        if "\x00" in name:
            raise InvalidQuery(f"field name {_show(name)!r} contains a NUL character{where}")
        self.text(name, path, f"field name {_show(name)!r}")
        for segment in name.split("."):
            if not segment:
                raise InvalidQuery(f"field name {_show(name)!r} has an empty path segment{where}")
            if segment.startswith("$"):
                raise InvalidQuery(
                    f"field name {_show(name)!r} has a path segment starting with '$'{where}"
                )

    # -- field conditions

    def condition(self, value: Any, path: str, depth: int) -> Any:
        if _is_operator_doc(value):
            if not all(isinstance(k, str) and k.startswith("$") for k in value):
                raise InvalidQuery(f"a condition cannot mix operators and field names{_at(path)}")
            return self.operators(value, path, depth)
        return self.literal(value, path, depth)

    def operators(self, doc: Mapping[str, Any], path: str, depth: int) -> dict[str, Any]:
        self.enter(depth, path, len(doc))
        options = ""
        if "$options" in doc:
            if "$regex" not in doc:
                raise InvalidQuery(f"$options is only allowed alongside $regex{_at(path)}")
            options = doc["$options"]
            if not isinstance(options, str) or not set(options) <= REGEX_OPTIONS:
                shown = _show(options) if isinstance(options, str) else _kind(options)
                raise InvalidQuery(f"$options takes letters from 'imsx', got {shown!r}{_at(path)}")
        out: dict[str, Any] = {}
        for op, arg in doc.items():
            where = _join(path, op)
            if op in LOGICAL:
                raise InvalidQuery(
                    f"operator {op} is only allowed at query level, "
                    f"not inside a field condition{_at(path)}"
                )
            if op not in FIELD_OPERATORS:
                self.refuse_operator(op, path)
            out[op] = self.operator(op, arg, where, depth + 1, options)
        return out

    def operator(self, op: str, arg: Any, path: str, depth: int, options: str) -> Any:
        where = _at(path)
        if op in ("$eq", "$ne"):
            return self.literal(arg, path, depth)
        if op in COMPARISONS:
            if arg is not None and not isinstance(arg, str | int | float):
                raise InvalidQuery(
                    f"{op} takes a string, number, boolean or null{where}, got {_kind(arg)}"
                )
            return self.literal(arg, path, depth)
        if op in ("$in", "$nin", "$all"):
            return self.array_operator(op, arg, path, depth)
        if op == "$size":
            if isinstance(arg, bool) or not isinstance(arg, int) or arg < 0:
                raise InvalidQuery(f"$size takes a non-negative integer{where}")
            return self.literal(arg, path, depth)
        if op == "$exists":
            if isinstance(arg, bool) or (type(arg) is int and arg in (0, 1)):
                return arg
            raise InvalidQuery(f"$exists takes true or false{where}")
        if op == "$type":
            return self.type_operator(arg, path, depth)
        if op == "$elemMatch":
            return self.elem_match(arg, path, depth)
        if op == "$not":
            if not isinstance(arg, Mapping) or not arg or not _is_operator_doc(arg):
                raise InvalidQuery(
                    f'$not takes an object of operators, such as {{"$regex": ...}}{where}'
                )
            return self.condition(arg, path, depth)
        if op == "$regex":
            if not isinstance(arg, str):
                raise InvalidQuery(f"$regex takes a string{where}, got {_kind(arg)}")
            self.regex(arg, path, options)
            return arg
        return arg  # $options, checked by operators()

    def array_operator(self, op: str, arg: Any, path: str, depth: int) -> list[Any]:
        where = _at(path)
        if not isinstance(arg, list | tuple):
            raise InvalidQuery(f"{op} takes an array{where}, got {_kind(arg)}")
        if len(arg) > self.limits.max_list_length:
            raise InvalidQuery(
                f"{op} has {len(arg)} items, more than the limit of "
                f"{self.limits.max_list_length}{where}"
            )
        self.enter(depth, path, len(arg))
        elem_matches = [isinstance(item, Mapping) and list(item) == ["$elemMatch"] for item in arg]
        if op == "$all" and any(elem_matches):
            if not all(elem_matches):
                raise InvalidQuery(f"$all cannot mix $elemMatch objects with plain values{where}")
            result: list[Any] = []
            for i, item in enumerate(arg):
                item_path = f"{path}[{i}]"
                self.enter(depth + 1, item_path, 1)
                result.append(
                    {
                        "$elemMatch": self.elem_match(
                            item["$elemMatch"], f"{item_path}.$elemMatch", depth + 2
                        )
                    }
                )
            return result
        return [self.literal(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(arg)]

    def type_operator(self, arg: Any, path: str, depth: int) -> Any:
        if isinstance(arg, list | tuple):
            if not arg:
                raise InvalidQuery(f"$type takes at least one type{_at(path)}")
            if len(arg) > self.limits.max_list_length:
                raise InvalidQuery(
                    f"$type has {len(arg)} items, more than the limit of "
                    f"{self.limits.max_list_length}{_at(path)}"
                )
            self.enter(depth, path, len(arg))
            return [self.type_name(item, f"{path}[{i}]") for i, item in enumerate(arg)]
        return self.type_name(arg, path)

    def type_name(self, arg: Any, path: str) -> Any:
        if isinstance(arg, str) and arg in TYPE_ALIASES:
            return arg
        if (
            isinstance(arg, int | float)
            and not isinstance(arg, bool)
            and math.isfinite(arg)
            and arg == int(arg)
            and int(arg) in TYPE_CODES
        ):
            return arg
        shown = repr(_show(arg)) if isinstance(arg, str) else _kind(arg)
        raise InvalidQuery(f"$type takes a BSON type alias or number, got {shown}{_at(path)}")

    def elem_match(self, arg: Any, path: str, depth: int) -> dict[str, Any]:
        if not isinstance(arg, Mapping):
            raise InvalidQuery(f"$elemMatch takes an object{_at(path)}, got {_kind(arg)}")
        # Both forms are legal: {"$gte": 0.5} applies operators to each element, while
        # {"name": "x"} (or {"$or": [...]}) is a query on each element that is a document.
        if arg and all(isinstance(k, str) and k.startswith("$") and k not in LOGICAL for k in arg):
            return self.operators(arg, path, depth)
        return self.query(arg, path, depth)

    # -- values

    def literal(self, value: Any, path: str, depth: int) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise InvalidQuery(f"integer out of the 64-bit range{_at(path)}")
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidQuery(f"numbers must be finite, got {value}{_at(path)}")
            return value
        if isinstance(value, str):
            self.text(value, path)
            return value
        if isinstance(value, list | tuple):
            self.enter(depth, path, len(value))
            return [self.literal(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
        if isinstance(value, Mapping):
            self.enter(depth, path, len(value))
            out: dict[str, Any] = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InvalidQuery(f"object keys must be strings{_at(path)}")
                if key.startswith("$"):
                    if key in REFUSED:
                        self.refuse_operator(key, path)
                    raise InvalidQuery(
                        f"key {_show(key)!r} in a literal value must not start with '$'{_at(path)}"
                    )
                if "\x00" in key or len(key) > MAX_FIELD_NAME_LENGTH:
                    raise InvalidQuery(
                        f"key {_show(key, 40)!r} must be at most {MAX_FIELD_NAME_LENGTH} "
                        f"characters without NUL{_at(path)}"
                    )
                self.text(key, path, f"key {_show(key)!r}")
                out[key] = self.literal(item, _join(path, key), depth + 1)
            return out
        raise InvalidQuery(f"unsupported value {_kind(value)}{_at(path)}")

    def text(self, value: str, path: str, what: str = "string") -> None:
        if not encodable(value):
            raise InvalidQuery(f"{what} is not valid Unicode{_at(path)}")

    def regex(self, pattern: str, path: str, options: str) -> None:
        where = _at(path)
        shown = _show(pattern, 40)
        if len(pattern) > self.limits.max_regex_length:
            raise InvalidQuery(
                f"$regex is {len(pattern)} characters, more than the limit of "
                f"{self.limits.max_regex_length}{where}"
            )
        if "\x00" in pattern:
            raise InvalidQuery(f"$regex must not contain a NUL character{where}")
        self.text(pattern, path, "$regex")
        try:
            check_regex_shape(pattern, options)
        except RegexRefused as exc:
            raise InvalidQuery(f"$regex {shown!r} is not allowed{where}: {exc}") from None
