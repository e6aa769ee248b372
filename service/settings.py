"""Typed settings, read once from ``LABELSVC_*`` environment variables.

Nothing reads the environment at import time: the composition root calls
``Settings.from_env()`` and passes the object down. Tests build ``Settings(...)`` directly.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, get_args

import msgspec

from service.cpus import usable_cpus

Provider = Literal["auto", "cpu", "cuda", "tensorrt"]
MIN_BOOTSTRAP_KEY_LENGTH = 32
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]*")
PREFIX = "LABELSVC_"
# Variables with the prefix that belong to the project's tooling, not to the service: the
# evaluation photos (benchmarks), the host's model folder (deploy/compose.yaml), the length
# of the crash-safety soak test.
NOT_SETTINGS = frozenset({"evalset_dir", "models", "soak_requests"})
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LOG_FORMATS = ("text", "json")
# MongoDB database names: no /\. "$ or NUL, at most 63 bytes.
_DB_NAME_CHARACTERS = re.compile(r'[^/\\. "$*<>:|?\x00]+')
MAX_DB_NAME_BYTES = 63
# Bounds a value must stay within for the libraries that take it. The server refuses a
# maxTimeMS past a signed 32-bit integer, and the driver timeouts of a billion ms or more.
MAX_TIME_MS = 2**31 - 1
MAX_DB_TIMEOUT_MS = 999_999_999
MAX_FETCH_SECONDS = 3600.0
MAX_BATCH_WAIT_MS = 1000.0
# A detector batch is warmed up at its full size at start (and on a GPU every batch runs
# padded to it): a mistyped size must be an error, not a start that runs out of memory.
MAX_BATCH_SIZE = 64
MAX_PROCESSES = 64
# Threads of one pool (the executor's workers, ONNX Runtime's per model): the cores of the
# largest hosts; past them threads only take turns. 300 workers would start 301 threads.
MAX_THREADS = 256
# Each beam is one more row in every decoder step of a caption batch (up to 64 images);
# captioners are commonly run with 3 to 5.
MAX_CAPTION_BEAMS = 16
MAX_INPUT_SIZE = 2048
# The request bodies' cap on a URL or id (service.api.schemas); max_url_length stays within it.
MAX_URL_LENGTH = 8192


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


def _decode_path(kind: type, value: object) -> object:
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError(f"cannot decode {kind}")  # msgspec's "type not handled here"


def proxy_entries(value: str) -> list[str]:
    """The trusted proxies as uvicorn matches them: ``["*"]``, or addresses and networks in
    canonical form (``10.1.2.3/8`` is the network ``10.0.0.0/8``; uvicorn would take such an
    entry for a literal name and never match it). ValueError for anything else."""
    entries = [entry.strip() for entry in value.split(",")] if value.strip() else []
    if entries == ["*"]:
        return entries
    if "*" in entries:
        raise ValueError("* stands alone")  # uvicorn trusts everyone only for a lone "*"
    return [
        str(
            ipaddress.ip_network(entry, strict=False)
            if "/" in entry
            else ipaddress.ip_address(entry)
        )
        for entry in entries
    ]


def _proxies_valid(value: str) -> bool:
    try:
        proxy_entries(value)
    except ValueError:
        return False
    return True


def _user_cache(fallback: Path) -> Path:
    """This user's cache directory (XDG): the image's working directory is read-only.
    ``fallback`` for a user with no home directory."""
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "labelsvc"
    try:
        return Path.home() / ".cache" / "labelsvc"
    except RuntimeError:  # no HOME, and no entry in the password database
        return fallback


def _default_workers() -> int:
    return max(1, min(4, usable_cpus()))


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    log_format: str = "text"  # or json: one object a line, for log collectors

    # Database. Unset URI: `python -m service serve` starts a local test/dev server under data_dir.
    mongodb_uri: str | None = None
    mongodb_db: str = "labelsvc"
    data_dir: Path = Path("var")
    db_server: str = "secantusd-py --standalone"
    db_timeout_ms: int = 3000
    db_operation_timeout_ms: int = 10_000
    query_max_time_ms: int = 5000
    count_max_time_ms: int = 2000  # past this, `length` is an estimate, not an error

    # Models.
    model_dir: Path = Path("var/models")
    execution_provider: Provider = "auto"
    # Where TensorRT keeps the engines it builds (execution_provider=tensorrt only); unset:
    # the user's cache directory (``engine_cache``).
    tensorrt_cache_dir: Path | None = None
    detector_input_size: int = 416
    min_confidence: float = 0.25
    nms_iou: float = 0.65
    max_detections: int = 100
    second_opinion: bool = True  # NanoDet, for the label-quality estimate
    # NanoDet's convolutions in int8 (service.infer.quantize): on the CPU 15-20% more images/s
    # for an estimate as good; refused on a GPU provider.
    second_opinion_int8: bool = False
    # With the second opinion, also the detector at 640 px: a better quality estimate (held-out
    # AUROC 0.84 instead of 0.78) for about 40% more CPU per image.
    second_scale: bool = False
    scene_tags: bool = True  # EfficientNet-Lite0 ImageNet tags
    # A neural captioner exported by models/export_captioner.py; unset: the grounded one.
    captioner_dir: Path | None = None
    caption_beams: int = 1
    caption_batch_size: int = 8
    caption_batch_wait_ms: float = 5.0
    # Concurrent images gathered into one detector run. On the CPU one image per run is as
    # fast per image (measured), hence 1; on a GPU a batch shares each launch and copy.
    detect_batch_size: int = 1
    detect_batch_wait_ms: float = 2.0

    # Serving processes, each with its own models, executor and event loop, sharing the port:
    # the way past one interpreter's lock where the models are fast (a GPU).
    processes: int = 1
    # Blocking work: one executor per process for decode and inference, bounded.
    workers: int = msgspec.field(default_factory=_default_workers)
    intra_op_threads: int = 0  # 0: cores divided among the executor's workers
    max_pending: int = 64  # blocking tasks queued or running
    max_inflight: int = 32  # labeling requests admitted at once (fetch included)

    # Fetching untrusted URLs.
    allow_private_urls: bool = False
    fetch_allowed_hosts: str = ""  # comma-separated; empty: any public host
    max_image_bytes: int = 20_000_000
    max_url_length: int = 2048
    max_redirects: int = 5
    fetch_connect_timeout: float = 5.0
    fetch_read_timeout: float = 10.0
    fetch_total_timeout: float = 30.0

    # Decoding.
    max_pixels: int = 50_000_000

    # Access.
    bootstrap_api_key: str | None = None
    labeling_requires_key: bool = False
    # Open (keyless) labeling per client address, e.g. "20/s" or "600/min"; "" turns it off.
    label_rate_per_client: str = "20/s"
    # Key lookups that find no key, per client address: that many at once, then at the rate;
    # past it, 429 instead of a lookup. "" turns it off.
    key_failures_per_client: str = "60/min"
    # Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (comma-separated
    # addresses or networks, or "*" alone for any); empty: none, the peer is the client.
    forwarded_allow_ips: str = ""
    page_size: int = 25
    # Large answers gzipped for the clients that accept them; off behind a proxy that does it.
    gzip: bool = True

    @property
    def engine_cache(self) -> Path | None:
        """Where TensorRT keeps its engines; None when TensorRT is not chosen."""
        if self.execution_provider != "tensorrt":
            return None
        return self.tensorrt_cache_dir or _user_cache(self.data_dir / "cache") / "tensorrt"

    @property
    def trusted_proxies(self) -> list[str]:
        """``forwarded_allow_ips`` as uvicorn matches it (validated at construction)."""
        return proxy_entries(self.forwarded_allow_ips)

    @property
    def ort_threads(self) -> int:
        if self.intra_op_threads > 0:
            return self.intra_op_threads
        return max(1, usable_cpus() // (self.workers * self.processes))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``LABELSVC_<FIELD>`` variables; unknown or bad values fail loudly."""
        env = os.environ if environ is None else environ
        raw: dict[str, object] = {}
        fields = set(cls.__struct_fields__)
        optional = {f.name for f in msgspec.structs.fields(cls) if f.default is None}
        paths = {f.name for f in msgspec.structs.fields(cls) if f.type is Path}
        unknown = []
        for key, value in env.items():
            if not key.startswith(PREFIX):
                continue
            name = key.removeprefix(PREFIX).lower()
            if name in optional and not value:
                continue  # `VAR=` (an env file, compose's ${VAR:-}) leaves it unset
            if name in paths and not value:  # it would be the working directory
                raise ConfigError(f"{key} is empty: name a directory, or leave it unset")
            if name in fields:
                raw[name] = value
            elif name not in NOT_SETTINGS:
                unknown.append(key)
        if unknown:  # a misspelt LABELSVC_LABELING_REQUIRES_KEY would leave labeling open
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        try:
            settings = msgspec.convert(raw, cls, strict=False, dec_hook=_decode_path)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"invalid setting: {exc} (environment variables {PREFIX}*)") from exc
        settings.validate()
        return settings

    def validate(self) -> None:
        checks = {
            "min_confidence must be in [0, 1]": 0.0 <= self.min_confidence <= 1.0,
            "nms_iou must be in (0, 1]": 0.0 < self.nms_iou <= 1.0,
            f"workers must be in [1, {MAX_THREADS}]": _within(1, MAX_THREADS, self.workers),
            f"processes must be in [1, {MAX_PROCESSES}]": _within(1, MAX_PROCESSES, self.processes),
            "max_pending must be >= 1": self.max_pending >= 1,
            "max_inflight must be >= 1": self.max_inflight >= 1,
            f"caption_beams must be in [1, {MAX_CAPTION_BEAMS}]": _within(
                1, MAX_CAPTION_BEAMS, self.caption_beams
            ),
            f"caption_batch_size and detect_batch_size must be in [1, {MAX_BATCH_SIZE}]": _within(
                1, MAX_BATCH_SIZE, self.caption_batch_size, self.detect_batch_size
            ),
            f"detect_batch_wait_ms must be in [0, {MAX_BATCH_WAIT_MS:g}]": _within(
                0, MAX_BATCH_WAIT_MS, self.detect_batch_wait_ms
            ),
            f"detector_input_size must be a multiple of 32 in [32, {MAX_INPUT_SIZE}]": _within(
                32, MAX_INPUT_SIZE, self.detector_input_size
            )
            and self.detector_input_size % 32 == 0,
            "port must be in [0, 65535]": 0 <= self.port <= 65535,
            f"log_level must be one of {', '.join(LOG_LEVELS)}": self.log_level.lower()
            in LOG_LEVELS,
            f"log_format must be one of {', '.join(LOG_FORMATS)}": self.log_format.lower()
            in LOG_FORMATS,
            f"mongodb_db must be a database name of at most {MAX_DB_NAME_BYTES} bytes (UTF-8),"
            ' without /\\. "$*<>:|? or NUL': _db_name_valid(self.mongodb_db),
            f"db_timeout_ms and db_operation_timeout_ms must be in [1, {MAX_DB_TIMEOUT_MS}]": (
                _within(1, MAX_DB_TIMEOUT_MS, self.db_timeout_ms, self.db_operation_timeout_ms)
            ),
            "max_image_bytes and max_pixels must be >= 1": min(
                self.max_image_bytes, self.max_pixels
            )
            >= 1,
            f"max_url_length must be in [1, {MAX_URL_LENGTH}]": _within(
                1, MAX_URL_LENGTH, self.max_url_length
            ),
            f"fetch timeouts must be in [0.001, {MAX_FETCH_SECONDS:g}] seconds": _within(
                0.001,
                MAX_FETCH_SECONDS,
                self.fetch_connect_timeout,
                self.fetch_read_timeout,
                self.fetch_total_timeout,
            ),
            "max_detections must be >= 1": self.max_detections >= 1,
            f"intra_op_threads must be in [0, {MAX_THREADS}]": _within(
                0, MAX_THREADS, self.intra_op_threads
            ),
            f"caption_batch_wait_ms must be in [0, {MAX_BATCH_WAIT_MS:g}]": _within(
                0, MAX_BATCH_WAIT_MS, self.caption_batch_wait_ms
            ),
            "max_redirects must be >= 0": self.max_redirects >= 0,
            "page_size must be in [1, 100]": 1 <= self.page_size <= 100,
            f"query_max_time_ms and count_max_time_ms must be in [1, {MAX_TIME_MS}]": _within(
                1, MAX_TIME_MS, self.query_max_time_ms, self.count_max_time_ms
            ),
            f"execution_provider must be one of {get_args(Provider)}": self.execution_provider
            in get_args(Provider),
        }
        # Sent in an HTTP header, a key is visible ASCII: anything else could never match.
        checks[
            f"bootstrap_api_key must be at least {MIN_BOOTSTRAP_KEY_LENGTH} characters, all"
            " visible ASCII (it holds every scope; e.g. `openssl rand -hex 32`)"
        ] = self.bootstrap_api_key is None or (
            len(self.bootstrap_api_key) >= MIN_BOOTSTRAP_KEY_LENGTH
            and _VISIBLE_ASCII.fullmatch(self.bootstrap_api_key) is not None
        )
        checks["forwarded_allow_ips must be addresses or networks, comma-separated, or * alone"] = (
            _proxies_valid(self.forwarded_allow_ips)
        )
        from service.fetch.policy import allowed_host_entries

        try:
            allowed_host_entries(self.fetch_allowed_hosts)
        except ValueError as exc:
            checks[f"fetch_allowed_hosts: {exc}"] = False
        if self.second_scale:
            from service.score.quality import SECOND_SCALE_SIZE

            # At that size the detector would confirm its own boxes: every kept box matched,
            # every near miss "seen twice" (held-out AUROC 0.69, below mean confidence).
            checks[
                f"second_scale needs detector_input_size below {SECOND_SCALE_SIZE}, the size"
                " it runs the detector at"
            ] = self.detector_input_size < SECOND_SCALE_SIZE
        for name in ("label_rate_per_client", "key_failures_per_client"):
            if text := getattr(self, name):
                from service.ratelimit import Rate

                try:
                    Rate.parse(text)
                except ValueError as exc:
                    checks[f"{name}: {exc}"] = False
        if self.mongodb_uri is not None:
            from service.store.connection import uri_problem

            problem = uri_problem(self.mongodb_uri, self)
            if problem is not None:
                checks[f"mongodb_uri: {problem}"] = False
        else:  # the local database server is started with this command
            from service.dbserver import command_words

            try:
                command_words(self.db_server)
            except ValueError as exc:
                checks[f"db_server {self.db_server!r}: {exc}"] = False
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ConfigError("; ".join(failed))


def _db_name_valid(name: str) -> bool:
    try:
        size = len(name.encode("utf-8"))  # strict: a byte the environment had that is not UTF-8
    except UnicodeEncodeError:
        return False
    return size <= MAX_DB_NAME_BYTES and _DB_NAME_CHARACTERS.fullmatch(name) is not None


def _within(low: float, high: float, *values: float) -> bool:
    """Every value in [low, high]; NaN is in no range."""
    return all(low <= value <= high for value in values)
