"""The service's database client options."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import bson
from bson.datetime_ms import DatetimeMS
from pymongo import MongoClient

from service.settings import Settings
from service.store.connection import client_options

MS_PER_DAY = 86_400_000


def test_dates_python_cannot_hold_are_read_clamped(make_settings: Callable[..., Settings]) -> None:
    """MongoDB stores dates past year 9999 and before year 1; read as they are, a record
    holding one would fail every page and walk it is on."""
    client: MongoClient[dict[str, object]] = MongoClient(
        "mongodb://127.0.0.1:1/", connect=False, **client_options(make_settings())
    )
    try:
        after_9999 = DatetimeMS(int(datetime(9999, 12, 31, tzinfo=UTC).timestamp() * 1000))
        data = bson.encode(
            {
                "late": DatetimeMS(int(after_9999) + 365 * MS_PER_DAY),
                "early": DatetimeMS(-62_135_596_800_000 - MS_PER_DAY),
                "now": datetime(2026, 11, 22, 10, tzinfo=UTC),
            }
        )
        decoded = bson.decode(data, codec_options=client.codec_options)
    finally:
        client.close()
    assert decoded["late"] == datetime.max.replace(microsecond=999_000, tzinfo=UTC)
    assert decoded["early"] == datetime.min.replace(tzinfo=UTC)
    assert decoded["now"] == datetime(2026, 11, 22, 10, tzinfo=UTC)
