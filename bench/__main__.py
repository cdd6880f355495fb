"""`make bench` (`python -m bench`): runs every benchmark listed here, one after the other.

Add yours as one line: a module of this package with a `main()` that prints its figures.
"""

from __future__ import annotations

import importlib

BENCHMARKS = [
    "bench.git_mirror",
    "bench.stream",
]


def run_all() -> None:
    for name in BENCHMARKS:
        print(f"\n== {name} ==", flush=True)
        importlib.import_module(name).main()


if __name__ == "__main__":
    run_all()
