"""SARIF 2.1.0 and GitHub annotations: structure, and the fixes rebuild the migrated file."""

from __future__ import annotations

import io
import json
from pathlib import Path

from tf_migrate.engine.ci_formats import github_lines, sarif_document
from tf_migrate.engine.file import Diagnostic, FileResult, migrate_file
from tf_migrate.engine.run import build_rules
from tf_migrate.engine.config import Config

SDPA = Path(__file__).resolve().parent.parent / "fixtures" / "sdpa"


def _apply(text: str, replacements: list[dict]) -> str:
    lines = io.StringIO(text, newline="").readlines()  # SARIF lines end at CR, LF or CRLF only
    for change in sorted(replacements, key=lambda r: -r["deletedRegion"]["startLine"]):
        region = change["deletedRegion"]
        assert region["startColumn"] == region["endColumn"] == 1
        lines[region["startLine"] - 1:region["endLine"] - 1] = [change["insertedContent"]["text"]]
    return "".join(lines)


def test_sarif_results_carry_fixes_that_rebuild_the_migrated_file():
    rules = build_rules(Config(select=["all"]))
    changed = migrate_file(SDPA / "mingpt_tril_buffer.before.py", rules)
    refused = migrate_file(SDPA / "returns_probs.noop.py", rules)
    broken = FileResult("bad.py", errors=["syntax error at line 1, column 1: nope"])
    document = json.loads(sarif_document([changed, refused, broken]))
    assert document["version"] == "2.1.0" and document["$schema"].endswith("sarif-2.1.0.json")
    run = document["runs"][0]
    assert {r["id"] for r in run["tool"]["driver"]["rules"]} == {"TFM101", "TFM102", "TFM000"}
    levels = [(r["ruleId"], r["level"]) for r in run["results"]]
    # the ModuleList of projections in returns_probs: TFM102 refuses it (its class has no caller)
    assert levels == [("TFM101", "warning"), ("TFM101", "note"), ("TFM102", "note"), ("TFM000", "error")]
    refusal = run["results"][2]
    assert refusal["message"]["text"].startswith("refused: q/k/v projections in `self.linears` not fused: no call")
    assert refusal["locations"][0]["physicalLocation"]["region"]["startLine"] == 14
    edit = run["results"][0]
    assert edit["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].endswith(
        "mingpt_tril_buffer.before.py")
    replacements = [r for fix in edit["fixes"] for c in fix["artifactChanges"] for r in c["replacements"]]
    assert _apply(changed.original, replacements) == changed.migrated
    assert "fixes" not in run["results"][1]


def test_sarif_line_numbers_do_not_count_form_feeds(tmp_path):
    text = (SDPA / "mingpt_tril_buffer.before.py").read_text().replace("\nclass ", "\n\x0c\nclass ", 1)
    (tmp_path / "ff.py").write_text(text)
    changed = migrate_file(tmp_path / "ff.py", build_rules(Config(select=["TFM101"])))
    assert changed.changed
    run = json.loads(sarif_document([changed]))["runs"][0]
    replacements = [r for res in run["results"] for fix in res.get("fixes", [])
                    for c in fix["artifactChanges"] for r in c["replacements"]]
    assert _apply(changed.original, replacements) == changed.migrated


def test_sarif_uris_are_percent_encoded():
    result = FileResult("my dir/mödel\udcff.py", original="", migrated="",
                        refusals=[Diagnostic("TFM101", 3, "why")])
    location = json.loads(sarif_document([result]))["runs"][0]["results"][0]["locations"][0]
    assert location["physicalLocation"]["artifactLocation"]["uri"] == "my%20dir/m%C3%B6del%FF.py"


def test_github_annotations_escape_their_fields():
    result = FileResult("a,b:c.py", original="", migrated="",
                        refusals=[Diagnostic("TFM101", 3, "50% of\nit", "do x")])
    assert list(github_lines(result)) == [
        "::notice file=a%2Cb%3Ac.py,line=3,title=TFM101 refused::50%25 of%0Ait (hint: do x)"]


def test_sarif_is_valid_against_the_official_2_1_0_schema(tmp_path):
    """tests/data/sarif-schema-2.1.0.json: the OASIS schema (errata 01), vendored as test data."""
    import jsonschema

    schema = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text())
    rules = build_rules(Config(select=["all"]))
    (tmp_path / "skips.py").write_text("import torch.nn as nn\n\n\nclass A(nn.Module):  # tf-migrate: skip[sdpa]\n"
                                       "    def forward(self, x):\n        return x.softmax(-1)\n")
    results = [migrate_file(SDPA / "mingpt_tril_buffer.before.py", rules),
               migrate_file(SDPA / "returns_probs.noop.py", rules),
               migrate_file(tmp_path / "skips.py", rules),
               FileResult("bad.py", errors=["syntax error at line 3, column 7: nope"])]
    assert results[2].warnings  # an unused suppression is in the document too
    document = json.loads(sarif_document(results))
    jsonschema.Draft4Validator(schema).validate(document)
    kinds = {r["ruleId"] for r in document["runs"][0]["results"]}
    assert {"TFM101", "TFM000", "TFM001"} <= kinds
