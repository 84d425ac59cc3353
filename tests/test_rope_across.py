"""TFM401 across files (rules/rope/across.py): a sinusoidal table built in one file, added to the
token stream in another, and an attention reached through blocks of a third are one whole-tree
component. Every file of it decides from the same component: the additions and the table's module
or frozen parameter go, q and k are rotated where the scores are taken (at the start of a scores
class whose callers, followed up the tree, pass one tensor as keys and queries), or every file
refuses with the same reason. Fixtures: fixtures/rope/across_rows (a table module whose forward
returns rows, added in an embedding class, attention behind a lambda sublayer), across_frozen (a
numpy table function in frozen nn.Parameters of an encoder and a decoder sharing blocks, also
recomputed per call for long inputs), across_cross (one attention class for self- and
cross-attention, rotated under `k is q`), across_helper (a position module whose helper method
builds the table and whose forward adds it), across_injected (a stack that keeps the layers its
model builds and passes to its constructor) and their noop twins."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import FIXTURES
from tf_migrate.analysis.project import ProjectIndex
from tf_migrate.engine.file import FileResult, migrate_source
from tf_migrate.engine.registry import select_rules
from test_projects import _load  # import a package from a folder, leaving sys.modules as it was

ROPE = FIXTURES / "rope"


def _migrate(folder: Path, only: list[Path] | None = None, select: str = "TFM401") -> dict[str, FileResult]:
    files = sorted(folder.rglob("*.py"))
    project = ProjectIndex.for_files(only or files)
    rules = [rule() for rule in select_rules([select])]
    results = {str(p.relative_to(folder)): migrate_source(p.read_text(), str(p), rules, project)
               for p in (only or files)}
    for result in results.values():
        assert not result.errors, result.errors
    return results


@pytest.mark.parametrize("name, changed", [
    ("across_rows", {"rowbert/inputs.py", "rowbert/scores.py"}),
    ("across_frozen", {"voice/model.py", "voice/attention.py"}),
    ("across_cross", {"seq2seq/embed.py", "seq2seq/attend.py"}),
    ("across_helper", {"seq2seq/table.py", "seq2seq/attend.py"}),
    ("across_injected", {"tagger/model.py", "tagger/layer.py"}),
])
def test_golden_across_files_and_idempotent(name: str, changed: set[str], tmp_path: Path) -> None:
    results = _migrate(ROPE / name / "before")
    for relative, result in results.items():
        assert result.migrated == (ROPE / name / "after" / relative).read_text(), relative
        assert not result.refusals, result.refusals
        assert all(c.outcome == "migrated" for c in result.components), result.components
    assert {r for r, res in results.items() if res.changed} == changed
    shutil.copytree(ROPE / name / "after", tmp_path / "again")
    for result in _migrate(tmp_path / "again").values():
        assert not result.changed and not result.edits and not result.refusals and not result.components


def test_the_table_file_is_migrated_with_its_users_and_keeps_its_table() -> None:
    """The module that builds the table is left defined (nothing else changes there); its census
    component is migrated by the same component, and says where the addition was removed."""
    results = _migrate(ROPE / "across_rows" / "before")
    [component] = results["rowbert/waves.py"].components
    assert component.outcome == "migrated"
    assert "no longer added (in `InputLayer` (" in component.reason and "rowbert/inputs.py)" in component.reason
    assert not results["rowbert/waves.py"].changed


@pytest.mark.parametrize("name, fragments", [
    ("across_rows_noop", ["`self.attend.forward(h, memory, memory, mask=mask)` (", "rowbert/layers.py line 27) "
                          "passes different tensors as `key`, `query`, `value`: the keys of cross-attention must "
                          "not be rotated"]),
    ("across_frozen_noop", ["`MixBlock` (", "voice/blocks.py), which runs attention rotated here, is also built "
                            "by `Refiner` (", "voice/model.py line 62), whose positions stay as they are"]),
    ("across_cross_noop", ["`Heads` (", "seq2seq/attend.py) serves self- and cross-attention, and `self.own(q=self."
                           "norm1(y), k=self.norm1(y), v=self.norm1(y), mask=own_mask)` (", "seq2seq/layers.py line 32) "
                           "passes its queries and keys as two tensors of one stream"]),
    ("across_injected_noop", ["`Stack` keeps a module passed to its constructor (`self.layers = nn.ModuleList("
                              "layers)`), and `Stack(extra, width)` (", "tagger/model.py line 26) passes `layers` "
                              "as something other than modules it builds there"]),
])
def test_a_component_that_cannot_be_rewritten_leaves_every_file_alone(name: str, fragments: list[str]) -> None:
    results = _migrate(ROPE / name)
    assert not any(r.changed or r.edits for r in results.values())
    components = [c for r in results.values() for c in r.components]
    assert components and all(c.outcome == "refused" for c in components)
    reasons = {c.reason.split(": ", 1)[1] for c in components}  # one reason, said in every file
    assert len(reasons) == 1, reasons
    reason = reasons.pop()
    assert all(fragment in reason for fragment in fragments), reason


@pytest.mark.parametrize("name, alone", [("across_rows", "rowbert/inputs.py"), ("across_frozen", "voice/model.py")])
def test_one_file_alone_is_not_migrated_half(name: str, alone: str) -> None:
    folder = ROPE / name / "before"
    [result] = _migrate(folder, only=[folder / alone]).values()
    assert not result.changed and result.refusals
    assert all("not part of this run" in r.reason for r in result.refusals), result.refusals


def _copies(name: str, tmp_path: Path):
    results = _migrate(ROPE / name / "before")
    before, after = tmp_path / "before", tmp_path / "after"
    shutil.copytree(ROPE / name / "before", before)
    shutil.copytree(ROPE / name / "before", after)
    for relative, result in results.items():
        (after / relative).write_text(result.migrated)
    return before, after, [plan for r in results.values() for plan in r.plans]


@pytest.mark.parametrize("name, module, build, inputs, dropped", [
    ("across_rows", "rowbert.model", "RowBert(50)",
     "(torch.randint(1, 50, (2, 9)), torch.randint(0, 3, (2, 9)))", ["inputs.where.rows"]),
    ("across_frozen", "voice.model", "Voice(50)",
     "(torch.randint(1, 50, (2, 9)).masked_fill(torch.arange(9) >= torch.tensor([[9], [6]]), 0),)",
     ["frames.where", "text.where"]),
    ("across_cross", "seq2seq.model", "Seq2Seq()", "(torch.randint(1, 40, (2, 7)), torch.randint(1, 40, (2, 5)))",
     []),  # a non-persistent buffer: no key
    ("across_helper", "seq2seq.model", "Seq2Seq()", "(torch.randint(1, 40, (2, 7)), torch.randint(1, 40, (2, 5)))",
     ["decoder.embed.positions.waves", "encoder.embed.positions.waves"]),
    ("across_injected", "tagger.model", "Tagger(50)",
     "(torch.randint(1, 50, (2, 9)).masked_fill(torch.arange(9) >= torch.tensor([[9], [6]]), 0),)", ["waves"]),
])
def test_migrated_model_loads_converted_checkpoint_strictly_and_trains(name, module, build, inputs, dropped,
                                                                       tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from tf_migrate.convert.state_dict import convert_state_dict

    before, after, plans = _copies(name, tmp_path)
    torch.manual_seed(0)
    old_module, new_module = _load(before, module), _load(after, module)
    old, new = eval(build, vars(old_module)), eval(build, vars(new_module))
    assert bool(plans) == bool(dropped)  # no plan when no key changes: the old checkpoint loads as it is
    state = convert_state_dict(old.state_dict(), plans, new.state_dict())[0] if plans else old.state_dict()
    new.load_state_dict(state, strict=True)
    assert sorted(set(old.state_dict()) - set(new.state_dict())) == dropped
    assert not set(new.state_dict()) - set(old.state_dict())
    for key, value in new.state_dict().items():  # every kept weight carried over as it was
        assert torch.equal(value, old.state_dict()[key]), key
    args = eval(inputs, {"torch": torch})
    new.train()
    optimiser = torch.optim.SGD(new.parameters(), lr=0.01)
    loss = new(*args).float().pow(2).mean()
    loss.backward()
    optimiser.step()
    assert torch.isfinite(loss)
    new.eval()
    with torch.no_grad():
        out = new(*args)
        assert torch.isfinite(out).all() and out.shape == old(*args).shape


def test_rotated_scores_depend_only_on_the_distance_between_positions(tmp_path: Path) -> None:
    """One vector at every position, as queries and keys: after the migration the weights of the
    scores classes are the same along every diagonal (relative positions), before they are uniform."""
    torch = pytest.importorskip("torch")
    _, after, _ = _copies("across_rows", tmp_path / "rows")
    scores = _load(after, "rowbert.scores").DotScores()
    torch.manual_seed(1)
    vector = torch.randn(1, 2, 1, 8, dtype=torch.float64).expand(1, 2, 7, 8)
    _, weights = scores(vector, vector, vector)
    assert not torch.allclose(weights[0, 0, 0, 0], weights[0, 0, 0, 1])  # no longer uniform
    logits = torch.log(weights[0, 0])  # equal along a diagonal up to the per-row softmax constant
    centred = logits - logits.diagonal().unsqueeze(1)
    for offset in range(-3, 4):
        diagonal = centred.diagonal(offset)
        torch.testing.assert_close(diagonal, diagonal[:1].expand_as(diagonal), rtol=1e-6, atol=1e-6)  # cos/sin are computed in float32

    _, after, _ = _copies("across_frozen", tmp_path / "frozen")
    batch = _load(after, "voice.attention").BatchScores(2.0)
    q = torch.randn(1, 1, 4, dtype=torch.float64).expand(3, 6, 4)
    _, weights = batch(q, q, q)
    logits = torch.log(weights[0]) - torch.log(weights[0]).diagonal().unsqueeze(1)
    torch.testing.assert_close(logits[1, 0], logits[4, 3], rtol=1e-6, atol=1e-6)  # cos/sin are computed in float32
    torch.testing.assert_close(logits[0, 2], logits[3, 5], rtol=1e-6, atol=1e-6)  # cos/sin are computed in float32


def test_the_trigger_words_agree_with_the_rule() -> None:
    """A file of a component without one of the rule's trigger words would never be analysed: the
    component checks its files against the same words the engine uses."""
    from tf_migrate.rules.rope import SinusoidalToRotary
    from tf_migrate.rules.rope.across import TRIGGERS

    assert tuple(SinusoidalToRotary.triggers) == TRIGGERS


def test_a_timing_helper_nothing_calls_is_no_component(tmp_path: Path) -> None:
    """`with_timing_signal(x)` adds a sin/cos table to its argument, but no file of the run calls it:
    no model's tokens get those positions (a look-alike, #14). Once something calls it, it is one."""
    rules = [rule() for rule in select_rules(["TFM401"])]
    path = ROPE / "uncalled_timing_helper.noop.py"
    alone = migrate_source(path.read_text(), str(path), rules)
    assert not alone.components and not alone.refusals and not alone.changed
    called = tmp_path / "called.py"
    called.write_text(path.read_text() + "\n\ndef used(x):\n    return with_timing_signal(x)\n")
    result = migrate_source(called.read_text(), str(called), rules)
    assert [c.outcome for c in result.components] == ["refused"]


@pytest.mark.parametrize("name, module, build, inputs", [
    ("across_rows", "rowbert.model", "RowBert(50)", "(torch.randint(1, 50, (2, 9)), torch.randint(0, 3, (2, 9)))"),
    ("across_frozen", "voice.model", "Voice(50)", "(torch.randint(1, 50, (2, 9)),)"),
    ("across_injected", "tagger.model", "Tagger(50)", "(torch.randint(1, 50, (2, 9)),)"),
])
def test_after_the_other_rules_rewrote_the_same_files(name, module, build, inputs, tmp_path: Path) -> None:
    """Under `--select all` the attention files were rewritten first (SDPA, fused q/k/v): each file
    still finds its part of the component, and the package builds and trains."""
    torch = pytest.importorskip("torch")
    results = _migrate(ROPE / name / "before", select="all")
    outcomes = [c.outcome for r in results.values() for c in r.components if c.rule == "TFM401"]
    assert outcomes and set(outcomes) == {"migrated"}
    after = tmp_path / "after"
    shutil.copytree(ROPE / name / "before", after)
    for relative, result in results.items():
        (after / relative).write_text(result.migrated)
    assert "apply_rotary(" in "".join(p.read_text() for p in after.rglob("*.py"))
    namespace = vars(_load(after, module))
    model = eval(build, namespace)
    loss = model(*eval(inputs, {"torch": torch})).float().pow(2).mean()
    loss.backward()
    assert torch.isfinite(loss)


def test_fourier_features_joined_to_the_input_are_no_component(tmp_path: Path) -> None:
    """`torch.cat((data, features), dim=-1)` with `data` the model's input: the sin/cos become extra
    input channels, not positions added to a token stream (#14). Added instead, they are one."""
    rules = [rule() for rule in select_rules(["TFM401"])]
    path = ROPE / "fourier_features_concatenated.noop.py"
    joined = migrate_source(path.read_text(), str(path), rules)
    assert not joined.components and not joined.refusals and not joined.changed
    added = tmp_path / "added.py"
    added.write_text(path.read_text().replace(
        "data = torch.cat((data, where.unsqueeze(0).expand(data.size(0), -1, -1)), dim=-1)",
        "data = data + where.unsqueeze(0)"))
    result = migrate_source(added.read_text(), str(added), rules)
    assert [c.outcome for c in result.components] == ["refused"]


def test_one_attention_class_rotates_self_attention_and_leaves_cross_attention(tmp_path: Path) -> None:
    """`Heads` serves both: called with one tensor as queries and keys it rotates them after the head
    split; called with the encoder's memory as keys it computes exactly what it did before."""
    torch = pytest.importorskip("torch")
    before, after, _ = _copies("across_cross", tmp_path)
    old_cls, new_cls = _load(before, "seq2seq.attend").Heads, _load(after, "seq2seq.attend").Heads
    rotary = _load(after, "seq2seq.attend").apply_rotary
    torch.manual_seed(2)
    new = new_cls(16, 2).double().eval()
    old = old_cls(16, 2).double().eval()
    old.load_state_dict(new.state_dict())
    x, memory = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 7, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(new(x, memory, memory), old(x, memory, memory), rtol=1e-12, atol=1e-12)
        q, k, v = (old.split(p(x)) for p in (old.to_q, old.to_k, old.to_v))
        mixed = old.scores(rotary(q), rotary(k), v)
        by_hand = old.out(mixed.transpose(1, 2).contiguous().view(2, 5, 16))
        torch.testing.assert_close(new(x, x, x), by_hand, rtol=1e-12, atol=1e-12)
        assert not torch.allclose(new(x, x, x), old(x, x, x))


_EMBED = """
import math

import torch
import torch.nn as nn


class WaveTable(nn.Module):
    def __init__(self, width, longest=32):
        super().__init__()
        where = torch.arange(longest, dtype=torch.float32)[:, None]
        rates = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
        table = torch.zeros(longest, width)
        table[:, 0::2] = torch.sin(where * rates)
        table[:, 1::2] = torch.cos(where * rates)
        self.register_buffer("table", table[None])

    def forward(self, x):
        return self.table[:, : x.size(1)]


class Embed(nn.Module):
    def __init__(self, vocab, width):
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.where = WaveTable(width)

    def forward(self, ids):
        return self.tokens(ids) + self.where(ids)
"""

_NET = """
import torch.nn as nn

from .embed import Embed


class Attend(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return (q @ k.transpose(-2, -1)).softmax(-1) @ v


class Net(nn.Module):
    def __init__(self, vocab, width, blocks):
        super().__init__()
        self.embed = Embed(vocab, width)
        self.blocks = nn.ModuleList(blocks)

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.blocks:
            x = x + block(x)
        return x
"""


@pytest.mark.parametrize("blocks, outcome", [
    ("nn.ModuleList(blocks)", "refused"),  # the blocks come from the caller: their attention is unseen
    ("nn.ModuleList([Attend(width) for _ in range(2)])", "migrated"),
])
def test_a_table_module_added_by_another_class_of_its_file(blocks: str, outcome: str, tmp_path: Path) -> None:
    """The table module and the class that adds it share a file; the attention lies in another. The
    model keeping modules passed to its constructor (`nn.ModuleList(blocks)`) cannot show them all."""
    from project_support import write_project

    project = write_project(tmp_path, {"pkg/__init__.py": "", "pkg/embed.py": _EMBED,
                                       "pkg/net.py": _NET.replace("nn.ModuleList(blocks)", blocks)})
    rules = [rule() for rule in select_rules(["TFM401"])]
    results = {name: migrate_source((tmp_path / "pkg" / name).read_text(), str(tmp_path / "pkg" / name), rules,
                                    project) for name in ("embed.py", "net.py")}
    [component] = results["embed.py"].components
    assert component.outcome == outcome, component.reason
    if outcome == "refused":
        assert "`Net` keeps a module passed to its constructor (`self.blocks = nn.ModuleList(blocks)`)" \
            in component.reason
        assert not any(r.changed for r in results.values())
    else:
        assert "self.where" not in results["embed.py"].migrated
        assert "q = apply_rotary(q)" in results["net.py"].migrated


_SHARED = """
import torch.nn as nn


class Feed(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, width), nn.ReLU())

    def forward(self, x):
        return self.net(x)
"""

_MODEL = """
import math

import torch
import torch.nn as nn

from .shared import Feed


def waves(length, width):
    where = torch.arange(length, dtype=torch.float32)[:, None]
    rates = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    return torch.cat([torch.sin(where * rates), torch.cos(where * rates)], dim=-1)


class Mix(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return SCORES


class Net(nn.Module):
    def __init__(self, vocab, width):
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.mix = Mix(width)
        self.feed = Feed(width)

    def forward(self, ids):
        x = self.tokens(ids) + waves(ids.size(1), self.tokens.embedding_dim)
        return self.feed(self.mix(x))
"""


def test_models_sharing_only_a_feed_forward_are_separate_components(tmp_path: Path) -> None:
    """Two models share a feed-forward class but not their attention: one that cannot be rotated
    (its scores are not a product tf-migrate can read) does not stop the other."""
    from project_support import write_project

    readable = "(q @ k.transpose(-2, -1)).softmax(-1) @ v"
    unreadable = "torch.softmax(torch.einsum('btd,bsd->bts', q, k.flip(1)), -1) @ v"
    project = write_project(tmp_path, {"pkg/__init__.py": "", "pkg/shared.py": _SHARED,
                                       "pkg/good.py": _MODEL.replace("SCORES", readable),
                                       "pkg/bad.py": _MODEL.replace("SCORES", unreadable)})
    rules = [rule() for rule in select_rules(["TFM401"])]
    results = {name: migrate_source((tmp_path / "pkg" / name).read_text(), str(tmp_path / "pkg" / name), rules,
                                    project) for name in ("good.py", "bad.py", "shared.py")}
    assert [c.outcome for c in results["good.py"].components if c.kind == "sinusoidal-positions"] == ["migrated"]
    assert [c.outcome for c in results["bad.py"].components] == ["refused"]
    assert not results["bad.py"].changed and not results["shared.py"].changed


_STACKED = _NET.split("class Net")[0] + """class Stack(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)
        return x


class Net(nn.Module):
    def __init__(self, vocab, width):
        super().__init__()
        self.embed = Embed(vocab, width)
        self.stack = Stack([Attend(width), Attend(width)])

    def forward(self, ids):
        return self.stack(self.embed(ids))
"""


@pytest.mark.parametrize("extra, outcome, reason", [
    ("", "migrated", ""),
    ("\n\ndef spare(width):\n    return Stack([Attend(width)])\n", "refused",
     "and it is built at pkg/net.py line 39 other than with plain arguments in a model's `__init__`"),
    ("\n\nclass Other(nn.Module):\n    def __init__(self, width):\n        super().__init__()\n"
     "        self.stack = Stack([make_layer(width)])\n", "refused",
     "`Stack([make_layer(width)])` (pkg/net.py line 41) passes `layers` as something other than modules it "
     "builds there"),
    ("\n\nclass Other(nn.Module):\n    def __init__(self, *parts):\n        super().__init__()\n"
     "        self.stack = Stack(*parts)\n", "refused", "and it is built at pkg/net.py line 41 other than with "
     "plain arguments"),  # `layers=None` by default: the unpacked arguments may hold the layers
])
def test_a_stack_of_layers_its_model_passes_in(extra: str, outcome: str, reason: str, tmp_path: Path) -> None:
    """A container keeping modules passed to its constructor is read through every place that builds
    it: each must be a class's `__init__` that builds project classes right there (a factory, or a
    place outside `__init__`, keeps the layers out of sight)."""
    from project_support import write_project

    net = (_STACKED + extra).replace("(self, layers)", "(self, layers=None)")
    project = write_project(tmp_path, {"pkg/__init__.py": "", "pkg/embed.py": _EMBED, "pkg/net.py": net})
    rules = [rule() for rule in select_rules(["TFM401"])]
    results = {name: migrate_source((tmp_path / "pkg" / name).read_text(), str(tmp_path / "pkg" / name), rules,
                                    project) for name in ("embed.py", "net.py")}
    [component] = results["embed.py"].components
    assert component.outcome == outcome, component.reason
    assert reason in component.reason
    assert ("q = apply_rotary(q)" in results["net.py"].migrated) == (outcome == "migrated")


@pytest.mark.parametrize("extra, outcome, reason", [
    ("", "migrated", ""),
    ("\n\nclass Other(nn.Module):\n    def __init__(self, width):\n        super().__init__()\n"
     "        self.stack = Stack([make_layer(width)])\n", "refused",
     "passes `layers` as something other than modules it builds there"),
])
def test_layers_kept_only_when_given_are_followed_too(extra: str, outcome: str, reason: str,
                                                       tmp_path: Path) -> None:
    """`self.layers = nn.ModuleList(layers) if layers is not None else None` keeps a constructor
    argument as much as the plain form: its layers are followed (or the component refused), never
    left out of sight."""
    from project_support import write_project

    net = (_STACKED + extra).replace(
        "self.layers = nn.ModuleList(layers)",
        "self.layers = nn.ModuleList(layers) if layers is not None else None")
    assert "if layers is not None else None" in net
    project = write_project(tmp_path, {"pkg/__init__.py": "", "pkg/embed.py": _EMBED, "pkg/net.py": net})
    rules = [rule() for rule in select_rules(["TFM401"])]
    results = {name: migrate_source((tmp_path / "pkg" / name).read_text(), str(tmp_path / "pkg" / name), rules,
                                    project) for name in ("embed.py", "net.py")}
    [component] = results["embed.py"].components
    assert component.outcome == outcome, component.reason
    assert reason in component.reason
    assert ("q = apply_rotary(q)" in results["net.py"].migrated) == (outcome == "migrated")
