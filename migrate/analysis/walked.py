"""Python `ast` subtrees in `ast.walk`'s order, as a list, without its generators.

`ast.walk` resumes two generators per node (its own and `ast.iter_child_nodes`, which resumes
`ast.iter_fields`); the census, the contracts and the rules' censuses walk whole modules and classes
with it. `walked` gives the same nodes in the same order (breadth first, children in field order)
from one loop over a growing list, about twice as fast. Nothing is remembered: a caller that asks
one subtree many questions keeps its own table (`census.Walker.attribute_reads`).
"""

from __future__ import annotations

import ast

_AST = ast.AST


def walked(node: ast.AST) -> list[ast.AST]:
    """`list(ast.walk(node))`."""
    order = [node]
    append = order.append
    for current in order:  # a list iterator sees what the loop appends: breadth first
        for name in current._fields:
            value = getattr(current, name, None)
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, _AST):
                        append(item)
            elif isinstance(value, _AST):
                append(value)
    return order
