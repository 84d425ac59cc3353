"""What the whole-tree index costs: the installed torch tree, all rules, report mode, cold (no
cache), with this checkout's tf-migrate and with another interpreter's (the code before the index),
taking turns so both see the same machine load.

    python benchmarks/wholetree_cost.py --before /path/to/venv-before/bin/python [--rounds 3] [--jobs 2]

Prints a Markdown table (median and every sample) and the ratio after/before.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _wall(python: str, root: Path, jobs: int) -> tuple[float, str]:
    command = [python, "-m", "tf_migrate", str(root), "--select", "all", "--no-cache", "-j", str(jobs)]
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1, 2):
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    summary = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
    return elapsed, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="python of an environment with the code before")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        raise SystemExit("torch is not installed")
    root = Path(spec.origin).parent
    runs = {"before": args.before, "after": sys.executable}
    samples: dict[str, list[float]] = {name: [] for name in runs}
    summaries: dict[str, str] = {}
    for round_ in range(args.rounds):
        order = list(runs) if round_ % 2 == 0 else list(reversed(runs))
        for name in order:
            wall, summaries[name] = _wall(runs[name], root, args.jobs)
            samples[name].append(wall)
            print(f"round {round_} {name}: {wall:.1f} s", file=sys.stderr, flush=True)
    print(f"Corpus: {root} ({sum(1 for _ in root.rglob('*.py')):,} files), all rules, report mode, cold "
          f"(--no-cache), -j {args.jobs}, {args.rounds} rounds taking turns; load average at the end "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| code | median s | samples s | summary |\n|---|---:|---|---|")
    for name in runs:
        print(f"| {name} | {statistics.median(samples[name]):.1f} | "
              f"{', '.join(f'{s:.1f}' for s in samples[name])} | {summaries[name]} |")
    ratio = statistics.median(samples["after"]) / statistics.median(samples["before"])
    print(f"\nafter / before (medians): {ratio:.2f}x")


if __name__ == "__main__":
    main()
