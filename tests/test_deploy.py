"""The packaging and deployment files agree with the service they ship."""

from __future__ import annotations

import ast
import fnmatch
import re
import sys
import tomllib
from importlib import metadata

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


def normalised(distribution: str) -> str:
    """A distribution's name as pip compares them: case and runs of -_. do not count."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    specs = [*project["dependencies"], *extras["cpu"], *extras["gpu"]]
    return {normalised(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]) for spec in specs}


def test_every_package_the_service_imports_is_a_declared_dependency() -> None:
    """One that only arrives with another package may go when that one changes."""
    imported = set()
    for path in (ROOT / "service").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.partition(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"service"}
    providers = metadata.packages_distributions()
    declared = declared_distributions()
    undeclared = {
        name
        for name in third_party
        if not {normalised(dist) for dist in providers.get(name, [])} & declared
    }
    assert not undeclared
