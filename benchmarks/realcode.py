"""Score tf-migrate against hand-written ground truth on real (third-party) transformer code.

The ground truth lives in benchmarks/realcode/manifest/<owner>__<name>.md (format: see
benchmarks/realcode/MANIFEST.md); the corpus itself is never committed: each repository is
extracted at its recorded commit into CORPUS_DIR/<owner>__<name>/.

    python benchmarks/realcode.py CORPUS_DIR [--manifest-dir D] [--tf-migrate "CMD"]
        [--out benchmarks/results/realcode.md] [--label before] [--no-numeric] [--repos a,b]
    python benchmarks/realcode.py --index      # regenerate benchmarks/realcode/REPOS.md

Stdlib only. A missing or empty CORPUS_DIR prints one line and exits 0 (CI has no network).
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import json
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
DEFAULT_MANIFEST_DIR = HERE / "realcode" / "manifest"
REPOS_DIR = HERE / "realcode" / "repos"
REPOS_MD = HERE / "realcode" / "REPOS.md"
DEFAULT_OUT = HERE / "results" / "realcode.md"

RULES = ("TFM101", "TFM102", "TFM201", "TFM301", "TFM401")
EXACT_RULES = ("TFM101", "TFM102")
VERDICTS = ("migrate", "refuse", "modern", "lookalike")
COLUMNS = ("id", "rule", "file", "lines", "symbol", "verdict", "reason")
HEADER_FIELDS = ("commit", "paths", "style", "status")
TIMEOUT_S = 300

# Scores, in the order reports list them.
SCORES = ("migrated and proven", "migrated", "refused (expected)", "refused (should migrate)",
          "modern ok", "lookalike ok", "called modern", "not understood", "noise", "silent", "WRONG")


class ManifestError(ValueError):
    """A ground-truth file that does not follow the format."""


@dataclass
class Row:
    id: str
    rule: str
    file: str
    lines: list[tuple[int, int]]
    symbol: str
    verdict: str
    reason: str
    line_no: int = 0  # line of the row in the manifest file

    def covers(self, line: int) -> bool:
        return any(a <= line <= b for a, b in self.lines)

    def overlaps(self, start: int, end: int) -> bool:
        return any(a <= end and start <= b for a, b in self.lines)


@dataclass
class Manifest:
    path: Path
    repo: str
    commit: str
    paths: list[str]
    style: str
    status: str
    rows: list[Row] = field(default_factory=list)
    build: dict[str, str] | None = None

    @property
    def folder(self) -> str:
        return self.repo.replace("/", "__")

    @property
    def dropped(self) -> bool:
        return self.status.startswith("dropped")


# ---------------------------------------------------------------- manifest parsing

_HEADER_RE = re.compile(r"^-\s+(\w+):\s*(.*?)\s*$")
_RANGE_RE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_ranges(text: str) -> list[tuple[int, int]]:
    ranges = []
    for part in text.split(","):
        part = part.strip()
        m = _RANGE_RE.match(part)
        if not m:
            raise ManifestError(f"bad line range {part!r} (want N or N-M, comma separated)")
        a = int(m.group(1))
        b = int(m.group(2) or a)
        if a < 1 or b < a:
            raise ManifestError(f"bad line range {part!r} (start must be >= 1 and <= end)")
        ranges.append((a, b))
    if not ranges:
        raise ManifestError("empty line range")
    return ranges


def _cells(line: str) -> list[str]:
    body = line.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|"):
        body = body[:-1]
    return [c.strip() for c in body.split("|")]


def parse_manifest(path: Path) -> Manifest:
    """Parse and validate one ground-truth file; raise ManifestError naming the line."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.splitlines()

    def fail(n: int, msg: str) -> ManifestError:
        return ManifestError(f"{path}:{n}: {msg}")

    title = next(((i, l) for i, l in enumerate(lines, 1) if l.strip()), (1, ""))
    if not title[1].startswith("# "):
        raise fail(title[0], "first line must be `# owner/name`")
    repo = title[1][2:].strip()
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo):
        raise fail(title[0], f"bad repository name {repo!r}")
    if Path(path).stem != repo.replace("/", "__"):
        raise fail(title[0], f"file name must be {repo.replace('/', '__')}.md")

    header: dict[str, str] = {}
    rows: list[Row] = []
    build: dict[str, str] | None = None
    table_seen = False
    i = 0
    while i < len(lines):
        n, line = i + 1, lines[i]
        m = _HEADER_RE.match(line)
        if m and not table_seen and m.group(1) in HEADER_FIELDS:
            header[m.group(1)] = re.sub(r"\s{2,}\(.*\)$", "", m.group(2)).strip()
        elif line.strip().startswith("|") and not table_seen:
            table_seen = True
            cols = [c.lower() for c in _cells(line)]
            if tuple(cols) != COLUMNS:
                raise fail(n, f"table columns must be {' | '.join(COLUMNS)}, got {' | '.join(cols)}")
            i += 1
            if i >= len(lines) or not re.fullmatch(r"\|?(\s*:?-{3,}:?\s*\|)+\s*:?-*:?\s*\|?", lines[i].strip()):
                raise fail(i + 1, "table header must be followed by a |---| separator line")
            i += 1
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_parse_row(lines[i], i + 1, fail))
                i += 1
            continue
        elif line.strip().startswith("```build"):
            build = {}
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                key, sep, value = lines[i].partition(":")
                if lines[i].strip():
                    if not sep or key.strip() not in ("entry", "build", "input"):
                        raise fail(i + 1, "build block lines are `entry:`, `build:` or `input:`")
                    build[key.strip()] = value.strip()
                i += 1
            if "entry" not in build or "build" not in build:
                raise fail(n, "build block needs `entry:` and `build:`")
        i += 1

    for key in HEADER_FIELDS:
        if key not in header:
            raise fail(1, f"missing header field `- {key}:`")
    if not re.fullmatch(r"[0-9a-f]{40}", header["commit"]):
        raise fail(1, f"commit must be 40 lowercase hex digits, got {header['commit']!r}")
    status = header["status"]
    if not (status == "studied" or re.fullmatch(r"dropped:\s*\S.*", status)):
        raise fail(1, f"status must be `studied` or `dropped: <why>`, got {status!r}")
    if status.startswith("dropped") and rows:
        raise fail(1, "a dropped repository has no table")
    if status == "studied" and not table_seen:
        raise fail(1, "a studied repository needs a table (it may have no rows only if nothing applies)")
    seen: dict[str, int] = {}
    for row in rows:
        if row.id in seen:
            raise fail(row.line_no, f"duplicate id {row.id!r} (first at line {seen[row.id]})")
        seen[row.id] = row.line_no
    paths = [p.strip() for p in header["paths"].split(",") if p.strip()]
    return Manifest(Path(path), repo, header["commit"], paths, header["style"], status, rows, build)


def _parse_row(line: str, n: int, fail) -> Row:
    cells = _cells(line)
    if len(cells) != len(COLUMNS):
        # a reason may contain `|` only if escaped; anything else is an error
        raise fail(n, f"row has {len(cells)} cells, want {len(COLUMNS)}")
    rid, rule, file, lines, symbol, verdict, reason = cells
    if not re.fullmatch(r"[\w.-]+", rid):
        raise fail(n, f"bad id {rid!r}")
    if rule not in RULES:
        raise fail(n, f"unknown rule {rule!r} (want one of {', '.join(RULES)})")
    if not file or file.startswith("/") or ".." in Path(file).parts:
        raise fail(n, f"file must be relative to the repository root, got {file!r}")
    if verdict not in VERDICTS:
        raise fail(n, f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
    if not symbol:
        raise fail(n, "empty symbol")
    if not reason:
        raise fail(n, "empty reason")
    try:
        ranges = parse_ranges(lines)
    except ManifestError as exc:
        raise fail(n, str(exc)) from None
    return Row(rid, rule, file, ranges, symbol, verdict, reason, n)


def load_manifests(directory: Path) -> list[Manifest]:
    return [parse_manifest(p) for p in sorted(Path(directory).glob("*.md"))]


# ---------------------------------------------------------------- REPOS.md index

def write_index(manifest_dir: Path = DEFAULT_MANIFEST_DIR, repos_dir: Path = REPOS_DIR,
                target: Path = REPOS_MD) -> str:
    manifests = {m.repo: m for m in load_manifests(manifest_dir)}
    listed: dict[str, tuple[str, str, str, str]] = {}
    for lst in sorted(Path(repos_dir).glob("*.md")):
        for line in lst.read_text(encoding="utf-8").splitlines():
            cells = _cells(line) if line.strip().startswith("|") else []
            if len(cells) >= 4 and "/" in cells[0] and not set(cells[0]) <= set("-: "):
                if cells[0].lower() in ("owner/name", "repo"):
                    continue
                listed.setdefault(cells[0], (cells[1], cells[2], " | ".join(cells[3:]), lst.stem))
    out = ["# Real-code corpus: repositories studied", "",
           "Generated by `python benchmarks/realcode.py --index` from the headers of",
           "benchmarks/realcode/manifest/*.md and the lists in benchmarks/realcode/repos/*.md.",
           "Do not edit by hand.", "",
           "| repo | commit | paths | status | components | list |", "|---|---|---|---|---|---|"]
    for repo in sorted(set(manifests) | set(listed), key=str.lower):
        m = manifests.get(repo)
        lst = listed.get(repo)
        if m is not None:
            counts = _component_counts(m.rows)
            status = "kept" if not m.dropped else m.status
            out.append(f"| {repo} | {m.commit[:12]} | {', '.join(m.paths)} | {status} | {counts} | "
                       f"{lst[3] if lst else ''} |")
        else:
            commit, paths, status, who = lst
            out.append(f"| {repo} | {commit[:12]} | {paths} | {status} (no manifest) | | {who} |")
    text = "\n".join(out) + "\n"
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    Path(target).write_text(text, encoding="utf-8")
    return text


def _component_counts(rows: list[Row]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.rule] = counts.get(r.rule, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


# ---------------------------------------------------------------- running the tool

@dataclass
class ToolItem:
    rule: str
    file: str       # relative to the repository root
    start: int
    end: int
    outcome: str    # migrated | refused | modern | not-understood
    reason: str
    source: str     # "components" or "edits"/"refusals"/"notes"
    matched: bool = False


def run_tool(cmd: list[str], args: list[str], timeout: int = TIMEOUT_S) -> tuple[int | None, str, str]:
    try:
        proc = subprocess.run(cmd + args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "", f"timed out after {timeout} s"
    except OSError as exc:
        return None, "", f"could not start {cmd[0]}: {exc}"
    return proc.returncode, proc.stdout, proc.stderr


def _relative(path: str, repo_dir: Path) -> str:
    p = Path(path)
    try:
        return p.resolve().relative_to(repo_dir.resolve()).as_posix()
    except (ValueError, OSError):
        return p.as_posix()


def tool_items(document: dict, repo_dir: Path) -> tuple[list[ToolItem], list[str]]:
    """Outcomes from the tool's JSON: the census `components` list if present, else edits/refusals/notes."""
    items: list[ToolItem] = []
    errors: list[str] = []
    files = document.get("files", [])
    for f in files:
        for e in f.get("errors", []):
            errors.append(f"{_relative(f.get('path', '?'), repo_dir)}: {e}")
    census = list(document.get("components") or [])
    for f in files:
        for c in f.get("components") or []:
            census.append({"file": f.get("path"), **c})
    if census or "components" in document:
        for c in census:
            lines = c.get("lines") or [c.get("line", 0), c.get("line", 0)]
            start, end = int(lines[0]), int(lines[-1])
            items.append(ToolItem(c.get("rule", "?"), _relative(c.get("file", "?"), repo_dir), start, end,
                                  c.get("outcome", "?"), c.get("reason") or "", "components"))
        return items, errors
    for f in files:
        rel = _relative(f.get("path", "?"), repo_dir)
        for e in f.get("edits", []):
            items.append(ToolItem(e["code"], rel, e["line"], e["line"], "migrated", e.get("message", ""), "edits"))
        for r in f.get("refusals", []):
            items.append(ToolItem(r["code"], rel, r["line"], r["line"], "refused", r.get("reason", ""), "refusals"))
        for n in f.get("notes", []):
            items.append(ToolItem(n["code"], rel, n["line"], n["line"], "modern", n.get("message", ""), "notes"))
    return items, errors


def class_spans(source_path: Path) -> dict[str, tuple[int, int]]:
    """Top-level (and nested) class and function spans by name, for symbol-level matching."""
    try:
        tree = ast.parse(source_path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, SyntaxError, ValueError):
        return {}
    spans: dict[str, tuple[int, int]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            spans.setdefault(node.name, (start, node.end_lineno or node.lineno))
    return spans


_PRIORITY = {"migrated": 0, "refused": 1, "not-understood": 2, "modern": 3}


def match(rows: list[Row], items: list[ToolItem], repo_dir: Path) -> dict[str, list[ToolItem]]:
    """Per row id, the tool items on the same rule and file whose lines fall in the row's ranges.

    A row left without items then takes an unmatched item of its rule that lies inside the
    row's `symbol` (class or function) in that file: tools report a block at its class or
    `def` line, which a hand-written range may not include."""
    found: dict[str, list[ToolItem]] = {r.id: [] for r in rows}
    for row in rows:
        for it in items:
            if it.rule == row.rule and it.file == row.file and row.overlaps(it.start, it.end):
                found[row.id].append(it)
                it.matched = True
    spans_cache: dict[str, dict[str, tuple[int, int]]] = {}
    for row in rows:
        if found[row.id]:
            continue
        spans = spans_cache.setdefault(row.file, class_spans(repo_dir / row.file))
        span = spans.get(row.symbol)
        if not span:
            continue
        for it in items:
            if (not it.matched and it.rule == row.rule and it.file == row.file
                    and span[0] <= it.start <= span[1]):
                found[row.id].append(it)
        for it in found[row.id]:
            it.matched = True
    for v in found.values():
        v.sort(key=lambda it: (_PRIORITY.get(it.outcome, 9), it.start))
    return found


def score(verdict: str, outcome: str | None, reason: str = "") -> str:
    if outcome == "migrated":
        return "migrated" if verdict == "migrate" else "WRONG"
    if outcome == "not-understood":
        return "noise" if verdict == "lookalike" else "not understood"
    if outcome == "refused":
        return {"migrate": "refused (should migrate)", "refuse": "refused (expected)"}.get(verdict, "noise")
    if outcome == "modern":
        return {"modern": "modern ok", "lookalike": "noise"}.get(verdict, "called modern")
    # nothing
    return {"modern": "modern ok", "lookalike": "lookalike ok"}.get(verdict, "silent")


# ---------------------------------------------------------------- numeric check

def numeric_check(cmd: list[str], repo_dir: Path, build: dict[str, str]) -> tuple[str, str]:
    """Migrate the exact rules into a temporary copy and run `verify`; (status, detail)."""
    with tempfile.TemporaryDirectory(prefix="realcode-") as tmp:
        after = Path(tmp) / repo_dir.name
        plan = Path(tmp) / "plan.json"
        rc, out, err = run_tool(cmd, [str(repo_dir), "--select", "exact", "--output-dir", str(after),
                                      "--plan", str(plan), "--no-cache", "--format", "json"])
        if rc is None or rc not in (0, 1, 2) or not plan.exists():
            return "could not run", _first_line(err or out or f"migrate exited {rc}")
        args = ["verify", str(repo_dir), str(after), "--entry", build["entry"], "--build", build["build"],
                "--plan", str(plan), "--format", "json"]
        if build.get("input"):
            args += ["--input", build["input"]]
        rc, out, err = run_tool(cmd, args)
        if rc is None:
            return "could not run", err
        try:
            doc = json.loads(out)
        except json.JSONDecodeError:  # the reason, not verify's opening notice that it runs the code
            err = "\n".join(line for line in err.splitlines() if not line.startswith("note: verify executes"))
            return "could not run", _first_line(err or out or f"verify exited {rc}")
        if doc.get("verified"):
            return "verified", ", ".join(f"{k} ({v})" for k, v in (doc.get("rules") or {}).items())
        return "not verified", _first_line("; ".join(doc.get("failures") or []) or err)


def _first_line(text: str) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


# ---------------------------------------------------------------- scoring a corpus

@dataclass
class Result:
    repo: str
    id: str
    rule: str
    file: str
    symbol: str
    verdict: str
    score: str
    outcome: str | None
    tool_line: int | None
    tool_reason: str
    all_outcomes: list[str]
    expected: str = ""


def score_repo(cmd: list[str], manifest: Manifest, repo_dir: Path, numeric: bool) -> dict:
    rc, out, err = run_tool(cmd, [str(repo_dir), "--select", "all", "--format", "json", "--no-cache"])
    info: dict = {"repo": manifest.repo, "commit": manifest.commit, "exit": rc, "errors": [],
                  "numeric": None, "results": [], "unlisted": []}
    if rc is None or rc not in (0, 1, 2):
        info["errors"].append(f"tool run failed (exit {rc}): {_first_line(err)}")
        document = {}
    else:
        try:
            document = json.loads(out)
        except json.JSONDecodeError:
            info["errors"].append(f"tool output is not JSON (exit {rc}): {_first_line(err or out)}")
            document = {}
    items, file_errors = tool_items(document, repo_dir)
    info["errors"] += file_errors
    found = match(manifest.rows, items, repo_dir)
    results = []
    for row in manifest.rows:
        its = found[row.id]
        best = its[0] if its else None
        results.append(Result(manifest.repo, row.id, row.rule, row.file, row.symbol, row.verdict,
                              score(row.verdict, best.outcome if best else None),
                              best.outcome if best else None, best.start if best else None,
                              best.reason if best else "",
                              [f"{it.outcome}@{it.start}" for it in its], row.reason))
    if numeric and manifest.build and any(r.score == "migrated" and r.rule in EXACT_RULES for r in results):
        status, detail = numeric_check(cmd, repo_dir, manifest.build)
        info["numeric"] = {"status": status, "detail": detail}
        if status == "verified":
            for r in results:
                if r.score == "migrated" and r.rule in EXACT_RULES:
                    r.score = "migrated and proven"
    info["results"] = [asdict(r) for r in results]
    info["unlisted"] = [{"rule": it.rule, "file": it.file, "line": it.start, "outcome": it.outcome,
                         "reason": it.reason} for it in items if not it.matched]
    info["census"] = census_counts(items)
    return info


CENSUS_OUTCOMES = ("migrated", "refused", "modern", "not-understood")


def census_counts(items: list[ToolItem]) -> dict[str, int]:
    """The tool's census components (matched to the ground truth or not), counted per outcome."""
    components = [it for it in items if it.source == "components"]
    return {"found": len(components), **{o: sum(it.outcome == o for it in components) for o in CENSUS_OUTCOMES}}


def census_share(repos: list[dict]) -> str:
    """One line: the components the census found over the corpus and the share not understood."""
    total = {key: sum(i.get("census", {}).get(key, 0) for i in repos) for key in ("found", *CENSUS_OUTCOMES)}
    return (f"Census: {total['found']} components found: {total['migrated']} migrated, {total['refused']} refused, "
            f"{total['modern']} modern, not understood {_pct(total['not-understood'], total['found'])}.")


def recall(results: list[dict]) -> dict:
    target = [r for r in results if r["verdict"] in ("migrate", "refuse")]
    recognised = [r for r in target if r["outcome"] in ("migrated", "refused", "modern")
                  or (r["outcome"] == "not-understood" and r["tool_reason"].strip())]
    migrate = [r for r in results if r["verdict"] == "migrate"]
    migrated = [r for r in migrate if r["score"] in ("migrated", "migrated and proven")]
    return {"components": len(results), "target": len(target), "recognised": len(recognised),
            "migrate_verdicts": len(migrate), "migrated": len(migrated),
            "proven": sum(r["score"] == "migrated and proven" for r in migrate),
            "silent": sum(r["score"] == "silent" for r in results),
            "wrong": sum(r["score"] == "WRONG" for r in results)}


def _pct(a: int, b: int) -> str:
    return f"{a}/{b} ({100 * a / b:.0f} %)" if b else "0/0"


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def report(repos: list[dict], label: str, tool_commit: str) -> str:
    results = [r for info in repos for r in info["results"]]
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## {label}: {now}, tf-migrate {tool_commit}", "",
             f"Repositories: {', '.join(i['repo'] for i in repos) or 'none'}.", ""]
    total = recall(results)
    lines += ["| rule | components | recognised (of migrate/refuse) | migrated (of migrate) | proven | silent | WRONG |",
              "|---|---|---|---|---|---|---|"]
    for rule in RULES + ("all",):
        rs = results if rule == "all" else [r for r in results if r["rule"] == rule]
        if not rs:
            continue
        rc = recall(rs)
        lines.append(f"| {rule} | {rc['components']} | {_pct(rc['recognised'], rc['target'])} | "
                     f"{_pct(rc['migrated'], rc['migrate_verdicts'])} | {rc['proven']} | {rc['silent']} | "
                     f"{rc['wrong']} |")
    lines += ["", "Counts per score:", "", "| rule | " + " | ".join(SCORES) + " |",
              "|---" * (len(SCORES) + 1) + "|"]
    for rule in RULES:
        rs = [r for r in results if r["rule"] == rule]
        if rs:
            lines.append(f"| {rule} | " + " | ".join(str(sum(r["score"] == s for r in rs) or "")
                                                     for s in SCORES) + " |")
    lines += ["", f"Overall: recognised {_pct(total['recognised'], total['target'])}, migrated "
              f"{_pct(total['migrated'], total['migrate_verdicts'])}, silent {total['silent']}, "
              f"WRONG {total['wrong']}.", "", census_share(repos), ""]
    numeric = [(i["repo"], i["numeric"]) for i in repos if i["numeric"]]
    if numeric:
        lines += ["Numeric checks (exact rules, checkpoint converted through the plan):", ""]
        lines += [f"- {repo}: {n['status']}" + (f" ({_cell(n['detail'], 200)})" if n["detail"] else "")
                  for repo, n in numeric]
        lines.append("")
    errs = [(i["repo"], e) for i in repos for e in i["errors"]]
    if errs:
        lines += ["Tool errors:", ""] + [f"- {repo}: {_cell(e, 200)}" for repo, e in errs] + [""]
    lines += ["Per component (the ground truth's reason beside the tool's, to check refusals by hand):", "",
              "| repo | id | rule | verdict | outcome | tool line | tool reason | ground truth |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['repo']} | {r['id']} | {r['rule']} | {r['verdict']} | {r['score']} | "
                     f"{r['tool_line'] or ''} | {_cell(r['tool_reason'])} | {_cell(r.get('expected', ''), 100)} |")
    unlisted = [(i["repo"], u) for i in repos for u in i["unlisted"]]
    if unlisted:
        lines += ["", "Unlisted tool outcomes (a false positive, or a gap in the ground truth):", "",
                  "| repo | rule | file | line | outcome | reason |", "|---|---|---|---|---|---|"]
        lines += [f"| {repo} | {u['rule']} | {u['file']} | {u['line']} | {u['outcome']} | {_cell(u['reason'])} |"
                  for repo, u in unlisted]
    return "\n".join(lines) + "\n"


def _git(*args: str, where: Path = PROJECT) -> str:
    try:
        return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _tool_checkout(cmd: list[str]) -> Path:
    """The checkout whose tf_migrate the command runs (`--tf-migrate` may name another one)."""
    if len(cmd) >= 3 and cmd[1:3] == ["-m", "tf_migrate"]:
        try:
            found = subprocess.run([cmd[0], "-c", "import tf_migrate; print(tf_migrate.__file__)"],
                                   capture_output=True, text=True, timeout=60).stdout.strip()
            if found:
                return Path(found).resolve().parent.parent
        except (OSError, subprocess.TimeoutExpired):
            pass
    return PROJECT


def tool_commit(cmd: list[str]) -> str:
    """HEAD of the tool's checkout, and the last commit that touched its own code if it differs."""
    where = _tool_checkout(cmd)
    head = _git("rev-parse", "--short", "HEAD", where=where) or "unknown"
    code = _git("log", "-1", "--format=%h", "--", "migrate", "rules", "pyproject.toml", where=where)
    dirty = _git("status", "--porcelain", "--", "migrate", "rules", where=where)
    text = head if not code or code == head else f"{head} (tool code at {code})"
    return text + (" + uncommitted changes" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus_dir", nargs="?", type=Path)
    ap.add_argument("--manifest-dir", type=Path, default=DEFAULT_MANIFEST_DIR)
    ap.add_argument("--tf-migrate", dest="cmd", default=None,
                    help='command to run the tool (default: "python -m tf_migrate" with this interpreter)')
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--label", default="run")
    ap.add_argument("--no-numeric", action="store_true")
    ap.add_argument("--repos", default="", help="comma-separated owner/name or owner__name to score")
    ap.add_argument("--index", action="store_true", help="regenerate benchmarks/realcode/REPOS.md and exit")
    args = ap.parse_args(argv)

    if args.index:
        write_index(args.manifest_dir)
        print(f"wrote {REPOS_MD}")
        return 0
    corpus = args.corpus_dir
    if corpus is None or not corpus.is_dir() or not any(corpus.iterdir()):
        print(f"realcode: corpus folder {corpus} is absent or empty; nothing to score")
        return 0
    cmd = shlex.split(args.cmd) if args.cmd else [sys.executable, "-m", "tf_migrate"]
    wanted = {w.strip().replace("/", "__") for w in args.repos.split(",") if w.strip()}
    manifests = [m for m in load_manifests(args.manifest_dir) if not m.dropped
                 and (not wanted or m.folder in wanted) and (corpus / m.folder).is_dir()]
    if not manifests:
        print(f"realcode: no manifest matches a folder in {corpus}; nothing to score")
        return 0
    rc, _, err = run_tool(cmd, ["--version"], timeout=120)
    if rc != 0:
        print(f"realcode: the tool does not run ({' '.join(cmd)} --version exits {rc}): {_first_line(err)}",
              file=sys.stderr)
        return 2
    repos = []
    for m in manifests:
        print(f"realcode: {m.repo} ...", file=sys.stderr, flush=True)
        repos.append(score_repo(cmd, m, corpus / m.folder, not args.no_numeric))
    commit = tool_commit(cmd)
    text = report(repos, args.label, commit)
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = out.read_text(encoding="utf-8") if out.exists() else "# Real-code benchmark\n\n"
    out.write_text(previous.rstrip("\n") + "\n\n" + text, encoding="utf-8")
    raw = out.with_suffix(".json")
    runs = json.loads(raw.read_text(encoding="utf-8")) if raw.exists() else []
    runs.append({"label": args.label, "tool_commit": commit,
                 "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "summary": recall([r for i in repos for r in i["results"]]),
                 "census": {key: sum(i["census"][key] for i in repos) for key in ("found", *CENSUS_OUTCOMES)},
                 "repos": repos})
    raw.write_text(json.dumps(runs, indent=2) + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
