"""Client-supplied MongoDB filters: parsing, validation and index hints.

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
  and a shape that cannot backtrack catastrophically (see ``_RegexShape``).

``add_index_hints`` adds predicates on the indexed ``classes`` field that are implied by
conditions on the unindexable legacy ``object_analysis`` shape.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from service.errors import InvalidQuery

__all__ = ["FilterLimits", "add_index_hints", "parse_filter", "validate_filter"]


@dataclass(frozen=True, slots=True)
class FilterLimits:
    max_depth: int = 12  # nesting depth of objects/arrays in the filter
    max_nodes: int = 500  # total number of dict keys + list items
    max_list_length: int = 1000  # for $in/$nin/$all
    max_regex_length: int = 256
    max_bytes: int = 16_384  # of the raw JSON text


MAX_FIELD_NAME_LENGTH = 200

_LOGICAL = frozenset({"$and", "$or", "$nor"})
_COMPARISONS = frozenset({"$gt", "$gte", "$lt", "$lte"})
_FIELD_OPERATORS = _COMPARISONS | {
    "$eq",
    "$ne",
    "$in",
    "$nin",
    "$exists",
    "$type",
    "$all",
    "$size",
    "$elemMatch",
    "$not",
    "$regex",
    "$options",
}
_JAVASCRIPT = "server-side JavaScript is disabled"
_REFUSED = {
    "$where": _JAVASCRIPT,
    "$function": _JAVASCRIPT,
    "$accumulator": _JAVASCRIPT,
    "$expr": "aggregation expressions are not supported in filters",
    "$jsonSchema": "schema queries are not supported",
    "$text": "use the search parameter instead",
}
# Real MongoDB query operators outside the allow-list: named "not supported" rather than
# "unknown" so a client is not left wondering about a typo.
_UNSUPPORTED = frozenset(
    {
        "$mod",
        "$comment",
        "$rand",
        "$sampleRate",
        "$bitsAllSet",
        "$bitsAnySet",
        "$bitsAllClear",
        "$bitsAnyClear",
        "$geoWithin",
        "$geoIntersects",
        "$near",
        "$nearSphere",
        "$box",
        "$center",
        "$centerSphere",
        "$geometry",
        "$maxDistance",
        "$minDistance",
        "$polygon",
        "$slice",
        "$meta",
        "$lookup",
    }
)
_REGEX_OPTIONS = frozenset("imsx")
_TYPE_ALIASES = frozenset(
    {
        "double",
        "string",
        "object",
        "array",
        "binData",
        "undefined",
        "objectId",
        "bool",
        "date",
        "null",
        "regex",
        "dbPointer",
        "javascript",
        "symbol",
        "javascriptWithScope",
        "int",
        "timestamp",
        "long",
        "decimal",
        "minKey",
        "maxKey",
        "number",
    }
)
_TYPE_CODES = frozenset({*range(1, 20), -1, 127})
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


# --- index hints ------------------------------------------------------------------------


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
                not isinstance(k, str) or (k.startswith("$") and k not in _LOGICAL) for k in inner
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
    return _implied_classes(inner["classname"])


def _elem_match_argument(condition: Any) -> Mapping[str, Any] | None:
    """The argument of ``$elemMatch`` in an operator document, if it has one.

    Every operator in such a document must hold, so ``$elemMatch`` beside others still
    must; an ``$elemMatch`` under ``$not`` is not a key of this document and is not seen.
    """
    if not isinstance(condition, Mapping) or "$elemMatch" not in condition:
        return None
    if not all(isinstance(k, str) and k.startswith("$") and k not in _LOGICAL for k in condition):
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


def _show(text: str, limit: int = 60) -> str:
    """Text as it may appear in an error detail: escaped if unprintable, cut if long."""
    shown = text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


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
                if key not in _LOGICAL:
                    self.refuse_at_query_level(key, path)
                out[key] = self.logical(key, value, _join(path, key), depth)
            else:
                self.field_name(key, path)
                out[key] = self.condition(value, _join(path, key), depth + 1)
        return out

    def refuse_at_query_level(self, op: str, path: str) -> NoReturn:
        if op in _FIELD_OPERATORS:
            raise InvalidQuery(
                f"operator {op} is not valid at query level{_at(path)}: "
                f'use it in a field condition, as in {{"field": {{"{op}": ...}}}}'
            )
        self.refuse_operator(op, path)

    def refuse_operator(self, op: str, path: str) -> NoReturn:
        if op in _REFUSED:
            raise InvalidQuery(f"operator {op} is not allowed{_at(path)}: {_REFUSED[op]}")
        if op in _UNSUPPORTED:
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
        extended = False
        if "$options" in doc:
            if "$regex" not in doc:
                raise InvalidQuery(f"$options is only allowed alongside $regex{_at(path)}")
            options = doc["$options"]
            if not isinstance(options, str) or not set(options) <= _REGEX_OPTIONS:
                shown = _show(options) if isinstance(options, str) else _kind(options)
                raise InvalidQuery(f"$options takes letters from 'imsx', got {shown!r}{_at(path)}")
            extended = "x" in options
        out: dict[str, Any] = {}
        for op, arg in doc.items():
            where = _join(path, op)
            if op in _LOGICAL:
                raise InvalidQuery(
                    f"operator {op} is only allowed at query level, "
                    f"not inside a field condition{_at(path)}"
                )
            if op not in _FIELD_OPERATORS:
                self.refuse_operator(op, path)
            out[op] = self.operator(op, arg, where, depth + 1, extended)
        return out

    def operator(self, op: str, arg: Any, path: str, depth: int, extended: bool) -> Any:
        where = _at(path)
        if op in ("$eq", "$ne"):
            return self.literal(arg, path, depth)
        if op in _COMPARISONS:
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
            self.regex(arg, path, extended)
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
        if isinstance(arg, str) and arg in _TYPE_ALIASES:
            return arg
        if (
            isinstance(arg, int | float)
            and not isinstance(arg, bool)
            and math.isfinite(arg)
            and arg == int(arg)
            and int(arg) in _TYPE_CODES
        ):
            return arg
        shown = repr(_show(arg)) if isinstance(arg, str) else _kind(arg)
        raise InvalidQuery(f"$type takes a BSON type alias or number, got {shown}{_at(path)}")

    def elem_match(self, arg: Any, path: str, depth: int) -> dict[str, Any]:
        if not isinstance(arg, Mapping):
            raise InvalidQuery(f"$elemMatch takes an object{_at(path)}, got {_kind(arg)}")
        # Both forms are legal: {"$gte": 0.5} applies operators to each element, while
        # {"name": "x"} (or {"$or": [...]}) is a query on each element that is a document.
        if arg and all(isinstance(k, str) and k.startswith("$") and k not in _LOGICAL for k in arg):
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
                    if key in _REFUSED:
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
        if value.isascii():
            return
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidQuery(f"{what} is not valid Unicode{_at(path)}") from None

    def regex(self, pattern: str, path: str, extended: bool) -> None:
        where = _at(path)
        shown = _show(pattern, 40)
        if len(pattern) > self.limits.max_regex_length:
            raise InvalidQuery(
                f"$regex is {len(pattern)} characters, more than the limit of "
                f"{self.limits.max_regex_length}{where}"
            )
        if "\x00" in pattern:
            raise InvalidQuery(f"$regex must not contain a NUL character{where}")
        try:
            _RegexShape.check(pattern, extended)
        except _RegexRefused as exc:
            raise InvalidQuery(f"$regex {shown!r} is not allowed{where}: {exc}") from None


# --- regex shape ------------------------------------------------------------------------


class _RegexRefused(Exception):
    pass


_UNBOUNDED = -1
_QUANTIFIER_BRACES = re.compile(r"\{[ \t]*(\d*)[ \t]*(?:(,)[ \t]*(\d*)[ \t]*)?\}")
_EXTENDED_SPACE = frozenset(" \t\n\r\f\v")
# Worst-case backtracking grows like `branches * n ** degree` for a subject of length n,
# where degree counts variable-length repetitions that can run one after another and
# branches multiplies the choices of alternations and optional items in sequence.
_MAX_REGEX_DEGREE = 3
_MAX_REGEX_BRANCHES = 1024


@dataclass(slots=True)
class _Shape:
    degree: int = 0
    branches: int = 1
    quantified: bool = False  # contains a variable-length quantifier
    alternation: bool = False  # contains |


class _RegexShape:
    """A small recursive-descent reader of PCRE syntax that refuses risky patterns.

    Refused: a repetition (``*``, ``+``, ``{n,m}`` with m > 1) of a group that itself
    contains a quantifier or an alternation, as in ``(a+)+``, ``(a|aa)+``, ``(.*)*``;
    backreferences and subroutine calls; lookahead and lookbehind; every ``(?...)``
    group except ``(?:...)`` (inline flags could switch on extended mode and hide
    structure in comments); ``(*VERB)``s, which can raise the engine's match limits;
    ``\\Q...\\E``; more than ``_MAX_REGEX_DEGREE`` non-possessive repetitions in sequence or
    ``_MAX_REGEX_BRANCHES`` combined alternatives; unbalanced or unterminated syntax.
    The reader is conservative: whatever it cannot tell is safe is refused.
    """

    def __init__(self, pattern: str, extended: bool) -> None:
        self.s = pattern
        self.i = 0
        self.extended = extended

    @classmethod
    def check(cls, pattern: str, extended: bool) -> None:
        reader = cls(pattern, extended)
        shape = reader.alternation()
        if reader.i < len(pattern):
            raise _RegexRefused("unbalanced parenthesis")
        if shape.degree > _MAX_REGEX_DEGREE:
            raise _RegexRefused(
                f"more than {_MAX_REGEX_DEGREE} repetitions in sequence can backtrack "
                "heavily (a leading or trailing .* is never needed; a possessive "
                "quantifier such as [^/]++ does not backtrack)"
            )
        if shape.branches > _MAX_REGEX_BRANCHES:
            raise _RegexRefused("too many combined alternatives and optional parts")

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def skip_ignored(self) -> None:
        if not self.extended:
            return
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in _EXTENDED_SPACE:
                self.i += 1
            elif c == "#":
                end = self.s.find("\n", self.i)
                self.i = len(self.s) if end < 0 else end + 1
            else:
                return

    def alternation(self) -> _Shape:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.sequence())
        if len(branches) == 1:
            return branches[0]
        return _Shape(
            degree=max(b.degree for b in branches),
            branches=min(sum(b.branches for b in branches), _MAX_REGEX_BRANCHES + 1),
            quantified=any(b.quantified for b in branches),
            alternation=True,
        )

    def sequence(self) -> _Shape:
        total = _Shape()
        while True:
            self.skip_ignored()
            if self.peek() in ("", "|", ")"):
                return total
            start = self.i
            item = self.atom()
            self.skip_ignored()
            bounds = self.quantifier()
            if bounds is not None:
                item = self.repeat(item, bounds, start)
            total = _Shape(
                degree=total.degree + item.degree,
                branches=min(total.branches * item.branches, _MAX_REGEX_BRANCHES + 1),
                quantified=total.quantified or item.quantified,
                alternation=total.alternation or item.alternation,
            )

    def atom(self) -> _Shape:
        s, c = self.s, self.s[self.i]
        if c == "(":
            if s.startswith("(*", self.i):
                raise _RegexRefused("(*VERB) constructs are not allowed")
            if s.startswith(("(?=", "(?!", "(?<=", "(?<!"), self.i):
                raise _RegexRefused("lookahead and lookbehind are not allowed")
            if s.startswith("(?:", self.i):
                self.i += 3
            elif s.startswith("(?", self.i):
                raise _RegexRefused(
                    "only (...) and (?:...) groups are allowed; use $options for flags"
                )
            else:
                self.i += 1
            body = self.alternation()
            if self.peek() != ")":
                raise _RegexRefused("unbalanced parenthesis")
            self.i += 1
            return body
        if c == "[":
            self.char_class()
        elif c == "\\":
            self.escape()
        elif c in "*+?" or (c == "{" and self.braces() is not None):
            raise _RegexRefused("a quantifier has nothing to repeat")
        else:
            self.i += 1
        return _Shape()

    def escape(self) -> None:
        self.i += 1
        if self.i >= len(self.s):
            raise _RegexRefused("the pattern ends with a backslash")
        e = self.s[self.i]
        self.i += 1
        if e in "123456789" or e in "gk":
            raise _RegexRefused("backreferences are not allowed")
        if e == "Q":
            raise _RegexRefused("\\Q...\\E quoting is not supported; escape characters singly")
        if e == "c":
            if self.i >= len(self.s):
                raise _RegexRefused("\\c needs a character after it")
            self.i += 1  # \cX is one control character, whatever X is
        elif e in "xoNpPu" and self.peek() == "{":
            end = self.s.find("}", self.i)
            if end < 0:
                raise _RegexRefused(f"unterminated \\{e}{{...}}")
            self.i = end + 1

    def char_class(self) -> None:
        s = self.s
        self.i += 1
        if self.peek() == "^":
            self.i += 1
        if self.peek() == "]":
            self.i += 1  # a ] first in the class is literal
        while self.i < len(s):
            c = s[self.i]
            if c == "\\":
                self.escape_in_class()
            elif c == "[" and s[self.i + 1 : self.i + 2] in (":", ".", "="):
                end = s.find(s[self.i + 1] + "]", self.i + 2)
                self.i = end + 2 if end >= 0 else self.i + 1
            elif c == "]":
                self.i += 1
                return
            else:
                self.i += 1
        raise _RegexRefused("unterminated character class")

    def escape_in_class(self) -> None:
        # Digits are octal escapes here, not backreferences.
        if self.s.startswith(("\\1", "\\2", "\\3", "\\4", "\\5", "\\6", "\\7"), self.i):
            self.i += 2
            return
        if self.s.startswith(("\\8", "\\9"), self.i):
            raise _RegexRefused("backreferences are not allowed")
        self.escape()

    def braces(self) -> tuple[int, int] | None:
        match = _QUANTIFIER_BRACES.match(self.s, self.i)
        if match is None or not (match[1] or match[3]):
            return None  # not a quantifier: PCRE reads the { literally
        low = int(match[1] or 0)
        high = low if match[2] is None else (int(match[3]) if match[3] else _UNBOUNDED)
        if high != _UNBOUNDED and high < low:
            raise _RegexRefused("a {min,max} quantifier has max below min")
        self.i = match.end()
        return low, high

    def quantifier(self) -> tuple[int, int, bool] | None:
        """``(min, max, possessive)`` of the quantifier here, if there is one."""
        c = self.peek()
        bounds: tuple[int, int] | None
        if c == "*":
            bounds = (0, _UNBOUNDED)
        elif c == "+":
            bounds = (1, _UNBOUNDED)
        elif c == "?":
            bounds = (0, 1)
        elif c == "{":
            return self.quantifier_suffix(self.braces())
        else:
            return None
        self.i += 1
        return self.quantifier_suffix(bounds)

    def quantifier_suffix(self, bounds: tuple[int, int] | None) -> tuple[int, int, bool] | None:
        if bounds is None:
            return None
        possessive = self.peek() == "+"
        if self.peek() in ("?", "+"):
            self.i += 1  # lazy or possessive
        self.skip_ignored()
        c = self.peek()
        if c in ("*", "+", "?") or (c == "{" and _braces_quantifier(self.s, self.i)):
            raise _RegexRefused("a quantifier cannot follow another quantifier")
        return (*bounds, possessive)

    def repeat(self, item: _Shape, bounds: tuple[int, int, bool], start: int) -> _Shape:
        low, high, possessive = bounds
        repeating = high == _UNBOUNDED or high > 1
        if repeating and (item.quantified or item.alternation):
            raise _RegexRefused(
                f"the repeated group {_show(self.s[start : self.i], 40)!r} contains a "
                "quantifier or alternation, which can backtrack catastrophically"
            )
        if low == high:  # exact count: no choice to backtrack over
            return item
        if repeating:
            # A possessive repetition never gives characters back, so it adds no degree;
            # it still counts as a quantifier for the nesting rule above.
            degree = item.degree if possessive else item.degree + 1
            return _Shape(degree=degree, branches=item.branches, quantified=True)
        # Optional: the item once, or not at all.
        return _Shape(
            degree=item.degree,
            branches=min(item.branches + 1, _MAX_REGEX_BRANCHES + 1),
            quantified=True,
            alternation=item.alternation,
        )


def _braces_quantifier(s: str, i: int) -> bool:
    match = _QUANTIFIER_BRACES.match(s, i)
    return match is not None and bool(match[1] or match[3])
