"""One `tf-migrate PATH...` run: configuration, discovery, the engine, output and writes."""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tf_migrate.engine import report
from tf_migrate.engine.config import Config, ConfigError, load_config
from tf_migrate.engine.discovery import iter_python_files, real_path
from tf_migrate.engine.file import FileResult
from tf_migrate.plan import plan_document
from tf_migrate.engine.registry import SelectionError, select_rules
from tf_migrate.engine.ruleindex import LazyRule, RuleInfo, rule_index
from tf_migrate.engine.source import DEFAULT_MAX_FILE_SIZE, FileChanged, write_atomic


class UsageError(Exception):
    pass


@dataclass
class RunOptions:
    paths: list[Path]
    diff: bool = False
    write: bool = False
    output_dir: Path | None = None
    select: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    rule_options: list[str] = field(default_factory=list)
    fmt: str = "text"
    plan_path: Path | None = None
    config_path: Path | None = None
    jobs: int | None = None  # None: one per core
    cache_dir: Path | None = None  # None: .tf-migrate-cache beside the nearest pyproject.toml
    use_cache: bool = True
    statistics: bool = False  # print only the census table and its reasons
    max_file_size: int = DEFAULT_MAX_FILE_SIZE


def _config(options: RunOptions) -> Config:
    start = options.config_path or (options.paths[0] if options.paths else Path.cwd())
    try:
        config = load_config(start)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if options.select:  # an explicit selection replaces the file's selection, ignores included
        config.select, config.ignore = options.select, []
    config.ignore = config.ignore + options.ignore
    for item in options.rule_options:
        key, sep, value = item.partition("=")
        rule_name, dot, option = key.partition(".")
        if not sep or not dot:
            raise UsageError(f"--option {item!r}: expected RULE.KEY=VALUE")
        config.rule_options.setdefault(rule_name, {})[option] = value
    return config


def build_rules(config: Config) -> list[LazyRule]:
    """The selected rules, as stand-ins that import the real rule only when a file needs it."""
    index = rule_index()
    try:
        classes = select_rules(config.select, config.ignore, index)
    except SelectionError as exc:
        raise UsageError(str(exc)) from None
    by_name = {cls.name: cls for cls in classes}
    by_rule: dict[str, dict[str, Any]] = {}  # options given by code (TFM301.ffn) count as by name
    for name, values in config.rule_options.items():
        rule = next((r for r in index if name in (r.name, r.code)), None)
        if rule is None:
            raise UsageError(f"unknown rule {name!r} (see `tf-migrate rules`)")
        unknown = set(values) - set(rule.options)
        if unknown:
            raise UsageError(f"rule {rule.name} has no option {sorted(unknown)[0]!r} "
                             f"(options: {', '.join(rule.options) or 'none'})")
        by_rule.setdefault(rule.name, {}).update(values)
    config.rule_options = by_rule
    rules = [LazyRule(info, _coerce(info, config.options_for(info.name))) for info in by_name.values()]
    for rule in rules:
        if config.options_for(rule.name):
            rule.real()  # a rule checks its options when built: a bad value stops the run here, once
    return rules


def _coerce(rule: RuleInfo, values: dict[str, Any]) -> dict[str, Any]:
    """Command-line values arrive as strings: give them the type of the option's default."""
    coerced = {}
    for key, value in values.items():
        default = rule.options[key]
        if isinstance(value, str) and not isinstance(default, str):
            try:
                value = type(default)(value) if not isinstance(default, bool) else value.lower() in ("1", "true", "yes")
            except ValueError:
                raise UsageError(f"option {rule.name}.{key}: {value!r} is not a {type(default).__name__}") from None
        coerced[key] = value
    return coerced


def _absolute(path: Path) -> Path:
    """Absolute, but symlinks kept: a linked file is mirrored where its link is, not where it points."""
    return Path(os.path.abspath(path))


def _mirror_root(paths: list[Path]) -> Path:
    folders = [_absolute(p) if p.is_dir() else _absolute(p).parent for p in paths]
    return Path(os.path.commonpath(folders))


def run(options: RunOptions, out: TextIO) -> int:
    if options.write and options.output_dir:
        raise UsageError("--write and --output-dir cannot be used together")
    config = _config(options)
    rules = build_rules(config)
    files = list(iter_python_files(options.paths, config.exclude))
    if options.output_dir is not None:
        files = _without_earlier_output(real_path(options.output_dir), options.paths, files)
    targets = _targets(options, files)
    results = _process(options, config, rules, files, out)
    _write(options, targets, results)
    _print_end(options, results, out)
    if options.plan_path is not None:
        document = plan_document(p for r in results for p in r.plans)
        try:
            write_atomic(options.plan_path, json.dumps(document, indent=2) + "\n")
        except OSError as exc:
            raise UsageError(f"--plan {options.plan_path}: cannot write ({exc.strerror or exc})") from None
    if any(r.errors for r in results):
        return 2
    return 1 if any(r.changed for r in results) else 0


def _without_earlier_output(out_dir: Path, paths: list[Path], files: list[Path]) -> list[Path]:
    """An --output-dir inside a walked folder holds the last run's copies: they are not inputs."""
    roots = [real_path(p) for p in paths]
    if any(out_dir == r or out_dir in r.parents for r in roots):
        return files  # the output folder holds the inputs: _targets decides whether that is safe
    return [f for f in files if out_dir not in real_path(f).parents]


def _targets(options: RunOptions, files: list[Path]) -> list[Path | None]:
    """Where each file's result goes (None: nowhere); an --output-dir that maps a file onto itself
    would overwrite the inputs that option promises to leave alone."""
    if options.write:
        return list(files)
    if options.output_dir is None:
        return [None] * len(files)
    root = _mirror_root([p for p in options.paths if p.exists()] or [Path.cwd()])
    targets = [options.output_dir / _absolute(path).relative_to(root) for path in files]
    for path, target in zip(files, targets):
        if real_path(target) == real_path(path):
            raise UsageError(f"--output-dir {options.output_dir} would overwrite the input {path} "
                             "(use --write to migrate in place)")
    return targets


def _write(options: RunOptions, targets: list[Path | None], results: list[FileResult]) -> None:
    """Write each result; a file that cannot be written is an error of that file, not of the run."""
    for target, result in zip(targets, results):
        if target is None or result.errors or result.migrated is None:
            continue
        if options.write and not result.changed:
            continue
        try:
            if options.write and not stat.S_IMODE(target.stat().st_mode) & 0o222:
                raise PermissionError(errno.EACCES, "the file is read-only")
            write_atomic(target, result.migrated, result.encoding,
                         expect=result.stamp if options.write else None)
        except FileChanged as exc:
            result.errors.append(str(exc))
            _stderr().write(f"{result.path}: error: {exc}\n")
        except OSError as exc:
            result.errors.append(f"not written to {target}: {exc.strerror or exc}")
            _stderr().write(f"{result.path}: error: {result.errors[-1]}\n")


def _process(options: RunOptions, config: Config, rules: list[LazyRule], files: list[Path],
             out: TextIO) -> list[FileResult]:
    """Results in input order; each file's lines are printed as soon as its turn comes."""
    from tf_migrate.engine.parallel import default_jobs, in_order, process
    from tf_migrate.engine.progress import Progress

    jobs = options.jobs or default_jobs()
    progress = Progress(len(files), _stderr())
    results: list[FileResult] = []
    try:
        for result in in_order(_counted(process(files, rules, jobs, _cache(options, config),
                                                       options.max_file_size),
                                               progress), len(files)):
            results.append(result)
            _print_file(options, result, out)
    finally:
        progress.close()
    return results


def _counted(pairs, progress):
    for pair in pairs:
        progress.advance()
        yield pair


def _cache(options: RunOptions, config: Config):
    if not options.use_cache:
        return None
    from tf_migrate.engine.cache import ResultCache, default_location

    start = options.config_path or (options.paths[0] if options.paths else Path.cwd())
    folder = options.cache_dir or default_location(start)
    return ResultCache(folder, config.fingerprint())


def _print_file(options: RunOptions, result: FileResult, out: TextIO) -> None:
    if options.fmt == "github":
        from tf_migrate.engine.ci_formats import github_lines

        out.writelines(line + "\n" for line in github_lines(result))
        return
    if options.fmt != "text" or options.statistics:
        return
    if options.diff:
        out.write(report.diff(result))
    for line in report.text_lines(result):
        (out if not options.diff else _stderr()).write(line + "\n")


def _print_end(options: RunOptions, results: list[FileResult], out: TextIO) -> None:
    if options.statistics:
        out.writelines(line + "\n" for line in report.statistics(results))
        return
    if options.fmt == "json":
        out.write(report.json_document(results) + "\n")
    elif options.fmt == "sarif":
        from tf_migrate.engine.ci_formats import sarif_document

        out.write(sarif_document(results) + "\n")
    else:
        table = report.census_table(results)
        if table and options.fmt == "text":
            (out if not options.diff else _stderr()).writelines(line + "\n" for line in ["", *table])
            out.flush()  # the table before the summary line on stderr, in a terminal too
        _stderr().write(report.summary(results, options.write or options.output_dir is not None) + "\n")


def _stderr() -> TextIO:
    return sys.stderr
