"""The Prometheus set-up in deploy/prometheus: a valid configuration, alerting rules that pass
their unit tests, and rules about series the service really exports, as a real Prometheus
scrapes them from the running service.

``promtool`` and ``prometheus`` come from ``make test`` (``PROMTOOL_BIN``, ``PROMETHEUS_BIN``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from service.app import ROUTES
from service.dbserver import LocalDatabaseServer, free_port
from service.errors import DatabaseUnavailable, ServiceError
from tests.conftest import API_KEY, CAT_PHOTO, ROOT
from tests.support.image_server import ImageServer
from tests.support.process import live_service

RULES_DIR = ROOT / "deploy" / "prometheus"
ALERTS = RULES_DIR / "alerts.yaml"
SELECTOR = re.compile(r"\b(up|labelsvc_\w+)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
# Label values the alerts select that this test does not provoke; each is checked against
# the code instead.
NOT_PROVOKED = {
    ("status", "500"): str(ServiceError.status),
    ("type", "database-unavailable"): DatabaseUnavailable.type,
}
KEY = {"X-API-Key": API_KEY}


def tool(variable: str, name: str) -> str:
    path = shutil.which(os.environ.get(variable, name))
    assert path, f"{name} not found: `make test` unpacks it (or set {variable} to its path)"
    return path


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    command = [tool("PROMTOOL_BIN", "promtool"), *args]
    return subprocess.run(command, cwd=RULES_DIR, capture_output=True, text=True, check=False)


def test_configuration_and_rules_are_valid() -> None:
    checked = promtool("check", "config", "prometheus.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout


def test_alerts_pass_their_unit_tests() -> None:
    tested = promtool("test", "rules", "alerts.test.yaml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_alert_is_unit_tested() -> None:
    tests = yaml.safe_load((RULES_DIR / "alerts.test.yaml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    assert tested == {rule["alert"] for rule in alert_rules()}


def provoke_every_series(base: str, image_server: ImageServer) -> None:
    """Requests whose answers put a series behind each selector of the alerts."""
    with httpx.Client(base_url=base, timeout=30) as client:
        dripping: list[httpx.Response] = []
        slow = threading.Thread(
            target=lambda: dripping.append(
                client.post("/v1/labels", json={"url": image_server.url("/drip")}, headers=KEY)
            )
        )
        slow.start()
        time.sleep(0.3)  # the download holds the one labeling slot
        busy = client.post("/v1/labels", json={"url": image_server.photo_url(CAT_PHOTO)})
        assert busy.status_code == 503 and busy.json()["type"].endswith("/overloaded")
        slow.join()
        assert dripping[0].json()["reason"] == "timeout"
        cat = image_server.photo_url(CAT_PHOTO)
        assert client.post("/v1/labels", json={"url": cat}).status_code == 201
        again = {"url": image_server.photo_url(CAT_PHOTO, alias="batch")}
        assert client.post("/v1/labels/batch", json={"items": [again]}).status_code == 200
        assert client.post("/upload", json={"url_or_id": cat}).status_code == 200
        unknown = client.get("/v1/records", headers={"X-API-Key": "not-a-key-" + "x" * 30})
        assert unknown.status_code == 401


@contextmanager
def prometheus(tmp_path: Path, target: str) -> Iterator[httpx.Client]:
    """A Prometheus scraping ``target`` every second and evaluating the alerting rules."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "labelsvc", "static_configs": [{"targets": [target]}]}],
    }
    (tmp_path / "prometheus.yaml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    command = [
        tool("PROMETHEUS_BIN", "prometheus"),
        f"--config.file={tmp_path / 'prometheus.yaml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address={address}",
    ]
    log = (tmp_path / "prometheus.log").open("wb")
    with subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT) as process:
        try:
            with httpx.Client(base_url=f"http://{address}", timeout=5) as api:
                deadline = time.monotonic() + 30
                while not _answers(api, "/-/ready"):
                    assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
                    assert time.monotonic() < deadline, "Prometheus did not get ready"
                    time.sleep(0.1)
                yield api
        finally:
            process.terminate()
            process.wait(10)
            log.close()


def _answers(api: httpx.Client, path: str) -> bool:
    try:
        return api.get(path).status_code == 200
    except httpx.TransportError:
        return False


def query(api: httpx.Client, promql: str) -> list[dict[str, Any]]:
    body = api.get("/api/v1/query", params={"query": promql}).json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def series(api: httpx.Client, name: str) -> list[dict[str, str]]:
    body = api.get("/api/v1/series", params={"match[]": f'{name}{{job="labelsvc"}}'}).json()
    assert body["status"] == "success", body
    found: list[dict[str, str]] = body["data"]
    return found


def test_alerts_select_series_the_service_exports(
    db_server: LocalDatabaseServer, image_server: ImageServer, tmp_path: Path
) -> None:
    """Scraped by a real Prometheus, every metric an alert names exists, with every label it
    matches on and every value it selects; the scrape has no error and every rule evaluates."""
    settings = {
        "mongodb_uri": db_server.uri,
        "mongodb_db": "monitoring",
        "allow_private_urls": "1",
        "bootstrap_api_key": API_KEY,
        "max_inflight": "1",
        "fetch_total_timeout": "1",
        "label_rate_per_client": "",
        "log_level": "warning",
    }
    with live_service(**settings) as (base, _):
        provoke_every_series(base, image_server)
        with prometheus(tmp_path, base.removeprefix("http://")) as api:
            deadline = time.monotonic() + 30
            while not query(api, 'labelsvc_auth_failures_total{reason="unknown_key"}'):
                assert time.monotonic() < deadline, "the service's metrics were not scraped"
                time.sleep(0.2)
            (target,) = api.get("/api/v1/targets").json()["data"]["activeTargets"]
            assert target["health"] == "up" and target["lastError"] == "", target
            time.sleep(1.5)  # a rule evaluation after that scrape
            groups = api.get("/api/v1/rules").json()["data"]["groups"]
            for rule in (rule for group in groups for rule in group["rules"]):
                assert rule["health"] == "ok", rule

            routes = {path for handler in ROUTES for path in handler.paths}
            for rule in alert_rules():
                for name, matchers in SELECTOR.findall(rule["expr"]):
                    found = series(api, name)
                    assert found, f"{rule['alert']}: no series {name}"
                    for label, operator, value in MATCHER.findall(matchers):
                        seen = {s[label] for s in found if label in s}
                        assert seen, f"{rule['alert']}: {name} has no label {label}"
                        wanted = value.split("|") if operator == "=~" else [value]
                        for one in wanted:
                            if label == "route":
                                assert one in routes, f"{rule['alert']}: no route {one}"
                            if (label, one) in NOT_PROVOKED:
                                assert NOT_PROVOKED[label, one] == one
                            else:
                                assert one in seen, f"{rule['alert']}: no {name}{{{label}={one}}}"
