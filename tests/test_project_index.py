"""The whole-tree index: imports to files, names to definitions, bases across files, references,
the engine's use of it (a base class in another file) and the cache keyed on the files it read."""

from __future__ import annotations

import pickle
from pathlib import Path

from tf_migrate.analysis.project import ProjectIndex, find_root

from project_support import write_project

PACKAGE = {
    "pkg/__init__.py": "from .layers.base import BaseAttention\n",
    "pkg/layers/__init__.py": "",
    "pkg/layers/base.py": """
        import torch.nn as nn

        class BaseAttention(nn.Module):
            pass
        """,
    "pkg/layers/attention.py": """
        from .base import BaseAttention
        from ..constants import PAD
        from pkg import BaseAttention as Reexported
        import pkg.layers.base as base_module

        class EncoderAttention(BaseAttention):
            def forward(self, x):
                return self.attn_drop(x)

        class Plain(object):
            pass

        class Deep(EncoderAttention):
            pass
        """,
    "pkg/constants.py": "PAD = 0\n",
    "scripts/probe.py": """
        from pkg.layers.attention import EncoderAttention

        def hook(model):
            model.encoder.attn_drop.register_forward_hook(print)
            return getattr(model, "attn_drop")
        """,
}


def test_root_is_the_nearest_folder_with_a_project_marker(tmp_path: Path) -> None:
    write_project(tmp_path, PACKAGE)
    assert find_root([tmp_path / "pkg" / "layers" / "attention.py"]) == str(tmp_path)
    bare = tmp_path.parent / (tmp_path.name + "-bare")
    (bare / "a").mkdir(parents=True)
    (bare / "a" / "x.py").write_text("")
    (bare / "b.py").write_text("")
    assert find_root([bare / "a" / "x.py", bare / "b.py"]) in (str(bare), *map(str, bare.parents))


def test_relative_absolute_and_reexported_imports_resolve_to_files(tmp_path: Path) -> None:
    project = write_project(tmp_path, PACKAGE)
    attention = str(tmp_path / "pkg/layers/attention.py")
    assert project.module_file("base", attention, 1) == str(tmp_path / "pkg/layers/base.py")
    assert project.module_file("constants", attention, 2) == str(tmp_path / "pkg/constants.py")
    assert project.module_file("pkg.layers.base", attention) == str(tmp_path / "pkg/layers/base.py")
    assert project.module_file("torch.nn", attention) is None
    (base,) = project.resolve_name(attention, "BaseAttention")
    assert (base.kind, base.path, base.qualname) == ("class", str(tmp_path / "pkg/layers/base.py"), "BaseAttention")
    assert project.resolve_name(attention, "Reexported") == [base]  # through pkg/__init__.py
    assert project.resolve_dotted(attention, "base_module.BaseAttention") == [base]
    (pad,) = project.resolve_name(attention, "PAD")
    assert pad.kind == "assign" and pad.path.endswith("constants.py")
    (nn,) = project.resolve_dotted(str(tmp_path / "pkg/layers/base.py"), "nn.Module")
    assert (nn.kind, nn.qualified) == ("external", "torch.nn.Module")


def test_bases_across_files_make_an_nn_module(tmp_path: Path) -> None:
    project = write_project(tmp_path, PACKAGE)
    attention = str(tmp_path / "pkg/layers/attention.py")
    assert project.is_nn_module(project.class_symbol(attention, "EncoderAttention"))
    assert project.is_nn_module(project.class_symbol(attention, "Deep"))
    assert not project.is_nn_module(project.class_symbol(attention, "Plain"))
    assert project.defines_modules(attention)
    assert not project.defines_modules(str(tmp_path / "pkg/constants.py"))


def test_references_find_attribute_and_string_uses_in_other_files(tmp_path: Path) -> None:
    project = write_project(tmp_path, PACKAGE)
    found = {(Path(r.path).name, r.line, r.kind) for r in project.references("attn_drop")}
    assert found == {("attention.py", 9, "attribute"), ("probe.py", 5, "attribute"), ("probe.py", 6, "string")}
    assert project.references("nothing_like_this") == []


def test_reads_record_the_other_files_an_analysis_reached(tmp_path: Path) -> None:
    project = write_project(tmp_path, PACKAGE)
    attention = str(tmp_path / "pkg/layers/attention.py")
    with project.analysing(attention):
        project.is_nn_module(project.class_symbol(attention, "EncoderAttention"))
        reads = project.reads
    assert str(tmp_path / "pkg/layers/base.py") in reads and attention not in reads


def test_pickling_keeps_the_file_list_and_drops_the_summaries(tmp_path: Path) -> None:
    project = write_project(tmp_path, PACKAGE)
    attention = str(tmp_path / "pkg/layers/attention.py")
    project.summary(attention)
    copy = pickle.loads(pickle.dumps(project))
    assert copy.root == project.root and copy.files == project.files and not copy._summaries
    assert copy.is_nn_module(copy.class_symbol(attention, "EncoderAttention"))


def test_cycles_and_missing_modules_do_not_loop(tmp_path: Path) -> None:
    project = write_project(tmp_path, {
        "a.py": "from b import X\nfrom .nowhere import Y\n",
        "b.py": "from a import X\n",
    })
    assert project.resolve_name(str(tmp_path / "a.py"), "X") == []
    assert project.resolve_name(str(tmp_path / "a.py"), "Y") == []


def test_a_broken_file_is_no_definition(tmp_path: Path) -> None:
    project = write_project(tmp_path, {"a.py": "from b import X\n", "b.py": "class X(:\n"})
    assert project.resolve_name(str(tmp_path / "a.py"), "X") == []


def _run(tmp_path: Path, *paths: Path, cache: Path) -> str:
    import io

    from tf_migrate.engine.run import RunOptions, run

    out = io.StringIO()
    run(RunOptions(paths=list(paths), select=["TFM101"], fmt="json", cache_dir=cache, jobs=1), out)
    return out.getvalue()


ATTENTION = """
    import math
    import torch
    from .base import Base

    class SelfAttention(Base):
        def forward(self, q, k, v):
            scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.size(-1))
            return torch.matmul(torch.softmax(scores, dim=-1), v)
    """


def test_the_engine_migrates_a_class_whose_nn_module_base_is_in_another_file(tmp_path: Path) -> None:
    write_project(tmp_path, {"pkg/__init__.py": "", "pkg/attention.py": ATTENTION,
                             "pkg/base.py": "from torch import nn\n\nclass Base(nn.Module):\n    pass\n"})
    report = _run(tmp_path, tmp_path / "pkg" / "attention.py", cache=tmp_path / "cache")
    assert '"changed": true' in report and '"TFM101"' in report


def test_the_cache_misses_when_a_file_the_analysis_read_changes(tmp_path: Path) -> None:
    write_project(tmp_path, {"pkg/__init__.py": "", "pkg/attention.py": ATTENTION,
                             "pkg/base.py": "from torch import nn\n\nclass Base(nn.Module):\n    pass\n"})
    target, cache = tmp_path / "pkg" / "attention.py", tmp_path / "cache"
    assert '"changed": true' in _run(tmp_path, target, cache=cache)
    (tmp_path / "pkg" / "base.py").write_text("class Base(object):\n    pass\n")
    assert '"changed": false' in _run(tmp_path, target, cache=cache)
    (tmp_path / "pkg" / "base.py").write_text("from torch import nn\n\nclass Base(nn.Module):\n    pass\n")
    assert '"changed": true' in _run(tmp_path, target, cache=cache)


def test_parallel_and_serial_runs_agree_over_the_project_fixtures(tmp_path: Path) -> None:
    import io

    from tf_migrate.engine.run import RunOptions, run

    projects = Path(__file__).resolve().parent.parent / "fixtures" / "projects"
    outputs = []
    for jobs in (1, 2):
        out = io.StringIO()
        run(RunOptions(paths=[projects], select=["all"], fmt="json", use_cache=False, jobs=jobs), out)
        outputs.append(out.getvalue())
    assert outputs[0] == outputs[1] and '"TFM101"' in outputs[0]
