"""The monitoring set-up in deploy/: a valid Prometheus configuration, alerting rules that pass
their unit tests, and rules and dashboard panels about series the service really exports, as a
real Prometheus scrapes them from the running service while it serves.

``promtool`` and ``prometheus`` come from ``make test`` (``PROMTOOL_BIN``, ``PROMETHEUS_BIN``).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
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
from tests.support.image_server import ImageServer, tagged
from tests.support.process import live_service

RULES_DIR = ROOT / "deploy" / "prometheus"
RULE_FILES = [RULES_DIR / "alerts.yaml", RULES_DIR / "alerts-gpu.yaml"]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "labelsvc.json"
# What Grafana puts in place of the dashboard's variables.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$instance": ".*"}
# Dashboard queries whose value may be 0 after the test's traffic: nothing in progress once it
# has been answered, no record deleted.
ZERO_AFTER_TRAFFIC = ("labelsvc_labeling_admitted", "labelsvc_executor_pending", "_deleted_total")
SELECTOR = re.compile(r"\b(up|labelsvc_\w+)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
# Label values the alerts select that this test does not provoke; each is checked against
# the code instead.
NOT_PROVOKED = {
    ("status", "500"): str(ServiceError.status),
    ("type", "database-unavailable"): DatabaseUnavailable.type,
}
KEY = {"X-API-Key": API_KEY}
SECOND_PHOTO = "000000000139.jpg"


def tool(variable: str, name: str) -> str:
    path = shutil.which(os.environ.get(variable, name))
    assert path, f"{name} not found: `make test` unpacks it (or set {variable} to its path)"
    return path


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    command = [tool("PROMTOOL_BIN", "promtool"), *args]
    return subprocess.run(command, cwd=RULES_DIR, capture_output=True, text=True, check=False)


def alert_rules() -> list[dict[str, Any]]:
    groups = [g for path in RULE_FILES for g in yaml.safe_load(path.read_text())["groups"]]
    return [rule for group in groups for rule in group["rules"]]


def test_configuration_and_rules_are_valid() -> None:
    checked = promtool("check", "config", "prometheus.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 2 rule files found" in checked.stdout
    assert checked.stdout.count("rules found") == 2


def test_alerts_pass_their_unit_tests() -> None:
    tested = promtool("test", "rules", "alerts.test.yaml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_unit_tested() -> None:
    tests = yaml.safe_load((RULES_DIR / "alerts.test.yaml").read_text())
    assert tests["rule_files"] == [path.name for path in RULE_FILES]
    cases = [case for test in tests["tests"] for case in test["alert_rule_test"]]
    assert {case["alertname"] for case in cases} == {rule["alert"] for rule in alert_rules()}
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    assert firing == {rule["alert"] for rule in alert_rules()}, "each alert seen firing"


def wait_for(what: str, done: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def provoke_every_series(base: str, image_server: ImageServer, photo: str) -> None:
    """Requests whose answers put a series behind each selector of the alerts and panels;
    ``photo`` is labeled anew (201)."""
    with httpx.Client(base_url=base, timeout=30) as client:
        dripping: list[httpx.Response] = []
        slow = threading.Thread(
            target=lambda: dripping.append(
                client.post("/v1/labels", json={"url": image_server.url("/drip")}, headers=KEY)
            )
        )
        slow.start()
        try:
            wait_for(  # the download holds the one labeling slot
                "the slow download to be admitted",
                lambda: "labelsvc_labeling_admitted 1.0" in client.get("/metrics").text,
            )
            busy = client.post("/v1/labels", json={"url": image_server.photo_url(photo)})
            assert busy.status_code == 503 and busy.json()["type"].endswith("/overloaded")
        finally:
            slow.join()
        assert dripping[0].json()["reason"] == "timeout"
        url = image_server.photo_url(photo)
        assert client.post("/v1/labels", json={"url": url}).status_code == 201
        again = {"url": image_server.photo_url(photo, alias="batch")}
        assert client.post("/v1/labels/batch", json={"items": [again]}).status_code == 200
        assert client.post("/upload", json={"url_or_id": url}).status_code == 200
        tagged_path = f"/monitoring-tagged/{photo}"  # a host with ETags: the repeat gets 304
        image_server.routes[tagged_path] = tagged((image_server.photos / photo).read_bytes(), '"1"')
        for _ in range(2):
            repeat = client.post("/v1/labels", json={"url": image_server.url(tagged_path)})
            assert repeat.status_code == 200
        unknown = client.get("/v1/records", headers={"X-API-Key": "not-a-key-" + "x" * 30})
        assert unknown.status_code == 401


@contextmanager
def prometheus(tmp_path: Path, target: str) -> Iterator[httpx.Client]:
    """A Prometheus scraping ``target`` every second and evaluating the alerting rules."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in RULE_FILES],
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
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out, subprocess.Popen(command, stdout=out, stderr=out) as process:
        try:
            with httpx.Client(base_url=f"http://{address}", timeout=5) as api:
                wait_for("Prometheus to get ready", lambda: _ready(api, process, log))
                yield api
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _ready(api: httpx.Client, process: subprocess.Popen[bytes], log: Path) -> bool:
    # Exited: the port was taken in between, say. Its log says why.
    assert process.poll() is None, log.read_text()
    try:
        return api.get("/-/ready").status_code == 200
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


def _scrapes_of(api: httpx.Client, selector: str) -> int:
    found = query(api, f"count_over_time({selector}[1m])")
    return int(found[0]["value"][1]) if found else 0


def _increased(api: httpx.Client, selector: str, scrapes: int) -> bool:
    """Whether ``scrapes`` scrapes have passed since ``selector`` last grew."""
    samples = api.get("/api/v1/query", params={"query": f"{selector}[1m]"}).json()
    values = [float(v) for _, v in samples["data"]["result"][0]["values"]]
    return len(values) > scrapes and values[-scrapes - 1] > values[0]


def _rules(api: httpx.Client) -> list[dict[str, Any]]:
    groups = api.get("/api/v1/rules").json()["data"]["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.fixture(scope="module")
def scraped(
    db_server: LocalDatabaseServer,
    image_server: ImageServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[httpx.Client]:
    """The API of a Prometheus that scraped the running service before, during and after
    ``provoke_every_series``, and evaluated the alerting rules since."""
    settings = {
        "mongodb_uri": db_server.uri,
        "mongodb_db": "monitoring",
        "allow_private_urls": "1",
        "bootstrap_api_key": API_KEY,
        "max_inflight": "1",
        "fetch_total_timeout": "1",
        "label_rate_per_client": "",
        "log_level": "warning",
        "captioner_dir": str(ROOT / "tests" / "fixtures" / "captioners" / "vit-gpt2-tiny"),
    }
    with live_service(**settings) as (base, _):
        target = base.removeprefix("http://")
        with prometheus(tmp_path_factory.mktemp("prometheus"), target) as api:
            # Twice, scraped in between: a series appears at its first increase, which only
            # the second round's increase shows in a rate.
            unknown_keys = 'labelsvc_auth_failures_total{reason="unknown_key"}'
            provoke_every_series(base, image_server, CAT_PHOTO)
            wait_for("a scrape of the first round", lambda: _scrapes_of(api, unknown_keys) >= 1)
            provoke_every_series(base, image_server, SECOND_PHOTO)
            wait_for("two scrapes of the second", lambda: _increased(api, unknown_keys, 2))
            wait_for(
                "every rule evaluated",
                lambda: all(rule["health"] != "unknown" for rule in _rules(api)),
            )
            yield api


def test_the_scrape_parses_and_every_rule_evaluates(scraped: httpx.Client) -> None:
    (target,) = scraped.get("/api/v1/targets").json()["data"]["activeTargets"]
    assert target["health"] == "up" and target["lastError"] == "", target
    rules = _rules(scraped)
    assert len(rules) == len(alert_rules())
    for rule in rules:
        assert rule["health"] == "ok", rule


def test_alerts_select_series_the_service_exports(scraped: httpx.Client) -> None:
    """Each selector of each alert, all its matchers together, selects series of the service
    (the values the test does not provoke are checked against the code); every label it
    matches on exists, and every route it names is one the service serves."""
    routes = {path for handler in ROUTES for path in handler.paths}
    for rule in alert_rules():
        for name, matchers in SELECTOR.findall(rule["expr"]):
            labels = {s for one in series(scraped, name) for s in one}
            kept = []
            for label, operator, value in MATCHER.findall(matchers):
                assert label in labels, f"{rule['alert']}: {name} has no label {label}"
                values = value.split("|") if operator in ("=~", "!~") else [value]
                if label == "route":
                    assert set(values) <= routes, f"{rule['alert']}: not a route in {value}"
                provoked = [v for v in values if (label, v) not in NOT_PROVOKED]
                for other in set(values) - set(provoked):
                    assert NOT_PROVOKED[label, other] == other
                if provoked == values:
                    kept.append(f'{label}{operator}"{value}"')
            selector = f"{name}{{{', '.join(kept)}}}"
            assert query(scraped, f"count({selector})"), f"{rule['alert']}: nothing {selector}"


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


def test_every_dashboard_query_shows_the_traffic(scraped: httpx.Client) -> None:
    """Each query of each panel, its variables filled in as Grafana fills them, returns series
    carrying the labels its legend names, and (but for gauges of work in progress and
    deletions) a finite value above 0 from the test's traffic."""
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
            if not any(name in promql for name in ZERO_AFTER_TRAFFIC):
                values = [float(one["value"][1]) for one in found]
                assert any(math.isfinite(v) and v > 0 for v in values), (
                    f"{panel['title']}: {values} for {promql}"
                )
    (info, *_) = query(scraped, 'labelsvc_model_info{job="labelsvc"}')
    assert info["metric"]["instance"]
