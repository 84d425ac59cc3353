"""What a rule is, and the data it hands back to the engine.

A rule never edits text: it returns `Fix`es (node replacements plus checkpoint-plan entries) and
`Refusal`s. The engine applies the fixes, checks the result still parses and compiles, and reports.
"""

from __future__ import annotations

import enum
import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator, Mapping

if TYPE_CHECKING:

    from tf_migrate.engine.context import FileContext
    from tf_migrate.plan import ClassPlan


class Equivalence(str, enum.Enum):
    """How much of the user's model a rule keeps (see MIGRATION_GUIDE.md, equivalence classes)."""

    EXACT = "exact"
    COMPATIBLE = "compatible"
    RETRAIN = "retrain"


@dataclass
class Fix:
    """One accepted rewrite: which nodes change, what it means for checkpoints."""

    line: int
    message: str
    replacements: Mapping[Any, Any]  # cst node -> cst node | cst.RemovalSentinel
    plans: list["ClassPlan"] = field(default_factory=list)
    imports: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    maybe_unused_imports: list[tuple[str, str | None, str | None]] = field(default_factory=list)


@dataclass(frozen=True)
class Refusal:
    """A candidate the rule recognised but will not rewrite, with the reason and a way out."""

    line: int
    reason: str
    hint: str = ""


@dataclass(frozen=True)
class Note:
    """Something recognised and deliberately left alone (e.g. a block that is already modern)."""

    line: int
    message: str


Finding = Fix | Refusal | Note


@dataclass(frozen=True)
class Component:
    """A legacy construct the rule's census found, whatever the matcher made of it.

    `start_line`-`end_line` is where it is computed; `anchors` are other lines that belong to it
    (the constructors of its projections); `scopes` are the line ranges of the functions it lives
    in. The engine gives it the outcome of the rule's finding at one of its lines (see
    engine/census.py); `what` says what was found, for the "not understood" outcome.
    """

    rule: str
    kind: str
    cls: str
    start_line: int
    end_line: int
    what: str
    anchors: tuple[int, ...] = ()
    scopes: tuple[tuple[int, int], ...] = ()
    step: str = ""  # which step of the pattern the matcher is known not to follow, when known


class Rule:
    """Base class of every rule; subclasses register themselves by defining `code`."""

    code: ClassVar[str]
    name: ClassVar[str]
    equivalence: ClassVar[Equivalence]
    summary: ClassVar[str]
    # Words one of which must appear in a file's raw text for the rule to have a candidate.
    triggers: ClassVar[tuple[str, ...]]
    # Names of functions or methods a call to which makes the rule look at a file that defines no
    # nn.Module class (a module-level function another file's model calls); by default a rule
    # looks only inside modules.
    outside_modules: ClassVar[tuple[str, ...]] = ()
    # Also reads module-level functions: the rule runs on a file without any nn.Module class when
    # the file defines a function at its top level (attention written as a free function).
    free_functions: ClassVar[bool] = False
    # Per-rule options with their defaults; values come from config and the command line.
    options: ClassVar[Mapping[str, Any]] = {}
    example_before: ClassVar[str] = ""
    example_after: ClassVar[str] = ""

    registry: ClassVar[dict[str, type["Rule"]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:
            Rule.registry[cls.code] = cls

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.settings = {**self.options, **(options or {})}

    def check(self, ctx: "FileContext") -> Iterator[Finding]:
        raise NotImplementedError

    def census(self, ctx: "FileContext") -> Iterable[Component]:
        """Every legacy component of the rule's pattern in the file, found broadly (optional)."""
        return ()

    @classmethod
    def documentation(cls) -> str:
        return inspect.cleandoc(cls.__doc__ or "")
