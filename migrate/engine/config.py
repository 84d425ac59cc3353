"""Configuration: `[tool.tf-migrate]` in a pyproject.toml, or the top level of a tf-migrate.toml.

    [tool.tf-migrate]
    select = ["exact"]
    extend-select = ["TFM401"]
    ignore = ["TFM102"]
    exclude = ["third_party/"]        # gitignore-style, relative to this file's folder
    extend-exclude = ["generated/*.py"]

    [tool.tf-migrate.swiglu]      # per-rule options, by rule name
    ffn = "geglu"

Each file gets the configuration of the nearest folder above it that holds a tf-migrate.toml or
a pyproject.toml with a `[tool.tf-migrate]` table (like ruff: a pyproject.toml without the table
is passed over). `--config FILE` names one file for every path. Command-line options override it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_SELECT = ("exact",)
_LISTS = {"select": "select", "extend-select": "extend_select", "ignore": "ignore",
          "exclude": "exclude", "extend-exclude": "extend_exclude"}
NAMES = ("tf-migrate.toml", "pyproject.toml")  # per folder, in this order


class ConfigError(ValueError):
    pass


@dataclass
class Config:
    select: list[str] = field(default_factory=lambda: list(DEFAULT_SELECT))
    ignore: list[str] = field(default_factory=list)
    extend_select: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    extend_exclude: list[str] = field(default_factory=list)
    rule_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: Path | None = None
    root: Path | None = None  # where `exclude` patterns are anchored: the config file's folder

    def options_for(self, rule_name: str) -> Mapping[str, Any]:
        return self.rule_options.get(rule_name, {})

    @property
    def excludes(self) -> list[str]:
        return self.exclude + self.extend_exclude

    def fingerprint(self) -> str:
        return repr((sorted(self.select), sorted(self.extend_select), sorted(self.ignore),
                     sorted(self.rule_options.items())))


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: take the path as it is spelled
        return Path(os.path.abspath(path))


def find_pyproject(start: Path) -> Path | None:
    """The nearest pyproject.toml at or above `start` (any content): where the cache lives."""
    start = _resolved(start)
    for folder in [start, *start.parents] if start.is_dir() else start.parents:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _as_list(value: Any, key: str, path: Path) -> list[str]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    elif not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ConfigError(f"{path}: {key} must be a string or a list of strings")
    if key == "select" and not value:
        raise ConfigError(f"{path}: select is empty, which would select no rule "
                          "(leave it out for the default, or use ignore)")
    return list(value)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from exc


def _table(path: Path, data: dict[str, Any]) -> dict[str, Any] | None:
    """The tf-migrate table of a parsed file: the top level of tf-migrate.toml, else [tool.tf-migrate]."""
    if path.name == "tf-migrate.toml":
        return data
    tool = data.get("tool", {})
    if not isinstance(tool, dict):
        raise ConfigError(f"{path}: [tool] must be a table, not {type(tool).__name__}")
    table = tool.get("tf-migrate")
    if table is not None and not isinstance(table, dict):
        raise ConfigError(f"{path}: [tool.tf-migrate] must be a table, not {type(table).__name__}")
    return table


def config_from_table(path: Path, table: Mapping[str, Any]) -> Config:
    config = Config(source=path, root=_resolved(path).parent)
    for key, value in table.items():
        if key in _LISTS:
            setattr(config, _LISTS[key], _as_list(value, key, path))
        elif isinstance(value, dict):
            config.rule_options[key] = dict(value)
        else:
            raise ConfigError(f"{path}: unknown key {key!r} (keys: {', '.join(_LISTS)}, "
                              "or a [rule] table of options)")
    return config


def load_config_file(path: Path) -> Config:
    """`--config FILE`: any TOML file with a [tool.tf-migrate] table, or a tf-migrate.toml."""
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    table = _table(path, _read_toml(path))
    if table is None:
        raise ConfigError(f"--config {path}: has no [tool.tf-migrate] table")
    return config_from_table(path, table)


def _config_in(folder: Path) -> Config | None:
    for name in NAMES:
        candidate = folder / name
        if candidate.is_file():
            table = _table(candidate, _read_toml(candidate))
            if table is not None:
                return config_from_table(candidate, table)
    return None


def load_config(start: Path) -> Config:
    """The configuration that applies at `start` (a file or a folder); defaults when none."""
    start = _resolved(start)
    for folder in [start, *start.parents] if start.is_dir() else start.parents:
        config = _config_in(folder)
        if config is not None:
            return config
    return Config(root=Path.cwd())


@dataclass
class Overrides:
    """What the command line says, applied on top of every file's configuration."""

    select: list[str] | None = None  # replaces the file's select, extend-select and ignore
    extend_select: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    exclude: list[str] | None = None  # replaces the file's exclude
    extend_exclude: list[str] = field(default_factory=list)  # relative to the working directory
    rule_options: list[tuple[str, str, str]] = field(default_factory=list)  # (rule, key, value)

    def apply(self, config: Config) -> Config:
        config = replace(config, rule_options={k: dict(v) for k, v in config.rule_options.items()})
        if self.select is not None:
            config.select, config.extend_select, config.ignore = list(self.select), [], []
        config.extend_select = config.extend_select + self.extend_select
        config.ignore = config.ignore + self.ignore
        if self.exclude is not None:
            config.exclude = list(self.exclude)
        for rule, key, value in self.rule_options:
            config.rule_options.setdefault(rule, {})[key] = value
        return config


class Resolver:
    """The configuration of every folder, found once per folder (ruff's hierarchical lookup)."""

    def __init__(self, overrides: Overrides, config_path: Path | None = None) -> None:
        self.overrides = overrides
        self.fixed = overrides.apply(load_config_file(config_path)) if config_path else None
        self._by_folder: dict[Path, Config] = {}
        self._default: Config | None = None

    def for_folder(self, folder: Path) -> Config:
        if self.fixed is not None:
            return self.fixed
        if folder in self._by_folder:  # as spelled: most lookups are for the same few folders
            return self._by_folder[folder]
        spelled, folder = folder, _resolved(folder)
        if folder not in self._by_folder:
            found = _config_in(folder)
            if found is not None:
                self._by_folder[folder] = self.overrides.apply(found)
            elif folder.parent != folder:
                self._by_folder[folder] = self.for_folder(folder.parent)
            else:
                self._by_folder[folder] = self.default()
        self._by_folder[spelled] = self._by_folder[folder]
        return self._by_folder[folder]

    def for_file(self, path: Path) -> Config:
        return self.for_folder(Path(os.path.abspath(path)).parent)

    def default(self) -> Config:
        if self._default is None:
            self._default = self.overrides.apply(Config(root=Path.cwd()))
        return self._default
