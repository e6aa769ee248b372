"""``python -m service keys ...``: create, list and revoke API keys in the configured database."""

from __future__ import annotations

import argparse
import json

from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError

from service.settings import Settings
from service.store.keys import ApiKeyStore
from service.store.records import Document


async def run_keys_command(settings: Settings, args: argparse.Namespace) -> int:
    if settings.mongodb_uri is None:
        print("set LABELSVC_MONGODB_URI to the database the service uses")
        return 2
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        settings.mongodb_uri, serverSelectionTimeoutMS=settings.db_timeout_ms
    )
    try:
        store = ApiKeyStore(client[settings.mongodb_db])
        await store.ensure_indexes()
        if args.action == "create":
            scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
            try:
                secret = await store.create(args.name, scopes)
            except ValueError as exc:
                print(f"error: {exc}")
                return 2
            except DuplicateKeyError:
                print(f"error: a key named {args.name!r} exists")
                return 2
            print(json.dumps({"name": args.name, "scopes": scopes, "key": secret}))
            print("store this key now: it is not shown again")
        elif args.action == "list":
            for key in await store.list():
                key.pop("_id", None)
                print(json.dumps(key, default=str))
        elif args.action == "revoke":
            if not await store.revoke(args.name):
                print(f"no active key named {args.name!r}")
                return 1
            print(f"revoked {args.name}")
        return 0
    finally:
        await client.close()
