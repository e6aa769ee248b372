"""The deployment files agree with the service they deploy."""

from __future__ import annotations

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
