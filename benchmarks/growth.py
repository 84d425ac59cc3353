"""How tf-migrate's cost grows with the size of one file, against libcst's parse of the same file.

    python benchmarks/growth.py [--model fixtures/models/einsum_gpt.py] [--sizes 1,4,16,64,256]
        [--repeats 5] [--torch-files 5] [--profile-size 64] [--select all] [--clock wall|cpu]
        [--out benchmarks/results/growth]

The N-copies file is the model file's imports once, then its code N times with every top-level
name suffixed by the copy's number (N independent models, each a migration candidate). Per N, in one
process, `migrate_source` with every rule and `libcst.parse_module` take turns (order reversed
each round) and the medians are compared: the ratio tf-migrate / parse does not depend much on
what else the machine runs. Each timed run starts from a frozen heap (`gc.freeze`), so that a
parse is not charged for collections walking what earlier runs left alive. Walk steps (nodes whose children `analysis.nodes` reads) and libcst
visitor `on_visit` calls are counted too: they do not depend on load at all. The log-log slope
between consecutive N says how the cost grows (1.0: linear). The torch tree's largest files that
reach libcst are measured the same way. A cProfile summary (top 15 by own time) of one N ends the
report (taken inside the thread the rules run in). The N-copies file is named as if it lay in an
empty temporary folder, so that no neighbouring file joins the whole-tree analysis. `--clock cpu`
times the process's CPU (all threads) instead of the wall clock: on a machine shared with other
work the CPU time of each side depends less on what else runs. Prints Markdown, with the load
average; with --out, writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import importlib.util
import io
import json
import math
import pstats
import re
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import libcst as cst

from tf_migrate.analysis import nodes
from tf_migrate.engine.file import migrate_source
from tf_migrate.engine.registry import select_rules

ROOT = Path(__file__).resolve().parent.parent


def n_copies(text: str, copies: int) -> str:
    """The file's prelude (imports, docstring) once, then its body `copies` times, renamed apart."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if re.match(r"(class|def|@)\b|@", line))
    prelude, body = "".join(lines[:start]), "".join(lines[start:])
    names = re.findall(r"^(?:class|def)\s+(\w+)", body, flags=re.M)
    names += re.findall(r"^(\w+)\s*=", body, flags=re.M)
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(set(names), key=len, reverse=True))) + r")\b")
    return prelude + "\n\n".join(pattern.sub(lambda m: f"{m.group(1)}_{i}", body) for i in range(copies))


@contextmanager
def counting() -> Iterator[dict[str, int]]:
    """Counts walk steps (`nodes.children` calls) and libcst visitor `on_visit` calls meanwhile."""
    counts = {"walk": 0, "visit": 0}
    children, on_visit = nodes.children, cst.CSTVisitor.on_visit
    transformer_visit = cst.CSTTransformer.on_visit

    def counted_children(node):
        counts["walk"] += 1
        return children(node)

    def counted_visit(self, node):
        counts["visit"] += 1
        return on_visit(self, node)

    def counted_transformer_visit(self, node):
        counts["visit"] += 1
        return transformer_visit(self, node)

    nodes.children = counted_children
    cst.CSTVisitor.on_visit = counted_visit
    cst.CSTTransformer.on_visit = counted_transformer_visit
    patched = [m for m in list(sys.modules.values())
               if m is not None and getattr(m, "__name__", "").startswith("tf_migrate")
               and getattr(m, "children", None) is children]
    for module in patched:
        module.children = counted_children
    try:
        yield counts
    finally:
        nodes.children = children
        cst.CSTVisitor.on_visit = on_visit
        cst.CSTTransformer.on_visit = transformer_visit
        for module in patched:
            module.children = children


CLOCK = time.perf_counter


def _timed(run: Callable[[], object]) -> float:
    """One run's time, from a heap whose objects are frozen first (`gc.freeze`): the collections
    a parse triggers would otherwise walk what earlier runs left alive (the rules' caches,
    the results), and charge the parse for them (N = 64: 1.6 s against 1.0 s in a fresh process)."""
    gc.collect()
    gc.freeze()
    try:
        start = CLOCK()
        run()
        return CLOCK() - start
    finally:
        gc.unfreeze()


def measure(text: str, path: str, rules: list, repeats: int) -> dict:
    tool = lambda: migrate_source(text, path, rules)  # noqa: E731
    parse = lambda: cst.parse_module(text)  # noqa: E731
    result = tool()  # warm-up: imports, caches
    if result.errors:
        raise SystemExit(f"{path}: {result.errors[0][:2000]}")
    tool_times, parse_times = [], []
    for round_ in range(repeats):
        order = [(tool, tool_times), (parse, parse_times)]
        for run, times in (order if round_ % 2 == 0 else order[::-1]):
            times.append(_timed(run))
    with counting() as counts:
        tool()
    t, p = statistics.median(tool_times), statistics.median(parse_times)
    return {"lines": text.count("\n"), "edits": len(result.edits), "refusals": len(result.refusals),
            "tool_s": t, "parse_s": p, "ratio": t / p, **counts}


def slopes(rows: list[dict], key: str = "tool_s") -> list[float | None]:
    """Log-log slope of `key` against the file size between each row and the one before."""
    out: list[float | None] = [None]
    for before, after in zip(rows, rows[1:]):
        out.append(math.log(after[key] / before[key]) / math.log(after["lines"] / before["lines"]))
    return out


def largest_torch_files(count: int, rules: list) -> list[Path]:
    """The `count` largest files of the installed torch tree that tf-migrate parses with libcst."""
    import ast

    from tf_migrate.analysis.nn_bases import may_define_modules
    from tf_migrate.engine.file import has_candidates

    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return []
    found = []
    for path in Path(spec.origin).parent.rglob("*.py"):
        text = path.read_text(encoding="utf-8", errors="replace")
        if not has_candidates(text, rules):
            continue
        try:
            if may_define_modules(ast.parse(text)):
                found.append((len(text), path))
        except (SyntaxError, ValueError, RecursionError):
            continue
    return [path for _, path in sorted(found, reverse=True)[:count]]


def profile(text: str, path: str, rules: list, top: int = 15) -> str:
    """cProfile of one run, enabled inside the thread the rules run in (see `file._with_deep_stack`)."""
    from tf_migrate.engine import file

    profiler = cProfile.Profile()
    deep_stack = file._with_deep_stack

    def profiled(function, *args):
        def inside(*inner):
            profiler.enable()
            try:
                return function(*inner)
            finally:
                profiler.disable()
        return deep_stack(inside, *args)

    file._with_deep_stack = profiled
    try:
        migrate_source(text, path, rules)
    finally:
        file._with_deep_stack = deep_stack
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime").print_stats(top)
    return out.getvalue()


def _table(rows: list[dict], label: str, growth: bool = True) -> list[str]:
    lines = [f"| {label} | lines | edits | refusals | tf-migrate s | parse s | ratio | slope (time) "
             "| walk steps | slope (steps) | visits |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    times = slopes(rows) if growth else [None] * len(rows)
    steps = slopes(rows, "walk") if growth and all(r["walk"] for r in rows) else [None] * len(rows)
    for row, slope, step_slope in zip(rows, times, steps):
        fmt = lambda s: "" if s is None else f"{s:.2f}"  # noqa: E731
        lines.append(f"| {row['label']} | {row['lines']:,} | {row['edits']} | {row['refusals']} | "
                     f"{row['tool_s']:.3f} | {row['parse_s']:.3f} | {row['ratio']:.1f}x | {fmt(slope)} | "
                     f"{row['walk']:,} | {fmt(step_slope)} | {row['visit']:,} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "fixtures/models/einsum_gpt.py")
    parser.add_argument("--sizes", default="1,4,16,64,256")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-files", type=int, default=5)
    parser.add_argument("--profile-size", type=int, default=64)
    parser.add_argument("--select", default="all", help="rule selectors, comma-separated")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    folder = tempfile.mkdtemp(prefix="growth-")  # empty: the file is a project of its own
    rules = [rule() for rule in select_rules(args.select.split(","))]
    sizes = [int(n) for n in args.sizes.split(",")]
    base = args.model.read_text()
    report = [f"Model: {args.model.name}, rules: {args.select}, {args.repeats} rounds (medians), "
              f"{args.clock} clock, load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}\n"]
    rows = []
    for n in sizes:
        row = {"label": f"N={n}", **measure(n_copies(base, n), os.path.join(folder, f"copies_{n}.py"), rules,
                                            args.repeats)}
        rows.append(row)
        print(f"N={n}: {row['ratio']:.1f}x parse, {row['walk']:,} walk steps", file=sys.stderr, flush=True)
    report += _table(rows, "N")
    torch_rows = []
    for path in largest_torch_files(args.torch_files, rules):
        row = {"label": path.name, **measure(path.read_text(), str(path), rules, max(1, args.repeats // 2))}
        torch_rows.append(row)
        print(f"{path.name}: {row['ratio']:.1f}x parse", file=sys.stderr, flush=True)
    if torch_rows:
        report += ["", "Largest torch files that reach libcst:", ""]
        report += _table(torch_rows, "file", growth=False)
    if args.profile_size:
        report += ["", f"Profile, N={args.profile_size}, top 15 by own time:", "", "```",
                   profile(n_copies(base, args.profile_size), os.path.join(folder, "profile.py"), rules).strip(), "```"]
    report.append(f"\nLoad average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    text = "\n".join(report)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({"copies": rows, "torch": torch_rows}, indent=1))


if __name__ == "__main__":
    main()
