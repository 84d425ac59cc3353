"""The census on real code: how many legacy components end in each outcome, and what it misses.

    python benchmarks/census.py REPORT.json [--manifest-dir D] [--root CORPUS_DIR] [--out FILE.md]

REPORT.json is `tf-migrate PATHS --select all --format json` over the corpus. With a manifest
folder (benchmarks/realcode/manifest on the corpus branches: one table per repository, rows
`| id | rule | file | lines | symbol | verdict | reason |`), each hand-found component is looked
up among the census components of its file and rule (overlapping lines): found, or missed; and
each census component is matched to a row or listed as found outside the manifest (extra).
Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

OUTCOMES = ("migrated", "refused", "modern", "not-understood")
_ROW = re.compile(r"^\|\s*(?P<id>[^|]+?)\s*\|\s*(?P<rule>TFM\d+)\s*\|\s*(?P<file>[^|]+?)\s*\|\s*"
                  r"(?P<lines>[^|]*?)\s*\|\s*(?P<symbol>[^|]*?)\s*\|\s*(?P<verdict>\w+)\s*\|")


def _ranges(text: str) -> list[tuple[int, int]]:
    found = []
    for part in re.split(r"[,\s]+", text):
        bounds = [int(n) for n in re.findall(r"\d+", part)]
        if bounds:
            found.append((bounds[0], bounds[-1]))
    return found


def manifest_rows(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("*.md")):
        for line in path.read_text(encoding="utf-8").splitlines():
            match = _ROW.match(line)
            if match:
                rows.append({**match.groupdict(), "repo": path.stem, "ranges": _ranges(match["lines"])})
    return rows


def _relative(path: str, root: Path | None) -> tuple[str, str]:
    """(repo folder, path inside it) of a reported file."""
    parts = Path(path).resolve().parts
    if root is not None:
        inner = Path(path).resolve().relative_to(root.resolve()).parts
        return inner[0], "/".join(inner[1:])
    return parts[0], "/".join(parts[1:])


def summarise(report: dict) -> tuple[dict, Counter]:
    table: dict[str, Counter] = {}
    reasons: Counter = Counter()
    for c in report["components"]:
        table.setdefault(c["rule"], Counter())[c["outcome"]] += 1
        if c["outcome"] != "migrated":
            reasons[(c["rule"], c["outcome"], re.sub(r"\d+", "N", c["reason"]))] += 1
    return table, reasons


def compare(report: dict, rows: list[dict], root: Path | None) -> dict:
    components = [{**c, "where": _relative(c["file"], root)} for c in report["components"]]
    found, missed, matched = [], [], set()
    for row in rows:
        if row["verdict"] not in ("migrate", "refuse"):
            continue
        hits = [i for i, c in enumerate(components)
                if c["rule"] == row["rule"] and c["where"] == (row["repo"], row["file"])
                and any(a <= c["lines"][1] + 2 and c["lines"][0] - 2 <= b for a, b in row["ranges"])]
        (found if hits else missed).append(row)
        matched.update(hits)
    lookalikes = [row for row in rows if row["verdict"] == "lookalike" and any(
        c["rule"] == row["rule"] and c["where"] == (row["repo"], row["file"])
        and any(a <= c["lines"][1] and c["lines"][0] <= b for a, b in row["ranges"]) for c in components)]
    extra = [c for i, c in enumerate(components) if i not in matched]
    return {"found": found, "missed": missed, "lookalikes_hit": lookalikes, "extra": extra}


def render(report: dict, comparison: dict | None) -> str:
    table, reasons = summarise(report)
    out = ["| rule | found | migrated | refused | already modern | not understood |", "|---|---:|---:|---:|---:|---:|"]
    total = Counter()
    for rule in sorted(table):
        counts = table[rule]
        total.update(counts)
        out.append(f"| {rule} | {sum(counts.values())} | " + " | ".join(str(counts[o]) for o in OUTCOMES) + " |")
    found = sum(total.values())
    out.append(f"| total | {found} | " + " | ".join(str(total[o]) for o in OUTCOMES) + " |")
    share = total["not-understood"] / found if found else 0.0
    out += ["", f"Components with no outcome: 0 (by construction). Not understood: "
            f"{total['not-understood']} of {found} ({share:.0%})."]
    outside = sum(v.get("outside-census", 0) for v in report["summary"].values())
    out.append(f"Fixes and refusals outside every component (census narrower than the matcher): {outside}.")
    out += ["", "| count | rule | outcome | reason (numbers folded) |", "|---:|---|---|---|"]
    for (rule, outcome, reason), n in sorted(reasons.items(), key=lambda t: (-t[1], t[0])):
        out.append(f"| {n} | {rule} | {outcome} | {reason.replace('|', '/')} |")
    if comparison is not None:
        out += ["", f"Against the hand-written manifests: {len(comparison['found'])} of "
                f"{len(comparison['found']) + len(comparison['missed'])} migrate/refuse rows found by the census; "
                f"{len(comparison['lookalikes_hit'])} look-alike rows hit; {len(comparison['extra'])} census "
                "components on no migrate/refuse row.", "", "Missed rows:", ""]
        out += [f"- {r['repo']} {r['id']} {r['rule']} {r['file']}:{r['lines']} ({r['verdict']})"
                for r in comparison["missed"]]
        out += ["", "Look-alike rows hit:", ""]
        out += [f"- {r['repo']} {r['id']} {r['rule']} {r['file']}:{r['lines']}" for r in comparison["lookalikes_hit"]]
        out += ["", "Census components on no migrate/refuse row:", ""]
        out += [f"- {'/'.join(c['where'])}:{c['lines'][0]}-{c['lines'][1]} {c['rule']} {c['kind']} "
                f"{c['class']} -> {c['outcome']}" for c in comparison["extra"]]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--manifest-dir", type=Path)
    parser.add_argument("--root", type=Path, help="the corpus folder the report's paths are under")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = json.loads(args.report.read_text(encoding="utf-8"))
    comparison = compare(report, manifest_rows(args.manifest_dir), args.root) if args.manifest_dir else None
    text = render(report, comparison)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    print(text, end="")


if __name__ == "__main__":
    main()
