"""Throughput over the installed torch sources, cold and warm cache, 1 and 2 jobs; no-op start-up.

    python benchmarks/throughput.py [--jobs 1,2] [--startup-runs 10]
    python benchmarks/throughput.py --against /path/to/other/venv/bin/python [--rounds 3] [--jobs 2]

Every rule is selected (`--select all`), report mode. Prints a Markdown table. The figures depend
on the machine and on what else it runs: say which when quoting them.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOOL = [sys.executable, "-m", "tf_migrate"]


def _script() -> list[str]:
    """The installed console script, as a user or a hook would start it."""
    found = Path(sys.executable).with_name("tf-migrate")
    return [str(found)] if found.exists() else TOOL


def _wall(command: list[str], cwd: Path | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def _corpus() -> tuple[Path, int, int]:
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        raise SystemExit("torch is not installed")
    root = Path(spec.origin).parent
    files = list(root.rglob("*.py"))
    lines = sum(path.read_bytes().count(b"\n") for path in files)
    return root, len(files), lines


def _throughput(root: Path, files: int, lines: int, jobs: int, work: Path) -> list[str]:
    cache = work / f"cache-j{jobs}"
    command = TOOL + ["migrate", str(root), "--select", "all", "--cache-dir", str(cache), "-j", str(jobs)]
    rows = []
    for label in ("cold", "warm"):
        wall = _wall(command)
        rows.append(f"| {jobs} | {label} | {wall:.2f} | {files / wall:,.0f} | {lines / wall:,.0f} |")
    shutil.rmtree(cache, ignore_errors=True)
    return rows


def _against(other: str, root: Path, jobs: int, rounds: int, work: Path) -> list[str]:
    """Cold runs of this tf-migrate and another installation, taking turns (order reversed each
    round): the ratio of the medians holds up on a loaded machine better than either time."""
    times: dict[str, list[float]] = {sys.executable: [], other: []}
    for round_ in range(rounds):
        for python in (list(times) if round_ % 2 == 0 else list(times)[::-1]):
            cache = work / f"against-{round_}-{len(times[python])}-{abs(hash(python))}"
            times[python].append(_wall([python, "-m", "tf_migrate", str(root), "--select", "all",
                                        "--cache-dir", str(cache), "-j", str(jobs)]))
    this, that = (statistics.median(times[p]) for p in (sys.executable, other))
    return [f"| this ({sys.executable}) | {this:.2f} | {' '.join(f'{t:.1f}' for t in times[sys.executable])} |",
            f"| other ({other}) | {that:.2f} | {' '.join(f'{t:.1f}' for t in times[other])} |",
            f"| ratio this / other | {this / that:.2f} | |"]


def _startup(runs: int, work: Path) -> list[str]:
    folder = work / "noop"
    folder.mkdir()
    for i in range(10):
        (folder / f"plain{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n")
    tool = [statistics.median(_wall(_script() + [str(folder)], cwd=folder) for _ in range(runs))]
    bare = [statistics.median(_wall([sys.executable, "-c", "pass"]) for _ in range(runs))]
    return [f"| `tf-migrate` on 10 files without candidates | {tool[0]:.3f} |",
            f"| `python -c pass` | {bare[0]:.3f} |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="1,2", help="comma-separated job counts")
    parser.add_argument("--startup-runs", type=int, default=10)
    parser.add_argument("--startup-only", action="store_true", help="skip the torch-tree runs")
    parser.add_argument("--against", help="another installation's python: cold runs of both, in turns")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root, files, lines = _corpus()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.against:
            jobs = int(args.jobs.split(",")[-1])
            print(f"Corpus: {root}, all rules, cold, {jobs} jobs, {args.rounds} rounds\n")
            print("| tf-migrate | median wall s | runs |\n|---|---|---|")
            print("\n".join(_against(args.against, root, jobs, args.rounds, work)))
            return
        print(f"Corpus: {root} ({files:,} files, {lines:,} lines), all rules, report mode\n")
        print("| jobs | cache | wall s | files/s | lines/s |\n|---|---|---|---|---|")
        for jobs in ([] if args.startup_only else (int(j) for j in args.jobs.split(","))):
            print("\n".join(_throughput(root, files, lines, jobs, work)), flush=True)
        print(f"\n| start-up (median of {args.startup_runs}) | wall s |\n|---|---|")
        print("\n".join(_startup(args.startup_runs, work)))


if __name__ == "__main__":
    main()
