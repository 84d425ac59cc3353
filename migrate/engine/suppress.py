"""Suppression comments: `# tf-migrate: skip`, `# tf-migrate: skip[TFM101, swiglu]`, and
`# tf-migrate: skip-file` / `# tf-migrate: skip-file[TFM2]` anywhere in a file.

On a class or def line (or on the comment line right above it) a skip covers the whole
definition; on any other line it covers the statement on that line. A rule is named by its code,
a code prefix, or its name. A skip that turns off nothing is reported (code TFM001), like ruff's
unused-noqa: it either names the wrong rule or outlived the code it was written for.
"""

from __future__ import annotations

import io
import re
import tokenize
from functools import lru_cache
from typing import Iterator, Sequence, TypeVar

_SKIP = re.compile(r"#\s*tf-migrate:\s*skip(?P<file>-file)?(?![\w-])(?:\[(?P<codes>[A-Za-z0-9_,\s-]+)\])?")
ALL = "*"
UNUSED = "TFM001"  # the code of an unused-suppression warning

T = TypeVar("T")


def _comments(text: str) -> Iterator[tuple[int, bool, frozenset[str]]]:
    """(line, whole file?, the rules named or {ALL}) for each skip comment."""
    if "tf-migrate" not in text:
        return
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type != tokenize.COMMENT:
                continue
            match = _SKIP.search(token.string)
            if match:
                codes = match.group("codes")
                named = frozenset(c.strip() for c in codes.split(",") if c.strip()) if codes else frozenset()
                yield token.start[0], bool(match.group("file")), named or frozenset({ALL})
    except (tokenize.TokenError, SyntaxError):
        return


def skip_comments(text: str) -> dict[int, frozenset[str]]:
    """Line number -> the rules (or ALL) that a statement/definition skip on that line turns off."""
    return {line: names for line, whole_file, names in _comments(text) if not whole_file}


@lru_cache(maxsize=1)
def _rule_index() -> tuple:
    from tf_migrate.engine.ruleindex import rule_index

    return tuple(rule_index())


def _rule_names() -> dict[str, str]:
    return {info.code: info.name for info in _rule_index()}


def _names(selector: str, rule_code: str) -> bool:
    return (selector == ALL or rule_code.startswith(selector.upper())
            or selector.lower() == _rule_names().get(rule_code))


def covers(codes: frozenset[str], rule_code: str) -> bool:
    return any(_names(selector, rule_code) for selector in codes)


def without_skipped_file(text: str, rules: Sequence[T]) -> list[T]:
    """The rules a `skip-file` comment leaves on."""
    if "skip-file" not in text:
        return list(rules)
    skipped = [names for _, whole_file, names in _comments(text) if whole_file]
    return [rule for rule in rules if not any(covers(names, rule.code) for names in skipped)]


def unused(text: str, used_lines: set[int], active: Sequence) -> Iterator[tuple[int, str]]:
    """(line, message) for each statement/definition skip that turned nothing off, and for each
    name in one that is no rule. A skip counts as unused only when every rule it names that could
    act on this file (one of its trigger words is in the text) ran and none needed it: a rule left
    out of this run's selection may need it in another run."""
    ran = {rule.code for rule in active}
    relevant = {info.code for info in _rule_index() if any(word in text for word in info.triggers)}
    for line, names in sorted(skip_comments(text).items()):
        unknown = sorted(n for n in names if n != ALL and not any(_names(n, code) for code in _rule_names()))
        if unknown:
            yield line, f"suppression names no rule: {', '.join(unknown)} (see `tf-migrate rules`)"
            continue
        if line in used_lines:
            continue
        could_act = {code for code in relevant if covers(names, code)}
        if could_act <= ran:
            what = "skip" if ALL in names else f"skip[{', '.join(sorted(names))}]"
            why = (f"{', '.join(sorted(could_act))} found nothing to skip" if could_act
                   else "no rule it names can act on this file")
            yield line, f"unused suppression: {what} turns off nothing here ({why})"
