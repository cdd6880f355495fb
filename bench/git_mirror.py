"""What the per-worker mirror saves: the first run of a repository clones it, later runs only fetch.

Runs the worker's MirrorCache against the tests' real Git server (git http-backend behind Basic auth on
127.0.0.1) and prints, per repository, the median of `--repeat` rounds of:
  cold     no mirror yet: a full clone
  warm     the mirror exists, nothing changed: ref advertisement and negotiation only
  changed  one new commit on the branch: only that commit travels
  sha      a commit the mirror already holds: no network at all
with the seconds spent bringing the mirror up to date (the part the mirror saves), the seconds spent
writing the run's own checkout (paid by every run), and the bytes the server sent.

    python -m bench.git_mirror [--repeat 3]

Each repository is measured twice: against the server as it is (on the same machine: no latency, no
bandwidth limit, so the seconds understate what a network costs), and with the server emulating a
network (`--latency-ms` added to every HTTP answer, `--mbit` bandwidth).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from harness.gitserver import GitServer, RepoBuilder, git_server, playbook
from service.config import Settings
from service.sources.git import MirrorCache
from service.sources.providers import RepoLocation, locate_repo

# (label, files, commits, a 800 kB incompressible file every tenth commit)
REPOS = [
    ("small (1 file)", 1, 0, False),
    ("medium (300 files, 50 commits)", 300, 50, False),
    ("large (medium + 4 MB binaries)", 300, 50, True),
]
CASES = ("cold", "warm", "changed", "sha")


def build(server: GitServer, work: Path, name: str, files: int, commits: int, binary: bool) -> RepoBuilder:
    repo = RepoBuilder(server.root, f"team/{name}.git", work / name)
    content: dict[str, str | bytes] = {"site.yml": playbook(name)}
    content.update(
        {f"roles/r{index}/tasks/main.yml": f"- debug: msg={index}\n" * 20 for index in range(files)}
    )
    repo.commit(content)
    for index in range(commits):
        path = f"roles/r{index % max(files, 1)}/tasks/main.yml"
        change: dict[str, str | bytes] = {path: f"- debug: msg=c{index}\n"}
        if binary and index % 10 == 0:
            change[f"files/blob{index}.bin"] = os.urandom(800_000)
        repo.commit(change, f"commit {index}")
    repo.push()
    return repo


def measure(
    server: GitServer, cache: MirrorCache, location: RepoLocation, ref: str, destination: Path, path: str
) -> tuple[str, float, float, int]:
    before = server.bytes_for(path)
    fetched = cache.checkout(location, ref, destination)
    return fetched.commit, fetched.fetch_seconds, fetched.checkout_seconds, server.bytes_for(path) - before


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--mbit", type=float, default=100)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-git-"))
    os.environ["BENCH_GIT_TOKEN"] = "bench-token"
    try:
        with git_server(tmp / "srv", {"oauth2:bench-token"}) as server:
            provider = {
                "type": "gitlab",
                "host": f"127.0.0.1:{server.port}",
                "credential_env": "BENCH_GIT_TOKEN",
                "allow_http": True,
            }
            emulated = f"{args.latency_ms:g}ms {args.mbit:g}Mbit"
            networks = [("local", 0.0, 0.0), (emulated, args.latency_ms, args.mbit)]
            print(
                f"{'repository':32} {'network':14} {'case':8} {'fetch s':>8} {'checkout s':>10} {'bytes':>10}"
            )
            for index, (label, files, commits, binary) in enumerate(REPOS):
                name = f"team/repo{index}.git"
                repo = build(server, tmp, f"repo{index}", files, commits, binary)
                for network, latency_ms, mbit in networks:
                    server.latency = latency_ms / 1000
                    server.bandwidth = mbit * 1_000_000 / 8
                    medians = run_rounds(
                        server, repo, name, provider, tmp / f"{index}-{latency_ms}", args.repeat
                    )
                    server.latency = server.bandwidth = 0
                    for case, (fetch, checkout, sent) in medians.items():
                        print(
                            f"{label:32} {network:14} {case:8} {fetch:8.3f} {checkout:10.3f} {int(sent):10,d}"
                        )
                    saved = medians["cold"][0] - medians["warm"][0]
                    print(
                        f"{label:32} {network:14} a repeat run fetches {saved:.3f} s faster "
                        f"({medians['cold'][0] / medians['warm'][0]:.1f}x) and moves "
                        f"{int(medians['cold'][2] - medians['warm'][2]):,d} fewer bytes"
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_rounds(
    server: GitServer, repo: RepoBuilder, name: str, provider: dict[str, object], tmp: Path, repeat: int
) -> dict[str, tuple[float, float, float]]:
    """Median (fetch s, checkout s, bytes sent) per case over `repeat` rounds, each with a fresh cache."""
    results: dict[str, list[tuple[float, float, int]]] = {case: [] for case in CASES}
    for attempt in range(repeat):
        work = tmp / f"work-{attempt}"
        settings = Settings.model_validate({"git_providers": [provider], "work_dir": work})
        cache = MirrorCache(settings)
        location = locate_repo(server.url(name), settings.git_providers)
        first = ""
        for case in CASES:
            if case == "changed":
                repo.commit({"CHANGELOG": f"{tmp.name} {attempt}\n"}, "one more")
                repo.push()
            commit, fetch, checkout, sent = measure(
                server, cache, location, first if case == "sha" else "main", work / case, name
            )
            first = first or commit
            results[case].append((fetch, checkout, sent))
        shutil.rmtree(work)
    return {
        case: (
            statistics.median(sample[0] for sample in samples),
            statistics.median(sample[1] for sample in samples),
            statistics.median(sample[2] for sample in samples),
        )
        for case, samples in results.items()
    }


if __name__ == "__main__":
    main()
