"""What a run prints and leaves behind: order, colour, progress, file modes, a complete --output-dir."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import FIXTURES
from tf_migrate.cli import main
from tf_migrate.engine.progress import Progress
from tf_migrate.engine.report import text_lines, use_color
from tf_migrate.engine.file import Diagnostic, Edit, FileResult

LEGACY = FIXTURES / "sdpa" / "mingpt_tril_buffer.before.py"
REFUSED = FIXTURES / "sdpa" / "returns_probs.noop.py"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_findings_are_sorted_by_file_then_line(tmp_path: Path) -> None:
    for name in ("b.py", "a/z.py", "a/b/c.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REFUSED if name != "a/z.py" else LEGACY, tmp_path / name)
    result = run(tmp_path / "b.py", tmp_path / "a", "--no-cache")  # named in another order
    findings, table = result.stdout.split("\n\n")  # the census table follows the findings
    paths = [line.split(":")[0] for line in findings.splitlines()]
    assert paths == sorted(paths, key=lambda p: p.split("/")) and len(set(paths)) == 3
    assert table.startswith("rule ")


def test_one_file_merges_edits_refusals_and_notes_by_line() -> None:
    result = FileResult("m.py", edits=[Edit("TFM101", 30, "x", 9)], notes=[Edit("TFM201", 5, "n", 5)],
                        refusals=[Diagnostic("TFM102", 12, "why", "", 9)])
    assert [line.split(" ")[0] for line in text_lines(result)] == ["m.py:5:5:", "m.py:12:9:", "m.py:30:9:"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_on_a_terminal_unless_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert use_color(_Terminal()) and not use_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(_Terminal())
    result = FileResult("m.py", edits=[Edit("TFM101", 3, "x", 1)])
    assert "\x1b[" in next(iter(text_lines(result, color=True)))
    assert "\x1b[" not in next(iter(text_lines(result, color=False)))


def test_progress_is_cleared_before_any_result_prints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tf_migrate.engine import progress
    from tf_migrate.engine.run import RunOptions, run as run_engine

    for i in range(3):
        shutil.copy(LEGACY, tmp_path / f"gpt{i}.py")
    events: list[str] = []
    real_close = progress.Progress.close
    monkeypatch.setattr(progress.Progress, "close", lambda self: (events.append("cleared"), real_close(self)))

    class Out(io.StringIO):
        def write(self, text: str) -> int:
            events.append("printed")
            return super().write(text)

    assert run_engine(RunOptions([tmp_path], use_cache=False, jobs=1), Out()) == 1
    assert events[0] == "cleared" and events.count("printed") >= 3


def test_written_files_get_the_umask_mode_not_0600(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    shutil.copy(LEGACY, tmp_path / "src" / "gpt.py")
    old = os.umask(0o022)
    try:
        result = run(tmp_path / "src", "--output-dir", tmp_path / "out", "--plan", tmp_path / "plan.json",
                     "--no-cache")
    finally:
        os.umask(old)
    assert result.exit_code == 1, result.output
    assert (tmp_path / "out" / "gpt.py").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "plan.json").stat().st_mode & 0o777 == 0o644


def test_output_dir_mirrors_files_that_fail_too(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    shutil.copy(LEGACY, src / "gpt.py")
    (src / "pkg" / "broken.py").write_bytes(b"import torch\ndef f(:\n    torch.softmax(x)\n")
    (src / "latin.py").write_bytes(b"x = '\xe9'\n")  # not UTF-8, no declaration
    result = run(src, "--output-dir", tmp_path / "out", "--no-cache")
    assert result.exit_code == 2
    assert "broken.py: error: syntax error" in result.output and "latin.py: error:" in result.output
    for name in ("pkg/broken.py", "latin.py"):
        assert (tmp_path / "out" / name).read_bytes() == (src / name).read_bytes()
    assert "scaled_dot_product_attention" in (tmp_path / "out" / "gpt.py").read_text()
