"""`python -m bench` (`make bench`): every benchmark of the registry, in one run.

Each module exposes `run() -> dict` and prints its own table; the figures of the whole run are written to
bench/results/<date>.json. BENCH_ONLY=runs,api picks modules; other BENCH_* variables size them
(bench/harness.py BenchSettings).
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import BENCH, CORES, load, progress

# The registry: module names under bench/, each with `run() -> dict`. Add yours here.
MODULES = [
    "runs",
    "pipeline",
    "api",
    "pages",
    "console",
    "drain",
    "memory",
    "burst",
    "stream",
    "locks",
    "webhooks",
    "schedules",
]

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    chosen = [name.strip() for name in BENCH.only.split(",") if name.strip()] or MODULES
    unknown = set(chosen) - set(MODULES)
    if unknown:
        sys.stderr.write(f"unknown benchmark(s): {', '.join(sorted(unknown))}; known: {', '.join(MODULES)}\n")
        return 2
    started = datetime.now(UTC)
    report: dict[str, Any] = {
        "started": started.isoformat(),
        "machine": {"cores": CORES, "python": platform.python_version(), "load_before": load()},
        "settings": BENCH.model_dump(),
        "figures": {},
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{started.strftime('%Y-%m-%dT%H%M%SZ')}.json"
    failed = []
    for name in chosen:
        began = time.monotonic()
        progress(f"--- {name}")
        try:
            figures = importlib.import_module(f"bench.{name}").run()
        except Exception as exc:
            # One benchmark's failure (a shared server refusing, say) must not lose the others' figures.
            traceback.print_exc()
            figures = {"error": f"{type(exc).__name__}: {exc}"}
            failed.append(name)
        report["figures"][name] = {**figures, "seconds": round(time.monotonic() - began, 1)}
        report["machine"]["load_after"] = load()
        report["finished"] = datetime.now(UTC).isoformat()
        # Written after every benchmark: a long run interrupted keeps what it measured.
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if failed:
        sys.stderr.write(f"failed: {', '.join(failed)}\n")
    sys.stdout.write(
        f"\nfigures written to {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}\n"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
