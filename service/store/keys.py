"""API keys: only a SHA-256 digest of each secret is stored; the secret is shown once.

A key document holds its name, scopes and optional limits (``rate_limit``:
``{"requests", "seconds"}``, ``daily_quota``). Daily usage lives in ``api_key_usage``, one
document per key name and UTC day, removed 40 days later by a TTL index.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, date, datetime, time, timedelta

from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from service.ratelimit import Limits, Rate
from service.store.errors import database_errors, within
from service.store.records import Document

KEY_PREFIX = "lsk_"
SCOPES = ("label", "read", "delete", "admin")
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# The name metrics and logs give the bootstrap key: no stored key may pass for it.
BOOTSTRAP_NAME = "bootstrap"
KEY_INDEXES = [
    IndexModel([("key_hash", ASCENDING)], name="key_hash_unique", unique=True),
    IndexModel([("name", ASCENDING)], name="name_unique", unique=True),
]
USAGE_INDEXES = [IndexModel([("expires_at", ASCENDING)], name="expiry", expireAfterSeconds=0)]
USAGE_KEPT_DAYS = 40


def hash_key(secret: str) -> str:
    # Keys are 256-bit random tokens, so a fast digest is enough (no password stretching).
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def limits_of(document: Document) -> Limits:
    rate = document.get("rate_limit")
    return Limits(
        rate=Rate(int(rate["requests"]), int(rate["seconds"])) if rate else None,
        # int(): a quota edited in mongosh is stored as a double
        daily_quota=int(quota) if (quota := document.get("daily_quota")) is not None else None,
    )


class KeyChangedMeanwhile(Exception):
    """The key was rotated or revoked by someone else while this rotation ran."""


def new_key(
    name: str, scopes: list[str], *, rate: Rate | None = None, daily_quota: int | None = None
) -> tuple[str, Document]:
    """A new key's secret and its document, checked (``ValueError``); nothing is stored."""
    if not KEY_NAME.fullmatch(name):
        raise ValueError("a key name is 1-64 letters, digits, '_', '.' or '-'")
    if name.lower() == BOOTSTRAP_NAME:
        raise ValueError(f"{name!r} is the bootstrap key's name in metrics and logs")
    if not scopes:
        raise ValueError(f"a key needs at least one scope of {list(SCOPES)}")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scopes {unknown}; known: {list(SCOPES)}")
    if daily_quota is not None and daily_quota < 1:
        raise ValueError("a daily quota is at least 1 request")
    secret = new_secret()
    document: Document = {
        "name": name,
        "key_hash": hash_key(secret),
        "scopes": sorted(set(scopes)),
        "created_at": datetime.now(UTC),
        "revoked": False,
    }
    if rate is not None:
        document["rate_limit"] = {"requests": rate.requests, "seconds": rate.seconds}
    if daily_quota is not None:
        document["daily_quota"] = daily_quota
    return secret, document


class ApiKeyStore:
    def __init__(
        self, database: AsyncDatabase[Document], *, operation_timeout_ms: int = 10_000
    ) -> None:
        self._keys: AsyncCollection[Document] = database["api_keys"]
        self._usage: AsyncCollection[Document] = database["api_key_usage"]
        self._operation_timeout = operation_timeout_ms / 1000

    async def ensure_indexes(self) -> None:
        async with database_errors():
            await self._keys.create_indexes(KEY_INDEXES)
            await self._usage.create_indexes(USAGE_INDEXES)

    async def create(
        self,
        name: str,
        scopes: list[str],
        *,
        rate: Rate | None = None,
        daily_quota: int | None = None,
    ) -> str:
        """Store a new key; returns its secret, which is not kept."""
        secret, document = new_key(name, scopes, rate=rate, daily_quota=daily_quota)
        await self.add(document)
        return secret

    async def add(self, document: Document) -> None:
        """Store a key made by ``new_key`` (``DuplicateKeyError`` if its name is taken)."""
        async with database_errors():
            await self._keys.insert_one(document)

    async def find(self, secret: str) -> Document | None:
        async with within(self._operation_timeout):
            return await self._keys.find_one({"key_hash": hash_key(secret), "revoked": False})

    async def list(self) -> list[Document]:
        async with database_errors():
            return await self._keys.find({}, {"key_hash": 0}).sort("name").to_list()

    async def revoke(self, name: str) -> bool:
        async with database_errors():
            result = await self._keys.update_one(
                {"name": name, "revoked": False}, {"$set": {"revoked": True}}
            )
        return result.modified_count == 1

    async def rotate(self, name: str) -> str | None:
        """Give key ``name`` a new secret, keeping its scopes, limits and usage; the old secret
        stops working, and a revoked key is active again. ``None`` when no key has that name."""
        secret = new_secret()
        async with database_errors():
            current = await self._keys.find_one({"name": name}, {"key_hash": 1, "revoked": 1})
            if current is None:
                return None
            # Only the key as read: of two rotations at once, one would otherwise print a
            # secret that the other had already replaced.
            result = await self._keys.update_one(
                # (.get: a field missing, in a document edited by hand, matches as null)
                {
                    "name": name,
                    "key_hash": current.get("key_hash"),
                    "revoked": current.get("revoked"),
                },
                {
                    "$set": {
                        "key_hash": hash_key(secret),
                        "revoked": False,
                        "rotated_at": datetime.now(UTC),
                    }
                },
            )
        if result.matched_count != 1:
            raise KeyChangedMeanwhile(name)
        return secret

    async def usage(self, name: str, day: str) -> int:
        """Requests counted for key ``name`` on UTC ``day`` (ISO date)."""
        async with within(self._operation_timeout):
            document = await self._usage.find_one({"_id": _usage_id(name, day)})
        return int(document["count"]) if document else 0

    async def add_usage(self, name: str, day: str, count: int) -> int:
        """Add ``count`` requests to the day's usage; returns the new total."""
        expires = datetime.combine(date.fromisoformat(day), time(), UTC) + timedelta(
            days=USAGE_KEPT_DAYS
        )
        async with within(self._operation_timeout):
            document = await self._usage.find_one_and_update(
                {"_id": _usage_id(name, day)},
                {"$inc": {"count": count}, "$setOnInsert": {"expires_at": expires}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        return int(document["count"]) if document else count


def _usage_id(name: str, day: str) -> str:
    return f"{day}/{name}"  # the day has a fixed length, so no two pairs share an id
