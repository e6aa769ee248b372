"""What the commands that walk the records (``backfill``, ``relabel``) share: their batch
size and ``--after`` arguments, the deadline of a batch, and their output lines."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from bson import json_util
from bson.errors import BSONError

from service.query.bson_order import rank
from service.settings import Settings
from service.store.walk import FROM_START, WalkProgress

# Records are held in memory a batch at a time (about 5 KB each as the service writes them).
MAX_BATCH_SIZE = 10_000
# A batch of up to this many records has db_operation_timeout_ms for each read and write.
RECORDS_PER_DEADLINE = 500


def add_walk_arguments(
    parser: argparse.ArgumentParser, *, default_batch_size: int, batch_is: str
) -> None:
    """``--batch-size`` (records ``batch_is`` at a time) and ``--after``."""
    parser.add_argument(
        "--batch-size",
        type=parse_batch_size,
        default=default_batch_size,
        help=f"records {batch_is} at a time, 1 to {MAX_BATCH_SIZE:,}"
        f" (default {default_batch_size})",
    )
    parser.add_argument(
        "--after",
        type=parse_record_id,
        default=FROM_START,
        help='resume after this record id, as last reported: JSON (7, {"$oid": "..."}, "7",'
        " null) or a plain string id",
    )


def summary_line(
    progress: WalkProgress, counts: dict[str, int], dry_run: bool, **more: object
) -> str:
    """A JSON line of ``counts`` and where the walk is; ids that are not strings (imported
    ObjectIds) in MongoDB Extended JSON, which ``--after`` reads back."""
    summary: dict[str, Any] = {
        **counts,
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


def print_record_error(record_id: object, what: str, message: str) -> None:
    """One line on stderr naming the record as ``--after`` reads ids back."""
    shown = json_util.dumps(record_id, json_options=json_util.RELAXED_JSON_OPTIONS)
    print(f"error: record {shown} {what}: {message[:300]}", file=sys.stderr)


def batch_deadline(settings: Settings, batch_size: int) -> float:
    """Seconds a batch's read or write may take: ``db_operation_timeout_ms`` for every
    ``RECORDS_PER_DEADLINE`` records, so a large healthy batch is not taken for a database
    that holds it (the development server writes about 2 ms a record)."""
    return settings.db_operation_timeout_ms / 1000 * math.ceil(batch_size / RECORDS_PER_DEADLINE)


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
