"""TFM301: ReLU/GELU feed-forward -> SwiGLU (or GeGLU).

The package holds the rule (here) and its private machinery: `ffn_fixes` writes the gated FFN,
`gated` decides what cannot be gated. FFN recognition itself is shared (`tf_migrate.analysis.ffn`).
It imports `tf_migrate.analysis`, `engine.rule` and `plan`.
"""

from __future__ import annotations

from typing import Iterator

import libcst as cst

from tf_migrate.analysis import ffn as recognise
from tf_migrate.analysis.names import self_attribute
from tf_migrate.rules.swiglu.ffn_fixes import FixWriter
from tf_migrate.rules.swiglu.gated import Unsupported
from tf_migrate.engine.rule import Component, Equivalence, Finding, Refusal, Rule

_BUILTIN_REASON = (
    "{name} has no gated feed-forward: its FFN is linear1 -> activation -> linear2 inside torch, "
    "and activation='glu' is not SwiGLU (GLU halves the width, so linear2's shapes break)")


class FeedForwardToSwiGLU(Rule):
    """Replace a `lin2(drop(act(lin1(x))))` feed-forward with SwiGLU, `w2(drop(silu(w1(x)) * w3(x)))`.

    THE MODEL MUST BE FINE-TUNED OR RETRAINED AFTERWARDS: the new gate projection w3 starts from
    random weights, so the migrated model computes a different function from the old checkpoint.

    Why: gated linear units (SwiGLU in PaLM and LLaMA, GeGLU in T5 v1.1) train to a lower loss than
    ReLU/GELU feed-forwards at the same compute. `--ffn geglu` writes `gelu` instead of `silu`;
    `--ffn match` writes GeGLU where the original applied a GELU (any approximation) and SwiGLU
    elsewhere (a choice between ReLU and GELU counts as not GELU).

    Safety: retrain. Only the activation changes in `forward`: `act(lin1(x))` becomes
    `silu(lin1(x)) * lin3(x)`, so dropout and the second projection stay where they were. The
    FFN input is read twice, so it must be a plain name (or `self.x`); when statements rebind it
    (`x = self.fc1(x)`, `x = self.act(x)`), the gate goes where the first projection is read and
    the activation's statement goes. The activation is any spelling `analysis.activations` knows
    (functions, `h.relu()`, elementwise functions and classes of the file, `act_layer()`, a
    choice between two, a module-level table by config string). The projections are `nn.Linear`
    (also built by a Linear factory or a subclass that keeps nn.Linear's forward, called with
    nn.Linear's arguments: the gate is built by the same callee), or `nn.Conv1d` with kernel size 1 (and default stride, padding, dilation, groups): a Linear
    per position over channels, gated with a third 1x1 conv; their input may be a view of a name
    (`y.transpose(-1, 1)`), which the gate reads again. A block's attention may also be handed in
    by the caller (`self.attention = attention`, called in forward).
    Only FFNs in a transformer block are rewritten: the class holding the FFN holds an attention
    itself, or some function of the file builds it next to an attention (a block's `__init__`,
    a `make_model`). An attention is a class that calls softmax / SDPA / nn.MultiheadAttention,
    or a class named for attention that holds one, or a built `nn.MultiheadAttention`. MLP heads
    built next to an encoder stack are left alone, and so are chains whose second Linear does
    not map back to the first one's input width (`Linear(d, h)`, `Linear(h, n_classes)`; widths
    given as two arguments count as one when every call in the file passes the same value); an MLP
    head of width d -> d built directly next to an attention layer would be taken for an FFN
    (mark it `# tf-migrate: skip[TFM301]`).

    Checkpoint: with `hidden = "same"` (default) the first and second projections keep their
    names, shapes and keys (they map unchanged) and the gate projection is new: named `fc3` next
    to `fc1`/`fc2` (`w_3` next to `w_1`/`w_2`), otherwise `<first>_gate`, built like the first
    projection (plan init `default`: `tf-migrate convert --check-build` copies it from a freshly
    built migrated model, so nn.Linear's init or the model's own). An `nn.Sequential` FFN becomes
    a small `SwiGLUFeedForward` module inserted once per file, with `w1`/`w2`/`w3` children, so
    `mlp.0.*` is renamed to `mlp.w1.*` and `mlp.3.*` to `mlp.w2.*` (with a trailing Dropout the
    module is wrapped as `nn.Sequential(SwiGLUFeedForward(...), nn.Dropout(p))`: keys
    `mlp.0.w1.*`; a LayerNorm first in the Sequential stays first: `mlp.1.w1.*`). Raw parameters get a copy of the first weight's (and bias's) constructor.
    With `hidden = "param-matched"` the hidden size becomes 2/3 of the old one (truncated), rounded
    up to a multiple of `multiple-of` (default 8): nothing maps, every old FFN key is dropped and
    every new one listed with its shape.

    Refuses when: the FFN is a built-in `nn.TransformerEncoderLayer`/`DecoderLayer` or `nn.Transformer` (no gated
    FFN; activation="glu" is not SwiGLU); the FFN input is an expression; an intermediate value is read twice; a Linear's bias is not a literal; the
    sizes of the two projections disagree; the projections live in two modules; raw parameters
    with `param-matched`.
    """

    code = "TFM301"
    name = "swiglu"
    equivalence = Equivalence.RETRAIN
    summary = "ReLU/GELU feed-forward -> SwiGLU (or GeGLU); the model must be retrained"
    triggers = ("Linear", "Conv1d", "Parameter", "Transformer")
    options = {"ffn": "swiglu", "hidden": "same", "multiple-of": 8}
    example_before = "return self.fc2(self.drop(F.relu(self.fc1(x))))\n"
    example_after = (
        "# __init__: self.fc3 = nn.Linear(d_model, d_ff)   (new, random init)\n"
        "return self.fc2(self.drop(F.silu(self.fc1(x)) * self.fc3(x)))\n"
    )

    def __init__(self, options=None) -> None:
        super().__init__(options)
        problems = []
        if self.settings["ffn"] not in ("swiglu", "geglu", "match"):
            problems.append(f"ffn must be swiglu, geglu or match, not {self.settings['ffn']!r}")
        if self.settings["hidden"] not in ("same", "param-matched"):
            problems.append(f"hidden must be same or param-matched, not {self.settings['hidden']!r}")
        if not isinstance(self.settings["multiple-of"], int) or self.settings["multiple-of"] < 1:
            problems.append("multiple-of must be a positive integer")
        if problems:
            from tf_migrate.engine.run import UsageError

            raise UsageError("option swiglu." + "; ".join(problems))

    def census(self, ctx) -> Iterator[Component]:
        from tf_migrate.rules.swiglu.census import components

        return components(ctx, self.code)

    def check(self, ctx) -> Iterator[Finding]:
        for call in recognise.builtin_layers(ctx):
            if not ctx.suppressed(self.code, call):
                name = ctx.names.callee(call).replace("torch.", "", 1)
                yield Refusal(ctx.line(call), _BUILTIN_REASON.format(name=name),
                              "write the block by hand (attention + FFN), then rerun TFM301")
        attention = recognise.attention_classes(ctx)
        writer = FixWriter(ctx, self.code, self.settings)
        handled: set[str] = set()
        for cls in ctx.module_classes:
            if ctx.suppressed(self.code, cls.node) or not recognise.in_block(ctx, cls, attention):
                continue
            findings = list(self._class(ctx, cls, writer))
            if findings:
                handled.add(cls.qualname)
            yield from findings
        yield from self._replayed_elsewhere(ctx, handled)

    def _replayed_elsewhere(self, ctx, handled: set[str]) -> Iterator[Refusal]:
        """FFNs the census finds in classes the matcher did not read (layers it cannot resolve,
        `from layers import *`) whose class replays them in another method: refused for that."""
        from tf_migrate.rules.swiglu.census import components

        classes = {c.qualname: c for c in ctx.module_classes}
        for component in components(ctx, self.code):
            cls = classes.get(component.cls)
            if component.kind != "ffn" or cls is None or cls.qualname in handled or ctx.suppressed(self.code, cls.node):
                continue
            replay = _replay(ctx, cls)
            if replay is not None:
                handled.add(cls.qualname)
                yield _replay_refusal(component.start_line, replay)

    def _class(self, ctx, cls, writer: "FixWriter") -> Iterator[Finding]:
        chosen = _branch_built_layer_list(ctx, cls)
        if chosen is not None:
            yield chosen
            return
        temporal = recognise.temporal_conv(ctx, cls)
        if temporal is not None:
            kernel = f"`{ctx.code(temporal.kernel)}`" if temporal.kernel is not None else "not given"
            yield Refusal(temporal.line, f"`{temporal.first}` -> activation -> `{temporal.second}` are nn.Conv1d "
                          f"with a kernel size that is not provably 1 ({kernel}): a temporal convolution "
                          "mixes neighbouring positions, so this is not a position-wise feed-forward",
                          "gate it by hand if you want a gated conv block; TFM301 only gates position-wise FFNs")
            return
        claimed: set[int] = set()
        replay = _replay(ctx, cls)
        for method in cls.methods.values():
            try:
                found = list(recognise.feed_forwards(ctx, cls, method))
            except recognise.Refused as refusal:
                yield Refusal(refusal.line, refusal.reason, refusal.hint)
                continue
            for ffn in found:
                claimed.add(id(ffn.activation))
                if replay is not None and not ctx.suppressed(self.code, ffn.activation):
                    yield _replay_refusal(ctx.line(ffn.activation), replay)
                elif not ctx.suppressed(self.code, ffn.activation):
                    yield self._guard(ctx, lambda: writer.chain(cls, ffn), ffn.activation)
            yield from self._split(ctx, cls, method, claimed, writer, replay)
        for attribute in list(cls.submodules):
            sequential = recognise.sequential_feed_forward(ctx, cls, attribute)
            if sequential is not None and not ctx.suppressed(self.code, sequential.call):
                yield self._guard(ctx, lambda: writer.sequential(sequential), sequential.call)

    def _split(self, ctx, cls, method, claimed: set[int], writer: "FixWriter", replay) -> Iterator[Finding]:
        """An activation of a Linear with no second projection in this module: the up half of an
        FFN split over two classes (gated when the wiring is proven), else refused."""
        for act in recognise.split_activations(ctx, cls, method):
            if id(act) in claimed or ctx.suppressed(self.code, act):
                continue
            if replay is not None:
                yield _replay_refusal(ctx.line(act), replay)
                continue
            try:
                ffn, halves = recognise.split_feed_forward(ctx, cls, method, act)
            except recognise.Refused as refusal:
                yield Refusal(refusal.line, refusal.reason, refusal.hint)
                continue
            yield self._guard(ctx, lambda: writer.split(cls, ffn, halves), act)

    @staticmethod
    def _guard(ctx, build, node: cst.CSTNode) -> Finding:
        try:
            return build()
        except (Unsupported, recognise.Refused) as exc:
            return Refusal(ctx.line(node), str(exc) if isinstance(exc, Unsupported) else exc.reason,
                           "" if isinstance(exc, Unsupported) else exc.hint)


def _replay(ctx, cls) -> tuple[str, int, list[str]] | None:
    """A method other than `__init__`/`forward` that calls methods of two or more submodules
    `forward` applies (`self.fc2.relprop(...)`, `self.fc1.relprop(...)`): it replays the FFN
    layer by layer (relevance propagation), which a gated forward would no longer match."""
    forward = cls.methods.get("forward")
    if forward is None:
        return None
    called = {self_attribute(c.func) for c in _calls(forward)}
    applied = {name for name in cls.submodules if name in called}
    for name, method in cls.methods.items():
        if name in ("__init__", "forward"):
            continue
        touched = []
        for call in _calls(method):
            if isinstance(call.func, cst.Attribute) and self_attribute(call.func.value) in applied \
                    and self_attribute(call.func.value) not in touched:
                touched.append(self_attribute(call.func.value))
        if len(touched) >= 2:
            return name, ctx.line(method), touched
    return None


def _replay_refusal(line: int, replay: tuple[str, int, list[str]]) -> Refusal:
    method, at, names = replay
    return Refusal(line, f"`{method}` (line {at}) replays the feed-forward layer by layer "
                   f"({', '.join(names)}): a gated forward would leave it computing the old FFN",
                   "rewrite the replay for the gated FFN by hand, or mark the class `# tf-migrate: skip[TFM301]`")


def _calls(node: cst.CSTNode) -> list[cst.Call]:
    from tf_migrate.analysis.nodes import find_types

    return find_types(node, cst.Call)


def _branch_built_layer_list(ctx, cls) -> Refusal | None:
    """`forward` applies `self.<list>` module by module (`for m in self.net: h = m(h)`), the list
    ends with a Linear, and `__init__` appends a module bound in the branches of an `if` to
    different classes (diffusers' GEGLU or ApproximateGELU as the first projection): one class,
    two FFN shapes."""
    from tf_migrate.analysis.nodes import find_types

    init, forward = cls.methods.get("__init__"), cls.methods.get("forward")
    if init is None or forward is None:
        return None
    loops = [f for f in find_types(forward, cst.For) if self_attribute(f.iter) is not None]
    for loop in loops:
        attribute = self_attribute(loop.iter)
        appended = [c.args[0].value for c in _calls(init) if isinstance(c.func, cst.Attribute)
                    and c.func.attr.value == "append" and self_attribute(c.func.value) == attribute and len(c.args) == 1]
        if not appended or not (isinstance(appended[-1], cst.Call)
                                and ctx.names.callee(appended[-1]) == "torch.nn.Linear"):
            continue
        for value in appended:
            if not isinstance(value, cst.Name):
                continue
            built = [a for a in find_types(init, cst.Assign) if any(
                isinstance(t.target, cst.Name) and t.target.value == value.value for t in a.targets)]
            kinds = {ctx.code(a.value.func) for a in built if isinstance(a.value, cst.Call)}
            tests = sorted({ctx.code(n.test) for n in find_types(init, cst.If)
                            if any(a in find_types(n.body, cst.Assign) for a in built)})
            if len(built) >= 2 and len(kinds) >= 2 and tests:
                return Refusal(ctx.line(loop), f"the first module of `self.{attribute}` is `{value.value}`, built as "
                               f"{' or '.join(sorted(kinds))} depending on {' / '.join(tests[:2])}: one class, "
                               "two feed-forward shapes", "write the FFN for each choice by hand")
    return None
