"""Prometheus metrics (one registry per app, low-cardinality labels)."""

from __future__ import annotations

import os
import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

# prometheus_client's own variable: where each serving process writes its values when the
# service runs several (service.processes sets it before they start).
SHARED_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

# At most 1.3x apart from 0.1 to 5 s, where labeling latencies lie: a quantile read from a
# bucket is then off by under 30%, where 2.5x-wide buckets put a 1.4 s p95 at 2.3 s.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.16, 0.2, 0.25, 0.32, 0.4, 0.5, 0.64, 0.8,
    1.0, 1.25, 1.6, 2.0, 2.5, 3.2, 4.0, 5.0, 10.0, 30.0,
)  # fmt: skip
# Tenths of the label-quality estimate: a drift shows as weight moving between buckets.
QUALITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DETECTION_COUNT_BUCKETS = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.shared_dir = os.environ.get(SHARED_DIR_VARIABLE) or None
        r = self.registry
        self.http_latency = Histogram(
            "labelsvc_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_latency = Histogram(
            "labelsvc_stage_duration_seconds",
            "Latency of each labeling stage",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_latency = Histogram(
            "labelsvc_model_inference_seconds",
            "Model latency per image: pre-processing, session.run and post-processing",
            ["model", "provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "labelsvc_executor_queue_wait_seconds",
            "Time blocking work (decode, models) waited for a worker thread",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "labelsvc_model_batch_size",
            "Requests' images per model run when concurrent images are batched (on a GPU a "
            "partial detector batch also runs padded to its full size)",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.records_created = Counter("labelsvc_records_created", "Records created", registry=r)
        # What the models say about the images coming in, to watch for drift. Scores of
        # different estimate models are not comparable, hence the label (three values).
        self.label_quality = Histogram(
            "labelsvc_label_quality",
            "label_quality_estimation of each new record, by the estimate's model",
            ["model"],
            buckets=QUALITY_BUCKETS,
            registry=r,
        )
        self.detections_per_image = Histogram(
            "labelsvc_detections_per_image",
            "Kept detections (object_analysis boxes) of each new record",
            buckets=DETECTION_COUNT_BUCKETS,
            registry=r,
        )
        # Bounded by the detector's class list (80 for COCO).
        self.detections = Counter(
            "labelsvc_detections",
            "Kept detections of new records, by class name",
            ["class"],
            registry=r,
        )
        self.records_reused = Counter(
            "labelsvc_records_deduplicated",
            "Labeling requests answered with an existing record (same bytes or id)",
            registry=r,
        )
        self.records_relabeled = Counter(
            "labelsvc_records_relabeled",
            "Stored records labeled again in place from uploaded bytes (relabel=stale)",
            registry=r,
        )
        self.caption_failures = Counter(
            "labelsvc_caption_failures",
            "Neural captioning runs that failed; those records keep the grounded caption",
            registry=r,
        )
        self.records_deleted = Counter(
            "labelsvc_records_deleted", "Records deleted through the API", registry=r
        )
        self.fetches_not_modified = Counter(
            "labelsvc_fetches_not_modified",
            "Labeling requests for a URL labeled before whose host answered 304 Not Modified"
            " to its entity tag: answered with the record, the image not downloaded again",
            registry=r,
        )
        self.fetch_failures = Counter(
            "labelsvc_fetch_failures", "Image fetch failures by reason", ["reason"], registry=r
        )
        self.batch_items = Counter(
            "labelsvc_batch_items",
            "Items of POST /v1/labels/batch, by the status each would have had alone",
            ["status"],
            registry=r,
        )
        for status in ("200", "201"):  # present from the start, for rates that divide by it
            self.batch_items.labels(status)
        self.problems = Counter(
            "labelsvc_problems",
            "Error answers by status and problem type (each item of a batch counts as its own)",
            ["status", "type"],
            registry=r,
        )
        self.rejected = Counter(
            "labelsvc_rejected_requests",
            "Requests refused for load or limits, by reason",
            ["reason"],
            registry=r,
        )
        # Labelled by key name (set by the operator, never the secret).
        self.api_key_requests = Counter(
            "labelsvc_api_key_requests",
            "Authenticated requests per API key name and outcome"
            " (admitted, forbidden, rate_limit, quota)",
            ["key", "outcome"],
            registry=r,
        )
        self.auth_failures = Counter(
            "labelsvc_auth_failures",
            "Requests refused 401, by reason (missing_key, unknown_key: unknown or revoked)",
            ["reason"],
            registry=r,
        )
        self.labeling_admitted = Gauge(
            "labelsvc_labeling_admitted",
            "Labeling requests admitted and in progress (bounded by LABELSVC_MAX_INFLIGHT"
            " in each process)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.executor_pending = Gauge(
            "labelsvc_executor_pending",
            "Blocking tasks queued or running",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_info = Gauge(
            "labelsvc_model_info",
            "Loaded models and the execution provider each runs on",
            ["model", "provider", "sha256"],
            registry=r,
            multiprocess_mode="livemax",
        )

    def exposition(self) -> bytes:
        """The text format of this process's metrics, or of every serving process's."""
        if self.shared_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, self.shared_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def expect_labels(self, quality_model: str, classnames: Iterable[str]) -> None:
        """The series ``record_labels`` feeds, at 0 from the start: a rate needs a sample
        from before the first record, and a class never detected reads 0, not "no data"."""
        self.label_quality.labels(quality_model)
        for name in classnames:
            self.detections.labels(name)

    def record_labels(self, quality_model: str, score: float, classnames: Iterable[str]) -> None:
        """Count a new record's label-quality estimate and its kept detections."""
        self.label_quality.labels(quality_model).observe(score)
        per_class = Tally(classnames)
        self.detections_per_image.observe(per_class.total())
        for name, count in per_class.items():
            self.detections.labels(name).inc(count)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_latency.labels(name).observe(time.perf_counter() - start)


# Methods outside this set are counted as "other": the method label must stay bounded.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def timed_requests(metrics: Metrics, app: ASGIApp) -> ASGIApp:
    """Times every HTTP request under its route template, or ``unmatched`` for the paths and
    methods the router answers itself (404, 405)."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        start = time.perf_counter()
        method = scope["method"] if scope["method"] in METHODS else "other"
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, capture)
        finally:
            route = scope.get("path_template") or "unmatched"  # set in place by the router
            metrics.http_latency.labels(method, route, str(status)).observe(
                time.perf_counter() - start
            )

    return wrapped
