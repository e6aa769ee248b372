"""Verify, and where missing download, the model files listed in ``models/manifest.json``.

    python -m models.fetch --model-dir DIR [--only NAME ...] [--all] [--base-url URL]

Works offline when the files are present. Exit status: 0 all verified; 1 a file (present
or downloaded) has the wrong sha256 and was left alone; 2 a file is missing and could not
be fetched (no download address, or the download failed), the message says what to put where.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import httpx

from models.files import as_created
from service.infer.manifest import ModelError, ModelSpec, load_manifest, sha256_file

OK, BAD_CHECKSUM, MISSING = 0, 1, 2


class FetchError(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _put_by_hand(entry: ModelSpec, target: Path) -> str:
    return (
        f"Put {entry.file} at {target} (sha256 {entry.sha256}, licence {entry.license}). "
        f"{entry.where_from()}"
    )


def download(url: str, entry: ModelSpec, target: Path, *, timeout: float) -> None:
    """Stream ``url`` to a temp file beside ``target``; rename into place once verified."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{entry.file}.", suffix=".part")
    except OSError as exc:  # a read-only model directory (mounted so in production)
        raise FetchError(
            f"{entry.file} is missing and {target.parent} cannot be written ({exc.strerror}). "
            + _put_by_hand(entry, target),
            MISSING,
        ) from exc
    temp = Path(name)
    try:
        digest = hashlib.sha256()
        with (
            os.fdopen(fd, "wb") as out,
            httpx.Client(timeout=timeout, follow_redirects=True) as client,
            client.stream("GET", url) as response,
        ):
            response.raise_for_status()
            for chunk in response.iter_bytes(1 << 20):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != entry.sha256:
            raise FetchError(
                f"downloaded {url} but its sha256 is {digest.hexdigest()}, expected "
                f"{entry.sha256}; nothing was written to {target}",
                BAD_CHECKSUM,
            )
        as_created(temp)
        os.replace(temp, target)
    except (httpx.HTTPError, OSError) as exc:
        raise FetchError(
            f"{entry.file} is missing and downloading {url} failed ({exc}). "
            + _put_by_hand(entry, target),
            MISSING,
        ) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def ensure(entry: ModelSpec, model_dir: Path, *, base_url: str | None, timeout: float) -> str:
    """Verify one file, downloading it when missing; returns a status line."""
    target = model_dir / entry.file
    if target.is_file():
        actual = sha256_file(target)
        if actual != entry.sha256:
            raise FetchError(
                f"{target} has sha256 {actual}, expected {entry.sha256}; it was left "
                f"untouched. Remove it and run again, or replace it by hand. "
                f"{entry.where_from()}",
                BAD_CHECKSUM,
            )
        return f"ok       {entry.file}"
    url = f"{base_url.rstrip('/')}/{entry.file}" if base_url else entry.url
    if url is None:
        raise FetchError(
            f"{entry.file} is missing from {model_dir} and has no download address. "
            + _put_by_hand(entry, target),
            MISSING,
        )
    download(url, entry, target, timeout=timeout)
    return f"fetched  {entry.file} from {url}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.fetch", description="Verify and fetch the model files."
    )
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="manifest name or file (repeatable)"
    )
    parser.add_argument("--all", action="store_true", help="every manifest entry")
    parser.add_argument("--base-url", help="download <BASE-URL>/<file> instead (a mirror)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per network read")
    args = parser.parse_args(argv)

    manifest = load_manifest()
    if args.only:
        try:
            entries = [manifest.get(name) for name in args.only]
        except ModelError as exc:
            parser.error(str(exc))
    elif args.all:
        entries = list(manifest.models)
    else:
        entries = [entry for entry in manifest.models if entry.required]

    status = OK
    for entry in entries:
        try:
            print(ensure(entry, args.model_dir, base_url=args.base_url, timeout=args.timeout))
        except FetchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = max(status, exc.status)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
