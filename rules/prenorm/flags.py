"""Blocks whose norm position is a constructor flag (`normalize_before`): a note, or with
`prenorm.flags=flip` the flag's default turned to True where `__init__` defines it."""

from __future__ import annotations

import libcst as cst

from tf_migrate.analysis.names import self_attribute
from tf_migrate.analysis.nodes import find
from tf_migrate.engine.rule import Finding, Fix, Note
from tf_migrate.plan import ClassPlan


def flag_finding(ctx, cls, chosen, code: str, flip: bool) -> Finding:
    flag = chosen.flag
    param = _defining_parameter(cls, flag)
    where = (f"its default is `{param.name.value}={ctx.code(param.default)}` in `__init__`" if param is not None
             else "its value comes from the caller")
    if flip and param is not None and _literal(param.default, "False"):
        plan = ClassPlan(ctx.path, cls.qualname, [code])
        return Fix(ctx.line(param), f"{cls.qualname}: default of `{param.name.value}` -> True (pre-norm); "
                   "no final norm is added: check that the model norms the last block's output when "
                   "the flag is on; fine-tune the migrated model before use",
                   {param.default: cst.Name("True")}, plans=[plan])
    hint = ("`--option prenorm.flags=flip` turns that default to True" if param is not None
            and _literal(param.default, "False") else "set it where the block is built")
    return Note(chosen.line, f"{cls.qualname}: pre-norm is available: {chosen.reason} ({where}; {hint})")


def _defining_parameter(cls, flag: str) -> cst.Param | None:
    """The `__init__` parameter that `self.<flag> = <param>` copies, when it has a default."""
    init = cls.methods.get("__init__")
    if init is None:
        return None
    params = {p.name.value: p for p in init.params.params + init.params.kwonly_params}
    values = [small.value for line in find(cls.node, lambda n: isinstance(n, cst.SimpleStatementLine))
              for small in line.body if isinstance(small, cst.Assign)
              and any(self_attribute(t.target) == flag for t in small.targets)]
    if len(values) == 1 and isinstance(values[0], cst.Name) and values[0].value in params:
        param = params[values[0].value]
        return param if param.default is not None else None
    return None


def _literal(node, value: str) -> bool:
    return isinstance(node, cst.Name) and node.value == value
