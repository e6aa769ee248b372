"""The monitoring set-up in deploy/: a valid Prometheus configuration, alerting rules that pass
their unit tests, and rules and dashboard panels about series the service really exports, as a
real Prometheus scrapes them from the running service.

``promtool`` and ``prometheus`` come from ``make test`` (``PROMTOOL_BIN``, ``PROMETHEUS_BIN``).
"""

from __future__ import annotations

import json
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
import pytest
import yaml

from service.app import ROUTES
from service.dbserver import LocalDatabaseServer, free_port
from service.errors import DatabaseUnavailable, ServiceError
from tests.conftest import API_KEY, CAT_PHOTO, ROOT
from tests.support.image_server import ImageServer
from tests.support.process import live_service

RULES_DIR = ROOT / "deploy" / "prometheus"
ALERTS = RULES_DIR / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "labelsvc.json"
# What Grafana puts in place of the dashboard's variables.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*"}
SELECTOR = re.compile(r"\b(up|labelsvc_\w+)\{([^}]*)\}")
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
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


@pytest.fixture(scope="module")
def scraped(
    db_server: LocalDatabaseServer,
    image_server: ImageServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[httpx.Client]:
    """The API of a Prometheus that has scraped the running service after
    ``provoke_every_series`` and evaluated the alerting rules on that scrape."""
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
        target = base.removeprefix("http://")
        with prometheus(tmp_path_factory.mktemp("prometheus"), target) as api:
            deadline = time.monotonic() + 30
            # two scrapes after the traffic, for the rates
            while _scrapes_of(api, 'labelsvc_auth_failures_total{reason="unknown_key"}') < 2:
                assert time.monotonic() < deadline, "the service's metrics were not scraped"
                time.sleep(0.2)
            time.sleep(1.5)  # a rule evaluation after those scrapes
            yield api


def _scrapes_of(api: httpx.Client, selector: str) -> int:
    found = query(api, f"count_over_time({selector}[1m])")
    return int(found[0]["value"][1]) if found else 0


def test_the_scrape_parses_and_every_rule_evaluates(scraped: httpx.Client) -> None:
    (target,) = scraped.get("/api/v1/targets").json()["data"]["activeTargets"]
    assert target["health"] == "up" and target["lastError"] == "", target
    groups = scraped.get("/api/v1/rules").json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == len(alert_rules())
    for rule in rules:
        assert rule["health"] == "ok", rule


def test_alerts_select_series_the_service_exports(scraped: httpx.Client) -> None:
    """Every metric an alert names exists, with every label it matches on and every value it
    selects."""
    routes = {path for handler in ROUTES for path in handler.paths}
    for rule in alert_rules():
        for name, matchers in SELECTOR.findall(rule["expr"]):
            found = series(scraped, name)
            assert found, f"{rule['alert']}: no series {name}"
            for label, operator, value in MATCHER.findall(matchers):
                seen = {s[label] for s in found if label in s}
                assert seen, f"{rule['alert']}: {name} has no label {label}"
                for one in value.split("|") if operator == "=~" else [value]:
                    if label == "route":
                        assert one in routes, f"{rule['alert']}: no route {one}"
                    if (label, one) in NOT_PROVOKED:
                        assert NOT_PROVOKED[label, one] == one
                    else:
                        assert one in seen, f"{rule['alert']}: no {name}{{{label}={one}}}"


def dashboard_panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = json.loads(DASHBOARD.read_text())["panels"]
    return panels


def test_dashboard_is_well_formed() -> None:
    """Unique panel ids, panels inside Grafana's 24-column grid and not overlapping, and every
    query on the dashboard's data source variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert 8 <= len(dashboard["uid"]) <= 40
    panels = dashboard_panels()
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        covered = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["refId"] and target["expr"], panel["title"]
    names = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert names == {"datasource", "instance"}


def test_every_dashboard_query_shows_data(scraped: httpx.Client) -> None:
    """Each query of each panel, its variables filled in as Grafana fills them, returns series
    from the running service (and the instance picker finds it)."""
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            promql = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                promql = promql.replace(variable, value)
            assert "$" not in promql, f"{panel['title']}: a variable left in {promql}"
            found = query(scraped, promql)
            assert found, f"{panel['title']}: no data for {promql}"
            for label in LEGEND_LABEL.findall(target.get("legendFormat", "")):
                for one in found:  # the legend names each series by labels it has
                    assert label in one["metric"], f"{panel['title']}: no {label} in {one}"
    (info, *_) = query(scraped, 'labelsvc_model_info{job="labelsvc"}')
    assert info["metric"]["instance"]
