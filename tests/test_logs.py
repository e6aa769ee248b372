"""Log lines: the service's and uvicorn's through one handler, as text or as JSON objects."""

from __future__ import annotations

import io
import json
import logging
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from service.dbserver import LocalDatabaseServer, free_port
from service.logs import log_handler
from service.request_ids import current
from tests.conftest import API_KEY
from tests.support.image_server import ImageServer
from tests.support.process import fail_upstream, service_env, start_service, stop, wait_ready


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("labelsvc.test.logs")
    log.propagate = False
    log.setLevel(logging.INFO)
    yield log
    log.handlers.clear()


def lines_of(logger: logging.Logger, log_format: str) -> io.StringIO:
    written = io.StringIO()
    logger.addHandler(log_handler(log_format, written))
    return written


def test_json_lines_carry_the_request_id_and_the_traceback(logger: logging.Logger) -> None:
    written = lines_of(logger, "json")
    logger.info("outside %s", "requests")
    token = current.set("trace-7")
    try:
        try:
            raise ValueError("bad")
        except ValueError:
            logger.exception("failed")
    finally:
        current.reset(token)
    outside, failed = (json.loads(line) for line in written.getvalue().splitlines())
    assert outside["message"] == "outside requests" and outside["request_id"] is None
    assert outside["level"] == "INFO" and outside["logger"] == "labelsvc.test.logs"
    assert outside["time"].endswith("+00:00")  # ISO 8601, UTC
    assert failed["request_id"] == "trace-7" and failed["level"] == "ERROR"
    assert "ValueError: bad" in failed["exc_info"]
    assert "request" not in failed  # the text format's suffix stays out of the object


def test_access_lines_have_their_parts_as_fields(logger: logging.Logger) -> None:
    written = lines_of(logger, "json")
    access = logging.getLogger("uvicorn.access")
    record = access.makeRecord(
        access.name,
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/v1/records?page=2", "1.1", 401),
        None,
    )
    logger.handle(record)
    line = json.loads(written.getvalue())
    assert line["message"] == '127.0.0.1:5000 - "GET /v1/records?page=2 HTTP/1.1" 401'
    assert (line["client"], line["method"], line["path"], line["status"]) == (
        "127.0.0.1:5000",
        "GET",
        "/v1/records?page=2",
        401,
    )


def test_text_lines_end_with_the_request_id(logger: logging.Logger) -> None:
    written = lines_of(logger, "text")
    token = current.set("trace-8")
    try:
        logger.warning("slow")
    finally:
        current.reset(token)
    assert (
        written.getvalue().rstrip().endswith(" WARNING labelsvc.test.logs: slow (request trace-8)")
    )


def test_every_line_of_a_running_service_is_json(
    db_server: LocalDatabaseServer, image_server: ImageServer
) -> None:
    """uvicorn's lines too (startup, access, shutdown), from the launcher and from each of
    several serving processes."""
    port = free_port()
    env = service_env(
        port,
        mongodb_uri=db_server.uri,
        mongodb_db="json_logs",
        log_format="JSON",  # as log_level, in either case
        log_level="info",
        processes="2",
        allow_private_urls="1",
        bootstrap_api_key=API_KEY,
    )
    base = f"http://127.0.0.1:{port}"
    with start_service(env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        try:
            wait_ready(base, process)
            fail_upstream(base, image_server.url("/no-such-photo.jpg"), "trace-json")
        finally:
            assert stop(process) == 0
        assert process.stdout is not None
        output = process.stdout.read().decode()
    lines: list[dict[str, Any]] = [json.loads(line) for line in output.splitlines()]
    loggers = {line["logger"] for line in lines}
    assert {"service.launcher", "uvicorn.error", "uvicorn.access"} <= loggers, loggers
    about = [line for line in lines if line["request_id"] == "trace-json"]
    access = [line for line in about if line["logger"] == "uvicorn.access"]
    assert [(a["method"], a["path"], a["status"]) for a in access] == [("POST", "/v1/labels", 502)]
    assert any(line["level"] == "WARNING" for line in about), about  # the service's own line
