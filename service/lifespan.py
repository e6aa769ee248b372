"""Resources that live as long as the app: opened in order, closed in reverse.

The executor, the models (verified and warmed up before the app reports ready), the
database client and the HTTP client. If the database is down at start the service still
starts, reports not ready, and keeps trying to create its indexes in the background: it
recovers by itself once the database answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

from litestar import Litestar
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from service.address_limits import ClientLimiter, FailedKeyLimiter
from service.analysis import ImageAnalyzer, caption_batcher
from service.auth import Authenticator
from service.errors import DatabaseUnavailable
from service.executor import BlockingExecutor
from service.fetch.download import ImageFetcher
from service.fetch.policy import FetchPolicy
from service.infer.batching import BatchPolicy
from service.infer.models import Models, load_models
from service.observability import Metrics
from service.pipeline import LabelingPipeline
from service.ratelimit import FLUSH_SECONDS, Limiter, Rate
from service.settings import Settings
from service.store.connection import client_options
from service.store.keys import ApiKeyStore
from service.store.records import Document, RecordStore

log = logging.getLogger(__name__)
INDEX_RETRY_SECONDS = 2.0
INDEX_CHECK_SECONDS = 30.0
DRAIN_SECONDS = 10.0
LOAD_GAUGE_SECONDS = 1.0


@dataclass
class Resources:
    settings: Settings
    metrics: Metrics
    executor: BlockingExecutor
    models: Models
    database: AsyncDatabase[Document]
    records: RecordStore
    keys: ApiKeyStore
    authenticator: Authenticator
    pipeline: LabelingPipeline
    client_limiter: ClientLimiter | None = None
    indexes_ready: asyncio.Event = field(default_factory=asyncio.Event)
    index_error: str | None = None  # why the last attempt to create the indexes failed
    database_unanswered: bool = False  # whether it failed for want of an answer

    def update_load_gauges(self) -> None:
        self.metrics.executor_pending.set(self.executor.pending)
        self.metrics.labeling_admitted.set(self.pipeline.admitted)


async def _ensure_indexes(resources: Resources) -> None:
    """Create the indexes, retrying until the database takes them; then check again every
    ``INDEX_CHECK_SECONDS``: a database restored, recreated or dropped under a running
    service comes back without them, and without the unique hash index concurrent writers
    would store duplicates unnoticed."""
    while True:
        try:
            await resources.records.ensure_indexes()
            await resources.keys.ensure_indexes()
        except Exception as exc:  # the database may be down or starting: keep trying
            error = f"{type(exc).__name__}: {str(exc)[:300]}"
            # Some failures last until someone acts (duplicate hashes in imported records
            # block the unique index): /readyz says which, and the next attempt (another
            # build over the whole collection) waits as long as a check. An outage it
            # reports as such, and the database is tried again soon.
            outage = isinstance(exc, DatabaseUnavailable)
            wait = INDEX_RETRY_SECONDS if outage else INDEX_CHECK_SECONDS
            log.warning("creating indexes failed (%s); retrying in %g s", error, wait)
            resources.database_unanswered = outage
            if not outage:
                resources.index_error = error
                resources.indexes_ready.clear()
            await asyncio.sleep(wait)
        else:
            resources.index_error = None
            resources.database_unanswered = False
            resources.indexes_ready.set()
            await asyncio.sleep(INDEX_CHECK_SECONDS)


async def _share_load(resources: Resources) -> None:
    """With several processes, any one of them answers a scrape with all their gauges: each
    keeps its own current, not only when it is the one scraped."""
    while True:
        resources.update_load_gauges()
        await asyncio.sleep(LOAD_GAUGE_SECONDS)


async def _record_usage(limiter: Limiter) -> None:
    while True:
        await asyncio.sleep(FLUSH_SECONDS)
        try:
            await limiter.flush()
        except Exception:  # counts stay pending for the next round; never stop recording
            log.exception("recording API key usage failed")


@asynccontextmanager
async def open_resources(
    settings: Settings, metrics: Metrics, models: Models | None = None, *, upkeep: bool = True
) -> AsyncIterator[Resources]:
    """``models``: already loaded and warmed up (the launcher does it before anything
    starts); loaded here when None. ``upkeep``: build the record indexes and keep API keys'
    usage, as a serving process does; a command that only walks the records writes neither."""
    async with AsyncExitStack() as stack:
        executor = BlockingExecutor(
            settings.workers, settings.max_pending, waited=metrics.queue_wait.observe
        )
        stack.callback(executor.shutdown)
        if models is None:
            models = await executor.run(load_models, settings)
        for model in models.loaded():
            metrics.model_info.labels(model.instance_name, model.provider, model.sha256 or "").set(
                1
            )

        if settings.mongodb_uri is None:
            raise RuntimeError("mongodb_uri is not set (the launcher starts a local server)")
        client: AsyncMongoClient[Document] = AsyncMongoClient(
            settings.mongodb_uri, **client_options(settings)
        )
        stack.push_async_callback(client.close)
        database = client[settings.mongodb_db]
        records = RecordStore(
            database,
            max_time_ms=settings.query_max_time_ms,
            operation_timeout_ms=settings.db_operation_timeout_ms,
        )
        keys = ApiKeyStore(database, operation_timeout_ms=settings.db_operation_timeout_ms)

        fetcher = ImageFetcher(FetchPolicy.from_settings(settings))
        stack.push_async_callback(fetcher.aclose)

        analyzer = ImageAnalyzer(
            models,
            min_confidence=settings.min_confidence,
            max_pixels=settings.max_pixels,
            metrics=metrics,
            captions=caption_batcher(
                models,
                executor,
                metrics,
                beams=settings.caption_beams,
                batch=BatchPolicy(settings.caption_batch_size, settings.caption_batch_wait_ms),
            ),
            caption_beams=settings.caption_beams,
            batch_runner=executor.run_admitted,
            detect_batch=BatchPolicy(settings.detect_batch_size, settings.detect_batch_wait_ms),
        )
        metrics.expect_labels(analyzer.quality_model, models.detector.class_names)

        resources = Resources(
            settings=settings,
            metrics=metrics,
            executor=executor,
            models=models,
            client_limiter=ClientLimiter(
                Rate.parse(settings.label_rate_per_client),
                max_inflight=max(1, settings.max_inflight // 4),
            )
            if settings.label_rate_per_client
            else None,
            database=database,
            records=records,
            keys=keys,
            authenticator=Authenticator(
                keys,
                settings.bootstrap_api_key,
                failures=FailedKeyLimiter(Rate.parse(settings.key_failures_per_client))
                if settings.key_failures_per_client
                else None,
            ),
            pipeline=LabelingPipeline(
                fetcher=fetcher,
                executor=executor,
                analyzer=analyzer,
                store=records,
                metrics=metrics,
                max_inflight=settings.max_inflight,
            ),
        )
        background = []
        if upkeep:
            background.append(asyncio.create_task(_ensure_indexes(resources)))
            background.append(asyncio.create_task(_record_usage(resources.authenticator.limiter)))
        if metrics.shared_dir is not None:
            background.append(asyncio.create_task(_share_load(resources)))
        try:
            yield resources
        finally:
            for task in background:
                task.cancel()
            # A usage flush cancelled in flight puts its count back for the final one below.
            if background:
                await asyncio.wait(background)
            # Analyses whose client went away still run to their stored record; let them
            # finish before the executor and the database client close under them.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_SECONDS):
                    await resources.pipeline.drain()
            if upkeep:
                with contextlib.suppress(TimeoutError):  # the last requests' usage
                    async with asyncio.timeout(DRAIN_SECONDS):
                        await resources.authenticator.limiter.flush()


def lifespan(settings: Settings, metrics: Metrics, models: Models | None = None) -> object:
    """The Litestar lifespan hook: opens the resources and puts them on ``app.state``."""

    @asynccontextmanager
    async def hook(app: Litestar) -> AsyncIterator[None]:
        async with open_resources(settings, metrics, models) as resources:
            app.state.resources = resources
            if settings.processes > 1:
                # /readyz answers for whichever process accepts the probe's connection: one
                # starts accepting only once its database is ready too (or, if the database
                # is down, after this wait, reporting not ready like a single process).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(settings.db_timeout_ms / 1000):
                        await resources.indexes_ready.wait()
            yield

    return hook
