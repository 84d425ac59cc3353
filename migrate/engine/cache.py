"""A per-file result cache: unchanged files are not parsed again on the next run.

The key covers the file's bytes, its displayed path (plans and messages name it), the tool version,
the effective configuration, and a stamp of the tool's own sources, so editing a rule in a
development checkout never serves a stale result. One JSON file per key; a damaged entry is a miss.
A result also depends on the other project files its analysis read (a base class, a factory): the
entry records their digests, and a hit whose dependencies changed (or vanished) is a miss.

An entry is data anyone who can write the folder can change, so it is checked before it is used:
it names the sha256 of the source it was made from (a copied or renamed entry is a miss), and a
cached rewrite must parse and compile, or the entry is a miss and the file is migrated afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tf_migrate import __version__
from tf_migrate.engine.census import ComponentOutcome
from tf_migrate.engine.file import Diagnostic, Edit, FileResult
from tf_migrate.plan import ClassPlan
from tf_migrate.engine.source import write_atomic

CACHE_DIR_NAME = ".tf-migrate-cache"


def default_location(start: Path) -> Path:
    """Beside the nearest pyproject.toml above `start`, else in the working directory."""
    from tf_migrate.engine.config import find_pyproject

    pyproject = find_pyproject(start)
    return (pyproject.parent if pyproject else Path.cwd()) / CACHE_DIR_NAME


def _code_stamp() -> str:
    import tf_migrate
    import tf_migrate.rules

    parts = []
    for package in (tf_migrate, tf_migrate.rules):
        for folder in package.__path__:
            for source in sorted(Path(folder).rglob("*.py")):
                info = source.stat()
                parts.append(f"{source}:{info.st_size}:{info.st_mtime_ns}")
    return "\n".join(parts)


class ResultCache:
    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder = folder
        self._salt = f"{__version__}\0{fingerprint}\0{_code_stamp()}\0".encode()

    def key(self, display: str, raw: bytes) -> str:
        digest = hashlib.sha256(self._salt)
        digest.update(display.encode("utf-8", "surrogateescape") + b"\0")
        digest.update(raw)
        return digest.hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str, text: str) -> FileResult | None:
        try:
            data = json.loads(self._path(key).read_text(encoding="utf-8"))
            if data["source_sha256"] != _sha256(text):
                return None
            if any(_digest(path) != digest for path, digest in data["depends"].items()):
                return None
            result = _from_json(data, text)
            if result.changed:
                compile(result.migrated, result.path, "exec", dont_inherit=True)
            return result
        except (OSError, ValueError, KeyError, TypeError, SyntaxError, RecursionError, MemoryError):
            return None

    def put(self, key: str, result: FileResult) -> None:
        if result.errors:
            return  # retried on the next run rather than remembered
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tag = self.folder / "CACHEDIR.TAG"
            if not tag.exists():  # like pytest's and ruff's caches: ignored by git and backups
                tag.write_text("Signature: 8a477f597d28d172789f06886806bc55\n")
                (self.folder / ".gitignore").write_text("# created by tf-migrate\n*\n")
            write_atomic(self._path(key), json.dumps(_to_json(result)))
        except OSError:
            pass  # a read-only or full disk costs speed, never the run


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _digest(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _to_json(result: FileResult) -> dict[str, Any]:
    return {
        "source_sha256": _sha256(result.original or ""),
        "depends": {path: _digest(path) for path in result.depends},
        "path": result.path,
        "encoding": result.encoding,
        "migrated": result.migrated if result.changed else None,
        "edits": [[e.code, e.line, e.message] for e in result.edits],
        "refusals": [[d.code, d.line, d.reason, d.hint] for d in result.refusals],
        "plans": [p.to_json() for p in result.plans],
        "notes": [[n.code, n.line, n.message] for n in result.notes],
        "components": [[c.rule, c.kind, c.cls, c.start_line, c.end_line, c.outcome, c.reason]
                       for c in result.components],
        "outside": [[o.code, o.line, o.message] for o in result.outside],
    }


def _from_json(data: dict[str, Any], text: str) -> FileResult:
    migrated = data["migrated"]
    return FileResult(
        path=data["path"], original=text, migrated=text if migrated is None else migrated,
        encoding=data["encoding"],
        edits=[Edit(*e) for e in data["edits"]],
        refusals=[Diagnostic(*d) for d in data["refusals"]],
        plans=[ClassPlan.from_json(p) for p in data["plans"]],
        notes=[Edit(*n) for n in data["notes"]],
        components=[ComponentOutcome(*c) for c in data["components"]],
        outside=[Edit(*o) for o in data["outside"]],
        depends=sorted(data["depends"]),
    )
