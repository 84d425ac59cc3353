"""Line numbers and columns name the input file, also when several rules edit it one after another."""

from __future__ import annotations

import json

import pytest

from helpers import MODELS
from tf_migrate.engine.ci_formats import sarif_document
from tf_migrate.engine.config import Config
from tf_migrate.engine.file import migrate_file, migrate_source
from tf_migrate.engine.lines import original_lines
from tf_migrate.engine.positions import Columns
from tf_migrate.engine.report import json_document, text_lines
from tf_migrate.engine.run import build_rules

CODES = ("TFM101", "TFM102", "TFM201", "TFM301", "TFM401")


def _places(result) -> dict[str, list[tuple[int, int]]]:
    found: dict[str, list[tuple[int, int]]] = {}
    for item in [*result.edits, *result.refusals, *result.notes]:
        found.setdefault(item.code, []).append((item.line, item.column))
    return {code: sorted(places) for code, places in found.items()}


# Models where an earlier rule's edit moves the lines a later rule reports (checked: with the
# positions of the partly rewritten text, every one of these disagrees).
@pytest.mark.parametrize("model", ["mingpt_style.py", pytest.param("einsum_gpt.py", marks=pytest.mark.slow),
                                   pytest.param("bert_style.py", marks=pytest.mark.slow)])
def test_each_rule_reports_the_lines_it_reports_alone(model: str) -> None:
    path = MODELS / model
    together = migrate_file(path, build_rules(Config(select=["all"])))
    assert len({e.code for e in together.edits}) >= 2 and together.changed
    alone: dict[str, list[tuple[int, int]]] = {}
    for code in CODES:
        alone.update(_places(migrate_file(path, build_rules(Config(select=[code])))))
    assert _places(together) == alone


def test_columns_are_where_the_code_on_the_line_starts() -> None:
    path = MODELS / "mingpt_style.py"
    result = migrate_file(path, build_rules(Config(select=["all"])))
    lines = path.read_text().splitlines()
    for item in [*result.edits, *result.refusals, *result.notes]:
        text = lines[item.line - 1]
        assert item.column == len(text) - len(text.lstrip()) + 1 and text.strip()


def test_text_json_and_sarif_agree_on_the_input_lines() -> None:
    path = MODELS / "mingpt_style.py"
    result = migrate_file(path, build_rules(Config(select=["all"])))
    expected = sorted((i.line, i.column) for i in [*result.edits, *result.refusals, *result.notes])
    text = sorted(tuple(int(n) for n in line.split(":")[1:3]) for line in text_lines(result))
    assert text == expected
    files = json.loads(json_document([result]))["files"][0]
    in_json = sorted((i["line"], i["column"]) for key in ("edits", "refusals", "notes") for i in files[key])
    assert in_json == expected
    regions = [r["locations"][0]["physicalLocation"]["region"]
               for r in json.loads(sarif_document([result]))["runs"][0]["results"]]
    assert sorted((r["startLine"], r["startColumn"]) for r in regions) == sorted(
        (i.line, i.column) for i in [*result.edits, *result.refusals])


def test_a_line_inside_a_rewritten_region_maps_to_the_region_start() -> None:
    line_of = original_lines("a\nb\nc\nd\n", "a\nX\nY\nZ\nc\nd\n")
    assert [line_of(n) for n in range(1, 7)] == [1, 2, 2, 2, 3, 4]
    assert Columns("a\n  b\n").column(2) == 3 and Columns("a\n").column(5) == 0


def test_syntax_errors_sit_at_their_line_in_sarif_and_github() -> None:
    from tf_migrate.engine.ci_formats import github_lines

    result = migrate_source("import torch\nclass A(torch.nn.Module):\n    def f(self:\n        return F.softmax(x)\n", "bad.py",
                            build_rules(Config(select=["all"])))
    assert result.errors
    region = json.loads(sarif_document([result]))["runs"][0]["results"][0]["locations"][0][
        "physicalLocation"]["region"]
    assert region["startLine"] == 3 and region["startColumn"] >= 1
    assert list(github_lines(result))[0].startswith("::error file=bad.py,line=3,col=")


def test_a_file_without_trigger_words_that_does_not_parse_is_an_error() -> None:
    result = migrate_source("def f(:\n    pass\n", "bad.py", build_rules(Config()))
    assert result.errors and result.errors[0].startswith("syntax error at line 1")
