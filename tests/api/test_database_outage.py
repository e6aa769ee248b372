"""A database outage: 503 problem+json (no hang, no 500), then recovery without a restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from service.app import create_app
from service.dbserver import LocalDatabaseServer, free_port
from service.settings import Settings
from service.store.records import unreached
from tests.api.test_errors import assert_problem
from tests.conftest import CAT_PHOTO, AppClient, running
from tests.support.image_server import ImageServer
from tests.support.process import db_server_command


async def test_outage_answers_503_and_recovers_by_itself(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    image_server: ImageServer,
    auth: dict[str, str],
) -> None:
    db = LocalDatabaseServer(db_server_command(), tmp_path / "db")
    db.start()
    try:
        settings = make_settings(mongodb_uri=db.uri, db_timeout_ms=1000)
        async with running(settings) as client:
            stored = await client.post(
                "/v1/labels", json={"url": image_server.photo_url(CAT_PHOTO)}
            )
            assert stored.status_code == 201
            record_id = stored.json()["_id"]

            db.kill()  # abrupt, like a crash
            started = time.monotonic()
            assert_problem(await client.get("/readyz"), 503, "database-unavailable")
            labeling = await client.post(
                "/v1/labels", json={"url": image_server.photo_url("000000403817.jpg")}
            )
            assert_problem(labeling, 503, "database-unavailable")
            assert labeling.headers["retry-after"]
            query = await client.get("/v1/records", params={"q": json.dumps({})}, headers=auth)
            assert_problem(query, 503, "database-unavailable")
            assert time.monotonic() - started < 15  # bounded by the driver timeouts
            assert (await client.get("/healthz")).status_code == 200  # alive all along

            db.start()
            recovered_at = time.monotonic()
            for _ in range(100):
                if (await client.get("/readyz")).status_code == 200:
                    break
            else:
                raise AssertionError("not ready again after the database came back")
            print(f"ready {time.monotonic() - recovered_at:.2f}s after the database returned")
            again = await client.get(f"/v1/records/{record_id}", headers=auth)
            assert again.status_code == 200  # nothing acknowledged was lost
            labeled = await client.post(
                "/v1/labels", json={"url": image_server.photo_url("000000403817.jpg")}
            )
            assert labeled.status_code == 201
    finally:
        db.stop()


async def test_hung_database_answers_503_within_the_deadline(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    image_server: ImageServer,
    auth: dict[str, str],
) -> None:
    """A database that keeps its connections open but stops answering (here: SIGSTOP)
    must not hold labeling requests forever."""
    db = LocalDatabaseServer(db_server_command(), tmp_path / "db")
    db.start()
    assert db.pid is not None
    try:
        settings = make_settings(
            mongodb_uri=db.uri, db_operation_timeout_ms=1500, query_max_time_ms=500
        )
        async with running(settings) as client:
            url = image_server.photo_url(CAT_PHOTO)
            assert (await client.post("/v1/labels", json={"url": url})).status_code == 201
            assert (await client.get("/v1/records", headers=auth)).status_code == 200
            os.kill(db.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                hung = await client.post("/v1/labels", json={"url": url})
                assert_problem(hung, 503, "database-unavailable")
                assert time.monotonic() - started < 10
                assert client.resources.pipeline.admitted == 0  # the slot was given back
                # A read gets no answer even past its own time limit: the database's doing,
                # not the query's (no advice to narrow the filter).
                unread = await client.get("/v1/records", headers=auth)
                assert_problem(unread, 503, "database-unavailable")
                started = time.monotonic()
                assert_problem(await client.get("/readyz"), 503)
                assert time.monotonic() - started < 5  # not the driver's 13 s
            finally:
                os.kill(db.pid, signal.SIGCONT)
            again = await client.post("/v1/labels", json={"url": url})
            assert again.status_code == 200
    finally:
        db.stop()


async def test_a_database_down_from_the_start_is_reported_as_unavailable(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """Index creation fails for the outage too; /readyz and labeling requests must name the
    outage, not send the operator looking for an index problem (duplicate hashes in imported
    records)."""
    nowhere = f"mongodb://127.0.0.1:{free_port()}/"
    app = create_app(make_settings(mongodb_uri=nowhere, db_timeout_ms=300))
    async with app.lifespan(), AppClient(app) as client:
        for _ in range(100):
            if "creating indexes failed" in caplog.text:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("index creation never failed")
        body = assert_problem(await client.get("/readyz"), 503)
        assert body["database"] == "unavailable", body
        # Labeling requests name it too, at once: no ping of their own.
        labeling = await client.post("/v1/labels", json={"url": "http://images.example/a.jpg"})
        refused = assert_problem(labeling, 503, "database-unavailable")
        assert refused["database"] == "unavailable", refused


async def test_a_database_refusing_connections_at_start_is_named_before_the_index_attempt_fails(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """The first attempt to make the indexes waits out its server selection (seconds) before
    it fails; labeling requests meanwhile name the outage the driver already knows of, not a
    start under way."""
    nowhere = f"mongodb://127.0.0.1:{free_port()}/"
    app = create_app(make_settings(mongodb_uri=nowhere, db_timeout_ms=60_000))
    async with app.lifespan(), AppClient(app) as client:
        database = app.state.resources.database
        for _ in range(100):
            if unreached(database):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the driver never found the server unreachable")
        labeling = await client.post("/v1/labels", json={"url": "http://images.example/a.jpg"})
        refused = assert_problem(labeling, 503, "database-unavailable")
        assert refused["database"] == "unavailable", refused
        assert "creating indexes failed" not in caplog.text  # still waiting for a server
