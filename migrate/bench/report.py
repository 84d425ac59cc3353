"""Markdown tables of benchmark measurements: two models side by side with their ratios."""

from __future__ import annotations

from tf_migrate.bench import Measurement


def ratio_table(measurements: list[Measurement], base: str, other: str) -> list[str]:
    """One row per (length, mode): times, peaks, and base/other ratios (> 1: `other` is faster/leaner)."""
    by_key = {(m.label, m.length, m.mode): m for m in measurements}
    keys = list(dict.fromkeys((m.length, m.mode) for m in measurements if m.label == base))
    lines = [(f"| T | pass | {base} ms | {other} ms | time {base}/{other} "
              f"| {base} peak MiB | {other} peak MiB | memory {base}/{other} |"),
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    notes: list[str] = []
    for length, mode in keys:
        a, b = by_key[(base, length, mode)], by_key.get((other, length, mode))
        if b is None:
            continue
        for m in (a, b):
            why = m.skipped or m.memory_note
            if why and f"{m.label} at T={length}: {why}" not in notes:
                notes.append(f"{m.label} at T={length}: {why}")
        lines.append(f"| {length} | {mode} | {_ms(a.seconds)} | {_ms(b.seconds)} | {_ratio(a.seconds, b.seconds)} "
                     f"| {_mib(a.peak_bytes)} | {_mib(b.peak_bytes)} | {_ratio(a.peak_bytes, b.peak_bytes, 2**20)} |")
    return lines + [f"- skipped {note}" for note in notes]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _mib(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:.1f}"


def _ratio(a: float | None, b: float | None, floor: float = 0) -> str:
    if a is None or b is None:
        return "-"
    if max(a, b) < floor:
        return "~"  # both below the floor (1 MiB for memory): too small to compare
    return f"{a / b:.2f}x" if b > 0 else "inf"


def bench_pair(document: str, fmt: str, before, after, build: str, entry: str | None,
               lengths: list[int], input_expr: str | None) -> str:
    """`verify --bench`: measure BEFORE and AFTER and add the table (text) or the data (json)."""
    import json
    from dataclasses import asdict

    from tf_migrate.bench import BenchOptions, measure
    from tf_migrate.bench.setup import ModelSpec

    specs = [ModelSpec(label, str(path), build, entry, input_expr) for label, path in (("before", before),
                                                                                      ("after", after))]
    options = BenchOptions(lengths)
    measurements = measure(specs, options)
    if fmt == "json":
        return json.dumps(json.loads(document) | {"bench": [asdict(m) for m in measurements]}, indent=2)
    header = (f"bench (batch 1, eval mode, median of {options.repeats} interleaved runs after {options.warmup} "
              "warm-up; peak = RSS above the built model, fresh process per row):")
    return "\n".join([document, header, *ratio_table(measurements, "before", "after")])
