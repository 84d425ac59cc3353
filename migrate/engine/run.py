"""One `tf-migrate PATH...` run: configuration, discovery, the engine, output and writes."""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from tf_migrate.engine import collector, report
from tf_migrate.engine.config import Config, ConfigError, Overrides, Resolver
from tf_migrate.engine.discovery import Excludes, iter_python_files, real_path
from tf_migrate.engine.file import FileResult
from tf_migrate.plan import plan_document
from tf_migrate.engine.registry import SelectionError, select_rules
from tf_migrate.engine.ruleindex import LazyRule, RuleInfo, rule_index
from tf_migrate.engine.source import DEFAULT_MAX_FILE_SIZE, FileChanged, write_atomic, write_atomic_bytes


class UsageError(Exception):
    pass


@dataclass
class RunOptions:
    paths: list[Path]
    diff: bool = False
    write: bool = False
    output_dir: Path | None = None
    select: list[str] = field(default_factory=list)  # empty: the configuration's
    ignore: list[str] = field(default_factory=list)
    extend_select: list[str] = field(default_factory=list)
    rule_options: list[str] = field(default_factory=list)
    fmt: str = "text"
    plan_path: Path | None = None
    config_path: Path | None = None
    jobs: int | None = None  # None: one per core
    cache_dir: Path | None = None  # None: .tf-migrate-cache beside the nearest pyproject.toml
    use_cache: bool = True
    exclude: list[str] | None = None  # None: the configuration's
    extend_exclude: list[str] = field(default_factory=list)
    respect_gitignore: bool = True
    force_exclude: bool = False
    stdin_filename: str | None = None
    exit_zero: bool = False
    exit_non_zero_on_refusal: bool = False
    exit_non_zero_on_fix: bool = True  # `check --fix` exits 0 once everything is fixed, like ruff
    fixes_only_exact: bool = False  # `check --fix` without --unsafe-fixes
    color: bool | None = None  # None: on a terminal unless NO_COLOR
    statistics: bool = False  # print only the census table and its reasons
    max_file_size: int = DEFAULT_MAX_FILE_SIZE


def _overrides(options: RunOptions) -> Overrides:
    rule_options = []
    for item in options.rule_options:
        key, sep, value = item.partition("=")
        rule_name, dot, option = key.partition(".")
        if not sep or not dot:
            raise UsageError(f"--option {item!r}: expected RULE.KEY=VALUE")
        rule_options.append((rule_name, option, value))
    return Overrides(select=options.select or None, extend_select=options.extend_select,
                     ignore=options.ignore, exclude=options.exclude, rule_options=rule_options)


def _resolver(options: RunOptions) -> Resolver:
    try:
        return Resolver(_overrides(options), options.config_path)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def build_rules(config: Config, only_exact: bool = False) -> list[LazyRule]:
    """The selected rules, as stand-ins that import the real rule only when a file needs it.

    Every rule's options are checked, selected or not: a typo must not wait for the day the rule
    is selected. With `only_exact` (`check --fix` without --unsafe-fixes) the rules that change the
    model's function are left out, with a note.
    """
    index = rule_index()
    try:
        classes = select_rules(config.select + config.extend_select, config.ignore, index)
    except SelectionError as exc:
        raise UsageError(str(exc)) from None
    if only_exact:
        unsafe = [cls for cls in classes if cls.equivalence.value != "exact"]
        if unsafe:
            _stderr().write("tf-migrate: note: not applied without --unsafe-fixes (they change the "
                            f"model's function): {', '.join(f'{c.code} ({c.equivalence.value})' for c in unsafe)}\n")
        classes = [cls for cls in classes if cls.equivalence.value == "exact"]
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
    for info in index:
        if info.name in by_rule:  # a rule checks its options when built: a bad value stops the run here, once
            LazyRule(info, _coerce(info, by_rule[info.name])).real()
    return [LazyRule(info, _coerce(info, config.options_for(info.name))) for info in classes]


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


def _check_usage(options: RunOptions) -> None:
    if options.write and options.output_dir:
        raise UsageError("--write and --output-dir cannot be used together")
    if options.diff and (options.write or options.output_dir):
        raise UsageError("--diff only shows the changes and never writes: drop --diff, or drop "
                         + ("--fix/--write" if options.write else "--output-dir"))
    if any(str(p) == "-" for p in options.paths) and len(options.paths) > 1:
        raise UsageError("`-` (standard input) cannot be combined with other paths")
    if options.stdin_filename and [str(p) for p in options.paths] != ["-"]:
        raise UsageError("--stdin-filename applies to `-` (standard input) only")
    if options.output_dir and [str(p) for p in options.paths] == ["-"]:
        raise UsageError("--output-dir cannot be used with `-`: the result goes to standard output")


def run(options: RunOptions, out: TextIO) -> int:
    try:
        return _run(options, out)
    except ConfigError as exc:  # a configuration file met on the way (each folder may have its own)
        raise UsageError(str(exc)) from None


def _run(options: RunOptions, out: TextIO) -> int:
    _check_usage(options)
    resolver = _resolver(options)
    rules_of = _RulesByConfig(options.fixes_only_exact)
    rules_of(resolver.fixed or resolver.default())  # a bad selection or option stops the run up front
    if [str(p) for p in options.paths] == ["-"]:
        return _run_stdin(options, resolver, rules_of, out)
    files = list(iter_python_files(options.paths, resolver, respect_gitignore=options.respect_gitignore,
                                   force_exclude=options.force_exclude,
                                   extend_exclude=options.extend_exclude))
    if options.output_dir is not None:
        files = _without_earlier_output(real_path(options.output_dir), options.paths, files)
    configs = [resolver.for_file(path) for path in files]
    targets = _targets(options, files)
    results = _process(options, configs, rules_of, files)
    with collector.frozen():
        _write(options, targets, results)
        _copy_failed(options, files, targets, results)
        _print(options, results, out)
        if options.plan_path is not None:
            document = plan_document(p for r in results for p in r.plans)
            try:
                write_atomic(options.plan_path, json.dumps(document, indent=2) + "\n")
            except OSError as exc:
                raise UsageError(f"--plan {options.plan_path}: cannot write ({exc.strerror or exc})") from None
    return _exit_code(options, results, wrote=options.write)


def _exit_code(options: RunOptions, results: list[FileResult], wrote: bool) -> int:
    if any(r.errors for r in results):
        return 2
    if options.exit_zero:
        return 0
    if any(r.changed for r in results) and (not wrote or options.exit_non_zero_on_fix):
        return 1
    if options.exit_non_zero_on_refusal and any(r.refusals or report.not_understood(r) for r in results):
        return 1  # a census component not understood is a candidate left unhandled too
    return 0


class _RulesByConfig:
    """One list of rules per distinct configuration (each file has the one of its folder)."""

    def __init__(self, only_exact: bool) -> None:
        self.only_exact = only_exact
        self._built: dict[int, tuple[Config, list[LazyRule]]] = {}

    def __call__(self, config: Config) -> list[LazyRule]:
        if id(config) not in self._built:
            self._built[id(config)] = (config, build_rules(config, self.only_exact))
        return self._built[id(config)][1]


def _run_stdin(options: RunOptions, resolver: Resolver, rules_of: _RulesByConfig, out: TextIO) -> int:
    """`tf-migrate check [--fix|--diff] - [--stdin-filename PATH]`: for editors. With --fix/--write the
    result (the input itself when nothing changes or the file fails) goes to standard output and
    the findings to standard error."""
    from tf_migrate.engine.file import has_candidates, migrate_source, syntax_error
    from tf_migrate.engine.source import SourceError, decode_source

    display = options.stdin_filename or "-"
    config = resolver.for_file(Path(display))
    stream = getattr(sys.stdin, "buffer", sys.stdin)
    raw = stream.read()
    raw = raw.encode("utf-8") if isinstance(raw, str) else raw
    excluded = options.force_exclude and options.stdin_filename and Excludes(options.extend_exclude).excluded(
        config, Path(display), False)
    try:
        source = decode_source(Path(display), raw)
    except SourceError as exc:
        result = FileResult(display, errors=[str(exc)])
    else:
        rules = [] if excluded else rules_of(config)
        if has_candidates(source.text, rules):
            result = migrate_source(source.text, display, rules)
        else:
            error = None if excluded else syntax_error(source.text)
            result = FileResult(display, original=source.text, migrated=source.text,
                                errors=[error] if error else [])
        result.encoding = source.encoding
    if options.write:
        body = raw if result.errors or result.migrated is None else result.migrated.encode(result.encoding)
        out.flush()
        target = getattr(out, "buffer", None)
        target.write(body) if target is not None else out.write(body.decode(result.encoding))
        out.flush()
        _print(replace(options, write=False), [result], _stderr(), findings_only=True)
    else:
        _print(options, [result], out)
    return _exit_code(options, [result], wrote=options.write)


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


def _process(options: RunOptions, configs: list[Config], rules_of: _RulesByConfig,
             files: list[Path]) -> list[FileResult]:
    """Results in input order. Files are grouped by configuration; each group runs with its rules."""
    from tf_migrate.engine.parallel import default_jobs, process
    from tf_migrate.engine.progress import Progress

    jobs = options.jobs or default_jobs()
    groups: dict[int, list[int]] = {}
    for index, config in enumerate(configs):
        groups.setdefault(id(config), []).append(index)
    project = None
    if len(groups) > 1:  # one whole-tree index for the run, whatever configuration each file has
        from tf_migrate.analysis.project import ProjectIndex

        project = ProjectIndex.for_files(files)
    progress = Progress(len(files), _stderr())
    results: list[FileResult | None] = [None] * len(files)
    try:
        for indices in groups.values():
            config = configs[indices[0]]
            done = process([files[i] for i in indices], rules_of(config), jobs, _cache(options, config), project,
                           options.max_file_size)
            for local, result in done:
                results[indices[local]] = result
                progress.advance()
    finally:
        progress.close()  # cleared before anything is printed
    return results  # type: ignore[return-value]


def _cache(options: RunOptions, config: Config):
    if not options.use_cache:
        return None
    from tf_migrate.engine.cache import ResultCache, default_location

    start = options.config_path or (options.paths[0] if options.paths else Path.cwd())
    folder = options.cache_dir or default_location(start)
    return ResultCache(folder, config.fingerprint())


def _copy_failed(options: RunOptions, files: list[Path], targets: list[Path | None],
                 results: list[FileResult]) -> None:
    """--output-dir mirrors the whole tree: a file that failed is copied as it is, its error kept."""
    if options.output_dir is None:
        return
    for path, target, result in zip(files, targets, results):
        if target is None or not result.errors or target.exists():
            continue
        try:
            raw = path.read_bytes()
            write_atomic_bytes(target, raw)
        except OSError as exc:
            result.errors.append(f"not copied to {target}: {exc.strerror or exc}")


def _print(options: RunOptions, results: list[FileResult], out: TextIO, findings_only: bool = False) -> None:
    """Findings sorted by file, then by line and column; the summary on stderr."""
    ordered = sorted(results, key=lambda r: report.path_key(r.path))
    if options.statistics and options.fmt == "json":
        out.write(report.statistics_document(results) + "\n")
    elif options.statistics:
        out.writelines(line + "\n" for line in report.statistics(results))
    elif options.fmt == "github":  # annotations only: the text lines would repeat each one in the log
        from tf_migrate.engine.ci_formats import github_lines

        out.writelines(line + "\n" for result in ordered for line in github_lines(result))
    elif options.fmt == "json":
        out.write(report.json_document(ordered) + "\n")
    elif options.fmt == "sarif":
        from tf_migrate.engine.ci_formats import sarif_document

        out.write(sarif_document(ordered) + "\n")
    else:
        color = report.use_color(out) if options.color is None else options.color
        findings = out if not options.diff else _stderr()
        for result in ordered:
            if options.diff:
                out.write(report.diff(result))
            for line in report.text_lines(result, color=color and findings is out):
                findings.write(line + "\n")
        table = report.census_table(results)
        if table:
            findings.writelines(line + "\n" for line in ["", *table])
            findings.flush()  # the table before the summary line on stderr, in a terminal too
        if not findings_only:
            _stderr().write(report.summary(results, options.write or options.output_dir is not None) + "\n")


def _stderr() -> TextIO:
    return sys.stderr
