"""Configuration from `[tool.tf-migrate]` in the nearest pyproject.toml.

    [tool.tf-migrate]
    select = ["exact"]
    ignore = ["TFM102"]
    exclude = ["third_party/**"]

    [tool.tf-migrate.swiglu]      # per-rule options, by rule name
    ffn = "geglu"

Command-line options override the file.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_SELECT = ("exact",)


class ConfigError(ValueError):
    pass


@dataclass
class Config:
    select: list[str] = field(default_factory=lambda: list(DEFAULT_SELECT))
    ignore: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    rule_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: Path | None = None

    def options_for(self, rule_name: str) -> Mapping[str, Any]:
        return self.rule_options.get(rule_name, {})

    def fingerprint(self) -> str:
        return repr((sorted(self.select), sorted(self.ignore), sorted(self.rule_options.items())))


def find_pyproject(start: Path) -> Path | None:
    from tf_migrate.engine.discovery import real_path

    start = real_path(start)
    for folder in [start, *start.parents] if start.is_dir() else start.parents:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _as_list(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"[tool.tf-migrate] {key} must be a string or a list of strings")


def load_config(start: Path) -> Config:
    path = find_pyproject(start)
    if path is None:
        return Config()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    tool = data.get("tool", {})
    table = tool.get("tf-migrate", {}) if isinstance(tool, dict) else None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tool.tf-migrate] must be a table, not "
                          f"{'tool = ' if table is None else 'tool.tf-migrate = '}{(tool if table is None else table)!r}")
    config = Config(source=path)
    for key, value in table.items():
        if key in ("select", "ignore", "exclude"):
            setattr(config, key, _as_list(value, key))
        elif isinstance(value, dict):
            config.rule_options[key] = dict(value)
        else:
            raise ConfigError(f"{path}: unknown key [tool.tf-migrate] {key}")
    return config
