"""Shared fixtures: the real database server, a local image server, and the app under test."""

from __future__ import annotations

import asyncio
import ctypes
import functools
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import onnxruntime as ort
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, settings
from litestar import Litestar
from pymongo import MongoClient
from pymongo.collection import Collection

from service.app import create_app
from service.dbserver import LocalDatabaseServer
from service.lifespan import Resources
from service.settings import Settings
from tests.support import image_server as routes
from tests.support.image_server import ImageServer
from tests.support.images import png_bomb
from tests.support.process import db_server_command

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# Generated tests (the OpenAPI and filter fuzzing) draw the same cases every run, so a failure
# in CI happens locally too; each case is one or more real requests, so no per-case deadline.
settings.register_profile(
    "reproducible",
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
    derandomize=True,
)
settings.load_profile("reproducible")
API_KEY = "test-bootstrap-key-0123456789abcdefghij"
CAT_PHOTO = "000000555705.jpg"  # one cat (COCO val2017)
EMPTY_PHOTO = "000000058636.jpg"  # no COCO objects at all


@functools.cache
def cuda_unavailable() -> str | None:
    """Why the ``gpu``-marked tests cannot run here, or None when they can."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "CUDAExecutionProvider is not available in this onnxruntime build"
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver (libcuda.so.1) on this machine"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None and (reason := cuda_unavailable()):
        pytest.skip(reason)


def _dir(env: str, default: Path) -> Path:
    path = Path(os.environ.get(env, default))
    if not path.is_dir():
        pytest.exit(f"{path} is missing: set {env} or put ../shared beside the repo", 2)
    return path


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return _dir("LABELSVC_MODEL_DIR", SHARED / "models")


@pytest.fixture(scope="session")
def evalset_dir() -> Path:
    return _dir("LABELSVC_EVALSET_DIR", SHARED / "evalset")


@contextmanager
def database_server(storage: Path) -> Iterator[LocalDatabaseServer]:
    """The development database server, on a free port, storing under ``storage``."""
    server = LocalDatabaseServer(db_server_command(), storage)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def db_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDatabaseServer]:
    with database_server(tmp_path_factory.mktemp("db") / "data") as server:
        yield server


@pytest.fixture(scope="session")
def image_server(evalset_dir: Path) -> Iterator[ImageServer]:
    photo = (evalset_dir / "images" / CAT_PHOTO).read_bytes()
    server = ImageServer(photos=evalset_dir / "images")
    server.routes.update(
        {
            "/text-as-jpeg": routes.static(b"hello, I am text", "image/jpeg"),
            "/page.html": routes.static(b"<html><body>hi</body></html>", "text/html"),
            "/truncated.jpg": routes.static(photo[: len(photo) // 3]),
            "/bomb.png": routes.static(png_bomb(), "image/png"),
            "/empty": routes.static(b""),
            "/upstream-500": routes.static(b"oops", "text/plain", status=500),
            "/redirect-to-cat": routes.redirect(f"/photos/{CAT_PHOTO}"),
            "/loop-a": routes.redirect("/loop-b"),
            "/loop-b": routes.redirect("/loop-a"),
            "/drip": routes.drip(interval=0.5, total=40),
            "/endless": routes.endless(),
            "/huge-declared": routes.declared_length(100_000_000),
        }
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_settings(
    db_server: LocalDatabaseServer, model_dir: Path
) -> Iterator[Callable[..., Settings]]:
    """Settings for one test: its own database name unless one is given.

    The databases are dropped after the test, so the one server the session shares does not
    carry hundreds of them (with a dozen indexes each) into every later test.
    """
    names: set[str] = set()

    def build(**overrides: Any) -> Settings:
        base = Settings(
            mongodb_uri=db_server.uri,
            mongodb_db=f"t_{uuid.uuid4().hex[:12]}",
            model_dir=model_dir,
            # The models run on the CPU, as in CI, on a GPU machine too: there each app would
            # open CUDA sessions (seconds each), and the CUDA path has its `gpu` tests.
            execution_provider="cpu",
            allow_private_urls=True,
            bootstrap_api_key=API_KEY,
            fetch_total_timeout=5.0,
            fetch_read_timeout=2.0,
            workers=2,
            label_rate_per_client="",  # bursts are the point of many tests; see test_hardening
        )
        settings = msgspec.structs.replace(base, **overrides)
        names.add(settings.mongodb_db)
        return settings

    yield build
    with MongoClient(db_server.uri) as mongo:
        for name in names:
            mongo.drop_database(name)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """Settings for a test with a database of its own."""
    settings: Settings = make_settings()
    return settings


@pytest.fixture
def records(settings: Settings) -> Iterator[Collection[dict[str, Any]]]:
    """That database's records, through a client of the test's own."""
    with MongoClient(settings.mongodb_uri) as client:
        yield client[settings.mongodb_db]["records"]


class AppClient(httpx.AsyncClient):
    """An HTTP client bound to one app running in the test's own event loop."""

    def __init__(self, app: Litestar) -> None:
        super().__init__(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
        self.app = app

    @property
    def resources(self) -> Resources:
        resources: Resources = self.app.state.resources
        return resources


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[AppClient]:
    """The app with its lifespan, once its database indexes exist.

    The lifespan runs in a task of its own: its task group must be entered and left by the
    same task, and pytest-asyncio sets fixtures up and tears them down in different tasks.
    """
    app = create_app(settings)
    started, stop = asyncio.Event(), asyncio.Event()

    async def host() -> None:
        async with app.lifespan():
            started.set()
            await stop.wait()

    hosting = asyncio.create_task(host())
    waiting = asyncio.create_task(started.wait())
    await asyncio.wait([hosting, waiting], return_when=asyncio.FIRST_COMPLETED)
    if hosting.done():
        waiting.cancel()
        hosting.result()  # the lifespan failed: raise its error
    try:
        async with AppClient(app) as client:
            await asyncio.wait_for(client.resources.indexes_ready.wait(), 30)
            yield client
    finally:
        stop.set()
        await hosting


@pytest_asyncio.fixture(loop_scope="session")
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[AppClient]:
    async with running(make_settings()) as app_client:
        yield app_client


@pytest.fixture
def auth() -> dict[str, str]:
    return {"X-API-Key": API_KEY}
