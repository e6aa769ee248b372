"""Tests for service.query.filters: what is refused, what passes untouched, index hints."""

from __future__ import annotations

import copy
import json
import random
import re
from typing import Any

import pytest
from bson import ObjectId

from service.errors import InvalidQuery
from service.query.filters import FilterLimits, parse_filter, validate_filter
from service.query.hints import add_index_hints
from service.store.ids import with_id_aliases


def _nested_and(levels: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"width": 1}
    for _ in range(levels):
        doc = {"$and": [doc]}
    return doc


def _nested_object(levels: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"x": 1}
    for _ in range(levels):
        doc = {"x": doc}
    return doc


def _regex(pattern: str, options: str | None = None) -> str:
    condition = {"$regex": pattern} if options is None else {"$regex": pattern, "$options": options}
    return json.dumps({"url": condition})


REFUSED: list[Any] = [
    # (raw ?q= text, substrings the detail must contain)
    pytest.param('{"$where": "sleep(5000) || true"}', ["$where"], id="where"),
    pytest.param('{"$and": [{"$where": "true"}]}', ["$where", "$and[0]"], id="where-in-and"),
    pytest.param(
        '{"$expr": {"$function": {"body": "function() {return true}", "args": [], "lang": "js"}}}',
        ["$expr"],
        id="function-inside-expr",
    ),
    pytest.param(
        '{"tags": {"$elemMatch": {"$function": {"body": "f", "args": [], "lang": "js"}}}}',
        ["$function", "tags.$elemMatch"],
        id="function-in-elemMatch",
    ),
    pytest.param('{"$accumulator": {"init": "function() {}"}}', ["$accumulator"], id="accumulator"),
    pytest.param('{"$jsonSchema": {"required": ["url"]}}', ["$jsonSchema"], id="jsonSchema"),
    pytest.param('{"$text": {"$search": "cat"}}', ["$text", "search parameter"], id="text"),
    pytest.param('{"width": {"$foo": 1}}', ["unknown operator $foo", "width"], id="unknown-op"),
    pytest.param('{"$lookup": {"from": "keys"}}', ["$lookup"], id="lookup"),
    pytest.param('{"width": {"$mod": [2, 0]}}', ["$mod"], id="unsupported-op"),
    pytest.param('{"$gt": 5}', ["$gt", "query level"], id="field-op-at-query-level"),
    pytest.param('{"width": {"$or": [{"a": 1}]}}', ["$or", "query level"], id="or-in-condition"),
    pytest.param(json.dumps(_nested_and(60)), ["nested too deeply"], id="and-60-deep"),
    pytest.param(json.dumps(_nested_object(60)), ["nested too deeply"], id="object-60-deep"),
    pytest.param("[" * 5000 + "]" * 5000, ["nested too deeply"], id="json-arrays-5000-deep"),
    pytest.param(json.dumps({"width": {"$in": list(range(2000))}}), ["$in", "2000"], id="in-2000"),
    pytest.param(json.dumps({"a": {"$nin": list(range(501))}}), ["$nin", "501"], id="nin-501"),
    pytest.param(json.dumps({"a": {"$all": list(range(501))}}), ["$all", "501"], id="all-501"),
    pytest.param(
        json.dumps({"$or": [{"a": i} for i in range(501)]}), ["too large"], id="too-many-nodes"
    ),
    pytest.param(_regex("(a+)+$"), ["$regex", "url", "(a+)+"], id="regex-nested-plus"),
    pytest.param(_regex("(a*)*"), ["$regex", "(a*)*"], id="regex-nested-star"),
    pytest.param(_regex("(a|aa)+"), ["$regex", "(a|aa)+"], id="regex-alternation-repeated"),
    pytest.param(_regex(r"(\w+\s?)+"), ["$regex"], id="regex-word-space"),
    pytest.param(_regex("(.*)*"), ["$regex"], id="regex-dot-star"),
    pytest.param(_regex("([a-z]+)*"), ["$regex"], id="regex-class-plus-star"),
    pytest.param(_regex("(?:a?){2,}"), ["$regex"], id="regex-noncapturing-optional"),
    pytest.param(_regex("((ab)*c)+"), ["$regex"], id="regex-inner-group-star"),
    pytest.param(_regex("(a+){2}"), ["$regex"], id="regex-exact-repeat-of-plus"),
    pytest.param(_regex(r"(a)\1"), ["$regex", "backreference"], id="regex-backreference"),
    pytest.param(_regex(r"(?<n>a)\k<n>"), ["$regex"], id="regex-named-backreference"),
    pytest.param(_regex("(?=a)a"), ["$regex", "lookahead"], id="regex-lookahead"),
    pytest.param(_regex("(?<!a)b"), ["$regex", "lookbehind"], id="regex-lookbehind"),
    pytest.param(_regex("(?x)(a # )\n+)+"), ["$regex", "$options"], id="regex-inline-flag"),
    pytest.param(
        _regex("(a # )\n+)+", "x"), ["$regex", "repeated group"], id="regex-hidden-by-x-comment"
    ),
    pytest.param(_regex("(*LIMIT_MATCH=99999999)a"), ["$regex", "VERB"], id="regex-verb"),
    pytest.param(_regex(r"\Q(a+)+\E"), ["$regex", "\\\\Q"], id="regex-quoting"),
    pytest.param(_regex(".*a.*b.*c.*d"), ["$regex", "repetitions"], id="regex-polynomial"),
    pytest.param(_regex("(a|b)" * 11), ["$regex", "alternatives"], id="regex-exponential-seq"),
    # Unanchored, each start position is tried again: two repetitions in sequence are a
    # third power of the length (minutes on a 2000-character URL in PCRE2).
    pytest.param(_regex("a*a*[#@]"), ["$regex", "repetitions"], id="regex-unanchored-two"),
    pytest.param(_regex("[^#@]*[^#@]*[#@]"), ["$regex", "repetitions"], id="regex-two-classes"),
    pytest.param(_regex(".{0,300}.{0,300}#"), ["$regex", "repetitions"], id="regex-long-bounds"),
    pytest.param(_regex("^a*a*a*x"), ["$regex", "repetitions"], id="regex-anchored-three"),
    pytest.param(_regex("^a*a*x", "m"), ["$regex", "repetitions"], id="regex-anchor-per-line"),
    # A possessive run starts again at each choice of the repetition before it: n ** 3.
    pytest.param(_regex(".+(a)++a"), ["$regex", "repetitions"], id="regex-possessive-after"),
    pytest.param(_regex("[^b]+a++a"), ["$regex", "repetitions"], id="regex-possessive-after-2"),
    pytest.param(_regex("^a*a*x|b"), ["$regex", "repetitions"], id="regex-anchor-one-branch"),
    pytest.param(_regex("(a|b)(a|b)(a|b)a*x"), ["$regex", "alternatives"], id="regex-branchy-scan"),
    pytest.param(_regex("(ab"), ["$regex", "unbalanced"], id="regex-unbalanced"),
    pytest.param(_regex("[ab"), ["$regex", "character class"], id="regex-unterminated-class"),
    pytest.param(_regex("+a"), ["$regex", "nothing to repeat"], id="regex-bare-quantifier"),
    pytest.param(_regex("a" * 257), ["$regex", "257"], id="regex-too-long"),
    pytest.param(_regex("a\x00"), ["$regex", "NUL"], id="regex-nul"),
    pytest.param('{"url": {"$regex": 5}}', ["$regex"], id="regex-not-string"),
    pytest.param('{"url": {"$regex": "\\ud800"}}', ["$regex", "Unicode"], id="regex-surrogate"),
    pytest.param(_regex("cat", "g"), ["$options", "'g'"], id="options-bad-flag"),
    pytest.param('{"url": {"$options": "i"}}', ["$options", "$regex"], id="options-alone"),
    pytest.param("{not json", ["not valid JSON"], id="not-json"),
    pytest.param('{"a": 1', ["not valid JSON"], id="truncated-json"),
    pytest.param("[1, 2]", ["JSON object", "array"], id="json-array"),
    pytest.param("42", ["JSON object", "number"], id="json-number"),
    pytest.param('"cat"', ["JSON object", "string"], id="json-string"),
    pytest.param("null", ["JSON object", "null"], id="json-null"),
    pytest.param('{"conf": NaN}', ["NaN"], id="nan"),
    pytest.param('{"conf": {"$gt": -Infinity}}', ["Infinity"], id="infinity"),
    pytest.param('{"conf": 1e999}', ["finite", "conf"], id="float-overflow"),
    pytest.param('{"width": 9223372036854775808}', ["64-bit", "width"], id="int-over-int64"),
    pytest.param('{"a": 1, "a": 2}', ["duplicate", "'a'"], id="duplicate-key"),
    pytest.param('{"$name": "cat"}', ["$name"], id="field-starting-with-dollar"),
    pytest.param('{"tags.$name": "cat"}', ["tags.$name"], id="dotted-segment-dollar"),
    pytest.param('{"a": {"b": {"$where": "1"}}}', ["$where"], id="where-in-literal"),
    pytest.param('{"a": [{"$x": 1}]}', ["$x"], id="dollar-key-in-literal"),
    pytest.param('{"a\\u0000b": 1}', ["NUL", "a\\\\x00b"], id="field-nul"),
    pytest.param('{"": 1}', ["empty field name"], id="field-empty"),
    pytest.param('{"a..b": 1}', ["empty path segment", "a..b"], id="field-empty-segment"),
    pytest.param(json.dumps({"f" * 201: 1}), ["longer than 200"], id="field-too-long"),
    pytest.param('{"\\ud800": 1}', ["field name", "Unicode"], id="field-lone-surrogate"),
    pytest.param('{"a": {"$gt": 1, "b": 2}}', ["mix", "a"], id="mixed-operator-and-field"),
    pytest.param('{"$and": {"a": 1}}', ["$and", "array"], id="and-not-list"),
    pytest.param('{"$or": []}', ["$or", "non-empty"], id="or-empty"),
    pytest.param('{"$nor": [1]}', ["$nor[0]", "query object"], id="nor-item-not-object"),
    pytest.param('{"a": {"$size": -1}}', ["$size"], id="size-negative"),
    pytest.param('{"a": {"$size": true}}', ["$size"], id="size-bool"),
    pytest.param('{"a": {"$size": 1.5}}', ["$size"], id="size-float"),
    pytest.param('{"a": {"$exists": 2}}', ["$exists"], id="exists-not-bool"),
    pytest.param('{"a": {"$type": "str"}}', ["$type", "'str'"], id="type-unknown-alias"),
    pytest.param('{"a": {"$type": 99}}', ["$type"], id="type-unknown-code"),
    pytest.param('{"a": {"$type": []}}', ["$type"], id="type-empty-list"),
    pytest.param('{"a": {"$in": 5}}', ["$in", "array"], id="in-not-list"),
    pytest.param('{"a": {"$gt": {"b": 1}}}', ["$gt"], id="gt-object"),
    pytest.param('{"a": {"$lte": [1]}}', ["$lte"], id="lte-array"),
    pytest.param('{"a": {"$elemMatch": [1]}}', ["$elemMatch"], id="elemMatch-not-object"),
    pytest.param('{"a": {"$not": "cat"}}', ["$not"], id="not-string"),
    pytest.param('{"a": {"$not": {}}}', ["$not"], id="not-empty"),
    pytest.param('{"a": {"$not": {"b": 1}}}', ["$not"], id="not-query-doc"),
    pytest.param(
        '{"a": {"$all": [{"$elemMatch": {"b": 1}}, 2]}}', ["$all", "$elemMatch"], id="all-mixed"
    ),
    pytest.param("x" * 16_385, ["16385 bytes", "16384"], id="over-max-bytes"),
    pytest.param(json.dumps({"url": "é" * 8_200}), ["bytes"], id="over-max-bytes-multibyte"),
    pytest.param(b'{"url": "\xff"}', ["UTF-8"], id="bytes-not-utf8"),
]


@pytest.mark.parametrize(("raw", "names"), REFUSED)
def test_refused(raw: str | bytes, names: list[str]) -> None:
    with pytest.raises(InvalidQuery) as caught:
        parse_filter(raw)
    assert caught.value.status == 400
    for name in names:
        assert name in caught.value.detail, caught.value.detail


CORTEX = {
    "object_analysis": {"$elemMatch": {"$elemMatch": {"classname": "cat"}}},
    "width": {"$gt": 100},
}

VALID: list[Any] = [
    pytest.param(CORTEX, id="cortex"),
    pytest.param({"classes": {"$in": ["cat", "dog"]}}, id="in"),
    pytest.param({"classes": {"$nin": ["cat"]}, "type": {"$ne": "video"}}, id="nin-ne"),
    pytest.param({"classes": {"$all": ["cat", "person"]}}, id="all"),
    pytest.param({"tags": {"$all": [{"$elemMatch": {"name": "tabby"}}]}}, id="all-elemMatch"),
    pytest.param({"urls": {"$size": 2}}, id="size"),
    pytest.param({"label_quality_estimation": {"$exists": True}}, id="exists"),
    pytest.param({"face_analysis": {"$exists": 0}}, id="exists-int"),
    pytest.param({"width": {"$type": "int"}}, id="type-alias"),
    pytest.param({"width": {"$type": ["int", 1, "long"]}}, id="type-list"),
    pytest.param({"url": {"$regex": "^https://example\\.com/", "$options": "i"}}, id="regex-i"),
    pytest.param({"url": {"$regex": "dog|cat"}}, id="regex-alternation"),
    pytest.param({"url": {"$regex": "^cat"}}, id="regex-anchor"),
    pytest.param({"url": {"$not": {"$regex": "^http:"}}}, id="not-regex"),
    pytest.param({"width": {"$not": {"$gt": 100, "$lt": 10}}}, id="not-operators"),
    pytest.param({"$or": [{"width": {"$gte": 640}}, {"height": {"$gte": 640}}]}, id="or"),
    pytest.param({"$nor": [{"classes": "cat"}, {"type": "video"}]}, id="nor"),
    pytest.param({"$and": [{"$or": [{"a": 1}, {"b": None}]}, {"c": True}]}, id="and-or"),
    pytest.param({"tags.name": "tabby", "tags.conf": {"$gte": 0.5}}, id="dotted-path"),
    pytest.param({"tags.conf": {"$elemMatch": {"$gte": 0.5}}}, id="elemMatch-operator-form"),
    pytest.param(
        {"tags": {"$elemMatch": {"name": "tabby", "conf": {"$gt": 0.5}}}}, id="elemM-query"
    ),
    pytest.param({"tags": {"$elemMatch": {"$or": [{"name": "a"}, {"name": "b"}]}}}, id="elemM-or"),
    pytest.param({"tags": {"$elemMatch": {}}}, id="elemMatch-empty"),
    pytest.param({"tags": [{"name": "tabby", "conf": 0.8}]}, id="literal-array-of-objects"),
    pytest.param({"dims": {"w": 1, "h": 2}}, id="literal-object"),
    pytest.param({"datetime": {"$gte": "2026-01-01T00:00:00Z", "$lt": "2027"}}, id="range"),
    pytest.param({"tags": {"$eq": [{"name": "x"}]}, "urls": {"$ne": []}}, id="eq-ne-structured"),
    pytest.param({"width": -(2**63), "height": 2**63 - 1, "x": 1.5e300}, id="number-edges"),
    pytest.param({"classes": "chat \u00e9\U0001f408"}, id="unicode"),
    pytest.param(
        {"url": {"$regex": "(?:ab)++c{2,3}[^/]++/[^/]++/[^/]++/x", "$options": "ms"}}, id="rx1"
    ),
    pytest.param({"url": {"$regex": "^(jpg|png)?$|\\p{L}+[[:alpha:]]\\d{4}"}}, id="regex-misc"),
    pytest.param({"url": {"$regex": "a b  # comment\n c", "$options": "x"}}, id="regex-extended"),
    pytest.param({"url": {"$regex": "^x{,5}a{x}[\\]\\[]+"}}, id="regex-braces-and-class"),
    pytest.param({"url": {"$regex": "cat.*dog"}}, id="regex-one-repetition"),
    pytest.param({"url": {"$regex": "^https://.*/.*\\.jpg$"}}, id="regex-anchored-two"),
    pytest.param({"url": {"$regex": "\\Aimg.*x.*y"}}, id="regex-anchored-by-A"),
    pytest.param({"url": {"$regex": "[^/]*+/[^/]*+/.*\\.png"}}, id="regex-possessive"),
    pytest.param({"url": {"$regex": "^.+a++b"}}, id="regex-anchored-possessive-after"),
    pytest.param({"url": {"$regex": "a{2,3}b{1,2}.*c"}}, id="regex-small-bounds"),
    pytest.param({}, id="empty"),
]


@pytest.mark.parametrize("filt", VALID)
def test_valid_filters_pass_unchanged(filt: dict[str, Any]) -> None:
    assert parse_filter(json.dumps(filt)) == filt
    assert parse_filter(json.dumps(filt).encode()) == filt
    assert validate_filter(filt) == filt


@pytest.mark.parametrize("raw", [None, "", b""])
def test_absent_filter_is_empty(raw: str | bytes | None) -> None:
    assert parse_filter(raw) == {}


def test_result_is_a_fresh_copy() -> None:
    filt: dict[str, Any] = {"$and": [{"tags": {"$elemMatch": {"name": {"$in": ["a"]}}}}]}
    original = copy.deepcopy(filt)
    result = validate_filter(filt)
    assert result == filt
    result["$and"][0]["tags"]["$elemMatch"]["name"]["$in"].append("b")
    result["$and"].append({"x": 1})
    assert filt == original


def test_limits_are_configurable() -> None:
    limits = FilterLimits(max_depth=3, max_nodes=4, max_list_length=2, max_regex_length=3)
    assert parse_filter('{"a": {"$in": [1, 2]}}', limits) == {"a": {"$in": [1, 2]}}
    for raw, name in [
        ('{"a": {"$in": [1, 2, 3]}}', "$in"),
        ('{"a": {"$regex": "abcd"}}', "$regex"),
        ('{"a": {"b": {"c": {"d": 1}}}}', "nested too deeply"),
        ('{"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}', "too large"),
    ]:
        with pytest.raises(InvalidQuery, match=re.escape(name)):
            parse_filter(raw, limits)
    with pytest.raises(InvalidQuery, match="bytes"):
        parse_filter('{"a": 1}', FilterLimits(max_bytes=7))


def test_cyclic_python_filter_is_refused() -> None:
    filt: dict[str, Any] = {}
    filt["a"] = filt
    with pytest.raises(InvalidQuery, match="nested too deeply"):
        validate_filter(filt)


def test_validate_filter_refuses_non_json_values() -> None:
    with pytest.raises(InvalidQuery, match="unsupported value"):
        validate_filter({"a": {1, 2}})
    with pytest.raises(InvalidQuery, match="finite"):
        validate_filter({"a": float("nan")})


# --- index hints ------------------------------------------------------------------------


def _cortex(classname: Any, **more: Any) -> dict[str, Any]:
    return {"object_analysis": {"$elemMatch": {"$elemMatch": {"classname": classname, **more}}}}


def test_bare_cortex_form_is_replaced_by_its_indexed_equivalent() -> None:
    assert add_index_hints(CORTEX) == {"classes": "cat", "width": {"$gt": 100}}
    assert add_index_hints(_cortex({"$eq": "dog"})) == {"classes": "dog"}
    members = _cortex({"$in": ["cat", "dog"]})
    assert add_index_hints(members) == {"classes": {"$in": ["cat", "dog"]}}


def test_hint_added_when_the_box_has_more_conditions() -> None:
    eq = _cortex({"$eq": "dog"}, conf={"$gt": 0.5})
    assert add_index_hints(eq) == {"$and": [eq, {"classes": "dog"}]}
    members = _cortex({"$in": ["cat", "dog"]}, conf={"$gt": 0.5})
    assert add_index_hints(members) == {"$and": [members, {"classes": {"$in": ["cat", "dog"]}}]}


@pytest.mark.parametrize(
    "classname",
    [
        {"$in": ["cat", "dog"], "$nin": ["cat"]},
        {"$eq": "cat", "$ne": "cat"},
        {"$eq": "cat", "$regex": "^d"},
    ],
)
def test_classname_with_more_operators_is_hinted_not_replaced(classname: Any) -> None:
    filt = _cortex(classname)
    implied = {"classes": classname.get("$eq") or {"$in": classname.get("$in")}}
    assert add_index_hints(filt) == {"$and": [filt, implied]}


def test_hint_found_inside_and_merges_into_it() -> None:
    strict = _cortex("cat", conf={"$gte": 0.9})
    filt = {"$and": [{"width": {"$gt": 1}}, strict, _cortex("dog")], "height": 5}
    assert add_index_hints(filt) == {
        "$and": [{"width": {"$gt": 1}}, strict, {"classes": "dog"}, {"classes": "cat"}],
        "height": 5,
    }


def test_hint_found_through_nested_and_and_merged_into_existing_and() -> None:
    strict = _cortex("cat", conf={"$gte": 0.9})
    filt = {"$and": [{"$and": [strict]}, {"width": 3}], "x": _cortex("nope")}
    hinted = add_index_hints(filt)
    assert hinted == {
        "$and": [{"$and": [strict]}, {"width": 3}, {"classes": "cat"}],
        "x": _cortex("nope"),
    }


def test_two_hints_and_no_duplicates() -> None:
    cat, dog = _cortex("cat", conf={"$gt": 0}), _cortex("dog", conf={"$gt": 0})
    filt = {"$and": [cat, dog, cat]}
    assert add_index_hints(filt)["$and"][3:] == [{"classes": "cat"}, {"classes": "dog"}]


def test_replacement_leaves_an_explicit_classes_condition_alone() -> None:
    both = {"classes": "dog", **_cortex("cat")}
    assert add_index_hints(both) == {"$and": [both, {"classes": "cat"}]}


def test_hints_are_idempotent_and_do_not_touch_the_input() -> None:
    filt = copy.deepcopy(CORTEX)
    once = add_index_hints(filt)
    assert filt == CORTEX
    assert add_index_hints(once) == once
    strict = _cortex("cat", conf={"$gt": 0.5})
    assert add_index_hints({"classes": "cat", **strict}) == {"classes": "cat", **strict}


@pytest.mark.parametrize(
    "filt",
    [
        pytest.param({"$or": [_cortex("cat"), {"width": 1}]}, id="or"),
        pytest.param({"$nor": [_cortex("cat")]}, id="nor"),
        pytest.param({"$and": [{"$or": [_cortex("cat")]}]}, id="or-inside-and"),
        pytest.param(
            {"object_analysis": {"$not": {"$elemMatch": {"$elemMatch": {"classname": "cat"}}}}},
            id="not",
        ),
        pytest.param({"doc": {"$elemMatch": _cortex("cat")}}, id="under-elemMatch"),
        pytest.param(_cortex({"$regex": "^ca"}), id="regex"),
        pytest.param(_cortex({"$ne": "cat"}), id="ne"),
        pytest.param(_cortex({"$nin": ["cat"]}), id="nin"),
        pytest.param(_cortex({"$not": {"$eq": "cat"}}), id="classname-not"),
        pytest.param(_cortex({"$exists": True}), id="exists"),
        pytest.param(_cortex({"$in": ["cat", 3]}), id="in-non-string"),
        pytest.param(_cortex({"$in": []}), id="in-empty"),
        pytest.param(_cortex({"$gt": "c"}), id="gt"),
        pytest.param(_cortex(["cat"]), id="array-literal"),
        pytest.param({"object_analysis": {"$elemMatch": {"classname": "cat"}}}, id="one-level"),
        pytest.param({"object_analysis.classname": "cat"}, id="dotted"),
        pytest.param({"other": {"$elemMatch": {"$elemMatch": {"classname": "cat"}}}}, id="field"),
    ],
)
def test_no_hint(filt: dict[str, Any]) -> None:
    assert add_index_hints(filt) == filt


# --- equivalence of hinted filters --------------------------------------------------------
#
# A tiny matcher for the operators these filters use, with MongoDB's array semantics:
# a field condition on an array holds if it holds for the array or for any element.

_MISSING = object()
CLASSNAMES = ["cat", "dog", "person", "car", "bird"]
ROOMY = FilterLimits(max_depth=40, max_nodes=10_000)


def _values(value: Any) -> list[Any]:
    if value is _MISSING:
        return [None]
    return [value, *value] if isinstance(value, list) else [value]


def _compare(value: Any, arg: Any, op: str) -> bool:
    for v in _values(value):
        same_kind = (isinstance(v, str) and isinstance(arg, str)) or (
            isinstance(v, int | float) and isinstance(arg, int | float)
        )
        if not same_kind or isinstance(v, bool) or isinstance(arg, bool):
            continue
        if (op == "$gt" and v > arg) or (op == "$lt" and v < arg):
            return True
    return False


def _operator(value: Any, op: str, arg: Any, doc: Any) -> bool:
    if op == "$eq":
        return arg in _values(value)
    if op == "$ne":
        return arg not in _values(value)
    if op == "$in":
        return any(a in _values(value) for a in arg)
    if op == "$nin":
        return not any(a in _values(value) for a in arg)
    if op in ("$gt", "$lt"):
        return _compare(value, arg, op)
    if op == "$regex":
        return any(isinstance(v, str) and re.search(arg, v) for v in _values(value))
    if op == "$not":
        return not _condition(value, arg)
    if op == "$elemMatch":
        if not isinstance(value, list):
            return False
        operator_form = bool(arg) and all(
            k.startswith("$") and k not in ("$and", "$or", "$nor") for k in arg
        )
        if operator_form:
            return any(
                all(_operator(element, o, a, element) for o, a in arg.items()) for element in value
            )
        return any(isinstance(e, dict) and _matches(e, arg) for e in value)
    raise AssertionError(f"matcher does not know {op}")


def _condition(value: Any, cond: Any) -> bool:
    if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond):
        return all(_operator(value, op, arg, value) for op, arg in cond.items())
    return cond in _values(value)


def _matches(doc: dict[str, Any], query: dict[str, Any]) -> bool:
    for key, cond in query.items():
        if key == "$and":
            ok = all(_matches(doc, q) for q in cond)
        elif key == "$or":
            ok = any(_matches(doc, q) for q in cond)
        elif key == "$nor":
            ok = not any(_matches(doc, q) for q in cond)
        else:
            ok = _condition(doc.get(key, _MISSING), cond)
        if not ok:
            return False
    return True


def _record(rng: random.Random, n: int) -> dict[str, Any]:
    boxes = [
        {
            "classname": rng.choice(CLASSNAMES),
            "conf": round(rng.random(), 2),
            "x1": rng.randint(0, 50),
            "y1": rng.randint(0, 50),
            "x2": rng.randint(51, 400),
            "y2": rng.randint(51, 400),
        }
        for _ in range(rng.choice([0, 1, 1, 2, 3, 5]))
    ]
    # Mostly the legacy one-inner-list shape, sometimes none or several inner lists.
    shape = rng.random()
    if shape < 0.1:
        analysis: list[Any] = []
    elif shape < 0.2:
        cut = rng.randint(0, len(boxes))
        analysis = [boxes[:cut], boxes[cut:]]
    else:
        analysis = [boxes]
    return {
        "_id": f"PT::{n:024x}",
        "url": f"https://example.com/{n}.jpg",
        "width": rng.randint(50, 1000),
        "height": rng.randint(50, 1000),
        "type": "image",
        "object_analysis": analysis,
        "classes": sorted({b["classname"] for inner in analysis for b in inner}),
        "label_quality_estimation": round(rng.random(), 2),
    }


def _classname_condition(rng: random.Random) -> Any:
    pick = rng.randrange(7)
    if pick == 0:
        return rng.choice(CLASSNAMES)
    if pick == 1:
        return {"$eq": rng.choice(CLASSNAMES)}
    if pick == 2:
        return {"$in": rng.sample(CLASSNAMES, rng.randint(1, 3))}
    if pick == 3:
        return {"$regex": "^" + rng.choice(CLASSNAMES)[:2]}
    if pick == 4:
        return {"$ne": rng.choice(CLASSNAMES)}
    if pick == 5:
        return {"$nin": rng.sample(CLASSNAMES, 2)}
    return {"$not": {"$eq": rng.choice(CLASSNAMES)}}


def _cortex_clause(rng: random.Random) -> dict[str, Any]:
    inner: dict[str, Any] = {"classname": _classname_condition(rng)}
    if rng.random() < 0.4:
        inner["conf"] = {"$gt": round(rng.random(), 1)}
    if rng.random() < 0.2:
        inner["x2"] = {"$lt": rng.randint(60, 400)}
    outer: dict[str, Any] = {"$elemMatch": inner}
    if rng.random() < 0.1:
        return {"object_analysis": {"$not": {"$elemMatch": outer}}}
    return {"object_analysis": {"$elemMatch": outer}}


def _random_filter(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    filt: dict[str, Any] = {}
    if rng.random() < 0.7:
        filt.update(_cortex_clause(rng))
    if rng.random() < 0.4:
        filt["width"] = {"$gt": rng.randint(50, 1000)}
    if rng.random() < 0.2:
        filt["classes"] = rng.choice(CLASSNAMES)
    if depth < 2:
        for op in ("$and", "$and", "$or", "$nor"):
            if rng.random() < 0.3:
                filt[op] = [_random_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))]
    return filt or _cortex_clause(rng)


@pytest.mark.parametrize("seed", range(20))
def test_hinted_filter_matches_the_same_records(seed: int) -> None:
    rng = random.Random(seed)
    records = [_record(rng, n) for n in range(40)]
    hinted_count = 0
    for _ in range(60):
        filt = validate_filter(_random_filter(rng), ROOMY)
        hinted = add_index_hints(filt)
        assert validate_filter(hinted, ROOMY) == hinted
        if hinted != filt:
            hinted_count += 1
        expected = [r["_id"] for r in records if _matches(r, filt)]
        assert [r["_id"] for r in records if _matches(r, hinted)] == expected, (filt, hinted)
    assert hinted_count >= 10  # the property is not vacuous


def test_matcher_sees_a_broken_invariant() -> None:
    # Without "classes" listing every classname the hint would change results; the matcher
    # must notice, or the property test above proves nothing.
    record = {"object_analysis": [[{"classname": "cat", "conf": 0.9}]], "classes": []}
    filt = _cortex("cat")
    assert _matches(record, filt)
    assert not _matches(record, add_index_hints(filt))


def test_hex_ids_also_match_the_objectid_shown_that_way() -> None:
    hexed = "6b02b4e62e53e6cc2475a685"
    both = [hexed, ObjectId(hexed)]
    assert with_id_aliases({"_id": hexed}) == {"_id": {"$in": both}}
    assert with_id_aliases({"_id": "PT::1"}) == {"_id": "PT::1"}
    assert with_id_aliases({"_id": {"$ne": hexed, "$gt": "a"}}) == {
        "_id": {"$gt": "a", "$nin": both}
    }
    assert with_id_aliases({"$and": [{"_id": {"$in": [hexed, 3]}}], "url": hexed}) == {
        "$and": [{"_id": {"$in": [*both, 3]}}],
        "url": hexed,  # only _id names records
    }
    # Beside a list of their own: $ne adds its aliases to $nin, $eq keeps those $in holds.
    assert with_id_aliases({"_id": {"$ne": hexed, "$nin": ["x"]}}) == {
        "_id": {"$nin": ["x", *both]}
    }
    assert with_id_aliases({"_id": {"$eq": hexed, "$in": ["a"]}}) == {"_id": {"$in": []}}
    assert with_id_aliases({"_id": {"$eq": hexed, "$in": [ObjectId(hexed)]}}) == {
        "_id": {"$in": [ObjectId(hexed)]}
    }
    assert with_id_aliases({"_id": {"$eq": hexed, "$in": 3}}) == {"_id": {"$eq": hexed, "$in": 3}}
