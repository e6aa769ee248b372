"""The query language client filters may use: the operators allowed at query level and
inside a field condition, those refused with a reason, and the ``$type`` names and codes.
``service.query.filters`` enforces it; ``service.query.hints`` rewrites what it lets through.
"""

from __future__ import annotations

LOGICAL = frozenset({"$and", "$or", "$nor"})
COMPARISONS = frozenset({"$gt", "$gte", "$lt", "$lte"})
FIELD_OPERATORS = COMPARISONS | {
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
REFUSED = {
    "$where": _JAVASCRIPT,
    "$function": _JAVASCRIPT,
    "$accumulator": _JAVASCRIPT,
    "$expr": "aggregation expressions are not supported in filters",
    "$jsonSchema": "schema queries are not supported",
    "$text": "use the search parameter instead",
}
# Real MongoDB query operators outside the allow-list: named "not supported" rather than
# "unknown" so a client is not left wondering about a typo.
UNSUPPORTED = frozenset(
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
REGEX_OPTIONS = frozenset("imsx")
TYPE_ALIASES = frozenset(
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
TYPE_CODES = frozenset({*range(1, 20), -1, 127})
