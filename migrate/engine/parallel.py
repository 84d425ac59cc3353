"""Runs the engine over many files: pre-filter and cache in this process, parsing in a pool.

Reading a file and looking for its rules' trigger words is cheap, so the parent does it for every
file; only files that can hold a candidate and are not in the cache go to worker processes.
Results are yielded as they finish, tagged with their input index.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from tf_migrate.engine.cache import ResultCache
from tf_migrate.engine.file import FileResult, has_candidates, migrate_source, syntax_error
from tf_migrate.engine.source import (DEFAULT_MAX_FILE_SIZE, NotRegularFile, SourceError, Stamp,
                                      decode_source, read_stamped)

if TYPE_CHECKING:
    from concurrent.futures import Future


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


@dataclass
class _Pending:
    index: int
    display: str
    text: str
    encoding: str
    key: str | None
    stamp: Stamp
    path: str
    syntax_only: bool = False  # no rule looks at the file: only whether Python can parse it


_worker_rules: Sequence = ()
_worker_project = None


def _init_worker(rules: Sequence, project) -> None:
    """Each worker gets the rules and the project index: pickling the index sends only its root
    and file list, and the worker summarises the files its questions reach."""
    global _worker_rules, _worker_project
    _worker_rules, _worker_project = rules, project


def _work(display: str, text: str, encoding: str, path: str, syntax_only: bool = False) -> FileResult:
    if syntax_only:
        error = syntax_error(text)
        return FileResult(display, original=text, migrated=text, encoding=encoding,
                          errors=[error] if error else [])
    try:
        result = migrate_source(text, display, _worker_rules, _worker_project, path)
    except Exception as exc:  # e.g. RecursionError in the parser: report, never stop the run
        import traceback

        return FileResult(display, errors=[f"internal error: {exc!r}\n{traceback.format_exc()}"])
    result.encoding = encoding
    return result


def _triage(index: int, path: Path, rules: Sequence, cache: ResultCache | None,
            max_size: int) -> FileResult | _Pending:
    display = str(path)
    try:
        raw, stamp = read_stamped(path, max_size)
        source = decode_source(path, raw)
    except NotRegularFile as exc:
        return FileResult(display, skipped=str(exc))
    except SourceError as exc:
        return FileResult(display, errors=[str(exc)])
    if not has_candidates(source.text, rules):
        key = cache.syntax_key(raw) if cache else None
        if key and cache.parses(key):
            return FileResult(display, original=source.text, migrated=source.text, encoding=source.encoding)
        return _Pending(index, display, source.text, source.encoding, key, stamp, str(path), syntax_only=True)
    key = cache.key(display, raw) if cache else None
    hit = cache.get(key, source.text) if cache else None
    if hit:
        hit.stamp = stamp
        return hit
    return _Pending(index, display, source.text, source.encoding, key, stamp, str(path))


def process(files: Sequence[Path], rules: Sequence, jobs: int, cache: ResultCache | None,
            project=None, max_size: int = DEFAULT_MAX_FILE_SIZE) -> Iterator[tuple[int, FileResult]]:
    """`project`: the run's whole-tree index, when `files` are one of several groups of a run."""
    from tf_migrate.analysis.project import ProjectIndex

    project = project or ProjectIndex.for_files(files)
    pending: list[_Pending] = []
    for index, path in enumerate(files):
        outcome = _triage(index, path, rules, cache, max_size)
        if isinstance(outcome, _Pending):
            pending.append(outcome)
        else:
            yield index, outcome
    light = [item for item in pending if item.syntax_only]
    if sum(len(item.text) for item in light) < _IN_PROCESS_SYNTAX_CHARS:  # not worth a worker's start
        pending = [item for item in pending if not item.syntax_only]
        yield from _record(((item, _work(item.display, item.text, item.encoding, item.path, True))
                            for item in light), cache)
    yield from _record(_run(pending, rules, jobs, project), cache)
    if cache:
        cache.flush()


_IN_PROCESS_SYNTAX_CHARS = 2_000_000


def _record(done: Iterator[tuple[_Pending, FileResult]], cache: ResultCache | None) -> Iterator[tuple[int, FileResult]]:
    for item, result in done:
        if cache and item.key and item.syntax_only:
            if not result.errors:
                cache.remember_parses(item.key)
        elif cache and item.key:
            cache.put(item.key, result)
        result.stamp = item.stamp
        yield item.index, result


# libcst's native parser has aborted (SIGABRT) on multi-megabyte files: such a file is parsed in a
# child process of its own, so a crash costs that file only, also with --jobs 1.
RISKY_CHARS = 1_000_000


def _run(pending: list[_Pending], rules: Sequence, jobs: int, project) -> Iterator[tuple[_Pending, FileResult]]:
    if jobs <= 1 or len(pending) <= 1:
        _init_worker(rules, project)
        for item in pending:
            risky = len(item.text) > RISKY_CHARS and not item.syntax_only
            yield item, _alone(item, rules, project) if risky else _work(
                item.display, item.text, item.encoding, item.path, item.syntax_only)
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed

    if any(not item.syntax_only for item in pending):
        _load_rules_before_forking(rules)
    # Longest files first, so no worker is left with a big file at the end.
    pending = sorted(pending, key=lambda item: -len(item.text))
    lost: list[_Pending] = []
    with ProcessPoolExecutor(min(jobs, len(pending)), initializer=_init_worker,
                             initargs=(rules, project)) as pool:
        futures: dict[Future, _Pending] = {
            pool.submit(_work, item.display, item.text, item.encoding, item.path, item.syntax_only): item
            for item in pending}
        # as_completed waits on every future once; `wait(FIRST_COMPLETED)` in a loop re-registers
        # on all unfinished ones per result: quadratic in the files (1.5 M lock turns on the torch tree)
        for future in as_completed(futures):
            item = futures[future]
            try:
                yield item, future.result()
            except Exception:  # a worker died (BrokenProcessPool): every unfinished file is lost
                lost.append(item)
    for item in lost:  # which file killed the worker is unknown: each gets a child of its own
        yield item, _alone(item, rules, project)


def _load_rules_before_forking(rules: Sequence) -> None:
    """Import the rules and what they run on (libcst, the engine's fix pass) here, once: workers
    forked from this process inherit the modules instead of each importing them again (about
    0.7 s of CPU per worker, as much as the rules take on a few small files)."""
    import multiprocessing

    if multiprocessing.get_start_method(allow_none=False) != "fork":
        return
    import tf_migrate.engine.context  # noqa: F401
    import tf_migrate.engine.edits  # noqa: F401
    import tf_migrate.engine.printed  # noqa: F401

    for rule in rules:
        real = getattr(rule, "real", None)
        try:
            if real is not None:
                real()
        except Exception:  # noqa: BLE001 - the workers meet it again and report it per file, as before
            continue


def _alone(item: _Pending, rules: Sequence, project) -> FileResult:
    """One file in a disposable child process: if the parser crashes, only this file fails."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, initializer=_init_worker, initargs=(rules, project)) as pool:
        try:
            return pool.submit(_work, item.display, item.text, item.encoding, item.path, item.syntax_only).result()
        except Exception as exc:
            return FileResult(item.display, errors=[
                f"the parser crashed on this file (its process died: {type(exc).__name__}); left untouched"])


def in_order(results: Iterator[tuple[int, FileResult]], count: int) -> Iterator[FileResult]:
    """Re-order (index, result) pairs into input order, yielding each as soon as it can."""
    waiting: dict[int, FileResult] = {}
    following = 0
    for index, result in results:
        waiting[index] = result
        while following in waiting:
            yield waiting.pop(following)
            following += 1
    assert following == count and not waiting
