"""``python -m service backfill``: bring the derived fields of stored records up to date."""

from __future__ import annotations

import argparse
import sys

from pymongo.errors import OperationFailure

from service.settings import Settings
from service.store.backfill import BackfillProgress, backfill_derived_fields
from service.store.connection import NO_DATABASE, tool_database
from service.store.records import RecordStore, records_collection
from service.walk_cli import (
    add_walk_arguments,
    batch_deadline,
    print_record_error,
    summary_line,
)

DEFAULT_BATCH_SIZE = 500


def add_backfill_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "backfill",
        help="recompute classes, keywords and phash_bands of stored records (idempotent)",
    )
    add_walk_arguments(parser, default_batch_size=DEFAULT_BATCH_SIZE, batch_is="read and written")
    parser.add_argument("--dry-run", action="store_true", help="count, write nothing")


async def run_backfill_command(settings: Settings, args: argparse.Namespace) -> int:
    if settings.mongodb_uri is None:
        print(NO_DATABASE, file=sys.stderr)
        return 2

    def report(progress: BackfillProgress) -> None:
        print(_summary(progress, args.dry_run), file=sys.stderr, flush=True)

    def refused(record_id: object, message: str) -> None:
        print_record_error(record_id, "not updated", message)

    async with tool_database(settings.mongodb_uri, settings) as database:
        store = RecordStore(database, max_time_ms=settings.query_max_time_ms)
        indexes_failed = await _indexes(store, dry_run=args.dry_run)
        done = await backfill_derived_fields(
            records_collection(database),
            batch_size=args.batch_size,
            dry_run=args.dry_run,
            after=args.after,
            operation_timeout=batch_deadline(settings, args.batch_size),
            on_batch=report,
            on_failure=refused,
        )
    print(_summary(done, args.dry_run, done=True))
    return 1 if done.failed or indexes_failed else 0


async def _indexes(store: RecordStore, *, dry_run: bool) -> bool:
    """Old or imported databases may lack the indexes that the derived fields exist to
    serve: create them (a dry run only says which are missing). True when one failed; the
    derived fields are brought up to date all the same."""
    if dry_run:
        if missing := await store.missing_indexes():
            print(
                f"missing indexes (a run without --dry-run creates them): {missing}",
                file=sys.stderr,
            )
        return False
    try:
        await store.ensure_indexes()
    except OperationFailure as exc:
        message = (exc.details or {}).get("errmsg") or str(exc)
        print(f"error: an index could not be created: {message[:300]}", file=sys.stderr)
        return True
    return False


def _summary(progress: BackfillProgress, dry_run: bool, **more: object) -> str:
    counts = {"scanned": progress.scanned, "updated": progress.updated}
    return summary_line(progress, counts, dry_run, **more)
