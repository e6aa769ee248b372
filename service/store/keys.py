"""API keys: only a SHA-256 digest of each secret is stored; the secret is shown once."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from service.store.records import Document, database_errors

KEY_PREFIX = "lsk_"
SCOPES = ("label", "read", "admin")
KEY_INDEXES = [
    IndexModel([("key_hash", ASCENDING)], name="key_hash_unique", unique=True),
    IndexModel([("name", ASCENDING)], name="name_unique", unique=True),
]


def hash_key(secret: str) -> str:
    # Keys are 256-bit random tokens, so a fast digest is enough (no password stretching).
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class ApiKeyStore:
    def __init__(self, database: AsyncDatabase[Document]) -> None:
        self._keys: AsyncCollection[Document] = database["api_keys"]

    async def ensure_indexes(self) -> None:
        async with database_errors():
            await self._keys.create_indexes(KEY_INDEXES)

    async def create(self, name: str, scopes: list[str], **limits: Any) -> str:
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown:
            raise ValueError(f"unknown scopes {unknown}; known: {list(SCOPES)}")
        secret = new_secret()
        async with database_errors():
            await self._keys.insert_one(
                {
                    "name": name,
                    "key_hash": hash_key(secret),
                    "scopes": sorted(set(scopes)),
                    "created_at": datetime.now(UTC),
                    "revoked": False,
                    **limits,
                }
            )
        return secret

    async def find(self, secret: str) -> Document | None:
        async with database_errors():
            return await self._keys.find_one({"key_hash": hash_key(secret), "revoked": False})

    async def list(self) -> list[Document]:
        async with database_errors():
            return await self._keys.find({}, {"key_hash": 0}).sort("name").to_list()

    async def revoke(self, name: str) -> bool:
        async with database_errors():
            result = await self._keys.update_one({"name": name}, {"$set": {"revoked": True}})
        return result.modified_count == 1
