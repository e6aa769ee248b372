"""The in-process baselines of the ingest bench, on a few real photos."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.baseline import bare_images_per_second, detection_alone_images_per_second
from bench.harness import photos
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def settings(detect_batch_size: int = 1) -> Settings:
    models = os.environ.get("LABELSVC_MODEL_DIR") or REPO.parent / "shared" / "models"
    return Settings(
        model_dir=Path(models), execution_provider="cpu", detect_batch_size=detect_batch_size
    )


@pytest.mark.parametrize("batch", [1, 4])
def test_detection_alone_reports_its_rate_and_provider(batch: int) -> None:
    rate, provider = detection_alone_images_per_second(photos()[:8], settings(batch), 4)
    assert rate > 0.0
    assert provider == "CPUExecutionProvider"


@pytest.mark.parametrize("batch", [1, 4])
def test_bare_pipeline_reports_its_rate_and_cpu(batch: int) -> None:
    rate, cpu_ms = bare_images_per_second(photos()[:8], settings(batch), 4)
    assert rate > 0.0
    assert cpu_ms > 0.0
