"""``make bench``: run every benchmark, each in its own process; each prints JSON lines."""

from __future__ import annotations

import subprocess
import sys

# Each with its arguments: the models run on the GPU where the runtime has one (RUNTIME=gpu).
BENCHMARKS = [
    ["bench.detection_map", "--provider", "auto"],
    ["bench.service_map"],
    ["bench.quality", "--provider", "auto"],
    ["bench.ingest"],
    ["bench.fetch"],
    ["bench.repeat"],
    ["bench.query"],
]


def main() -> int:
    failed = []
    for module, *args in BENCHMARKS:
        result = subprocess.run([sys.executable, "-m", module, *args], check=False)
        if result.returncode != 0:
            failed.append(module)
    if failed:
        print(f"benchmarks below their floor or failing: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
