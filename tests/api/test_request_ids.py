"""Every answer carries a request id, and the log lines about the request end with it."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator

import pytest

from service.logs import log_handler
from service.request_ids import MAX_LENGTH
from tests.conftest import AppClient
from tests.support.image_server import ImageServer


def is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


async def test_every_answer_has_its_own_id(client: AppClient) -> None:
    answers = [
        await client.get("/healthz"),
        await client.get("/no/such/path"),  # answered by the router: 404
        await client.delete("/healthz"),  # 405
        await client.post("/v1/labels", json={}),  # 400 problem
        await client.get("/v1/records"),  # 401 problem
        await client.get("/metrics"),
    ]
    assert [a.status_code for a in answers] == [200, 404, 405, 400, 401, 200]
    ids = [a.headers["x-request-id"] for a in answers]
    assert all(is_uuid(i) for i in ids), ids
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    "sent",
    ["abc-123", "4bf92f3577b34da6a3ce929d0e0e4736", "proxy:7/a+b=c@d_e.f", "a" * MAX_LENGTH],
)
async def test_a_safe_id_from_the_client_is_kept(client: AppClient, sent: str) -> None:
    answer = await client.get("/healthz", headers={"X-Request-ID": sent})
    assert answer.headers["x-request-id"] == sent


@pytest.mark.parametrize(
    "sent",
    [
        "",
        "a" * (MAX_LENGTH + 1),
        "two words",
        'quote"d',
        "semi;colon",
        "caf\u00e9".encode(),  # not ASCII
    ],
)
async def test_an_unsafe_id_is_replaced_and_the_request_still_served(
    client: AppClient, sent: str | bytes
) -> None:
    answer = await client.get("/healthz", headers={"X-Request-ID": sent})
    assert answer.status_code == 200
    assert is_uuid(answer.headers["x-request-id"])


async def test_two_ids_in_one_request_give_a_new_one(client: AppClient) -> None:
    answer = await client.get(
        "/healthz", headers=[("X-Request-ID", "first"), ("X-Request-ID", "second")]
    )
    assert is_uuid(answer.headers["x-request-id"])


@pytest.fixture
def service_log() -> Iterator[io.StringIO]:
    """The log lines as the service writes them (``configure_logging``'s format)."""
    lines = io.StringIO()
    handler = log_handler("text", lines)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield lines
    finally:
        root.removeHandler(handler)


async def test_log_lines_about_a_request_end_with_its_id(
    client: AppClient, image_server: ImageServer, service_log: io.StringIO
) -> None:
    missing = image_server.url("/no-such-photo.jpg")  # the host answers 404: ours is a 502
    failed = await client.post(
        "/v1/labels", json={"url": missing}, headers={"X-Request-ID": "trace-42"}
    )
    assert failed.status_code == 502
    assert failed.headers["x-request-id"] == "trace-42"
    logging.getLogger("service").warning("outside any request")
    lines = service_log.getvalue().splitlines()
    assert any(
        line.endswith("POST /v1/labels -> 502 upstream-error (request trace-42)") for line in lines
    ), lines
    assert lines[-1].endswith("service: outside any request"), lines
