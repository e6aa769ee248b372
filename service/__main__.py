"""Command line: ``python -m service serve | openapi | keys ... | backfill | relabel``."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence

from pymongo.errors import PyMongoError

from service.backfill_cli import add_backfill_parser, run_backfill_command
from service.dbserver import DatabaseServerError
from service.errors import ServiceError
from service.infer.manifest import ModelError
from service.listen import ListenError
from service.relabel_cli import add_relabel_parser, run_relabel_command
from service.settings import ConfigError, Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the API (and a local database when none is set)")
    commands.add_parser("openapi", help="print the OpenAPI document as JSON")
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="action", required=True
    )
    create = keys.add_parser("create", help="create a key; the secret is printed once")
    create.add_argument("--name", required=True)
    create.add_argument("--scopes", default="read", help="comma-separated: label,read,delete,admin")
    create.add_argument("--rate", help="request rate limit, e.g. 20/s or 600/min (per process)")
    create.add_argument("--quota", help="daily request quota (UTC days), e.g. 100000/day")
    keys.add_parser("list", help="list keys (never their secrets)")
    rotate = keys.add_parser(
        "rotate", help="a new secret for a key (revoked or not), keeping its name and limits"
    )
    rotate.add_argument("--name", required=True)
    revoke = keys.add_parser("revoke", help="revoke a key by name")
    revoke.add_argument("--name", required=True)
    add_backfill_parser(commands)
    add_relabel_parser(commands)
    args = parser.parse_args(argv)

    if args.command == "openapi":
        from service.app import create_app

        schema = create_app(Settings()).openapi_schema.to_schema()
        print(json.dumps(schema, indent=2, sort_keys=True))
        return 0
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(args, settings)
    except KeyboardInterrupt:
        resume = " (run it again, or pass --after the last_id reported)"
        resumable = args.command in ("backfill", "relabel")
        print(f"interrupted{resume if resumable else ''}", file=sys.stderr)
        return 130
    except ModelError as exc:  # a model file missing or altered, a provider this build lacks
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except (ServiceError, PyMongoError, DatabaseServerError, ListenError) as exc:
        # The database is unreachable or refused, the port taken: a message, not a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        # Libraries start threads as they are imported (OpenBLAS, ONNX Runtime), and a thread
        # inherits the signal mask of the one that starts it. Started with SIGINT blocked,
        # they never take a Ctrl-C: it waits for the main thread even while that thread
        # blocks SIGINT for a moment (service.processes), rather than going to a library
        # thread that, SIGINT being ignored meanwhile, would drop it.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            from service.launcher import serve
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        return serve(settings)
    if args.command == "backfill":
        return asyncio.run(run_backfill_command(settings, args))
    if args.command == "relabel":
        return asyncio.run(run_relabel_command(settings, args))
    from service.keys_cli import run_keys_command

    return asyncio.run(run_keys_command(settings, args))


if __name__ == "__main__":
    sys.exit(main())
