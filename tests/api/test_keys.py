"""API keys: the command line, scopes, rate limits, daily quotas, metrics, and secrecy."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import MongoClient

from service.__main__ import main
from service.address_limits import ClientLimiter
from service.dbserver import free_port
from service.domain.records import new_record_id
from service.errors import DatabaseUnavailable, RateLimited
from service.ratelimit import Limiter, Limits, Rate, Standing, rate_limit_fields
from service.settings import Settings
from service.store.keys import ApiKeyStore, KeyChangedMeanwhile, hash_key, limits_of
from tests.api.test_errors import assert_problem
from tests.conftest import ROOT, AppClient, running
from tests.support.held import never_answers


def cli(args: list[str], settings: Settings, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("LABELSVC_MONGODB_URI", settings.mongodb_uri or "")
    monkeypatch.setenv("LABELSVC_MONGODB_DB", settings.mongodb_db)
    return main(["keys", *args])


def test_keys_from_the_command_line(
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings()
    create = ["create", "--name", "acme", "--scopes", "read,label"]
    assert cli([*create, "--rate", "20/s", "--quota", "100000/day"], settings, monkeypatch) == 0
    output = capsys.readouterr()
    shown = json.loads(output.out)  # stdout is the JSON alone, for `| jq -r .key`
    assert "store this key now" in output.err
    assert shown["rate"] == "20/s" and shown["quota"] == "100000/day"
    secret = shown["key"]
    assert cli(create, settings, monkeypatch) == 2  # the name is taken
    for bad in (["--rate", "20/ms"], ["--quota", "5/s"], ["--scopes", "root"], ["--rate", "0/s"]):
        assert cli(["create", "--name", "other", *bad], settings, monkeypatch) == 2
    assert cli(["create", "--name", "no/slash"], settings, monkeypatch) == 2
    # The bootstrap key's name in metrics and logs: a stored key must not pass for it.
    capsys.readouterr()
    assert cli(["create", "--name", "Bootstrap"], settings, monkeypatch) == 2
    assert "the bootstrap key's name" in capsys.readouterr().err

    capsys.readouterr()
    assert cli(["list"], settings, monkeypatch) == 0
    listed = capsys.readouterr().out
    assert secret not in listed and hash_key(secret) not in listed and "key_hash" not in listed
    (acme,) = [json.loads(line) for line in listed.splitlines()]
    assert acme["rate_limit"] == {"requests": 20, "seconds": 1}
    assert acme["daily_quota"] == 100000 and acme["scopes"] == ["label", "read"]
    assert acme["created_at"].endswith("+00:00")  # read as the service reads: UTC, not naive

    with MongoClient(settings.mongodb_uri) as client:
        stored = client[settings.mongodb_db]["api_keys"].find_one({"name": "acme"})
    assert stored is not None and stored["key_hash"] == hash_key(secret)
    assert secret not in json.dumps(stored, default=str)

    assert cli(["revoke", "--name", "acme"], settings, monkeypatch) == 0
    assert cli(["revoke", "--name", "acme"], settings, monkeypatch) == 1
    capsys.readouterr()
    assert cli(create, settings, monkeypatch) == 2  # names are never reused: rotate instead
    assert "keys rotate --name acme" in capsys.readouterr().err

    assert cli(["rotate", "--name", "acme"], settings, monkeypatch) == 0
    rotated = json.loads(capsys.readouterr().out)["key"]
    assert rotated != secret
    with MongoClient(settings.mongodb_uri) as client:
        keys = client[settings.mongodb_db]["api_keys"]
        active = keys.find_one({"key_hash": hash_key(rotated), "revoked": False})
        assert keys.find_one({"key_hash": hash_key(secret)}) is None
    assert active is not None and active["name"] == "acme"
    assert active["daily_quota"] == 100000 and active["scopes"] == ["label", "read"]
    assert cli(["rotate", "--name", "nobody"], settings, monkeypatch) == 1


def test_a_bad_key_command_is_refused_before_the_database_is_reached(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LABELSVC_DB_TIMEOUT_MS", "5000")
    nowhere = Settings(mongodb_uri=f"mongodb://127.0.0.1:{free_port()}/")
    for bad, message in (
        (["--rate", "bogus"], "'bogus' is not a rate like 20/s"),
        (["--quota", "100"], "a quota is a number of requests per day, like 100000/day"),
        (["--scopes", ""], "a key needs at least one scope of"),
        (["--scopes", "root"], "unknown scopes ['root']"),
    ):
        started = time.monotonic()
        assert cli(["create", "--name", "x", *bad], nowhere, monkeypatch) == 2
        assert message in capsys.readouterr().err
        assert time.monotonic() - started < 2  # not after the 5 s server selection


async def test_of_two_rotations_at_once_only_the_one_that_took_effect_shows_a_secret(
    client: AppClient,
) -> None:
    keys = client.resources.keys
    await keys.create("raced", ["read"])
    results = await asyncio.gather(
        *(keys.rotate("raced") for _ in range(8)), return_exceptions=True
    )
    shown = [result for result in results if isinstance(result, str)]
    assert all(isinstance(r, KeyChangedMeanwhile) for r in results if not isinstance(r, str))
    assert 1 <= len(shown) < 8
    # Each rotation that showed a secret took effect, one after another (not necessarily in
    # the order they were called): the secret of the last one works, and no other does.
    working = [secret for secret in shown if await keys.find(secret) is not None]
    assert len(working) == 1, working


async def _key(client: AppClient, name: str, scopes: list[str], **limits: Any) -> dict[str, str]:
    secret = await client.resources.keys.create(name, scopes, **limits)
    return {"X-API-Key": secret}


async def test_scopes_are_enforced(make_settings: Callable[..., Settings]) -> None:
    async with running(make_settings(labeling_requires_key=True)) as client:
        reader = await _key(client, "reader", ["read"])
        labeler = await _key(client, "labeler", ["label"])
        admin = await _key(client, "admin", ["admin"])
        deleter = await _key(client, "deleter", ["admin", "delete"])
        label = {"url": "ftp://example.com/x.jpg"}  # refused after the guard: 400, not 401/403
        for headers, can_read, can_label, can_delete in (
            (reader, True, False, False),
            (labeler, False, True, False),
            # Deleting destroys data: admin does not imply it (keys made before it existed).
            (admin, True, True, False),
            (deleter, True, True, True),
        ):
            read = await client.get("/v1/records", headers=headers)
            assert read.status_code == (200 if can_read else 403), read.text
            posted = await client.post("/v1/labels", json=label, headers=headers)
            assert posted.status_code == (400 if can_label else 403), posted.text
            deleted = await client.delete(f"/v1/records/{new_record_id()}", headers=headers)
            assert deleted.status_code == (404 if can_delete else 403), deleted.text
        body = assert_problem(await client.get("/v1/search?text=x", headers=labeler), 403)
        assert "'read' scope" in body["detail"]

        assert await client.resources.keys.revoke("reader")
        client.resources.authenticator.forget()
        assert_problem(await client.get("/v1/records", headers=reader), 401, "unauthorized")


async def test_rate_limit_answers_429_with_retry_after(client: AppClient) -> None:
    # Three a minute: the bucket holds one request (one second's worth, at least one).
    headers = await _key(client, "slow", ["read"], rate=Rate(3, 60))
    admitted = await client.get("/v1/records", headers=headers)
    assert admitted.status_code == 200
    # One request a bucket, refilled in 20 s: none left now, all again in 20 s.
    assert admitted.headers["ratelimit-policy"] == '"rate";q=1;w=20'
    assert admitted.headers["ratelimit"] == '"rate";r=0;t=20'
    refused = await client.get("/v1/records", headers=headers)
    body = assert_problem(refused, 429, "rate-limited")
    assert body["reason"] == "rate_limit" and body["limit"] == "3/min"
    assert refused.headers["retry-after"] == "20"
    back = re.fullmatch(r'"rate";r=0;t=(\d+)', refused.headers["ratelimit"])
    assert back and 15 <= int(back[1]) <= 20, refused.headers["ratelimit"]
    other = await _key(client, "other", ["read"], rate=Rate(3, 60))
    assert (await client.get("/v1/records", headers=other)).status_code == 200  # per key

    metrics = (await client.get("/metrics")).text
    assert 'labelsvc_api_key_requests_total{key="slow",outcome="admitted"} 1.0' in metrics
    assert 'labelsvc_api_key_requests_total{key="slow",outcome="rate_limit"} 1.0' in metrics
    assert headers["X-API-Key"] not in metrics


async def test_daily_quota_is_summed_in_the_database(client: AppClient) -> None:
    keys = client.resources.keys
    headers = await _key(client, "metered", ["read"], daily_quota=6)
    today = datetime.now(UTC).date().isoformat()
    await keys.add_usage("metered", today, 4)  # what other processes already counted
    first = await client.get("/v1/records", headers=headers)
    assert first.status_code == 200
    assert first.headers["ratelimit-policy"] == '"daily";q=6;w=86400'
    remaining, until = re.fullmatch(r'"daily";r=(\d+);t=(\d+)', first.headers["ratelimit"]).groups()
    assert remaining == "1" and 1 <= int(until) <= 86400
    assert (await client.get("/v1/records", headers=headers)).status_code == 200
    refused = await client.get("/v1/records", headers=headers)
    body = assert_problem(refused, 429, "rate-limited")
    assert body["reason"] == "quota" and body["limit"] == "6/day"
    assert 1 <= int(refused.headers["retry-after"]) <= 86400
    assert refused.headers["ratelimit"].startswith('"daily";r=0;t=')
    assert await keys.usage("metered", today) >= 5  # flushed at least once, never over
    assert await keys.usage("metered", today) <= 6
    assert await keys.usage("someone-else", today) == 0


async def test_secrets_never_reach_logs_or_errors(
    client: AppClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = await _key(client, "quiet", ["label"])
    wrong = {"X-API-Key": "lsk_not-a-real-key-but-secret-looking"}
    responses = [
        await client.get("/v1/records", headers=wrong),
        await client.get("/v1/records", headers=good),
        await client.get("/v1/records?q={bad", headers=good),
        await client.get("/v1/records", headers={"X-RapidAPI-Key": wrong["X-API-Key"]}),
    ]
    for secret in (good["X-API-Key"], wrong["X-API-Key"]):
        assert secret not in caplog.text
        assert all(secret not in r.text and secret not in str(r.headers) for r in responses)


@pytest.mark.parametrize(
    ("text", "rate"),
    [("20/s", Rate(20, 1)), ("600/min", Rate(600, 60)), (" 5 / hour ", Rate(5, 3600))],
)
def test_rate_parse(text: str, rate: Rate) -> None:
    assert Rate.parse(text) == rate
    assert Rate.parse(str(rate)) == rate


@pytest.mark.parametrize(
    "text", ["20", "20/ms", "0/s", "-1/s", "x/s", "20/fortnight", "", "99999999999999999999/s"]
)
def test_rate_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a rate"):
        Rate.parse(text)


class Usage:
    """An in-memory usage store that can be told to fail."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.down = False

    async def usage(self, name: str, day: str) -> int:
        return self.counts.get((name, day), 0)

    async def add_usage(self, name: str, day: str, count: int) -> int:
        if self.down:
            raise DatabaseUnavailable("down")
        self.counts[(name, day)] = self.counts.get((name, day), 0) + count
        return self.counts[(name, day)]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.day = datetime(2026, 11, 22, 23, 59, 59, tzinfo=UTC)

    def __call__(self) -> float:
        return self.now


async def test_token_bucket_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = Limiter(Usage(), clock=clock)
    rate = Limits(rate=Rate(2, 1))
    await limiter.admit("k", rate)
    await limiter.admit("k", rate)
    with pytest.raises(RateLimited) as refused:
        await limiter.admit("k", rate)
    assert refused.value.retry_after == 1
    clock.now += 0.5  # one token back
    await limiter.admit("k", rate)
    with pytest.raises(RateLimited):
        await limiter.admit("k", rate)
    await limiter.admit("other", rate)  # buckets are per key
    await limiter.admit("k", Limits(rate=Rate(10, 1)))  # a changed rate starts a full bucket


async def test_standing_reports_rate_and_quota_together() -> None:
    clock = Clock()
    limiter = Limiter(Usage(), clock=clock, today=lambda: clock.day)
    limits = Limits(rate=Rate(20, 1), daily_quota=100)
    assert limiter.standing("k", limits) == []  # nothing metered yet
    for _ in range(5):
        await limiter.admit("k", limits)
    clock.now += 0.1  # two tokens back
    assert rate_limit_fields(limiter.standing("k", limits)) == {
        "RateLimit-Policy": '"rate";q=20;w=1, "daily";q=100;w=86400',
        # 17 of 20 tokens, full in 0.15 s; 95 of 100 today, 1 s before midnight
        "RateLimit": '"rate";r=17;t=1, "daily";r=95;t=1',
    }
    assert limiter.standing("k", Limits()) == []  # a key without limits


async def test_standing_leaves_out_a_day_not_yet_counted() -> None:
    """Just after midnight UTC a request refused by the rate is not counted on the new day:
    its 429 must not report yesterday's used-up quota as today's."""
    clock = Clock()
    limiter = Limiter(Usage(), clock=clock, today=lambda: clock.day)
    limits = Limits(rate=Rate(1, 3600), daily_quota=1)
    clock.day = datetime(2026, 11, 22, 23, 30, tzinfo=UTC)
    await limiter.admit("k", limits)
    assert [s.name for s in limiter.standing("k", limits)] == ["rate", "daily"]
    clock.day = datetime(2026, 11, 23, 0, 10, tzinfo=UTC)
    clock.now += 2400  # 40 minutes: the hourly bucket is not full again
    with pytest.raises(RateLimited):
        await limiter.admit("k", limits)
    assert [s.name for s in limiter.standing("k", limits)] == ["rate"]


def test_a_quota_stored_as_a_double_is_an_integer() -> None:
    """mongosh stores numbers as doubles: the quota must still read as 1000, not 1000.0."""
    quota = limits_of({"daily_quota": 1000.0}).daily_quota
    assert quota == 1000 and isinstance(quota, int)  # RateLimit-Policy: q=1000, not q=1000.0
    assert limits_of({}).daily_quota is None


def test_a_client_without_a_bucket_stands_full() -> None:
    limiter = ClientLimiter(Rate(120, 60), clock=lambda: 0.0)
    assert limiter.standing("10.0.0.1") == Standing("client_rate", 2, 1, 2, 0)
    limiter.admit("10.0.0.1")
    assert limiter.standing("10.0.0.1") == Standing("client_rate", 2, 1, 1, 1)


async def test_quota_flushes_on_day_change_and_survives_a_failed_flush() -> None:
    clock, usage = Clock(), Usage()
    limiter = Limiter(usage, clock=clock, today=lambda: clock.day)
    quota = Limits(daily_quota=3)
    await limiter.admit("k", quota)  # first: loads and flushes at once
    usage.down = True
    clock.now += 2
    await limiter.admit("k", quota)  # admitted; its count stays pending
    await limiter.admit("k", quota)
    with pytest.raises(RateLimited) as refused:
        await limiter.admit("k", quota)
    assert refused.value.retry_after == 1  # one second to midnight UTC
    usage.down = False
    clock.day = datetime(2026, 11, 23, 0, 0, 1, tzinfo=UTC)
    clock.now += 2
    await limiter.admit("k", quota)  # a new day: yesterday's pending counts are written first
    assert usage.counts[("k", "2026-11-22")] == 3
    assert usage.counts[("k", "2026-11-23")] == 1


class SlowUsage(Usage):
    async def add_usage(self, name: str, day: str, count: int) -> int:
        await asyncio.sleep(0.02)  # a database round trip, during which requests arrive
        return await super().add_usage(name, day, count)


async def admitted(limiter: Limiter, quota: Limits) -> bool:
    try:
        await limiter.admit("k", quota)
    except RateLimited:
        return False
    return True


async def test_quota_holds_while_a_usage_flush_is_in_flight() -> None:
    clock = Clock()
    limiter = Limiter(SlowUsage(), clock=clock, today=lambda: clock.day)
    quota = Limits(daily_quota=10)
    assert await admitted(limiter, quota)  # loads and flushes at once
    assert all([await admitted(limiter, quota) for _ in range(5)])  # counted, not yet sent
    clock.now += 2  # the next request sends those six while a burst arrives
    burst = await asyncio.gather(*(admitted(limiter, quota) for _ in range(20)))
    assert sum(burst) == 4


async def test_a_bursts_usage_is_recorded_without_a_later_request() -> None:
    """The count of a burst's last requests is written by ``flush`` (run every second and at
    shutdown), not left in memory until the key's next request, which may never come."""
    clock, usage = Clock(), Usage()
    limiter = Limiter(usage, clock=clock, today=lambda: clock.day)
    for _ in range(7):
        await limiter.admit("k", Limits(daily_quota=10))
    assert usage.counts[("k", "2026-11-22")] == 1  # the first request's own flush
    await limiter.flush()
    assert usage.counts[("k", "2026-11-22")] == 7
    await limiter.flush()  # nothing pending: nothing sent twice
    assert usage.counts[("k", "2026-11-22")] == 7


class StalledUsage(Usage):
    """A usage store whose writes hang until released, or fail with a driver error."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = False
        self.broken = False

    async def add_usage(self, name: str, day: str, count: int) -> int:
        if self.broken:
            raise RuntimeError("not authorized on labelsvc to execute command")
        if self.stalled:
            await asyncio.sleep(3600)
        return await super().add_usage(name, day, count)


async def test_a_usage_flush_cancelled_in_flight_leaves_its_count_for_the_next() -> None:
    """At shutdown the periodic flush is cancelled, perhaps during its write; the final flush
    must still record every admitted request."""
    clock, usage = Clock(), StalledUsage()
    limiter = Limiter(usage, clock=clock, today=lambda: clock.day)
    for _ in range(6):
        await limiter.admit("k", Limits(daily_quota=100))
    usage.stalled = True
    flushing = asyncio.create_task(limiter.flush())
    await asyncio.sleep(0.01)
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    usage.stalled = False
    await limiter.flush()
    assert usage.counts[("k", "2026-11-22")] == 6


async def test_a_usage_write_failing_with_another_error_keeps_the_request_and_its_count() -> None:
    clock, usage = Clock(), StalledUsage()
    limiter = Limiter(usage, clock=clock, today=lambda: clock.day)
    usage.broken = True
    for _ in range(4):  # the first one flushes inline: admitted all the same
        await limiter.admit("k", Limits(daily_quota=100))
    await limiter.flush()
    usage.broken = False
    await limiter.flush()
    assert usage.counts[("k", "2026-11-22")] == 4


async def test_a_failed_flush_at_midnight_is_recorded_by_a_later_flush() -> None:
    clock, usage = Clock(), Usage()
    limiter = Limiter(usage, clock=clock, today=lambda: clock.day)
    for _ in range(5):  # one written at once, four pending
        await limiter.admit("k", Limits(daily_quota=100))
    usage.down = True
    clock.day = datetime(2026, 11, 23, 0, 0, 1, tzinfo=UTC)
    clock.now += 2
    await limiter.admit("k", Limits(daily_quota=100))  # yesterday's four fail to be written
    usage.down = False
    await limiter.flush()
    assert usage.counts[("k", "2026-11-22")] == 5
    assert usage.counts[("k", "2026-11-23")] == 1
    await limiter.flush()  # recorded once
    assert usage.counts[("k", "2026-11-22")] == 5


async def test_usage_is_recorded_at_shutdown(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    async with running(settings) as client:
        headers = await _key(client, "burst", ["read"], daily_quota=100)
        for _ in range(6):
            assert (await client.get("/v1/records", headers=headers)).status_code == 200
    with MongoClient(settings.mongodb_uri) as mongo:
        (stored,) = mongo[settings.mongodb_db]["api_key_usage"].find()
    assert stored["count"] == 6


async def test_requests_during_the_midnight_flush_count_on_the_new_day() -> None:
    clock, usage = Clock(), SlowUsage()
    limiter = Limiter(usage, clock=clock, today=lambda: clock.day)
    quota = Limits(daily_quota=5)
    for _ in range(3):
        await limiter.admit("k", quota)  # yesterday: one flushed at once, two pending
    clock.day = datetime(2026, 11, 23, 0, 0, 1, tzinfo=UTC)
    clock.now += 2
    burst = await asyncio.gather(*(admitted(limiter, quota) for _ in range(10)))
    await limiter.flush()
    assert sum(burst) == 5
    assert usage.counts[("k", "2026-11-23")] == 5
    assert usage.counts[("k", "2026-11-22")] == 3


async def test_key_lookups_give_up_on_a_database_that_stops_answering(
    client: AppClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server answers heartbeats but not this call (a held lock): a 503, not a hang."""
    keys = client.resources.keys
    secret = await keys.create("slow", ["read"], daily_quota=100)
    monkeypatch.setattr(keys, "_operation_timeout", 0.2)
    monkeypatch.setattr(keys._keys, "find_one", never_answers)
    response = await client.get("/v1/records", headers={"X-API-Key": secret})
    assert_problem(response, 503, "database-unavailable")


@pytest.mark.parametrize("action", ["create", "rotate", "revoke"])
def test_key_commands_give_up_on_a_database_that_holds_the_write(
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    action: str,
) -> None:
    """The server answers heartbeats but holds the write (a backup's lock): an error within
    the operation deadline, not a hang, and a rotation says it may have taken effect."""
    settings = make_settings()
    assert cli(["create", "--name", "held"], settings, monkeypatch) == 0
    monkeypatch.setattr(ApiKeyStore, "add" if action == "create" else action, never_answers)
    monkeypatch.setenv("LABELSVC_DB_OPERATION_TIMEOUT_MS", "300")
    capsys.readouterr()
    name = "other" if action == "create" else "held"
    assert cli([action, "--name", name], settings, monkeypatch) == 1
    err = capsys.readouterr().err
    assert "the database did not answer in time" in err
    assert ("may have taken effect" in err) == (action == "rotate")


def test_a_rotation_cut_short_says_it_may_have_taken_effect(
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ctrl-C cancels the command: the update may already be applied, its secret unseen."""
    settings = make_settings()
    assert cli(["create", "--name", "held"], settings, monkeypatch) == 0

    async def cancelled(*args: Any, **kwargs: Any) -> Any:
        raise asyncio.CancelledError

    monkeypatch.setattr(ApiKeyStore, "rotate", cancelled)
    capsys.readouterr()
    with pytest.raises(asyncio.CancelledError):
        cli(["rotate", "--name", "held"], settings, monkeypatch)
    assert "may have taken effect" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["keys", "list"], ["backfill", "--dry-run"]])
def test_tools_report_an_unreachable_database_without_a_traceback(command: list[str]) -> None:
    # As users run them: a process of their own (the driver's connection attempts end
    # with it, rather than in whichever test runs next).
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELSVC_")}
    env |= {"LABELSVC_MONGODB_URI": "mongodb://127.0.0.1:1/", "LABELSVC_DB_TIMEOUT_MS": "300"}
    done = subprocess.run(
        [sys.executable, "-m", "service", *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "error: the database is not reachable"
