"""Times and measures several models side by side at chosen sequence lengths.

Timing runs in this process, interleaved: per length and mode every model is warmed up, then the
models take turns (order reversed every round) so that load from other processes on a shared
machine hits all of them alike, and the median of the rounds is kept. Peak memory of each
configuration comes from a fresh process (bench_memory.py). A length a model cannot take (a
positional table or block size too short, any error in a trial forward) is skipped with the
reason. torch is imported only inside the functions, so `tf-migrate` stays torch-free.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field


@dataclass
class BenchOptions:
    lengths: list[int]
    warmup: int = 1
    repeats: int = 5
    memory: bool = True
    modes: tuple[str, ...] = ("forward", "forward+backward")


@dataclass
class Measurement:
    label: str
    length: int
    mode: str
    seconds: float | None = None  # median
    samples: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    skipped: str = ""  # why there is no figure at all
    memory_note: str = ""  # why there is a time but no peak memory


def parse_lengths(text: str) -> list[int]:
    try:
        lengths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"sequence lengths must be integers separated by commas, got {text!r}") from None
    if not lengths or min(lengths) < 1:
        raise ValueError(f"sequence lengths must be positive, got {text!r}")
    return lengths


def measure(specs: list, options: BenchOptions, progress=None) -> list[Measurement]:
    """One Measurement per spec, length and mode, in that nesting order."""
    from tf_migrate.bench.setup import load

    loaded = [load(spec) for spec in specs]
    results: list[Measurement] = []
    for length in options.lengths:
        args, skipped = _inputs_at(specs, loaded, length)
        for mode in options.modes:
            row = [Measurement(s.label, length, mode, skipped=skipped[i]) for i, s in enumerate(specs)]
            _time(loaded, args, row, options)
            if options.memory:
                _memory(specs, row)
            results += row
            if progress:
                progress(row)
    return results


def _inputs_at(specs, loaded, length: int) -> tuple[list, list[str]]:
    from tf_migrate.bench.setup import make_inputs, reason, step

    args, skipped = [], []
    for spec, (model, module) in zip(specs, loaded):
        try:
            arg = make_inputs(spec, model, module, length)
            step(model, arg, "forward")  # can this model take this length at all?
        except Exception as exc:  # noqa: BLE001 - any failure means the model cannot take this length
            arg, why = None, reason(exc)
        else:
            why = ""
        args.append(arg)
        skipped.append(why)
    return args, skipped


def _time(loaded, args, row: list[Measurement], options: BenchOptions) -> None:
    from tf_migrate.bench.setup import step

    live = [i for i, m in enumerate(row) if not m.skipped]
    for _ in range(options.warmup):
        for i in live:
            step(loaded[i][0], args[i], row[i].mode)
    for round_ in range(options.repeats):
        for i in live if round_ % 2 == 0 else reversed(live):
            start = time.perf_counter()
            step(loaded[i][0], args[i], row[i].mode)
            row[i].samples.append(time.perf_counter() - start)
    for i in live:
        row[i].seconds = statistics.median(row[i].samples)


def _memory(specs, row: list[Measurement]) -> None:
    from tf_migrate.bench.memory import MemoryUnavailable, peak_bytes

    for spec, m in zip(specs, row):
        if m.skipped:
            continue
        try:
            m.peak_bytes = peak_bytes(spec, m.length, m.mode)
        except MemoryUnavailable as exc:
            m.memory_note = str(exc)
