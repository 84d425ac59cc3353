"""migrate/bench*.py on tiny models, and the hand-written reference of the einsum GPT.

The full benchmark (benchmarks/runtime.py) is not part of the suite; these check the machinery.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner
from helpers import MODELS, load_module, manifest
from tf_migrate.bench import BenchOptions, Measurement, measure, parse_lengths
from tf_migrate.bench.report import ratio_table
from tf_migrate.bench.setup import ModelSpec
from tf_migrate.cli import main
from tf_migrate.engine.file import migrate_source
from tf_migrate.engine.registry import find_rule

REFERENCE = MODELS / "reference" / "einsum_gpt_modern.py"
TINY = "EinsumGPT(vocab_size=50, d_model=32, n_heads=4, n_layers=1, d_ff=64, max_len=256)"


def _specs() -> list[ModelSpec]:
    return [ModelSpec("legacy", str(MODELS / "einsum_gpt.py"), TINY),
            ModelSpec("reference", str(REFERENCE), TINY.replace("EinsumGPT", "ModernGPT"))]


def test_reference_is_the_same_function_with_mapped_weights():
    legacy_cls, modern = load_module(MODELS / "einsum_gpt.py"), load_module(REFERENCE)
    torch.manual_seed(0)
    old = legacy_cls.EinsumGPT(vocab_size=50, d_model=32, n_heads=4, n_layers=2).eval()
    new = modern.ModernGPT(vocab_size=50, d_model=32, n_heads=4, n_layers=2).eval()
    new.load_state_dict(modern.from_legacy_state_dict(old.state_dict()), strict=True)
    tokens = torch.randint(0, 50, (3, 20))
    with torch.no_grad():
        torch.testing.assert_close(new(tokens), old(tokens), rtol=1e-4, atol=1e-5)


def test_reference_is_not_a_legacy_fixture():
    assert "einsum_gpt_modern" not in manifest()
    assert REFERENCE not in set(MODELS.glob("*.py"))


def test_times_interleaved_and_skips_lengths_a_model_cannot_take():
    options = BenchOptions([16, 300], warmup=1, repeats=3, memory=False)
    rows = measure(_specs(), options)
    assert [(m.label, m.length, m.mode) for m in rows[:4]] == [
        ("legacy", 16, "forward"), ("reference", 16, "forward"),
        ("legacy", 16, "forward+backward"), ("reference", 16, "forward+backward")]
    assert all(m.seconds > 0 and len(m.samples) == 3 for m in rows[:4])
    assert all(m.seconds is None and "256" in m.skipped for m in rows[4:])  # pe table holds 256 positions
    table = ratio_table(rows, "legacy", "reference")
    assert table[2].startswith("| 16 | forward | ") and len(re.findall(r"x\*? \|", table[2])) == 1  # time ratio only
    assert table[-1].startswith("- skipped reference at T=300: RuntimeError")


def test_peak_memory_comes_from_fresh_processes_and_sees_the_score_matrix():
    rows = measure(_specs(), BenchOptions([256], warmup=0, repeats=1, modes=("forward",)))
    legacy, reference = rows
    # legacy holds (1, 4, 256, 256) float32 scores and the next step's result at once: 1 MiB each
    assert legacy.peak_bytes > 1.5 * 2**20
    assert reference.peak_bytes < legacy.peak_bytes / 2


def test_ratio_table_shows_the_spread_and_marks_overlapping_ranges_as_noise():
    """A 0.12x ratio from one slow run of the same code must read as noise, not as a slow-down."""
    rows = [Measurement("before", 16, "forward", 0.010, [0.009, 0.010, 0.011]),
            Measurement("after", 16, "forward", 0.0105, [0.0095, 0.0105, 0.085]),
            Measurement("before", 64, "forward", 0.040, [0.039, 0.040, 0.041]),
            Measurement("after", 64, "forward", 0.020, [0.019, 0.020, 0.021])]
    table = ratio_table(rows, "before", "after")
    assert table[2].startswith("| 16 | forward | 10.0 (9.0-11.0) | 10.5 (9.5-85.0) | 0.95x* |")
    assert table[3].startswith("| 64 | forward | 40.0 (39.0-41.0) | 20.0 (19.0-21.0) | 2.00x |")
    assert table[4].startswith("- * the two min-max ranges overlap")


def test_parse_lengths_rejects_garbage():
    assert parse_lengths("128, 512,") == [128, 512]
    for bad in ("", "a,b", "0", "-5"):
        with pytest.raises(ValueError):
            parse_lengths(bad)


def test_verify_bench_adds_the_table(tmp_path):
    source = MODELS / "einsum_gpt.py"
    after = tmp_path / "einsum_gpt.py"
    after.write_text(migrate_source(source.read_text(), source.name, [find_rule("TFM101")({})]).migrated)
    args = ["verify", str(source), str(after), "--build", TINY, "--select", "TFM101", "--bench",
            "--bench-lengths", "16,512"]
    result = CliRunner().invoke(main, args + ["--format", "json"])
    assert result.exit_code == 0, result.output
    bench = json.loads(result.stdout)["bench"]
    assert [(m["label"], m["length"]) for m in bench][:2] == [("before", 16), ("after", 16)]
    assert all(m["peak_bytes"] is not None for m in bench if m["length"] == 16)
    assert all(m["skipped"] for m in bench if m["length"] == 512)
    bad = CliRunner().invoke(main, args[:-1] + ["12,x"])
    assert bad.exit_code == 2 and "--bench-lengths" in bad.output


def test_bench_modules_leave_the_cli_torch_free():
    code = "import sys, tf_migrate.bench, tf_migrate.verify.command; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
