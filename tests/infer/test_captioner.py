"""The ONNX captioning runtime against transformers' own generate() on tiny exported models.

The fixtures under ``tests/fixtures/captioners`` are the output of
``python -m models.export_captioner --tiny ARCH --out DIR``: randomly initialised ViT-GPT2
and BLIP models, with the token ids that transformers produced for synthetic images.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import onnxruntime as ort
import PIL.Image
import pytest

from models.caption_images import render_test_image
from service.infer import runtime
from service.infer.captioner import NeuralCaptioner
from service.infer.manifest import ModelError
from service.infer.runtime import ProviderChoice

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "captioners"
CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
FLOAT32 = {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"}
EXPORTS = ("vit-gpt2-tiny", "blip-tiny")


@cache
def expected(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name / "expected.json").read_text())
    return data


@cache
def images(name: str) -> tuple[PIL.Image.Image, ...]:
    recipes = json.loads((FIXTURES / name / "test_images.json").read_text())
    return tuple(render_test_image(recipe) for recipe in recipes)


@pytest.fixture(scope="module", params=EXPORTS)
def captioner(request: pytest.FixtureRequest) -> NeuralCaptioner:
    return NeuralCaptioner(FIXTURES / request.param, provider="cpu")


def test_metadata(captioner: NeuralCaptioner) -> None:
    assert captioner.name in EXPORTS
    assert captioner.architecture == captioner.name.removesuffix("-tiny")
    assert captioner.provider == "CPUExecutionProvider"


def test_greedy_ids_equal_transformers(captioner: NeuralCaptioner) -> None:
    want = expected(captioner.name)
    for image, entry in zip(images(captioner.name), want["images"], strict=True):
        assert captioner.generate_ids([image]) == [entry["greedy"]], entry["name"]


def test_beam_search_ids_equal_transformers(captioner: NeuralCaptioner) -> None:
    want = expected(captioner.name)
    for image, entry in zip(images(captioner.name), want["images"], strict=True):
        got = captioner.generate_ids([image], num_beams=want["num_beams"])
        assert got == [entry["beam"]], entry["name"]


def test_fixtures_cover_the_stopping_rules() -> None:
    for name in EXPORTS:
        data = expected(name)
        eos = json.loads((FIXTURES / name / "generation.json").read_text())["eos_token_ids"]
        for mode in ("greedy", "beam"):
            runs = [entry[mode] for entry in data["images"]]
            assert any(ids[-1] in eos for ids in runs), (name, mode)
            assert any(len(ids) == data["max_length"] for ids in runs), (name, mode)
        assert any(entry["greedy"] != entry["beam"] for entry in data["images"]), name


@pytest.mark.parametrize("variant", range(3))
def test_beam_rule_variants_equal_transformers(captioner: NeuralCaptioner, variant: int) -> None:
    case = expected(captioner.name)["variants"][variant]
    default = captioner.generation
    captioner.generation = msgspec.structs.replace(default, **case["settings"])
    try:
        got = [
            captioner.generate_ids([image], num_beams=case["num_beams"])[0]
            for image in images(captioner.name)
        ]
    finally:
        captioner.generation = default
    assert got == case["ids"], case["settings"]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batch_equals_single_images(captioner: NeuralCaptioner, num_beams: int) -> None:
    want = expected(captioner.name)["images"]
    mode = "greedy" if num_beams == 1 else "beam"
    for indices in ((0, 1, 2), (2, 3, 4), (4, 0, 3)):
        batch = [images(captioner.name)[i] for i in indices]
        assert captioner.generate_ids(batch, num_beams=num_beams) == [
            want[i][mode] for i in indices
        ]


def test_max_length_override_truncates_greedy(captioner: NeuralCaptioner) -> None:
    want = expected(captioner.name)["images"]
    got = captioner.generate_ids(images(captioner.name), max_length=4)
    assert got == [entry["greedy"][:4] for entry in want]


def test_captions_decode_to_strings(captioner: NeuralCaptioner) -> None:
    want = expected(captioner.name)["images"]
    for num_beams, mode in ((1, "greedy"), (3, "beam")):
        captions = captioner.caption(images(captioner.name), num_beams=num_beams)
        decoded = captioner.tokenizer.decode_batch(
            [entry[mode] for entry in want], skip_special_tokens=True
        )
        assert captions == [text.strip() for text in decoded]
    assert all(isinstance(text, str) for text in captions)
    assert any(len(text.split()) >= 3 for text in captions)


def test_grey_and_rgba_images_are_converted(captioner: NeuralCaptioner) -> None:
    image = images(captioner.name)[1]
    assert captioner.generate_ids([image.convert("RGBA")]) == captioner.generate_ids([image])
    assert len(captioner.generate_ids([image.convert("L")])[0]) >= 2


def test_bad_arguments(captioner: NeuralCaptioner) -> None:
    assert captioner.generate_ids([]) == []
    with pytest.raises(ValueError, match="num_beams"):
        captioner.generate_ids(images(captioner.name)[:1], num_beams=0)
    with pytest.raises(ValueError, match="max_length"):
        captioner.generate_ids(images(captioner.name)[:1], max_length=1)


def copy_export(tmp_path: Path) -> Path:
    target = tmp_path / "export"
    shutil.copytree(FIXTURES / "blip-tiny", target)
    return target


def providers_asked(monkeypatch: pytest.MonkeyPatch, provider: ProviderChoice) -> list[Any]:
    """What the captioner's first session asks ONNX Runtime for, on a build said to have
    TensorRT and CUDA (the session itself is never opened, so this holds with a GPU too)."""
    asked: list[Any] = []

    def recording(model: Any, sess_options: Any, providers: Any) -> None:
        asked.append(providers)
        raise RuntimeError("recorded")

    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, CUDA, CPU])
    monkeypatch.setattr(runtime, "load_gpu_libraries", lambda: None)
    monkeypatch.setattr(ort, "InferenceSession", recording)
    with pytest.raises(ModelError, match="recorded"):
        NeuralCaptioner(FIXTURES / "blip-tiny", provider=provider)
    return asked


def test_with_tensorrt_the_captioner_runs_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its decoder's inputs change shape at every step: TensorRT would build engines inside
    requests."""
    assert providers_asked(monkeypatch, "tensorrt") == [[(CUDA, FLOAT32), CPU]]


def test_the_captioner_asks_cuda_for_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA's default TF32 rounding changed a test export's greedy tokens on an H100."""
    assert providers_asked(monkeypatch, "cuda") == [[(CUDA, FLOAT32), CPU]]


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        NeuralCaptioner(tmp_path / "nowhere", provider="cpu")


def test_an_export_the_service_cannot_read_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As when the service runs as another user than the one who exported it."""
    export = copy_export(tmp_path)
    is_file = Path.is_file

    def refused(self: Path) -> bool:
        if self.parent == export:
            raise PermissionError(13, "Permission denied", str(self))
        return is_file(self)

    monkeypatch.setattr(Path, "is_file", refused)
    with pytest.raises(ModelError, match=r"cannot read .*export/\S+ \(Permission denied\)"):
        NeuralCaptioner(export, provider="cpu")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    export = copy_export(tmp_path)
    (export / "decoder.onnx").unlink()
    with pytest.raises(ModelError, match=r"lacks decoder\.onnx.*models\.export_captioner"):
        NeuralCaptioner(export, provider="cpu")


def test_corrupt_model_is_a_clear_error(tmp_path: Path) -> None:
    export = copy_export(tmp_path)
    data = bytearray((export / "encoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (export / "encoder.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"encoder\.onnx is corrupt"):
        NeuralCaptioner(export, provider="cpu")


def test_a_file_without_a_checksum_is_refused(tmp_path: Path) -> None:
    export = copy_export(tmp_path)
    info = json.loads((export / "captioner.json").read_text())
    del info["files"]["encoder.onnx"]  # then a swapped encoder would load unverified
    (export / "captioner.json").write_text(json.dumps(info))
    with pytest.raises(ModelError, match=r"no sha256 for encoder\.onnx"):
        NeuralCaptioner(export, provider="cpu")


def test_invalid_metadata_is_a_clear_error(tmp_path: Path) -> None:
    export = copy_export(tmp_path)
    (export / "captioner.json").write_text('{"format": 1, "name": 3}')
    with pytest.raises(ModelError, match=r"captioner\.json is not valid"):
        NeuralCaptioner(export, provider="cpu")


def test_unreadable_model_is_a_clear_error(tmp_path: Path) -> None:
    export = copy_export(tmp_path)
    garbage = b"not an onnx model"
    (export / "decoder.onnx").write_bytes(garbage)
    info = json.loads((export / "captioner.json").read_text())
    info["files"]["decoder.onnx"] = hashlib.sha256(garbage).hexdigest()  # checked, unloadable
    (export / "captioner.json").write_text(json.dumps(info))
    with pytest.raises(ModelError, match=r"cannot load model .*decoder\.onnx"):
        NeuralCaptioner(export, provider="cpu")


def test_a_layer_count_the_decoder_does_not_have_is_a_clear_error(tmp_path: Path) -> None:
    export = copy_export(tmp_path)
    info = json.loads((export / "captioner.json").read_text())
    info["num_layers"] += 1  # captioner.json itself carries no checksum
    (export / "captioner.json").write_text(json.dumps(info))
    with pytest.raises(ModelError, match=r"says \d+ decoder layers, but decoder\.onnx takes"):
        NeuralCaptioner(export, provider="cpu")


def test_runtime_and_image_recipes_do_not_import_torch() -> None:
    code = (
        "import sys, service.infer.captioner, models.caption_images, models.export_captioner; "
        "assert not {'torch', 'transformers'} & set(sys.modules), 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.gpu
def test_cuda_matches_transformers() -> None:
    for name in EXPORTS:
        captioner = NeuralCaptioner(FIXTURES / name, provider="cuda")
        want = expected(name)
        batch = list(images(name))
        assert captioner.generate_ids(batch) == [e["greedy"] for e in want["images"]]
        got = captioner.generate_ids(batch, num_beams=want["num_beams"])
        assert got == [e["beam"] for e in want["images"]]
