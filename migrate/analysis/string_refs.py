"""String literals that name attributes: the contracts a rename breaks without a trace in the code.

Tensor-parallel plans (`{"attention.wq": ColwiseParallel()}`), `get_submodule("attention.wq")`,
LoRA target lists (`["wq", "wv"]`) and state_dict keys (`"layers.0.attention.wq.weight"`) name a
module's attributes in strings. A string names an attribute when one of its dot-separated
segments is that name; prose never does (`"the wq projection"` is one segment).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator

import libcst as cst


if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext


def naming_strings(ctx: "FileContext", names: Iterable[str]) -> Iterator[tuple[cst.CSTNode, str]]:
    """(string node, the name it holds) for every literal of this file that names one of `names`:
    plain strings, and the literal parts of f-strings (`f"layers.{i}.wq"`)."""
    wanted = set(names)
    strings, holding = ctx.memo("string_refs.segments", lambda: _segments(ctx))
    for at in sorted({at for name in wanted for at in holding.get(name, ())}):
        node, texts = strings[at]
        for segments in texts:
            hit = next((segment for segment in segments if segment in wanted), None)
            if hit is not None:
                yield node, hit
                break


def _segments(ctx: "FileContext") -> tuple[list, dict[str, list[int]]]:
    """The file's string literals in source order, each with its literal texts split at dots, and
    the literals (by their place in that list) that hold each segment: one evaluation of every
    literal per file version, not one per question."""
    strings, holding = [], {}
    for node in ctx.index.of_type(ctx.module, (cst.SimpleString, cst.FormattedString)):
        texts = [text.split(".") for text in _literal_texts(node)]
        for segment in {segment for segments in texts for segment in segments}:
            holding.setdefault(segment, []).append(len(strings))
        strings.append((node, texts))
    return strings, holding


def _literal_texts(node: cst.CSTNode) -> list[str]:
    if isinstance(node, cst.SimpleString):
        value = node.evaluated_value
        return [value] if isinstance(value, str) else []
    if isinstance(node, cst.FormattedString):
        return [part.value for part in node.parts if isinstance(part, cst.FormattedStringText)]
    return []
