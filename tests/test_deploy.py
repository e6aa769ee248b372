"""The deployment files agree with the service they deploy."""

from __future__ import annotations

import fnmatch
import re

from service.launcher import GRACEFUL_SHUTDOWN_SECONDS
from service.lifespan import DRAIN_SECONDS
from tests.support.process import ROOT


def test_compose_waits_out_the_longest_graceful_shutdown() -> None:
    """Compose SIGKILLs a service still running after its stop_grace_period: a shutdown cut
    short loses the analyses in progress and the last requests' key usage."""
    compose = (ROOT / "deploy" / "compose.yaml").read_text()
    [grace] = re.findall(r"^\s+stop_grace_period: (\d+)s$", compose, re.MULTILINE)
    # uvicorn's wait for requests, then the lifespan's drain of analyses and usage flush.
    longest = GRACEFUL_SHUTDOWN_SECONDS + DRAIN_SECONDS + DRAIN_SECONDS
    assert int(grace) > longest


def ignored_by_docker(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path, or a directory it is in, decides
    (``!`` keeps it)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        glob = pattern.removeprefix("!").strip("/")
        if any(fnmatch.fnmatchcase(prefix, glob) for prefix in prefixes):
            ignored = not pattern.startswith("!")
    return ignored


def test_the_build_context_is_what_the_dockerfile_copies() -> None:
    """The compose build's context is the repository: without an ignore file the virtual
    environments, the models and data under var/ and the tools would all go to the builder."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copied = [
        source
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    ]
    assert copied and not any(ignored_by_docker(source, patterns) for source in copied)
    assert not ignored_by_docker("service/app.py", patterns)
    for left_out in (".venv/bin/python", ".venv-db", "var/models/x.onnx", ".tools", ".git"):
        assert ignored_by_docker(left_out, patterns), left_out
    assert ignored_by_docker("service/__pycache__/app.cpython-311.pyc", patterns)
