"""``python -m service keys ...``: create, list, rotate and revoke API keys in the configured
database."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from pymongo.errors import DuplicateKeyError

from service.errors import DatabaseUnavailable
from service.ratelimit import Rate
from service.settings import Settings
from service.store.connection import NO_DATABASE, tool_database
from service.store.errors import within
from service.store.keys import ApiKeyStore, KeyChangedMeanwhile, limits_of, new_key
from service.store.records import Document


def parse_limits(rate: str | None, quota: str | None) -> tuple[Rate | None, int | None]:
    """``--rate 20/s`` and ``--quota 100000/day`` (a quota is per day only)."""
    daily = None
    if quota is not None:
        parsed = Rate.parse(quota) if "/" in quota else None
        if parsed is None or parsed.seconds != 86400:
            raise ValueError(f"a quota is a number of requests per day, like 100000/day: {quota!r}")
        daily = parsed.requests
    return (Rate.parse(rate) if rate is not None else None), daily


async def run_keys_command(settings: Settings, args: argparse.Namespace) -> int:
    if settings.mongodb_uri is None:
        print(NO_DATABASE, file=sys.stderr)
        return 2
    created = None
    if args.action == "create":  # checked before the database is reached
        scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
        try:
            rate, quota = parse_limits(args.rate, args.quota)
            created = new_key(args.name, scopes, rate=rate, daily_quota=quota)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    async with tool_database(settings.mongodb_uri, settings) as database:
        store = ApiKeyStore(database)
        # One deadline for the whole command: a server that answers heartbeats but holds the
        # write (a backup's lock, a write concern never met) must not hang a revocation.
        async with within(settings.db_operation_timeout_ms / 1000):
            return await _keys_command(store, args, created)


async def _keys_command(
    store: ApiKeyStore, args: argparse.Namespace, created: tuple[str, Document] | None
) -> int:
    """``created``: the secret and document of the key to create, made by ``new_key``."""
    await store.ensure_indexes()
    if created is not None:
        secret, document = created
        try:
            await store.add(document)
        except DuplicateKeyError:
            print(
                f"error: a key named {args.name!r} exists (revoked ones too);"
                f" `keys rotate --name {args.name}` gives it a new secret",
                file=sys.stderr,
            )
            return 2
        limits = limits_of(document)
        shown = {
            "name": args.name,
            "scopes": document["scopes"],
            "rate": str(limits.rate) if limits.rate else None,
            "quota": f"{limits.daily_quota}/day" if limits.daily_quota else None,
            "key": secret,
        }
        print(json.dumps(shown))
        print("store this key now: it is not shown again", file=sys.stderr)
    elif args.action == "list":
        for key in await store.list():
            key.pop("_id", None)
            print(json.dumps(key, default=str))
    elif args.action == "rotate":
        try:
            rotated = await store.rotate(args.name)
        except KeyChangedMeanwhile:
            print(
                f"error: {args.name!r} was rotated or revoked meanwhile: run it again",
                file=sys.stderr,
            )
            return 1
        except (DatabaseUnavailable, asyncio.CancelledError):  # cancelled: the deadline, Ctrl-C
            print(
                f"error: the rotation of {args.name!r} may have taken effect without its"
                " new secret being shown: rotate it again",
                file=sys.stderr,
            )
            raise
        if rotated is None:
            print(f"no key named {args.name!r}", file=sys.stderr)
            return 1
        print(json.dumps({"name": args.name, "key": rotated}))
        print(
            "store this key now: it is not shown again; the old one stops working within seconds",
            file=sys.stderr,
        )
    elif args.action == "revoke":
        if not await store.revoke(args.name):
            print(f"no active key named {args.name!r}", file=sys.stderr)
            return 1
        print(f"revoked {args.name} (running services stop accepting it within seconds)")
    return 0
