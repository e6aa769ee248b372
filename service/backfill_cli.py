"""``python -m service backfill``: bring the derived fields of stored records up to date."""

from __future__ import annotations

import argparse
import math
import sys

from bson import json_util
from bson.errors import BSONError
from pymongo.errors import OperationFailure

from service.query.bson_order import rank
from service.settings import Settings
from service.store.backfill import BackfillProgress, backfill_derived_fields
from service.store.connection import NO_DATABASE, tool_database
from service.store.records import RecordStore, records_collection
from service.store.walk import FROM_START

# Records are held in memory a batch at a time (about 5 KB each as the service writes them).
MAX_BATCH_SIZE = 10_000
DEFAULT_BATCH_SIZE = 500


def add_backfill_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "backfill",
        help="recompute classes, keywords and phash_bands of stored records (idempotent)",
    )
    parser.add_argument(
        "--batch-size",
        type=parse_batch_size,
        default=DEFAULT_BATCH_SIZE,
        help=f"records read and written at a time, 1 to {MAX_BATCH_SIZE:,}"
        f" (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--after",
        type=parse_record_id,
        default=FROM_START,
        help='resume after this record id, as last reported: JSON (7, {"$oid": "..."}, "7",'
        " null) or a plain string id",
    )
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


def print_record_error(record_id: object, what: str, message: str) -> None:
    """One line on stderr naming the record as ``--after`` reads ids back."""
    shown = json_util.dumps(record_id, json_options=json_util.RELAXED_JSON_OPTIONS)
    print(f"error: record {shown} {what}: {message[:300]}", file=sys.stderr)


def batch_deadline(settings: Settings, batch_size: int) -> float:
    """Seconds a batch's read or write may take: ``db_operation_timeout_ms`` for every
    ``DEFAULT_BATCH_SIZE`` records, so a large healthy batch is not taken for a database
    that holds it (the development server writes about 2 ms a record)."""
    return settings.db_operation_timeout_ms / 1000 * math.ceil(batch_size / DEFAULT_BATCH_SIZE)


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
    """A JSON line; ids that are not strings (imported ObjectIds) in MongoDB Extended JSON,
    which ``--after`` reads back."""
    summary = {
        "scanned": progress.scanned,
        "updated": progress.updated,
        "last_id": progress.last_id,
        "dry_run": dry_run,
        **(
            {"failed": progress.failed, "failed_ids": progress.failed_ids}
            if progress.failed
            else {}
        ),
        **more,
    }
    return json_util.dumps(summary, json_options=json_util.RELAXED_JSON_OPTIONS)


def parse_batch_size(text: str) -> int:
    size = int(text)
    if not 1 <= size <= MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(f"{text} is not between 1 and {MAX_BATCH_SIZE:,}")
    return size


def parse_record_id(text: str) -> object:
    """An id as a progress line shows it (JSON: a number, {"$oid": ...}, a quoted string,
    null), or else the plain text of a string id such as PT::..."""
    try:
        value = json_util.loads(text)
    except ValueError:
        # Text meant as JSON but mistyped ({'$oid': ...}) would walk from the wrong place.
        if text.lstrip().startswith(("{", "[", '"')):
            raise argparse.ArgumentTypeError(f"{text} is not valid JSON") from None
        return text
    except BSONError as exc:  # Extended JSON of a malformed value: {"$oid": "zz"}
        raise argparse.ArgumentTypeError(str(exc)) from None
    except ArithmeticError:  # {"$numberDecimal": "1,5"}
        raise argparse.ArgumentTypeError(f"{text} is not a valid id") from None
    try:
        rank(value)
    except TypeError:  # an array: never an _id
        raise argparse.ArgumentTypeError(f"{text} cannot be a record id") from None
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{text} is past BSON's 64-bit integers")
    return value
