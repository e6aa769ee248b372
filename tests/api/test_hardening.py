"""Security headers on every response, and API keys never written to the logs."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from service import auth
from service.address_limits import ClientLimiter, FailedKeyLimiter
from service.errors import RateLimited
from service.ratelimit import Rate
from service.settings import ConfigError, Settings
from service.store.keys import ApiKeyStore
from tests.api.test_errors import assert_problem
from tests.conftest import API_KEY, CAT_PHOTO, AppClient, running
from tests.support.image_server import ImageServer


async def test_security_headers_on_api_and_error_responses(client: AppClient) -> None:
    for response in (
        await client.get("/healthz"),
        await client.get("/v1/records"),  # 401 problem
        await client.post("/v1/labels", json={}),  # 400 problem
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
        assert response.headers["cache-control"] == "no-store"
    docs = await client.get("/docs/swagger")
    assert docs.headers["x-content-type-options"] == "nosniff"
    # A document, so it runs scripts: from this origin only, none written into the page.
    policy = docs.headers["content-security-policy"]
    assert policy.startswith("default-src 'none'; script-src 'self'; style-src 'self';")
    assert "unsafe" not in policy
    assert "http" not in policy and "*" not in policy


async def test_api_keys_never_reach_the_logs(
    client: AppClient, image_server: ImageServer, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "lsk_this-is-a-wrong-key-that-must-not-be-logged"
    with caplog.at_level(logging.DEBUG):
        await client.post("/v1/labels", json={"url": image_server.photo_url(CAT_PHOTO)})
        for key in (API_KEY, wrong):
            for header in ("X-API-Key", "X-RapidAPI-Key"):
                await client.get("/v1/records", headers={header: key})
                await client.get(
                    "/v1/records", params={"q": json.dumps({"$where": "1"})}, headers={header: key}
                )
        bodies = [(await client.get("/v1/records", headers={"X-API-Key": wrong})).text]
    assert caplog.records, "nothing was logged: the check would be empty"
    logged = "\n".join(r.getMessage() + repr(r.args) for r in caplog.records)
    for secret in (API_KEY, wrong):
        assert secret not in logged
        assert all(secret not in body for body in bodies)


async def test_open_labeling_is_limited_per_client(
    make_settings: Callable[..., Settings], image_server: ImageServer
) -> None:
    async with running(make_settings(label_rate_per_client="1/min")) as client:
        body = {"url": image_server.photo_url(CAT_PHOTO)}
        assert (await client.post("/v1/labels", json=body)).status_code == 201
        limited = await client.post("/v1/labels", json=body)
        problem = assert_problem(limited, 429, "rate-limited")
        assert int(limited.headers["retry-after"]) >= 1
        assert problem["reason"] == "client_rate_limit"
        metrics = (await client.get("/metrics")).text
        assert 'labelsvc_rejected_requests_total{reason="client_rate_limit"} 1.0' in metrics
        # Clients with an API key are metered by their key instead, whatever its scopes ...
        keyed = await client.post("/v1/labels", json=body, headers={"X-API-Key": API_KEY})
        assert keyed.status_code == 200
        reader = await client.resources.keys.create("reader", ["read"], rate=Rate.parse("1/min"))
        metered = [
            (await client.post("/v1/labels", json=body, headers={"X-API-Key": reader})).status_code
            for _ in range(2)
        ]
        assert metered == [200, 429]
        # ... and a made-up key is refused, not a way around the per-client limit.
        made_up = await client.post("/v1/labels", json=body, headers={"X-API-Key": "made-up"})
        assert_problem(made_up, 401, "unauthorized")


async def test_open_labeling_caps_what_one_client_has_in_progress(
    make_settings: Callable[..., Settings], image_server: ImageServer
) -> None:
    """Within its rate, one client sending images from a host that never finishes must not
    hold every labeling slot: it gets a quarter of them, then 429s; others still get in."""
    settings = make_settings(label_rate_per_client="1000/s", max_inflight=8)
    async with running(settings) as client:
        stuck = [
            asyncio.create_task(
                client.post("/v1/labels", json={"url": image_server.url(f"/drip?n={i}")})
            )
            for i in range(2)
        ]
        async with asyncio.timeout(10):
            while client.resources.pipeline.admitted < 2:  # noqa: ASYNC110 (no event marks it)
                await asyncio.sleep(0.01)
        cat = {"url": image_server.photo_url(CAT_PHOTO)}
        refused = await client.post("/v1/labels", json=cat)
        problem = assert_problem(refused, 429, "rate-limited")
        assert (problem["reason"], refused.headers["retry-after"]) == ("client_inflight", "1")
        assert "at most 2 labeling requests" in problem["detail"]
        upload = await client.post("/upload", json={"url_or_id": cat["url"]})
        assert assert_problem(upload, 429, "rate-limited")["reason"] == "client_inflight"
        keyed = await client.post("/v1/labels", json=cat, headers={"X-API-Key": API_KEY})
        assert keyed.status_code == 201  # a key is metered by its own limits
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)
        again = await client.post("/v1/labels", json=cat)
        assert again.status_code == 200  # the slots were given back
        metrics = (await client.get("/metrics")).text
        assert 'labelsvc_rejected_requests_total{reason="client_inflight"} 2.0' in metrics


def test_client_table_is_bounded() -> None:
    now = [0.0]
    limiter = ClientLimiter(Rate.parse("1/min"), max_clients=3, clock=lambda: now[0])
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"):
        limiter.admit(address)
    with pytest.raises(RateLimited):
        limiter.admit("10.0.0.4")
    limiter.admit("10.0.0.1")  # forgotten when the table overflowed: a fresh bucket
    now[0] += 60
    limiter.admit("10.0.0.4")  # refilled after a minute


async def test_refused_keys_are_counted_by_reason(client: AppClient) -> None:
    """Someone guessing keys shows on the dashboard."""
    missing = assert_problem(await client.get("/v1/records"), 401, "unauthorized")
    assert missing["reason"] == "missing_key"
    for guess in ("lsk_guess1", "lsk_guess2"):
        wrong = await client.get("/v1/records", headers={"X-API-Key": guess})
        assert assert_problem(wrong, 401, "unauthorized")["reason"] == "unknown_key"
    metrics = (await client.get("/metrics")).text
    assert 'labelsvc_auth_failures_total{reason="missing_key"} 1.0' in metrics
    assert 'labelsvc_auth_failures_total{reason="unknown_key"} 2.0' in metrics


def test_an_ipv6_client_is_metered_by_its_slash_64() -> None:
    """A host routinely holds a whole /64: one bucket per address would give it 2^64."""
    limiter = ClientLimiter(Rate.parse("1/min"), clock=lambda: 0.0)
    limiter.admit("2001:db8:1:2::1")
    for same_host in ("2001:db8:1:2::2", "2001:db8:1:2:ffff:ffff:ffff:ffff"):
        with pytest.raises(RateLimited):
            limiter.admit(same_host)
    limiter.admit("2001:db8:1:3::1")  # the next /64: another client
    limiter.admit("192.0.2.1")
    with pytest.raises(RateLimited):  # the same IPv4 client, written as IPv6
        limiter.admit("::ffff:192.0.2.1")


def count_lookups(
    keys: ApiKeyStore, monkeypatch: pytest.MonkeyPatch, *, delay: float = 0.0
) -> list[str]:
    """The secrets the service looks up in the database from now on, each answered after
    ``delay`` seconds (a slow database)."""
    find = keys.find
    lookups: list[str] = []

    async def counted(secret: str) -> dict[str, object] | None:
        lookups.append(secret)
        await asyncio.sleep(delay)
        return await find(secret)

    monkeypatch.setattr(keys, "find", counted)
    return lookups


async def test_guessing_keys_is_refused_before_any_lookup(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After its allowance of unknown keys, an address gets 429 without the database being
    asked; keys the service already holds still pass from it."""
    async with running(make_settings(key_failures_per_client="3/min")) as client:
        keys = client.resources.keys
        reader = await keys.create("reader", ["read"])
        looked_up = await client.get("/v1/records", headers={"X-API-Key": reader})
        assert looked_up.status_code == 200  # now held by the service
        unseen = await keys.create("unseen", ["read"])
        lookups = count_lookups(keys, monkeypatch)
        guesses = [f"lsk_guess{i}" for i in range(5)]
        statuses = [
            (await client.get("/v1/records", headers={"X-API-Key": g})).status_code
            for g in guesses[:3]
        ]
        assert statuses == [401, 401, 401]
        for guess in (*guesses[3:], unseen):
            refused = await client.get("/v1/records", headers={"X-API-Key": guess})
            problem = assert_problem(refused, 429, "rate-limited")
            assert (problem["reason"], problem["limit"]) == ("auth_failures", "3/min")
            assert 1 <= int(refused.headers["retry-after"]) <= 20
        assert lookups == guesses[:3]  # the refused ones were never looked up
        for held in (reader, API_KEY):  # a key it holds, and the bootstrap key
            assert (await client.get("/v1/records", headers={"X-API-Key": held})).is_success
        # A key already found unknown costs no lookup, so repeating it (a client still using
        # a revoked key, say) is answered 401 and wears nothing down.
        repeated = await client.get("/v1/records", headers={"X-API-Key": guesses[0]})
        assert assert_problem(repeated, 401, "unauthorized")["reason"] == "unknown_key"
        assert lookups == guesses[:3]
        labeling = await client.post("/v1/labels", json={}, headers={"X-API-Key": "lsk_guess9"})
        assert assert_problem(labeling, 429, "rate-limited")["reason"] == "auth_failures"
        metrics = (await client.get("/metrics")).text
        assert 'labelsvc_rejected_requests_total{reason="auth_failures"} 4.0' in metrics
        assert 'labelsvc_auth_failures_total{reason="unknown_key"} 4.0' in metrics


async def test_concurrent_guesses_cannot_run_ahead_of_the_count(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lookups are counted when they start: a burst of made-up keys against a slow database
    gets the allowance's worth of lookups, not one each."""
    async with running(make_settings(key_failures_per_client="3/min")) as client:
        keys = client.resources.keys
        lookups = count_lookups(keys, monkeypatch, delay=0.3)
        answers = await asyncio.gather(
            *(client.get("/v1/records", headers={"X-API-Key": f"lsk_burst{i}"}) for i in range(10))
        )
        assert sorted(a.status_code for a in answers) == [401] * 3 + [429] * 7
        assert len(lookups) == 3


async def test_concurrent_requests_with_one_key_share_its_lookup(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many requests with a key that is not cached (a busy client after the cache expired, or
    one still retrying a revoked key) make one lookup between them and are charged once."""
    async with running(make_settings(key_failures_per_client="3/min")) as client:
        keys = client.resources.keys
        good = await keys.create("good", ["read"])
        lookups = count_lookups(keys, monkeypatch, delay=0.3)
        for key, status in ((good, 200), ("lsk_revoked", 401)):
            answers = await asyncio.gather(
                *(client.get("/v1/records", headers={"X-API-Key": key}) for _ in range(20))
            )
            assert {a.status_code for a in answers} == {status}
        assert lookups == [good, "lsk_revoked"]
        # The made-up key cost one of the three lookups the address may fail: two are left.
        guesses = [
            (await client.get("/v1/records", headers={"X-API-Key": f"lsk_g{i}"})).status_code
            for i in range(3)
        ]
        assert guesses == [401, 401, 429]


async def test_a_key_revoked_during_a_slow_lookup_stops_within_the_cache_time(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lookup's answer counts from when it was sent, and requests join only a lookup sent
    within the cache time: a slow database does not stretch the revocation window."""
    monkeypatch.setattr(auth, "KEY_CACHE_SECONDS", 0.5)
    async with running(make_settings()) as client:
        keys = client.resources.keys
        secret = await keys.create("leaked", ["read"])
        find = keys.find

        async def read_now_answer_late(key: str) -> dict[str, object] | None:
            document = await find(key)
            await asyncio.sleep(1.0)
            return document

        monkeypatch.setattr(keys, "find", read_now_answer_late)
        first = asyncio.create_task(client.get("/v1/records", headers={"X-API-Key": secret}))
        await asyncio.sleep(0.1)
        assert await keys.revoke("leaked")
        await asyncio.sleep(0.6)  # past the cache time, the first lookup still in flight
        after = await client.get("/v1/records", headers={"X-API-Key": secret})
        assert assert_problem(after, 401, "unauthorized")["reason"] == "unknown_key"
        assert (await first).status_code == 200  # read before the revocation
        again = await client.get("/v1/records", headers={"X-API-Key": secret})
        assert again.status_code == 401  # the first answer was never cached past its time


async def test_a_key_in_use_passes_from_an_address_out_of_unknown_keys(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Others at a key's address (behind one NAT, or a proxy the service was not told about)
    have used up its allowance of unknown keys: the key, looked up again each time its cache
    entry lapses, is no guess and is not charged, and its revocation still applies within
    the cache time."""
    monkeypatch.setattr(auth, "KEY_CACHE_SECONDS", 0.3)
    async with running(make_settings(key_failures_per_client="3/min")) as client:
        keys = client.resources.keys
        secret = await keys.create("dashboard", ["read"])
        good = {"X-API-Key": secret}
        assert (await client.get("/v1/records", headers=good)).status_code == 200
        for i in range(4):
            await client.get("/v1/records", headers={"X-API-Key": f"lsk_guess{i}"})
        guess = await client.get("/v1/records", headers={"X-API-Key": "lsk_guess9"})
        assert assert_problem(guess, 429, "rate-limited")["reason"] == "auth_failures"

        lookups = count_lookups(keys, monkeypatch)
        statuses = []
        for i in range(4):
            await asyncio.sleep(0.35)  # past the cache time
            if i == 2:
                client.resources.authenticator.forget()  # as a full cache is cleared
            statuses.append((await client.get("/v1/records", headers=good)).status_code)
        assert statuses == [200] * 4
        assert lookups == [secret] * 4  # looked up again each time

        assert await keys.revoke("dashboard")
        await asyncio.sleep(0.35)
        revoked = await client.get("/v1/records", headers=good)
        assert assert_problem(revoked, 401, "unauthorized")["reason"] == "unknown_key"
        # Its last lookup found no key: the next one is charged like any guess.
        await asyncio.sleep(0.35)
        again = await client.get("/v1/records", headers=good)
        assert assert_problem(again, 429, "rate-limited")["reason"] == "auth_failures"


def test_failed_key_lookups_refill_at_the_rate_per_address() -> None:
    now = [0.0]
    limiter = FailedKeyLimiter(Rate.parse("2/min"), clock=lambda: now[0])
    for _ in range(2):
        limiter.reserve("10.0.0.1")  # two lookups in flight: both are counted before they end
    with pytest.raises(RateLimited) as refused:
        limiter.reserve("10.0.0.1")
    assert refused.value.retry_after == 30
    limiter.reserve("10.0.0.2")  # another address is not charged
    limiter.refund("10.0.0.2")  # its lookup found a key
    for _ in range(5):  # so it can look up as many good keys as it likes
        limiter.reserve("10.0.0.2")
        limiter.refund("10.0.0.2")
    limiter.reserve("2001:db8::1")
    limiter.reserve("2001:db8::1")
    with pytest.raises(RateLimited):  # another address in the same /64 is the same client
        limiter.reserve("2001:db8::2")
    now[0] += 30
    limiter.reserve("10.0.0.1")  # one lookup back after half a minute
    with pytest.raises(RateLimited):
        limiter.reserve("10.0.0.1")


def test_other_addresses_do_not_reset_a_throttled_one() -> None:
    """When the table is over its bound it drops the fullest buckets first: a flood of other
    addresses, each failing once, does not push out the one that has used up its lookups."""
    limiter = FailedKeyLimiter(Rate.parse("2/hour"), max_clients=5, clock=lambda: 0.0)
    limiter.reserve("10.0.0.1")
    limiter.reserve("10.0.0.1")
    for i in range(2, 50):
        limiter.reserve(f"10.0.0.{i}")  # one token left each, one more than 10.0.0.1
    with pytest.raises(RateLimited):
        limiter.reserve("10.0.0.1")


def test_clients_without_a_parsable_address_share_one_bucket() -> None:
    """A name a client could choose (a forged X-Forwarded-For behind a proxy trusted with "*")
    is neither a fresh bucket nor kept at its own length."""
    limiter = ClientLimiter(Rate.parse("1/min"), clock=lambda: 0.0)
    limiter.admit("x" * 100_000)
    with pytest.raises(RateLimited):
        limiter.admit("not-an-address")


def test_bad_rate_setting_fails_fast() -> None:
    with pytest.raises(ConfigError, match="label_rate_per_client"):
        Settings.from_env({"LABELSVC_LABEL_RATE_PER_CLIENT": "lots"})


def test_bad_detect_batch_settings_fail_fast() -> None:
    with pytest.raises(ConfigError, match="detect_batch_size"):
        Settings.from_env({"LABELSVC_DETECT_BATCH_SIZE": "0"})
    with pytest.raises(ConfigError, match=r"detect_batch_size must be in \[1, 64\]"):
        Settings.from_env({"LABELSVC_DETECT_BATCH_SIZE": "10000"})  # a full batch at start
    with pytest.raises(ConfigError, match="caption_batch_size"):
        Settings.from_env({"LABELSVC_CAPTION_BATCH_SIZE": "65"})
    assert Settings.from_env({"LABELSVC_DETECT_BATCH_SIZE": "64"}).detect_batch_size == 64
    with pytest.raises(ConfigError, match="detect_batch_wait_ms"):
        Settings.from_env({"LABELSVC_DETECT_BATCH_WAIT_MS": "-1"})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PORT", "70000", "port"),
        ("LOG_LEVEL", "verbose", "log_level"),
        ("LOG_FORMAT", "xml", "log_format must be one of text, json"),
        ("MONGODB_DB", "", "mongodb_db"),
        ("DATA_DIR", "", "LABELSVC_DATA_DIR is empty: name a directory, or leave it unset"),
        ("MODEL_DIR", "", "LABELSVC_MODEL_DIR is empty"),
        ("FETCH_ALLOWED_HOSTS", " , ", "fetch_allowed_hosts: it lists no host"),
        ("MONGODB_DB", "a.b", "mongodb_db"),
        # MongoDB counts a name's UTF-8 bytes: 32 characters here, but 64 bytes.
        ("MONGODB_DB", "\u00e9" * 32, "mongodb_db must be a database name of at most 63 bytes"),
        ("MONGODB_DB", "db\udcff", "mongodb_db"),  # a byte that is not UTF-8
        ("FORWARDED_ALLOW_IPS", "proxy.example", "forwarded_allow_ips"),
        ("BOOTSTRAP_API_KEY", "change-me", "bootstrap_api_key must be at least 32"),
        # A header cannot carry these, and a byte that is not UTF-8 cannot even be hashed.
        ("BOOTSTRAP_API_KEY", "k" * 32 + " more", "all visible ASCII"),
        ("BOOTSTRAP_API_KEY", "k" * 32 + "\u00e9", "all visible ASCII"),
        ("BOOTSTRAP_API_KEY", "k" * 32 + "\udcff", "all visible ASCII"),
        ("FORWARDED_ALLOW_IPS", "10.0.0.1,", "forwarded_allow_ips"),
        # uvicorn trusts everyone only for a lone "*"; in a list it would match nobody.
        ("FORWARDED_ALLOW_IPS", "10.0.0.1, *", "or * alone"),
        ("MAX_IMAGE_BYTES", "-1", "max_image_bytes"),
        ("MAX_PIXELS", "0", "max_pixels"),
        # A longer URL would be refused by the request schema before the setting is read.
        ("MAX_URL_LENGTH", "8193", "max_url_length must be in [1, 8192]"),
        ("FETCH_TOTAL_TIMEOUT", "0", "fetch timeouts"),
        ("DB_OPERATION_TIMEOUT_MS", "0", "db_operation_timeout_ms"),
        ("DETECTOR_INPUT_SIZE", "0", "detector_input_size"),
        # A mistyped size is an error, not hundreds of threads or beams started.
        ("WORKERS", "0", "workers must be in [1, 256]"),
        ("WORKERS", "300", "workers must be in [1, 256]"),
        ("INTRA_OP_THREADS", "-1", "intra_op_threads must be in [0, 256]"),
        ("INTRA_OP_THREADS", "1000", "intra_op_threads must be in [0, 256]"),
        ("CAPTION_BEAMS", "0", "caption_beams must be in [1, 16]"),
        ("CAPTION_BEAMS", "50", "caption_beams must be in [1, 16]"),
        ("DETECTOR_INPUT_SIZE", "4096", "detector_input_size"),
        # NaN passes every min() and fails every comparison; timeouts and waits are bounded.
        ("FETCH_READ_TIMEOUT", "nan", "fetch timeouts"),
        ("FETCH_TOTAL_TIMEOUT", "inf", "fetch timeouts"),
        ("DETECT_BATCH_WAIT_MS", "inf", "detect_batch_wait_ms"),
        ("CAPTION_BATCH_WAIT_MS", "nan", "caption_batch_wait_ms"),
        # The server refuses a maxTimeMS past 2**31 - 1, the driver a timeout of 1e9 ms.
        ("QUERY_MAX_TIME_MS", str(2**31), "query_max_time_ms"),
        ("COUNT_MAX_TIME_MS", "99999999999999999999", "count_max_time_ms"),
        ("DB_TIMEOUT_MS", "1000000000", "db_timeout_ms"),
        ("MONGODB_URI", "mongodb://127.0.0.1:99999/", "mongodb_uri: Port must be"),
        ("MONGODB_URI", "http://127.0.0.1:27017", "mongodb_uri: Invalid URI scheme"),
        ("MONGODB_URI", "mongodb://db/?heartbeatFrequencyMS=100", "mongodb_uri: heartbeat"),
        ("MONGODB_URI", "mongodb://db/?tls=true&tlsCAFile=/no/ca.pem", "No such file"),
        # The local database server's command, split as a shell splits it.
        ("DB_SERVER", "'unclosed", """db_server "'unclosed": No closing quotation"""),
        ("DB_SERVER", "", "db_server '': names no program"),
        ("DB_SERVER", "  ", "db_server '  ': names no program"),
        # An allow-list entry that no URL's host could ever match.
        (
            "FETCH_ALLOWED_HOSTS",
            "example.com, https://img.example.com",
            "fetch_allowed_hosts: 'https://img.example.com' is not a host alone",
        ),
        ("FETCH_ALLOWED_HOSTS", "img.example.com:8080", "'img.example.com:8080' is not a host"),
        ("FETCH_ALLOWED_HOSTS", "img.example.com/photos", "'img.example.com/photos' is not"),
        ("FETCH_ALLOWED_HOSTS", "2001:db8::1", "'2001:db8::1' is not a host alone"),
        ("FETCH_ALLOWED_HOSTS", "foo..bar", "'foo..bar' is not a valid host name or address"),
        ("FETCH_ALLOWED_HOSTS", "*.example.com", "'*.example.com' is not a valid host"),
        ("LABEL_RATE_PER_CLIENT", "99999999999999999999/s", "label_rate_per_client"),
        ("KEY_FAILURES_PER_CLIENT", "60 per minute", "key_failures_per_client"),
        # A misspelt name would leave its setting at the default: here, labeling open.
        ("LABELING_REQUIRE_KEY", "1", "unknown settings: LABELSVC_LABELING_REQUIRE_KEY"),
    ],
)
def test_unusable_settings_fail_fast(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env({f"LABELSVC_{name}": value})


def test_a_database_name_of_63_bytes_is_accepted() -> None:
    name = "\u00e9" * 31 + "a"
    assert Settings.from_env({"LABELSVC_MONGODB_DB": name}).mongodb_db == name


def test_the_second_scale_cannot_be_the_detector_itself() -> None:
    """At 640 px the detector would confirm its own boxes (held-out AUROC 0.69)."""
    env = {"LABELSVC_SECOND_SCALE": "1", "LABELSVC_DETECTOR_INPUT_SIZE": "640"}
    with pytest.raises(ConfigError, match="second_scale needs detector_input_size below 640"):
        Settings.from_env(env)
    assert Settings.from_env({**env, "LABELSVC_DETECTOR_INPUT_SIZE": "512"}).second_scale


def test_the_database_server_command_is_only_checked_when_it_is_used() -> None:
    env = {"LABELSVC_DB_SERVER": "", "LABELSVC_MONGODB_URI": "mongodb://db/"}
    assert Settings.from_env(env).db_server == ""


@pytest.mark.filterwarnings("ignore:Unknown option")
def test_uri_options_the_driver_only_warns_about_pass() -> None:
    """As at start: a connection string carried over from older drivers still connects."""
    uri = "mongodb://db/?useNewUrlParser=true&keepAlive=true"
    assert Settings.from_env({"LABELSVC_MONGODB_URI": uri}).mongodb_uri == uri


def test_empty_optional_settings_are_unset() -> None:
    """``VAR=`` in an env file, or compose's ``${VAR:-}``: not a URI, a path or a key."""
    empty = {f"LABELSVC_{n}": "" for n in ("MONGODB_URI", "CAPTIONER_DIR", "BOOTSTRAP_API_KEY")}
    assert Settings.from_env(empty) == Settings()


def test_tooling_variables_are_not_settings() -> None:
    tooling = {"LABELSVC_EVALSET_DIR": "/photos", "LABELSVC_MODELS": "/models"}
    assert Settings.from_env(tooling) == Settings()


def test_trusted_proxies_are_given_to_uvicorn_in_the_form_it_matches() -> None:
    proxies = Settings(forwarded_allow_ips=" 172.30.250.1/24, 10.0.0.1 ,fd00::1/64").trusted_proxies
    assert proxies == ["172.30.250.0/24", "10.0.0.1", "fd00::/64"]
    assert Settings(forwarded_allow_ips=" * ").trusted_proxies == ["*"]
    assert Settings().trusted_proxies == []


def test_the_tensorrt_cache_is_resolved_only_for_tensorrt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service with no home directory must start: the default is only looked up when used."""

    def homeless() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(Path, "home", homeless)
    assert Settings.from_env({}).engine_cache is None
    trt = {"LABELSVC_EXECUTION_PROVIDER": "tensorrt", "LABELSVC_DATA_DIR": str(tmp_path)}
    assert Settings.from_env(trt).engine_cache == tmp_path / "cache" / "tensorrt"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Settings.from_env(trt).engine_cache == tmp_path / "xdg" / "labelsvc" / "tensorrt"
    chosen = {**trt, "LABELSVC_TENSORRT_CACHE_DIR": str(tmp_path / "engines")}
    assert Settings.from_env(chosen).engine_cache == tmp_path / "engines"
