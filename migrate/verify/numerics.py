"""Output comparison in eval mode, in float32 and float64.

Fully masked rows: with a `-inf` fill the original gives NaN there, SDPA with a boolean mask
gives zeros. Positions where the ORIGINAL output is not finite are excluded and counted (the
report says how many). A `-1e9` fill gives a finite average of v in a fully masked row, which
cannot be told apart from a real row without knowing the mask: inputs should leave every query
row at least one visible key (the inferred inputs and the fixture manifest do).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tf_migrate.verify.inputs import cast_floats, tensors
from torch import nn

# float64 must agree far more tightly than float32; the user's --rtol/--atol are for float32.
FLOAT64_FACTOR = 1e-5


@dataclass
class Comparison:
    dtype: str
    input_index: int
    max_abs: float
    max_rel: float
    excluded: int  # output positions left out because the original is not finite there
    ok: bool
    problem: str = ""


def tolerances(dtype: torch.dtype, rtol: float, atol: float) -> tuple[float, float]:
    return (rtol, atol) if dtype == torch.float32 else (rtol * FLOAT64_FACTOR, atol * FLOAT64_FACTOR)


@torch.no_grad()
def compare_outputs(before: nn.Module, after: nn.Module, args: tuple, dtype: torch.dtype,
                    index: int, rtol: float, atol: float, float32_tolerances: bool = False) -> Comparison:
    """`float32_tolerances`: the original itself rounds to float32 somewhere (verify/precision.py)."""
    args = cast_floats(args, dtype)
    name = str(dtype).replace("torch.", "")
    old = tensors(before(*args))  # if the original cannot run on these inputs, the caller says so
    try:
        new = tensors(after(*args))
    except Exception as exc:  # noqa: BLE001 - a migrated model that crashes is a verification failure
        return Comparison(name, index, float("inf"), float("inf"), 0, False, f"the migrated model raised {exc!r}")
    rtol, atol = tolerances(torch.float32 if float32_tolerances else dtype, rtol, atol)
    return compare_tensor_lists(old, new, rtol, atol, name, index)


def compare_tensor_lists(old: list, new: list, rtol: float, atol: float, name: str = "", index: int = 0) -> Comparison:
    if len(old) != len(new) or any(a.shape != b.shape for a, b in zip(old, new)):
        shapes = ([tuple(t.shape) for t in old], [tuple(t.shape) for t in new])
        return Comparison(name, index, float("inf"), float("inf"), 0, False, f"output shapes differ: {shapes}")
    max_abs = max_rel = 0.0
    excluded, ok, problem = 0, True, ""
    for a, b in zip(old, new):
        if not a.is_floating_point():
            ok = ok and torch.equal(a, b)
            continue
        keep = torch.isfinite(a)
        excluded += int((~keep).sum())
        a, b = a[keep].double(), b[keep].double()
        if not torch.isfinite(b).all():
            ok, problem = False, "the migrated output is not finite where the original is"
            continue
        diff = (a - b).abs()
        if diff.numel():
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float((diff / a.abs().clamp_min(1e-12)).max()))
            ok = ok and bool((diff <= atol + rtol * a.abs()).all())
    return Comparison(name, index, max_abs, max_rel, excluded, ok, problem)


@torch.no_grad()
def check_outputs_sane(before: nn.Module, after: nn.Module, args: tuple, index: int) -> Comparison:
    """For compatible/retrain rules: same shapes and dtypes, finite; the difference is expected."""
    old, new = tensors(before(*args)), tensors(after(*args))
    same = len(old) == len(new) and all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(old, new))
    finite = all(torch.isfinite(t).all() for t in new if t.is_floating_point())
    diff = max((float((a.double() - b.double()).abs().max()) for a, b in zip(old, new)
                if same and a.is_floating_point() and a.numel()), default=0.0)
    problem = "" if same and finite else ("output shapes/dtypes differ" if not same else "output not finite")
    return Comparison("float32", index, diff, float("nan"), 0, same and finite, problem)
