"""Reading einsum specs of attention: which operand index is batch, sequence, or head dim."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Spec:
    inputs: tuple[str, ...]
    output: str


def parse(spec: str) -> Spec | None:
    """`"bhid,bhjd->bhij"` -> Spec; `...` is kept as one symbol `.`; implicit output unsupported."""
    spec = spec.replace(" ", "").replace("...", ".")
    if "->" not in spec:
        return None
    left, output = spec.split("->")
    inputs = tuple(left.split(","))
    terms = (*inputs, output)
    if not all(term.replace(".", "").isalpha() for term in terms if term):
        return None
    if any(len(set(term)) != len(term) for term in terms):
        return None  # repeated index (a diagonal): not attention
    return Spec(inputs, output)


@dataclass(frozen=True)
class Scores:
    """`q, k -> scores`: scores are `batch + query + key`, contracting `dim`."""

    batch: str
    query: str
    key: str
    dim: str
    q_order: tuple[int, ...]  # permutation taking q to (batch..., query, dim)
    k_order: tuple[int, ...]


def scores(spec: Spec) -> Scores | None:
    if len(spec.inputs) != 2:
        return None
    q, k = spec.inputs
    out = spec.output
    contracted = [c for c in q if c in k and c not in out]
    if len(contracted) != 1 or len(out) < 2:
        return None
    query, key = out[-2], out[-1]
    batch = out[:-2]
    if query not in q or query in k or key not in k or key in q:
        return None
    if set(q) != set(batch) | {query, contracted[0]} or set(k) != set(batch) | {key, contracted[0]}:
        return None
    dim = contracted[0]
    found = Scores(batch, query, key, dim,
                   tuple(q.index(c) for c in batch + query + dim),
                   tuple(k.index(c) for c in batch + key + dim))
    return None if _moves_ellipsis(spec, found.q_order, found.k_order) else found


@dataclass(frozen=True)
class Product:
    """`probs, v -> out`, probs laid out as `batch + query + key` by position."""

    v_order: tuple[int, ...]  # permutation taking v to (batch..., key, value_dim)
    out_order: tuple[int, ...]  # permutation taking (batch..., query, value_dim) to the output


def product(spec: Spec, probs_rank: int) -> Product | None:
    if len(spec.inputs) != 2 or len(spec.inputs[0]) != probs_rank:
        return None
    p, v = spec.inputs
    out = spec.output
    batch, query, key = p[:-2], p[-2], p[-1]
    extra = [c for c in v if c not in p]
    if len(extra) != 1 or key in out or set(v) != set(batch) | {key, extra[0]}:
        return None
    canonical = batch + query + extra[0]
    if sorted(out) != sorted(canonical):
        return None
    found = Product(tuple(v.index(c) for c in batch + key + extra[0]),
                    tuple(canonical.index(c) for c in out))
    return None if _moves_ellipsis(spec, found.v_order, found.out_order) else found


def has_ellipsis(spec: Spec) -> bool:
    """`...` stands for any number of dimensions: positions in the spec are not tensor dims."""
    return any("." in term for term in (*spec.inputs, spec.output))


def _moves_ellipsis(spec: Spec, *orders: tuple[int, ...]) -> bool:
    """A permutation written for one `.` symbol would be wrong for the real number of dims."""
    return has_ellipsis(spec) and not all(is_identity(order) for order in orders)


def is_identity(order: tuple[int, ...]) -> bool:
    return order == tuple(range(len(order)))


def as_method(order: tuple[int, ...]) -> str:
    """The shortest tensor method that applies `order`: `.transpose(1, 2)` or `.permute(...)`."""
    moved = [i for i, j in enumerate(order) if i != j]
    if len(moved) == 2:
        return f".transpose({moved[0]}, {moved[1]})"
    return ".permute(" + ", ".join(map(str, order)) + ")"
