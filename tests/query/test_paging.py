"""Sort orders, field projections and cursors: what is accepted, what is refused."""

from __future__ import annotations

import base64
import json
import math
from datetime import datetime
from typing import Any

import pytest
from bson import Code, Decimal128, MaxKey, MinKey, ObjectId, Regex, Timestamp

from service.errors import InvalidQuery
from service.query.bson_order import NANS, later_types, types_after
from service.query.paging import (
    BY_ID,
    Position,
    SortOrder,
    after_filters,
    after_match,
    decode_cursor,
    encode_cursor,
    parse_fields,
    parse_sort,
)


def test_parse_sort() -> None:
    assert parse_sort(None) == BY_ID
    assert parse_sort("datetime") == SortOrder("datetime", 1)
    assert parse_sort("-label_quality_estimation") == SortOrder("label_quality_estimation", -1)
    assert parse_sort("-width").spec() == [("width", -1), ("_id", -1)]
    for bad in ("classes", "url", "-bytes", "$natural", "width,height", "--width", "+-width"):
        with pytest.raises(InvalidQuery, match="cannot sort"):
            parse_sort(bad)


def test_parse_fields() -> None:
    assert parse_fields(None) is None
    assert parse_fields("url, classes") == {"classes": 1, "url": 1, "_id": 1}
    assert parse_fields("image_properties.phash,image_properties") == {
        "image_properties": 1,
        "_id": 1,
    }
    assert parse_fields("_id.x,url") == {"_id": 1, "url": 1}  # not a path collision
    for bad in ("$where", "a..b", "a.$", "x" * 201, ",".join(f"f{i}" for i in range(51))):
        with pytest.raises(InvalidQuery, match="fields"):
            parse_fields(bad)


def test_cursor_round_trip() -> None:
    order = SortOrder("label_quality_estimation", -1)
    token = encode_cursor(order, {"_id": "PT::1", "label_quality_estimation": 0.25})
    assert "=" not in token and token.isascii()
    assert decode_cursor(token, order) == Position(value=0.25, id="PT::1")
    by_id = encode_cursor(BY_ID, {"_id": "PT::2"})
    assert decode_cursor(by_id, BY_ID) == Position(value="PT::2", id="PT::2")


def test_cursor_round_trip_with_bson_values() -> None:
    """Imported records may have ObjectId ids and BSON dates: Extended JSON carries them."""
    oid, when = ObjectId(), datetime(2020, 1, 2, 3, 4, 5, 6000)
    order = SortOrder("datetime", 1)
    token = encode_cursor(order, {"_id": oid, "datetime": when})
    assert decode_cursor(token, order) == Position(value=when, id=oid)
    assert decode_cursor(encode_cursor(BY_ID, {"_id": 7}), BY_ID) == Position(7, 7)


@pytest.mark.parametrize(
    "value",
    [
        True,
        "",
        "x" * 3000,
        {"px": 640, "at": ObjectId()},
        -0.5,
        float("inf"),
        Timestamp(5, 1),
        MinKey(),
        MaxKey(),
        b"\x01\x02",
    ],
)
def test_every_sort_value_a_page_can_end_on_makes_a_cursor(value: object) -> None:
    """Imports may hold any scalar or document where a number is expected: the cursor the
    service issues after such a record is one it accepts. So is an id null (MongoDB allows
    one record that id)."""
    order = SortOrder("width", -1)
    token = encode_cursor(order, {"_id": "PT::1", "width": value})
    assert decode_cursor(token, order) == Position(value=value, id="PT::1")
    null_id = encode_cursor(order, {"_id": None, "width": value})
    assert decode_cursor(null_id, order) == Position(value=value, id=None)


def _token(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "not base64 !!",
        "e30",  # {}
        _token([1, 2]),
        _token({"k": "width", "d": 1, "v": 3, "i": "PT::1"}),  # another sort
        _token({"k": "_id", "d": -1, "v": None, "i": "PT::1"}),  # another direction
        _token({"k": "_id", "d": 1, "v": None, "i": {"$oid": "xyz"}}),
        _token({"k": "_id", "d": 1, "v": {"$numberDecimal": "x"}, "i": "PT::1"}),
        _token({"k": "_id", "d": 1, "v": {"$date": "yesterday"}, "i": "PT::1"}),
        _token({"k": "_id", "d": 1, "v": None, "i": {"$code": "while(1){}"}}),
        _token({"k": "_id", "d": 1, "v": None, "i": {"$regularExpression": {}}}),
        _token({"k": "_id", "d": 1, "v": None, "i": {"a": {"$gt": 1}}}),  # an operator
        _token({"k": "_id", "d": 1, "v": [1, 2], "i": "PT::1"}),  # arrays sort by an element
        base64.urlsafe_b64encode(  # nested deeper than the decoder's recursion limit
            b'{"k":"_id","d":1,"v":' + b"[" * 2900 + b"]" * 2900 + b',"i":"a"}'
        ).decode(),
        _token(  # objects 300 deep: within the length, past the value check's recursion
            {"k": "_id", "d": 1, "v": None, "i": json.loads('{"a":' * 300 + "1" + "}" * 300)}
        ),
        _token({"k": "_id", "d": 1, "v": None, "i": "\ud800"}),  # cannot be stored or sent
        _token({"k": "_id", "d": 1, "v": "\udfff", "i": "PT::1"}),
        _token({"k": "_id", "d": 1, "v": {"$gt": 1}, "i": "PT::1"}),
        _token({"k": "_id", "d": 1, "v": 2**70, "i": "PT::1"}),
        _token({"k": "_id", "d": 1, "v": None, "i": "PT::1", "x": 1}),
        base64.urlsafe_b64encode(b'{"k":"_id","d":1,"v":NaN,"i":"a"}').decode(),
        "A" * 9000,
    ],
)
def test_bad_cursors_are_refused(token: str) -> None:
    with pytest.raises(InvalidQuery, match="cursor is not valid"):
        decode_cursor(token, BY_ID)


def test_after_filters() -> None:
    position = Position(value=0.5, id="PT::9")
    ascending = SortOrder("label_quality_estimation", 1)
    after_strings = {"$type": types_after("PT::9", 1)}
    assert "objectId" in after_strings["$type"] and "string" not in after_strings["$type"]
    assert after_filters(ascending, position) == [
        {"label_quality_estimation": 0.5, "_id": {"$gt": "PT::9"}},
        {"label_quality_estimation": 0.5, "_id": after_strings},  # imported ObjectIds
        {"label_quality_estimation": {"$gt": 0.5}},
        {"label_quality_estimation": {"$type": types_after(0.5, 1)}},
    ]
    descending = SortOrder("width", -1)
    before_strings = {"$type": ["minKey", "null", "double", "int", "long", "decimal"]}
    assert after_filters(descending, Position(value=None, id="PT::9")) == [
        {"width": None, "_id": {"$lt": "PT::9"}},
        {"width": None, "_id": before_strings},
        {"width": {"$type": ["minKey"]}},  # the one value that sorts before null
    ]
    assert after_filters(SortOrder("width", 1), Position(None, "PT::9"))[2] == {
        "width": {"$type": types_after(None, 1)}  # not minKey, which sorts before null
    }
    # Descending, NaN comes after every other number, then records without the key (or
    # null), then minKey.
    assert after_filters(descending, Position(value=640, id="PT::9")) == [
        {"width": 640, "_id": {"$lt": "PT::9"}},
        {"width": 640, "_id": before_strings},
        {"width": {"$lt": 640}},
        {"width": {"$in": NANS}},
        {"width": None},
        {"width": {"$type": ["minKey"]}},
    ]
    assert after_match(BY_ID, Position("PT::9", "PT::9")) == {
        "$or": [{"_id": {"$gt": "PT::9"}}, {"_id": after_strings}]
    }
    assert "$or" in after_match(ascending, position)


NUMBERS = ["double", "int", "long", "decimal"]
LATER_THAN_OBJECTID = [
    "bool",
    "date",
    "timestamp",
    "regex",
    "javascript",
    "javascriptWithScope",
    "maxKey",
]


@pytest.mark.parametrize(
    ("value", "direction", "expected"),
    [
        ("a", 1, ["object", "binData", "objectId", *LATER_THAN_OBJECTID]),
        (3, 1, ["string", "symbol", "object", "binData", "objectId", *LATER_THAN_OBJECTID]),
        (ObjectId(), -1, ["minKey", "null", *NUMBERS, "string", "symbol", "object", "binData"]),
        (
            True,
            -1,
            ["minKey", "null", *NUMBERS, "string", "symbol", "object", "binData", "objectId"],
        ),
        (datetime(2020, 1, 1), 1, LATER_THAN_OBJECTID[2:]),
        (Code("f()"), -1, [*types_after(Regex("^a"), -1), "regex"]),  # not a string
        (MaxKey(), 1, []),
    ],
)
def test_types_after_follow_the_bson_sort_order(
    value: object, direction: int, expected: list[str]
) -> None:
    assert types_after(value, direction) == expected


@pytest.mark.parametrize(
    ("value", "direction", "expected"),
    [
        (MinKey(), 1, [{"w": None}, {"w": {"$type": types_after(None, 1)}}]),
        (None, 1, [{"w": {"$type": types_after(None, 1)}}]),
        (MaxKey(), 1, []),
        (3, -1, [{"w": None}, {"w": {"$type": ["minKey"]}}]),
        (None, -1, [{"w": {"$type": ["minKey"]}}]),
        (MinKey(), -1, []),
        ("a", -1, [{"w": {"$type": NUMBERS}}, {"w": None}, {"w": {"$type": ["minKey"]}}]),
    ],
)
def test_later_types_put_missing_fields_where_null_sorts(
    value: object, direction: int, expected: list[dict[str, Any]]
) -> None:
    assert later_types("w", value, direction) == expected
    # An _id is never missing: one query for every later type.
    ids = later_types("_id", value, direction)
    assert ids == ([{"_id": {"$type": types_after(value, direction)}}] if expected else [])


def test_after_a_nan_come_the_other_numbers() -> None:
    """NaN sorts before every number, but no number compares greater than it; descending,
    nothing of its type follows it, and it follows every other number."""
    ascending, descending = SortOrder("width", 1), SortOrder("width", -1)
    nan = Position(value=float("nan"), id="PT::5")
    assert after_filters(ascending, nan)[-2] == {"width": {"$gte": -math.inf}}
    assert after_filters(descending, nan)[2:] == [{"width": None}, {"width": {"$type": ["minKey"]}}]
    assert {"width": {"$in": NANS}} in after_filters(descending, Position(-3, "PT::5"))
    assert {"width": {"$in": NANS}} not in after_filters(descending, Position(True, "PT::5"))
    by_id = after_filters(SortOrder("_id", 1), Position(value=None, id=Decimal128("NaN")))
    assert by_id[0] == {"_id": {"$gte": -math.inf}}
