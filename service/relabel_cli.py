"""``python -m service relabel``: label stored records again with the models loaded now.

The models, and the libraries behind them, are imported when the command runs, not with
this module: ``python -m service`` must start no library threads before ``serve`` has
blocked SIGINT (``service.__main__``).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from service.settings import Settings
from service.store.connection import NO_DATABASE
from service.store.records import records_collection
from service.walk_cli import (
    add_walk_arguments,
    batch_deadline,
    print_record_error,
    summary_line,
)

if TYPE_CHECKING:
    from service.relabel import RelabelProgress

DEFAULT_BATCH_SIZE = 100
MAX_CONCURRENCY = 64


def add_relabel_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "relabel",
        help="label again, in place and from their URLs, the records whose models or"
        " settings differ from the ones configured now",
    )
    add_walk_arguments(parser, default_batch_size=DEFAULT_BATCH_SIZE, batch_is="read")
    parser.add_argument(
        "--concurrency",
        type=_concurrency,
        default=None,
        help="records analysed at once (default: LABELSVC_WORKERS)",
    )
    parser.add_argument("--dry-run", action="store_true", help="count the stale records only")


async def run_relabel_command(settings: Settings, args: argparse.Namespace) -> int:
    from service.lifespan import open_resources
    from service.observability import Metrics
    from service.relabel import relabel_stale

    if settings.mongodb_uri is None:
        print(NO_DATABASE, file=sys.stderr)
        return 2

    def report(progress: RelabelProgress) -> None:
        print(_summary(progress, args.dry_run), file=sys.stderr, flush=True)

    def failed(record_id: object, message: str) -> None:
        print_record_error(record_id, "not relabeled", message)

    # It only walks and rewrites records: indexes are the service's to build (a dry run
    # must write nothing at all).
    async with open_resources(settings, Metrics(), upkeep=False) as resources:
        done = await relabel_stale(
            records_collection(resources.database),
            resources.pipeline,
            batch_size=args.batch_size,
            concurrency=args.concurrency or settings.workers,
            dry_run=args.dry_run,
            after=args.after,
            operation_timeout=batch_deadline(settings, args.batch_size),
            on_batch=report,
            on_failure=failed,
        )
    print(_summary(done, args.dry_run, done=True))
    return 1 if done.failed else 0


def _summary(progress: RelabelProgress, dry_run: bool, **more: object) -> str:
    counts = {
        name: getattr(progress, name)
        for name in ("scanned", "stale", "relabeled", "unreachable", "changed", "deleted")
    }
    if progress.unverifiable:
        counts["unverifiable"] = progress.unverifiable
    return summary_line(progress, counts, dry_run, **more)


def _concurrency(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"{text} is not between 1 and {MAX_CONCURRENCY}")
    return value
