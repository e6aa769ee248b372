"""What labeled a record, compared with what would label it now.

A record's lineage (``analyses``) names the models, weights, versions and settings of each
analysis. A record is stale when its lineage names other ones than the service would use now.
The execution provider does not count: CPU and GPU runs of one model give the same labels but
for rounding; nor do the times the analyses ran.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from service.analysis import ImageAnalyzer
from service.domain.records import Analysis

# Settings that change how a model runs, not what it finds.
NOT_LINEAGE = frozenset({"provider"})

LineageKey = frozenset[tuple[str, str, str, str | None, str]]


def lineage_key(analyses: Iterable[Mapping[str, Any]]) -> LineageKey:
    """What makes two records' analyses the same: each analysis's name, model, version,
    weights and settings, but not when it ran or on which execution provider."""
    return frozenset(
        (
            str(a.get("name")),
            str(a.get("model")),
            str(a.get("version")),
            a.get("sha256"),
            msgspec.json.encode(
                {k: v for k, v in (a.get("params") or {}).items() if k not in NOT_LINEAGE},
                order="sorted",
            ).decode(),
        )
        for a in analyses
    )


def is_stale(document: Mapping[str, Any], current: LineageKey) -> bool:
    analyses = document.get("analyses")
    if not isinstance(analyses, list) or not all(map(_written_by_us, analyses)):
        return True  # imported, written before lineage was kept, or changed by hand
    try:
        return lineage_key(analyses) != current
    except (msgspec.EncodeError, TypeError):  # params holding a value JSON cannot write
        return True


def _written_by_us(entry: object) -> bool:
    """An entry of the shape the service writes: anything else is a lineage it cannot
    vouch for, so the record is stale, and labeling it again writes a proper one."""
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("params"), dict | None)
        and isinstance(entry.get("sha256"), str | None)
    )


def current_key(analyzer: ImageAnalyzer) -> LineageKey:
    """The lineage a record labeled now would have."""
    entries: list[Analysis] = analyzer.current_lineage()
    return lineage_key(msgspec.to_builtins(entries))
