"""The model manifest (``models/manifest.json``) and checksum-verified model resolution."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import threading
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import msgspec


class ModelError(RuntimeError):
    """A model file is missing, corrupt or cannot be loaded, or a provider is unavailable."""


class InputSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What the network expects as input: ``(pixel - mean) / std`` in ``colour`` order."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str
    colour: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str


class ModelSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One file of the manifest: a network or a class-name list."""

    name: str
    file: str
    sha256: str
    license: str
    source: str
    url: str | None
    produced_by: str | None = None
    required: bool = False
    task: str
    input: InputSpec | None = None
    outputs: str | None = None
    lines: int | None = None

    def where_from(self) -> str:
        """A sentence saying where the file comes from, for error messages."""
        parts = [f"Source: {self.source}."]
        if self.url:
            parts.append(f"Download: {self.url}")
        if self.produced_by:
            parts.append(f"How to produce it: {self.produced_by}.")
        return " ".join(parts)


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    schema_version: int
    models: tuple[ModelSpec, ...]

    def get(self, name: str) -> ModelSpec:
        """Look an entry up by ``name`` (``yolox_nano``) or by file (``yolox_nano.onnx``)."""
        for spec in self.models:
            if name in (spec.name, spec.file):
                return spec
        known = ", ".join(spec.name for spec in self.models)
        raise ModelError(f"unknown model {name!r}; the manifest lists: {known}")


@functools.cache
def load_manifest() -> Manifest:
    """The manifest shipped in the ``models`` package (parsed once)."""
    data = resources.files("models").joinpath("manifest.json").read_bytes()
    return msgspec.json.decode(data, type=Manifest)


def spec(name: str) -> ModelSpec:
    return load_manifest().get(name)


_digests: dict[tuple[str, int, int], str] = {}
_digests_lock = threading.Lock()


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """A model file or directory the service cannot read (its user lacks the permission, a
    disk error) is a ``ModelError`` naming it, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise ModelError(
            f"cannot read {exc.filename or path} ({exc.strerror}): the service's user needs"
            " read access to the model files and directories"
        ) from None


def sha256_file(path: Path) -> str:
    """The file's sha256, remembered per (path, size, mtime) so a reload does not rehash."""
    with reading(path):
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        with _digests_lock:
            cached = _digests.get(key)
        if cached is not None:
            return cached
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    result = digest.hexdigest()
    with _digests_lock:
        _digests[key] = result
    return result


def resolve(model_dir: Path, name: str) -> Path:
    """The verified path of manifest entry ``name`` inside ``model_dir``.

    Raises ``ModelError`` naming the file, the directory and the expected hash when the
    file is missing or its sha256 differs from the manifest.
    """
    entry = spec(name)
    path = Path(model_dir) / entry.file
    if not path.is_file():
        raise ModelError(
            f"model file {entry.file} not found in directory {Path(model_dir)} "
            f"(expected sha256 {entry.sha256}). Run `python -m models.fetch --model-dir "
            f"{Path(model_dir)} --only {entry.name}` or place it there by hand. "
            f"{entry.where_from()}"
        )
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise ModelError(
            f"model file {entry.file} in directory {Path(model_dir)} has sha256 {actual}, "
            f"expected {entry.sha256}; replace it with the published file. {entry.where_from()}"
        )
    return path


def read_lines(path: Path) -> list[str]:
    """A class-name file: one name per line, trailing blank lines ignored."""
    return path.read_text(encoding="utf-8").rstrip("\n").split("\n")
