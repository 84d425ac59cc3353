"""`# tf-migrate: skip` and `# tf-migrate: skip[TFM101, TFM2]` comments.

On a class or def line (or on the comment line right above it) the comment covers the whole
definition; on any other line it covers the statement on that line.
"""

from __future__ import annotations

import io
import re
import tokenize

_SKIP = re.compile(r"#\s*tf-migrate:\s*skip(?:\[(?P<codes>[A-Za-z0-9_,\s-]+)\])?")
ALL = "*"


def skip_comments(text: str) -> dict[int, frozenset[str]]:
    """Line number -> the codes (or ALL) that a skip comment on that line turns off."""
    found: dict[int, frozenset[str]] = {}
    if "tf-migrate" not in text:
        return found
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type != tokenize.COMMENT:
                continue
            match = _SKIP.search(token.string)
            if match:
                codes = match.group("codes")
                found[token.start[0]] = (
                    frozenset(c.strip().upper() for c in codes.split(",") if c.strip())
                    if codes else frozenset({ALL})
                )
    except (tokenize.TokenError, SyntaxError):
        pass
    return found


def covers(codes: frozenset[str], rule_code: str) -> bool:
    return ALL in codes or any(rule_code.startswith(code) for code in codes)
