"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from litestar import MediaType, Response, get
from litestar.di import Provide
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.deps import (
    ResourcesDep,
    provide_resources,
    require_answering,
    require_indexes,
)
from service.api.problems import problem_responses
from service.api.schemas import Health, ModelStatus, Readiness

DEPENDENCIES = {"resources": Provide(provide_resources, sync_to_thread=False)}


@get("/healthz", summary="Liveness: the process is up", tags=["operations"])
async def healthz() -> Health:
    return Health(status="ok")


@get(
    "/readyz",
    dependencies=DEPENDENCIES,
    summary="Readiness: models loaded and warmed up, database answering",
    tags=["operations"],
    responses=problem_responses(503),
)
async def readyz(resources: ResourcesDep) -> Readiness:
    models = [
        ModelStatus(name=m.instance_name, provider=m.provider, sha256=m.sha256)
        for m in resources.models.loaded()
    ]
    await require_answering(resources)
    require_indexes(resources)
    return Readiness(status="ready", database="ok", models=models)


@get(
    "/metrics",
    dependencies=DEPENDENCIES,
    summary="Prometheus metrics",
    tags=["operations"],
    media_type=MediaType.TEXT,
)
async def metrics(resources: ResourcesDep) -> Response[bytes]:
    resources.update_load_gauges()
    # The framework adds the charset to text types; the exposition format's own media type
    # carries one already.
    media_type = CONTENT_TYPE_LATEST.removesuffix("; charset=utf-8")
    return Response(resources.metrics.exposition(), media_type=media_type)
