"""Which models the service loads from its model directory, and what it refuses."""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort
import pytest

from service.infer import models as loading
from service.infer.manifest import ModelError
from service.infer.models import check_models, load_models
from service.settings import Settings

GPU_BUILD = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def models_without(tmp_path: Path, model_dir: Path, missing: str) -> Path:
    """A model directory with every file of ``model_dir`` but ``missing``."""
    models = tmp_path / "models"
    models.mkdir()
    for file in model_dir.iterdir():
        if file.name != missing:
            (models / file.name).symlink_to(file)
    return models


def test_an_optional_model_missing_any_of_its_files_is_left_out_with_a_warning(
    tmp_path: Path, model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The tagger's network is there, its class list is not: it is left out, as it would be
    without its network."""
    models = models_without(tmp_path, model_dir, "imagenet_classes.txt")
    settings = Settings(model_dir=models, execution_provider="cpu", second_opinion=False)
    with caplog.at_level(logging.WARNING, logger="service.infer.models"):
        check_models(settings)
        loaded = load_models(settings)
    assert loaded.tagger is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        warnings
        == [f"imagenet_classes.txt missing from {models}: running without efficientnet_lite0"] * 2
    )


def test_an_optional_models_altered_file_is_refused(tmp_path: Path, model_dir: Path) -> None:
    models = models_without(tmp_path, model_dir, "imagenet_classes.txt")
    (models / "imagenet_classes.txt").write_text("n00000000\tnot the published list\n")
    settings = Settings(model_dir=models, execution_provider="cpu", second_opinion=False)
    altered = r"model file imagenet_classes.txt in directory .* has sha256"
    with pytest.raises(ModelError, match=altered):
        check_models(settings)
    with pytest.raises(ModelError, match=altered):
        load_models(settings)


def test_int8_on_a_gpu_is_refused_before_any_model_loads(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an H100 the detector had spent 3 s loading on CUDA before NanoDet refused."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: GPU_BUILD)

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loading, "load_yolox", no_loading)
    settings = Settings(model_dir=model_dir, second_opinion_int8=True)
    refused = "nanodet_g_416.onnx: int8 is for the CPU execution provider, not CUDAExecution"
    with pytest.raises(ModelError, match=refused):
        check_models(settings)
    with pytest.raises(ModelError, match=refused):
        load_models(settings)
    # Without the second opinion the setting has nothing to quantize.
    check_models(Settings(model_dir=model_dir, second_opinion_int8=True, second_opinion=False))
