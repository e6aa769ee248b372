"""Pages of records for the query API: filter, sort, offset or cursor, projection, length.

How a page and its length are fetched depends on the filter:

* empty: the page, and the collection's size from its metadata;
* an equality on a (nearly) unique field (hash, url, id): the page, whose end is the count;
* anything else: one pass over the matches computes both (``$facet``). Measured on the
  development server with a class in 5% of 100,000 records, that takes 250 ms where the
  page followed by a count took 480 ms (and 500 ms run concurrently): both read every
  match there. On MongoDB a ``$match`` on an index feeds the same single pass; a page too
  large for the one result document ``$facet`` makes (16 MiB) is read as page and count;
* a page reached by cursor: the page by its sort keys, and the count of the walk's first
  page when it is at most ``WALK_COUNT_MAX_AGE`` old (a bulk export counts once a minute,
  not once a page).

A count that takes over its budget is not an error: ``length`` is then the collection's
size, an upper bound, flagged ``length_is_estimate``.

Search ranks by how many of its terms a record's ``keywords`` hold; similar-image lookup
ranks by pHash Hamming distance (see ``service.query.similar``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.errors import InvalidQuery, RecordNotFound, ServiceError
from service.query.derived import phash_of
from service.query.keywords import search_forms, search_terms
from service.query.paging import (
    BY_SCORE,
    NEWEST,
    SCORE,
    Position,
    SortOrder,
    after_filters,
    after_match,
    decode_cursor,
    drop_cursor_values,
    encode_cursor,
    with_cursor_value,
)
from service.query.plan import conjoin, is_point_lookup
from service.query.similar import MAX_DISTANCE, hamming, is_phash, probe_bands
from service.store.errors import QueryTimedOut, ResultTooLarge
from service.store.ids import id_filter
from service.store.records import Document, RecordStore

WALK_COUNT_MAX_AGE = 60.0  # seconds a cursor page may reuse its walk's count


@dataclass(frozen=True, slots=True)
class Budget:
    """Server-side time limits: for fetching a page, and for counting its matches."""

    query_ms: int
    count_ms: int


@dataclass(frozen=True, slots=True)
class PageRequest:
    filter: Mapping[str, Any]  # validated
    order: SortOrder
    per_page: int
    page: int = 1
    cursor: str | None = None
    projection: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        if self.cursor is not None and self.page != 1:
            raise InvalidQuery("give either page or cursor, not both")


@dataclass(frozen=True, slots=True)
class Page:
    documents: list[Document]
    length: int
    length_is_estimate: bool
    next_cursor: str | None
    page: int | None  # None for a page reached by cursor


@dataclass(frozen=True, slots=True)
class SimilarMatches:
    """Records with their pHash distances; ``length``: all the records within the distance."""

    matches: list[tuple[Document, int]]
    length: int


class NoPerceptualHash(ServiceError):
    status = 409
    type = "no-phash"
    title = "The record has no perceptual hash"


async def record_page(store: RecordStore, request: PageRequest, budget: Budget) -> Page:
    """One page of the records matching ``request.filter``."""
    order = request.order
    position = decode_cursor(request.cursor, order) if request.cursor else None
    skip = 0 if position else (request.page - 1) * request.per_page
    filt = conjoin(request.filter, indexed=store.indexed)
    projection = with_cursor_value(request.projection, order)
    limit = request.per_page + 1  # one more than a page says whether another follows

    async def fetch() -> list[Document]:
        return await _find(store, filt, order, position, skip, limit, projection, budget)

    async def page_then_count() -> tuple[list[Document], int | None]:
        documents = await fetch()
        length = _end_of(documents, skip, limit)
        if length is None and not filt:
            length = await store.estimated_count()
        elif length is None:
            length = await store.count(filt, max_time_ms=budget.count_ms)
        return documents, length

    length: int | None
    if position is not None:
        # A walk: the page by its keys (an index range on any server), and the count the
        # walk's first page made, if it is recent.
        documents = await fetch()
        length = (
            await store.count(filt, max_time_ms=budget.count_ms, max_age=WALK_COUNT_MAX_AGE)
            if filt
            else await store.estimated_count()
        )
    elif filt and not is_point_lookup(filt, store.indexed):
        pipeline = _facet(filt, order, skip, limit, projection)
        try:
            (facet,) = await store.aggregate(pipeline, max_time_ms=budget.count_ms)
        except QueryTimedOut:
            documents = await fetch()
            length = _end_of(documents, skip, limit)
        except ResultTooLarge:  # a page of large records: read as page and count instead
            documents, length = await page_then_count()
        else:
            documents, length = facet["page"], _facet_count(facet)
            store.note_count(filt, length)  # for the walk this page may start
    else:
        documents, length = await page_then_count()
    if length is None:
        return _page(documents, request, order, await store.estimated_count(), True)
    return _page(documents, request, order, length, False)


async def search_page(
    store: RecordStore,
    text: str,
    request: PageRequest,
    budget: Budget,
) -> Page:
    """Records whose keywords hold the terms of ``text``, most terms first, newest first."""
    terms = search_terms(text)
    if not terms:
        raise InvalidQuery("text has no searchable words (stop words and punctuation are skipped)")
    groups = search_forms(text)
    forms = list(dict.fromkeys(form for group in groups for form in group))
    if len(terms) == 1:
        keyed = PageRequest(
            filter=conjoin({"keywords": {"$in": forms}}, request.filter, indexed=store.indexed),
            order=NEWEST,
            per_page=request.per_page,
            page=request.page,
            cursor=request.cursor,
            projection=request.projection,
        )
        return await record_page(store, keyed, budget)

    position = decode_cursor(request.cursor, BY_SCORE) if request.cursor else None
    skip = 0 if position else (request.page - 1) * request.per_page
    limit = request.per_page + 1
    filt = conjoin({"keywords": {"$in": forms}}, request.filter, indexed=store.indexed)
    # An imported record may hold keywords that are not a list (until a backfill): it
    # matches a term by equality, and scores that one.
    keywords = {"$cond": [{"$isArray": "$keywords"}, "$keywords", ["$keywords"]]}
    # The score is the number of terms matched, however many forms of one term a record holds.
    held = [{"$min": [1, {"$size": {"$setIntersection": [keywords, g]}}]} for g in groups]
    ranked: list[dict[str, Any]] = [{"$project": {SCORE: {"$add": held}}}]
    if position is not None:
        ranked.append({"$match": after_match(BY_SCORE, position)})
    ranked += [{"$sort": dict(BY_SCORE.spec())}, *_window(skip, limit)]
    pipeline = [{"$match": filt}, {"$facet": {"page": ranked, "total": [{"$count": "n"}]}}]
    (facet,) = await store.aggregate(pipeline, max_time_ms=budget.query_ms)
    # The ranking decides the cursor: a record deleted before the second read must not end
    # the walk, as deciding from the records still found would.
    shown, next_cursor = _cut(facet["page"], request.per_page, BY_SCORE)
    documents = await _by_ids(store, [d["_id"] for d in shown], request.projection, budget)
    return _finish(documents, request, _facet_count(facet), False, next_cursor)


async def similar_page(
    store: RecordStore,
    record_id: str,
    max_distance: int,
    page: int,
    per_page: int,
    budget: Budget,
) -> SimilarMatches:
    """Records whose pHash is within ``max_distance`` bits of this record's, nearest first."""
    if not 0 <= max_distance <= MAX_DISTANCE:
        raise InvalidQuery(f"max_distance must be in [0, {MAX_DISTANCE}]")
    document = await store.find_one(id_filter(record_id), {"image_properties.phash": 1})
    if document is None:
        raise RecordNotFound(f"no record has id {record_id!r}")
    phash = phash_of(document)
    if not is_phash(phash):
        raise NoPerceptualHash(
            "this record has no image_properties.phash, so there is nothing to compare"
        )
    # Every candidate is compared, however many share a band with this pHash (groups of
    # near-blank frames or product shots): streamed, keeping only the near ones, within the
    # query's time limit.
    candidates = store.scan(
        conjoin(
            {"phash_bands": {"$in": probe_bands(phash, max_distance)}},
            {"_id": {"$ne": document["_id"]}},
            indexed=store.indexed,
        ),
        sort=[("_id", 1)],
        projection={"image_properties.phash": 1},
        max_time_ms=budget.query_ms,
    )
    # Ties keep the candidates' _id order (a stable sort): ids of different BSON types, such
    # as imported ObjectIds beside strings, do not compare in Python.
    near = sorted(
        [
            (distance, c["_id"])
            async for c in candidates
            if is_phash(other := phash_of(c))
            and (distance := hamming(phash, other)) <= max_distance
        ],
        key=lambda match: match[0],
    )
    window = near[(page - 1) * per_page : page * per_page]
    documents = await _by_ids(store, [i for _, i in window], None, budget)
    found = {d["_id"]: d for d in documents}
    ranked = [(found[i], distance) for distance, i in window if i in found]
    return SimilarMatches(ranked, len(near))


# --- helpers ------------------------------------------------------------------------------


def _end_of(documents: list[Document], skip: int, limit: int) -> int | None:
    """The number of matches when this is the last page of an offset walk."""
    if len(documents) < limit and (documents or not skip):
        return skip + len(documents)
    return None


def _window(skip: int, limit: int) -> list[dict[str, Any]]:
    return [*([{"$skip": skip}] if skip else []), {"$limit": limit}]


def _facet(
    filt: Mapping[str, Any],
    order: SortOrder,
    skip: int,
    limit: int,
    projection: Mapping[str, Any] | None,
) -> list[dict[str, Any]]:
    page: list[dict[str, Any]] = [{"$sort": dict(order.spec())}, *_window(skip, limit)]
    if projection is not None:
        page.append({"$project": dict(projection)})
    return [{"$match": dict(filt)}, {"$facet": {"page": page, "total": [{"$count": "n"}]}}]


def _facet_count(facet: Mapping[str, Any]) -> int:
    total = facet["total"]
    return int(total[0]["n"]) if total else 0  # $count yields nothing for no input


async def _find(
    store: RecordStore,
    filt: Mapping[str, Any],
    order: SortOrder,
    position: Position | None,
    skip: int,
    limit: int,
    projection: Mapping[str, Any] | None,
    budget: Budget,
) -> list[Document]:
    if position is None:
        return await store.find(
            filt,
            sort=order.spec(),
            skip=skip,
            limit=limit,
            projection=projection,
            max_time_ms=budget.query_ms,
        )
    documents: list[Document] = []
    for after in after_filters(order, position):
        documents += await store.find(
            conjoin(filt, after, indexed=store.indexed),
            sort=order.spec(),
            limit=limit - len(documents),
            projection=projection,
            max_time_ms=budget.query_ms,
        )
        if len(documents) >= limit:
            break
    return documents


async def _by_ids(
    store: RecordStore, ids: list[Any], projection: Mapping[str, int] | None, budget: Budget
) -> list[Document]:
    """The records with these ids, in this order."""
    if not ids:
        return []
    found = await store.find(
        {"_id": {"$in": ids}},
        sort=[("_id", 1)],
        limit=len(ids),
        projection=projection,
        max_time_ms=budget.query_ms,
    )
    by_id = {d["_id"]: d for d in found}
    return [by_id[i] for i in ids if i in by_id]


def _cut(
    documents: list[Document], per_page: int, order: SortOrder
) -> tuple[list[Document], str | None]:
    """A page from ``per_page + 1`` sorted rows, and the cursor past it when more follow."""
    if len(documents) <= per_page:
        return documents, None
    documents = documents[:per_page]
    return documents, encode_cursor(order, documents[-1])


def _page(
    documents: list[Document],
    request: PageRequest,
    order: SortOrder,
    length: int,
    estimate: bool,
) -> Page:
    documents, next_cursor = _cut(documents, request.per_page, order)
    return _finish(documents, request, length, estimate, next_cursor)


def _finish(
    documents: list[Document],
    request: PageRequest,
    length: int,
    estimate: bool,
    next_cursor: str | None,
) -> Page:
    if request.projection is not None:
        drop_cursor_values(documents)
    return Page(
        documents=documents,
        length=length,
        length_is_estimate=estimate,
        next_cursor=next_cursor,
        page=None if request.cursor else request.page,
    )
