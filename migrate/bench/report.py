"""Markdown tables of benchmark measurements: two models side by side with their ratios."""

from __future__ import annotations

from tf_migrate.bench import Measurement


def ratio_table(measurements: list[Measurement], base: str, other: str) -> list[str]:
    """One row per (length, mode): times as median (min-max), peaks, and base/other ratios
    (> 1: `other` is faster/leaner). A time ratio whose two ranges overlap is marked as noise."""
    by_key = {(m.label, m.length, m.mode): m for m in measurements}
    keys = list(dict.fromkeys((m.length, m.mode) for m in measurements if m.label == base))
    lines = [(f"| T | pass | {base} ms, median (min-max) | {other} ms, median (min-max) | time {base}/{other} "
              f"| {base} peak MiB | {other} peak MiB | memory {base}/{other} |"),
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    notes: list[str] = []
    noisy = False
    for length, mode in keys:
        a, b = by_key[(base, length, mode)], by_key.get((other, length, mode))
        if b is None:
            continue
        for m in (a, b):
            why = m.skipped or m.memory_note
            if why and f"{m.label} at T={length}: {why}" not in notes:
                notes.append(f"{m.label} at T={length}: {why}")
        mark = "*" if _overlap(a, b) else ""
        noisy = noisy or bool(mark)
        lines.append(f"| {length} | {mode} | {_spread(a)} | {_spread(b)} | {_ratio(a.seconds, b.seconds)}{mark} "
                     f"| {_mib(a.peak_bytes)} | {_mib(b.peak_bytes)} | {_ratio(a.peak_bytes, b.peak_bytes, 2**20)} |")
    if noisy:
        lines.append("- * the two min-max ranges overlap: that time ratio is within the run-to-run spread")
    return lines + [f"- skipped {note}" for note in notes]


def _spread(m: Measurement) -> str:
    if m.seconds is None:
        return "-"
    return f"{_ms(m.seconds)} ({_ms(min(m.samples))}-{_ms(max(m.samples))})"


def _overlap(a: Measurement, b: Measurement) -> bool:
    """Whether the two models' timing ranges overlap (then their ratio is noise, not a speed-up)."""
    if not a.samples or not b.samples:
        return False
    return min(a.samples) <= max(b.samples) and min(b.samples) <= max(a.samples)


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
    header = (f"bench (batch 1, eval mode, median and min-max of {options.repeats} interleaved runs after {options.warmup} "
              "warm-up; peak = RSS above the built model, fresh process per row):")
    return "\n".join([document, header, *ratio_table(measurements, "before", "after")])
